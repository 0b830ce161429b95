"""FLOP counts of the embedding bags and the whole models (refimpl.tools.flops) against a
brute-force count: per-scalar loops on numbers that count their operations (``Counted``, as
in test_flops.py), sums starting from the literal 0. The loops also compute values, checked
against refimpl, so each count is the count of the right computation."""

import numpy as np
import pytest
from test_flops import Counted, count, unwrap, wrap, zeros

import refimpl
from refimpl.tools import flops


def bags_loop(weight, ids, lengths, per_id_weights, pooling):
    """One feature's pooled bags per scalar, then the table's and the weights' gradients for an
    upstream gradient of ones. Returns (pooled, d_table rows by id, d_weights, forward ops)."""
    dim, starts = len(weight[0]), np.concatenate([[0], np.cumsum(lengths)])
    pooled = []
    for b, n in enumerate(lengths):
        total = zeros(dim) if n else [Counted(0.0)] * dim  # an empty bag's sum: the number 0
        for i in range(starts[b], starts[b] + n):
            row = weight[ids[i]]
            if per_id_weights is not None:
                row = [per_id_weights[i] * x for x in row]
            total = [t + x for t, x in zip(total, row, strict=True)]
        if pooling == "mean":
            total = [t / max(n, 1) for t in total]
        pooled.append(total)
    forward = Counted.ops
    d_table, d_weights = {}, []
    for b, n in enumerate(lengths):
        d_bag = [Counted(1.0)] * dim
        if pooling == "mean":
            d_bag = [g / max(n, 1) for g in d_bag]
        for i in range(starts[b], starts[b] + n):
            d_row = d_bag
            if per_id_weights is not None:
                d_row = [per_id_weights[i] * g for g in d_bag]
                dw = 0
                for g, x in zip(d_bag, weight[ids[i]], strict=True):
                    dw = dw + g * x
                d_weights.append(dw)
            old = d_table.get(int(ids[i]), zeros(dim))
            d_table[int(ids[i])] = [a + g for a, g in zip(old, d_row, strict=True)]
    return pooled, d_table, d_weights, forward


@pytest.mark.parametrize(("pooling", "weighted"), [("sum", False), ("mean", False), ("sum", True)])
def test_embedding_bag_flops(rng, pooling, weighted):
    weight = rng.standard_normal((5, 3))
    ids, lengths = np.array([0, 4, 0, 2, 2, 1]), np.array([3, 0, 2, 1])  # repeats, an empty bag
    per_id_weights = rng.standard_normal(len(ids)) if weighted else None
    w = None if per_id_weights is None else wrap(per_id_weights)
    (pooled, d_table, d_weights, forward), total = count(
        bags_loop, wrap(weight), ids, lengths, w, pooling
    )
    expected = flops.embedding_bag_flops(len(ids), len(lengths), 3, pooling, weighted)
    assert (forward, total - forward) == expected

    ours, cache = refimpl.layers.embedding.embedding_bag_forward(
        weight, ids, lengths, per_id_weights, pooling
    )
    np.testing.assert_allclose(unwrap(pooled), ours, rtol=1e-12)
    d_ours, dw_ours = refimpl.layers.embedding.embedding_bag_backward(np.ones_like(ours), cache, 5)
    assert sorted(d_table) == list(d_ours.indices)
    np.testing.assert_allclose(unwrap([d_table[j] for j in sorted(d_table)]), d_ours.values)
    if weighted:
        np.testing.assert_allclose(unwrap(d_weights), dw_ours, rtol=1e-12)


def test_collection_counts_every_feature_of_every_table():
    ebc = refimpl.EmbeddingBagCollection(
        [
            refimpl.EmbeddingBagConfig(10, 4, "t1", ["a", "c"]),  # one table, two features
            refimpl.EmbeddingBagConfig(6, 2, "t2", ["b"], pooling="mean"),
        ],
        seed=0,
    )
    lengths = np.array([2, 1, 0, 3, 1, 1])  # B = 2: a has 3 ids, b 3, c 2
    features = refimpl.KeyedJaggedArray.from_lengths(
        ["a", "b", "c"], np.array([1, 2, 3, 0, 1, 5, 7, 9]), lengths
    )
    expected = (
        flops.embedding_bag_flops(3, 2, 4)
        + flops.embedding_bag_flops(2, 2, 4)
        + flops.embedding_bag_flops(3, 2, 2, "mean")
    )
    assert flops.count_flops(ebc, features) == expected
    one_table = refimpl.EmbeddingBagCollection([ebc.tables[0]], seed=0)  # D = 4 for a SparseArch
    assert flops.count_flops(refimpl.SparseArch(one_table), features) == (
        flops.embedding_bag_flops(3, 2, 4) + flops.embedding_bag_flops(2, 2, 4)
    )


def test_a_model_counts_its_four_parts():
    tables = [refimpl.EmbeddingBagConfig(20, 4, "t", ["a", "b"])]
    features = refimpl.KeyedJaggedArray.from_lengths(
        ["a", "b"], np.array([1, 2, 3, 4, 5]), np.array([2, 1, 0, 2])
    )
    dense = np.zeros((2, 3))  # B = 2, I = 3; F = 2, D = 4, so N = 12
    dcn = refimpl.DLRM_DCN(
        refimpl.EmbeddingBagCollection(tables, seed=0), 3, [5, 4], [6, 1], 2, 3, seed=0
    )
    assert flops.count_flops(dcn, dense, features) == (
        flops.mlp_flops(2, 3, [5, 4])
        + flops.embedding_bag_flops(3, 2, 4)
        + flops.embedding_bag_flops(2, 2, 4)
        + flops.low_rank_crossnet_flops(2, 12, 2, 3)
        + flops.over_arch_flops(2, 12, [6, 1])
    )
    dot = refimpl.DLRM(refimpl.EmbeddingBagCollection(tables, seed=0), 3, [5, 4], [6, 1], seed=0)
    assert flops.count_flops(dot, dense, features) == (
        flops.count_flops(dot.dense_arch, dense)
        + flops.count_flops(dot.sparse_arch, features)
        + flops.dot_flops(2, 2, 4)
        + flops.over_arch_flops(2, 4 + 3, [6, 1])
    )
