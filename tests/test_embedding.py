"""KeyedJaggedArray, EmbeddingBagCollection and SparseArch: values, gradients, errors, cost."""

import tracemalloc

import numpy as np
import pytest

import refimpl
from refimpl import (
    EmbeddingBagCollection,
    EmbeddingBagConfig,
    KeyedJaggedArray,
    RowSparse,
    SparseArch,
    gradcheck,
)
from refimpl.fast import threads
from refimpl.fast.embedding import LEVELS, bag_sums, stable_order, table_gradient
from refimpl.layers import embedding
from refimpl.layers.embedding import embedding_bag_backward, embedding_bag_forward, segment_sum
from refimpl.tools.check.cases.embedding import COLLECTIONS, build_collection, draw_features
from refimpl.tools.loops import embedding_bag_grad_loop, embedding_bag_loop


def _kja(keys=("a", "b"), values=(0, 1, 2, 3, 4, 5, 6, 7), lengths=(2, 0, 1, 1, 1, 3), **kw):
    return KeyedJaggedArray.from_lengths(keys, np.array(values), np.array(lengths), **kw)


# --------------------------------------------------------------------- KeyedJaggedArray


def test_keyed_jagged_array_is_key_major():
    kja = _kja()
    assert kja.stride == 3
    np.testing.assert_array_equal(kja.offsets, [0, 2, 2, 3, 4, 5, 8])
    ids, lengths, weights = kja.feature("a")
    np.testing.assert_array_equal(ids, [0, 1, 2])
    np.testing.assert_array_equal(lengths, [2, 0, 1])
    assert weights is None
    same = KeyedJaggedArray.from_offsets(["a", "b"], kja.values, kja.offsets)
    np.testing.assert_array_equal(same.lengths, kja.lengths)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"lengths": (2, 0, 1, 1, 1, 2)}, ValueError, "sum to 7, but values holds M = 8"),
        ({"lengths": (2, 0, 1, 1, 4)}, ValueError, "not a multiple of 2"),
        ({"lengths": (3, -1, 1, 1, 1, 3)}, ValueError, "non-negative bag sizes, got [-1]"),
        ({"keys": ("a", "a")}, ValueError, "['a'] repeat"),
        ({"keys": "ab"}, TypeError, "list of feature names"),
        ({"values": np.arange(8.0)}, TypeError, "values: expected an integer array"),
        ({"weights": np.ones(7)}, ValueError, "weights: expected one weight per id"),
        ({"weights": np.ones(8, int)}, TypeError, "weights: expected a float32 or float64"),
    ],
)
def test_keyed_jagged_array_names_what_is_wrong(kwargs, error, message):
    with pytest.raises(error, match=message.replace("[", r"\[").replace("]", r"\]")):
        _kja(**kwargs)


def test_from_offsets_refuses_bad_offsets():
    with pytest.raises(ValueError, match="from 0 to M = 3"):
        KeyedJaggedArray.from_offsets(["a"], np.array([1, 2, 3]), np.array([0, 2]))
    with pytest.raises(ValueError, match="non-decreasing"):
        KeyedJaggedArray.from_offsets(["a"], np.array([1, 2, 3]), np.array([0, 2, 1, 3]))


# ------------------------------------------------------------------------ configuration


def test_config_defaults_and_init_bounds_follow_torchrec(rng):
    config = EmbeddingBagConfig(num_embeddings=400, embedding_dim=8, name="t")
    assert config.feature_names == ["t"] and config.pooling == "sum"
    weight = EmbeddingBagCollection([config], seed=rng).params["embedding_bags.t.weight"]
    bound = np.sqrt(1 / 400)
    assert np.abs(weight).max() <= bound and np.abs(weight).max() > 0.95 * bound
    assert abs(weight.mean()) < 0.05 * bound  # centred: U(−bound, bound)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: EmbeddingBagConfig(10, 0, "t"), "embedding_dim: expected an integer >= 1"),
        (lambda: EmbeddingBagConfig(10, 4, "t", pooling="max"), "pooling: expected one of"),
        (
            lambda: EmbeddingBagCollection([EmbeddingBagConfig(5, 2, "t")] * 2),
            r"duplicate table names \['t'\]",
        ),
        (
            lambda: EmbeddingBagCollection(
                [EmbeddingBagConfig(5, 2, "t", pooling="mean")], is_weighted=True
            ),
            r"tables \['t'\] pool by the mean",
        ),
    ],
)
def test_bad_configuration_is_refused(build, message):
    with pytest.raises((ValueError, TypeError), match=message):
        build()


# ------------------------------------------------------------------------------ forward


def test_sum_mean_empty_bag_and_repeated_id_by_hand():
    ebc = EmbeddingBagCollection(
        [EmbeddingBagConfig(3, 2, "t1", ["a"]), EmbeddingBagConfig(3, 2, "t2", ["b"], "mean")]
    )
    table = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    ebc.load_state_dict({"embedding_bags.t1.weight": table, "embedding_bags.t2.weight": table})
    # a: bags [0, 2, 0], [] ; b: bags [1], [2, 2, 0]
    kja = _kja(values=(0, 2, 0, 1, 2, 2, 0), lengths=(3, 0, 1, 3))
    pooled, _ = ebc.forward(kja)
    expected = [[4.0, 2.0, 0.0, 1.0], [0.0, 0.0, 5 / 3, 4 / 3]]
    np.testing.assert_allclose(pooled, expected, rtol=0, atol=1e-15)


def test_output_follows_tables_then_feature_names_not_the_keys_order(rng):
    ebc = build_collection("one table per feature, D=3", seed=rng)
    kja = draw_features(rng, ebc, 4)
    assert kja.keys == ("f3", "f2", "f1")  # reversed on purpose
    pooled, _ = ebc.forward(kja)
    assert ebc.embedding_names == ["f1", "f2", "f3"]
    for k, (table, feature) in enumerate(zip(ebc.tables, ("f1", "f2", "f3"), strict=True)):
        ids, lengths, _ = kja.feature(feature)
        weight = ebc.params[f"embedding_bags.{table.name}.weight"]
        expected = embedding_bag_loop(weight, ids, lengths, pooling=table.pooling)
        np.testing.assert_allclose(pooled[:, 3 * k : 3 * k + 3], expected, rtol=1e-13)


def test_a_feature_served_by_two_tables_is_named_by_both():
    ebc = EmbeddingBagCollection(
        [EmbeddingBagConfig(4, 2, "t1", ["a"]), EmbeddingBagConfig(4, 2, "t2", ["a", "b"])]
    )
    assert ebc.embedding_names == ["a@t1", "a@t2", "b"]
    assert ebc(_kja(values=(0, 1, 2, 3), lengths=(1, 1, 1, 1))).shape == (2, 6)


def test_float32_stays_float32(rng):
    ebc = build_collection("weighted sum", seed=rng, dtype=np.float32)
    kja = draw_features(rng, ebc, 3)
    kja = KeyedJaggedArray(kja.keys, kja.values, kja.lengths, kja.weights.astype(np.float32))
    pooled, cache = ebc.forward(kja)
    d_weights, d_params = ebc.backward(np.ones_like(pooled), cache)
    assert pooled.dtype == d_weights.dtype == np.float32
    assert all(g.dtype == np.float32 for g in d_params.values())


def test_an_empty_batch_gives_empty_outputs(rng):
    ebc = build_collection("mean t1, sum t2", seed=rng)
    kja = KeyedJaggedArray(["f1", "f2", "f3"], np.zeros(0, int), np.zeros(0, int))
    pooled, cache = ebc.forward(kja)
    assert pooled.shape == (0, 12)  # (B, F·D)
    _, d_params = ebc.backward(pooled, cache)
    assert all(g.nnz_rows == 0 for g in d_params.values())


# ----------------------------------------------------------------------------- backward


@pytest.mark.parametrize("name", list(COLLECTIONS))
def test_gradients_against_finite_differences_and_loops(rng, name):
    ebc = build_collection(name, seed=rng)
    kja = draw_features(rng, ebc, 5)
    result = gradcheck(ebc, (kja,))
    assert result.ok, result
    pooled, cache = ebc.forward(kja)
    d_pooled = rng.standard_normal(pooled.shape)
    _, d_params = ebc.backward(d_pooled, cache)
    start = 0
    for table in ebc.tables:
        expected = 0
        for feature in table.feature_names:
            ids, lengths, weights = kja.feature(feature)
            d_bag = d_pooled[:, start : start + table.embedding_dim]
            weights = weights if ebc.is_weighted else None
            expected = expected + embedding_bag_grad_loop(
                d_bag, table.num_embeddings, ids, lengths, weights, table.pooling
            )
            start += table.embedding_dim
        ours = d_params[f"embedding_bags.{table.name}.weight"].to_dense()
        np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-14)


def test_repeated_ids_add_and_untouched_rows_are_absent():
    ebc = EmbeddingBagCollection([EmbeddingBagConfig(6, 1, "t", ["a", "b"])], seed=0)
    kja = _kja(values=(4, 4, 1, 4), lengths=(2, 1, 1, 0))  # a: [4, 4], [1]; b: [4], []
    _, cache = ebc.forward(kja)
    _, d_params = ebc.backward(np.array([[1.0, 10.0], [100.0, 1000.0]]), cache)
    grad = d_params["embedding_bags.t.weight"]
    np.testing.assert_array_equal(grad.indices, [1, 4])
    np.testing.assert_array_equal(grad.values, [[100.0], [1.0 + 1.0 + 10.0]])


def test_backward_refuses_a_wrong_upstream_shape(rng):
    ebc = build_collection("weighted sum", seed=rng)
    _, cache = ebc.forward(draw_features(rng, ebc, 2))
    with pytest.raises(ValueError, match=r"d_out: expected shape \(B, E\) = \(2, 12\)"):
        ebc.backward(np.ones((2, 11)), cache)


# ------------------------------------------------------------------------------ errors


def test_ids_out_of_range_name_table_key_and_id(rng):
    ebc = build_collection("sum, t1 shared by f1 f3", seed=rng)
    before = ebc.state_dict()
    keys = ["f1", "f2", "f3"]
    cases = [  # (ids, lengths (F·B, B = 2), message)
        (
            [1, 60, 2, 3],
            [1, 0, 2, 0, 1, 0],
            r"key 'f2' has ids \[60\] outside the rows \[0, 50\) of table 't2'",
        ),
        (
            [1, 2, 3, 9],
            [1, 1, 1, 0, 1, 0],
            r"key 'f3' has ids \[9\] outside the rows \[0, 7\) of table 't1'",
        ),
        (
            [-1],
            [1, 0, 0, 0, 0, 0],
            r"key 'f1' has ids \[-1\] outside the rows \[0, 7\) of table 't1'",
        ),
    ]
    for ids, lengths, message in cases:
        with pytest.raises(ValueError, match=message):
            ebc.forward(KeyedJaggedArray(keys, np.array(ids), np.array(lengths)))
    assert all(np.array_equal(before[k], v) for k, v in ebc.params.items())


def test_missing_keys_and_missing_weights_are_named(rng):
    ebc = build_collection("weighted sum", seed=rng)
    with pytest.raises(ValueError, match=r"features \['f3'\], which are not among"):
        ebc.forward(KeyedJaggedArray(["f1", "f2"], np.array([1]), np.array([1, 0])))
    with pytest.raises(ValueError, match="has no weights"):
        ebc.forward(KeyedJaggedArray(["f1", "f2", "f3"], np.array([1]), np.array([1, 0, 0])))
    with pytest.raises(TypeError, match="expected a KeyedJaggedArray"):
        ebc.forward(np.array([[1, 2]]))


def test_load_state_dict_refuses_a_malformed_one_changing_nothing(rng):
    ebc = build_collection("mean t1, sum t2", seed=rng)
    before = ebc.state_dict()
    good = {k: np.ones_like(v) for k, v in before.items()}
    bad = dict(good, **{"embedding_bags.t2.weight": np.ones((49, 4))})
    with pytest.raises(ValueError, match=r"embedding_bags.t2.weight: expected shape \(50, 4\)"):
        ebc.load_state_dict(bad)
    assert all(np.array_equal(before[k], v) for k, v in ebc.params.items())
    ebc.load_state_dict(good)
    assert all(np.all(v == 1) for v in ebc.params.values())


# ------------------------------------------------------------------ textbook and fast


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_the_fast_path_equals_the_textbook(rng, weighted, pooling):
    weight = rng.standard_normal((30, 5))
    lengths = rng.integers(0, 6, size=40)
    lengths[:3] = (0, 4, 4)
    ids = rng.integers(0, 30, size=int(lengths.sum()))
    per_id = rng.standard_normal(len(ids)) if weighted else None
    pooled, cache = embedding_bag_forward(weight, ids, lengths, per_id, pooling)
    sums, _ = bag_sums(weight, ids, lengths, per_id)
    expected = sums if pooling == "sum" else sums / np.maximum(lengths, 1)[:, None]
    np.testing.assert_allclose(pooled, expected, rtol=1e-13, atol=1e-15)
    d_pooled = rng.standard_normal(pooled.shape)
    grad, _ = embedding_bag_backward(d_pooled, cache, 30)
    d_bags = d_pooled if pooling == "sum" else d_pooled / np.maximum(lengths, 1)[:, None]
    bags = np.repeat(np.arange(len(lengths)), lengths)
    fast = table_gradient(ids, d_bags, bags, 30, per_id)
    np.testing.assert_array_equal(fast.indices, grad.indices)
    np.testing.assert_allclose(fast.values, grad.values, rtol=1e-13, atol=1e-15)
    fixed = np.full(8, 3)  # one bag size: the fast path's single block
    ids8 = rng.integers(0, 30, 24)
    np.testing.assert_allclose(bag_sums(weight, ids8, fixed)[0], segment_sum(weight[ids8], fixed))


@pytest.mark.parametrize("weighted", [False, True])
def test_the_fast_gradient_adds_runs_of_every_length(rng, weighted):
    # Runs of 1 to 3·LEVELS occurrences: plain indexed adds up to LEVELS, np.add.at after.
    counts = np.array([1, 2, LEVELS - 1, LEVELS, LEVELS + 1, 3 * LEVELS])
    ids = rng.permutation(np.repeat(np.arange(len(counts)) * 7, counts))  # ids 0, 7, …, 35
    d_bags = rng.standard_normal((5, 3))
    bags = rng.integers(0, 5, len(ids))
    scale = rng.standard_normal(len(ids)) if weighted else None
    rows = d_bags[bags] * (scale[:, None] if weighted else 1)  # the gradient of each id, (M, D)
    expected = refimpl.RowSparse.from_rows(ids, rows, 40)
    fast = table_gradient(ids, d_bags, bags, 40, scale)
    np.testing.assert_array_equal(fast.indices, np.arange(len(counts)) * 7)
    np.testing.assert_array_equal(fast.values, expected.values)  # the same additions, in order


def test_the_stable_order_is_argsorts_and_falls_back_for_huge_tables(rng):
    ids = rng.integers(0, 50, 1000)
    np.testing.assert_array_equal(stable_order(ids, 50), np.argsort(ids, kind="stable"))
    huge = ids * 2**40  # id · M would not fit in 63 bits: argsort itself
    np.testing.assert_array_equal(stable_order(huge, 2**46), np.argsort(huge, kind="stable"))


@pytest.mark.parametrize("weighted", [False, True])
def test_the_pooling_in_cache_sized_blocks_equals_one_block(monkeypatch, rng, weighted):
    weight = rng.standard_normal((40, 6))
    lengths = np.full(50, 4)  # one bag size: bags in blocks
    ids = rng.integers(0, 40, 200)
    per_id = rng.standard_normal(200) if weighted else None
    whole, _ = bag_sums(weight, ids, lengths, per_id)
    monkeypatch.setattr(threads, "BLOCK_BYTES", 2 * 4 * 6 * 8)  # two bags per block
    blocked, _ = bag_sums(weight, ids, lengths, per_id)
    np.testing.assert_array_equal(blocked, whole)


def test_the_layer_equals_the_textbook(rng):
    ebc = build_collection("weighted sum", seed=rng)
    kja = draw_features(rng, ebc, 6)
    pooled, cache = ebc.forward(kja)
    d_pooled = rng.standard_normal(pooled.shape)
    d_weights, d_params = ebc.backward(d_pooled, cache)
    weight = ebc.params["embedding_bags.t2.weight"]
    ids, lengths, per_id = kja.feature("f2")
    bag, bag_cache = embedding_bag_forward(weight, ids, lengths, per_id)
    np.testing.assert_allclose(pooled[:, 8:12], bag, rtol=1e-13)  # f1, f3 (t1), then f2
    grad, d_per_id = embedding_bag_backward(d_pooled[:, 8:12], bag_cache, 50)
    np.testing.assert_allclose(d_params["embedding_bags.t2.weight"].values, grad.values, rtol=1e-13)
    np.testing.assert_allclose(d_weights[kja.feature_slice("f2")], d_per_id, rtol=1e-12)


def test_the_textbook_runs_on_exact_rationals():
    from fractions import Fraction

    weight = np.array([[Fraction(1, 3), Fraction(2)], [Fraction(-1), Fraction(1, 7)]], dtype=object)
    pooled, cache = embedding_bag_forward(
        weight, np.array([1, 1, 0]), np.array([3, 0]), None, "mean"
    )
    assert pooled[0, 0] == Fraction(-5, 9) and pooled[1, 0] == 0
    grad, _ = embedding_bag_backward(np.array([[Fraction(3), 0], [1, 1]], dtype=object), cache, 2)
    assert grad.values[1, 0] == 2  # id 1 twice in a bag of 3: 2 · 3 / 3


# ------------------------------------------------------------------------- cost and scale


def test_a_ten_million_row_table_costs_memory_of_the_ids_only():
    rows, dim, batch = 10**7, 8, 16
    config = EmbeddingBagConfig(rows, dim, "big", ["f"], weight_init_max=0.0, weight_init_min=0.0)
    ebc = EmbeddingBagCollection([config])  # a lazily allocated zero table: 640 MB untouched
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 6, size=batch)
    ids = rng.integers(0, rows, size=int(lengths.sum()))
    ids[:3] = ids[0]  # repeats
    kja = KeyedJaggedArray(["f"], ids, lengths)
    tracemalloc.start()
    pooled, cache = ebc.forward(kja)
    _, d_params = ebc.backward(np.ones_like(pooled), cache)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    grad = d_params["embedding_bags.big.weight"]
    assert grad.shape == (rows, dim) and grad.nnz_rows == len(np.unique(ids))
    per_id = len(ids) * dim * 8
    assert peak < 20 * per_id + 100_000, (peak, per_id)  # ~100 kB, not the table's 640 MB
    result = gradcheck(ebc, (kja,), untouched_rows=4)  # touched rows plus 4 others, never all
    assert result.ok, result


# ----------------------------------------------------------------------------- SparseArch


def test_sparse_arch_reshapes_and_refuses_mixed_dims(rng):
    ebc = build_collection("sum, t1 shared by f1 f3", seed=rng)
    arch = SparseArch(ebc)
    kja = draw_features(rng, ebc, 3)
    out, cache = arch.forward(kja)
    assert out.shape == (3, 3, 4)
    assert all(k.startswith("embedding_bag_collection.embedding_bags.") for k in arch.params)
    np.testing.assert_array_equal(out.reshape(3, -1), ebc(kja))
    _, d_params = arch.backward(np.ones_like(out), cache)
    assert set(d_params) == set(arch.params)
    mixed = EmbeddingBagCollection([EmbeddingBagConfig(5, 2, "a"), EmbeddingBagConfig(5, 3, "b")])
    with pytest.raises(ValueError, match="same embedding_dim D"):
        SparseArch(mixed)
    with pytest.raises(ValueError, match="at least one table"):
        SparseArch(EmbeddingBagCollection([]))


# -------------------------------------------------------------------------------- mutants


def _drop_repeats(ids, sources, source_index, num_rows, scale=None):
    """A broken table gradient: a repeated id counted once."""
    _, first = np.unique(ids, return_index=True)
    return table_gradient(
        ids[first], sources, source_index[first], num_rows, None if scale is None else scale[first]
    )


def test_mutant_repeated_id_counted_once_fails_finite_differences(rng, monkeypatch):
    ebc = build_collection("sum, t1 shared by f1 f3", seed=rng)
    kja = draw_features(rng, ebc, 4)
    assert gradcheck(ebc, (kja,)).ok
    monkeypatch.setattr(embedding, "table_gradient", _drop_repeats)
    result = gradcheck(ebc, (kja,))
    assert not result.ok and result.worst.name.startswith("embedding_bags.")


def test_mutant_mean_by_the_wrong_count_fails_finite_differences(rng, monkeypatch):
    ebc = build_collection("mean t1, sum t2", seed=rng)
    kja = draw_features(rng, ebc, 4)
    assert gradcheck(ebc, (kja,)).ok
    backward, divisor = EmbeddingBagCollection.backward, embedding.mean_divisor

    def wrong_count_backward(self, d_out, cache):  # divides by n + 1, in the backward only
        with monkeypatch.context() as patch:
            patch.setattr(embedding, "mean_divisor", lambda n, dtype: divisor(n + 1, dtype))
            return backward(self, d_out, cache)

    monkeypatch.setattr(EmbeddingBagCollection, "backward", wrong_count_backward)
    result = gradcheck(ebc, (kja,))
    assert not result.ok and result.worst.name.startswith("embedding_bags.t1")


def test_public_names():
    for name in (
        "KeyedJaggedArray",
        "EmbeddingBagConfig",
        "EmbeddingBagCollection",
        "SparseArch",
        "RowSparse",
        "BCEWithLogitsLoss",
        "DLRM",
        "DLRM_DCN",
        "DLRM_Projection",
    ):
        assert name in refimpl.__all__
    assert RowSparse is refimpl.RowSparse
