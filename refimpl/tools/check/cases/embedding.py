"""Checks for EmbeddingBagCollection (sum, mean, weighted, shared tables, empty bags, repeated
ids) and BCEWithLogitsLoss."""

from __future__ import annotations

import numpy as np

from refimpl.layers.embedding import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedArray
from refimpl.layers.loss import BCEWithLogitsLoss
from refimpl.tools.check import (
    PARITY_TOL,
    Check,
    finite_difference_check,
    hand_check,
    needs_torchrec,
    parity_check,
    symbolic_check,
)
from refimpl.tools.loops import bce_with_logits_loop, embedding_bag_grad_loop, embedding_bag_loop

LESSON = 2  # the lesson that teaches it: 02_embedding_bags

# name -> (tables as (num_embeddings, D, name, features, pooling), is_weighted). Every
# collection reads three features "f1", "f2", "f3"; t1 serves two of them.
COLLECTIONS = {
    "sum, t1 shared by f1 f3": (
        ((7, 4, "t1", ("f1", "f3"), "sum"), (50, 4, "t2", ("f2",), "sum")),
        False,
    ),
    "mean t1, sum t2": (
        ((7, 4, "t1", ("f1", "f3"), "mean"), (50, 4, "t2", ("f2",), "sum")),
        False,
    ),
    "weighted sum": (((7, 4, "t1", ("f1", "f3"), "sum"), (50, 4, "t2", ("f2",), "sum")), True),
    "one table per feature, D=3": (
        ((5, 3, "a", ("f1",), "mean"), (6, 3, "b", ("f2",), "sum"), (9, 3, "c", ("f3",), "sum")),
        False,
    ),
}


def build_collection(name: str, *, seed=None, dtype=np.float64) -> EmbeddingBagCollection:
    """One of :data:`COLLECTIONS` by name, its tables drawn from U(−1, 1).

    Wider than TorchRec's U(±√(1/num_embeddings)): with rows of order one, the gradients deep
    in a model (a cross layer multiplies by the embeddings again) stay far above the
    round-off of finite differences, as every other check's inputs do.
    """
    tables, weighted = COLLECTIONS[name]
    configs = [
        EmbeddingBagConfig(rows, dim, table, list(features), pooling, 1.0, -1.0)
        for rows, dim, table, features, pooling in tables
    ]
    return EmbeddingBagCollection(configs, is_weighted=weighted, seed=seed, dtype=dtype)


def draw_features(
    rng, ebc: EmbeddingBagCollection, batch: int, max_length: int = 4
) -> KeyedJaggedArray:
    """Random bags for every feature ``ebc`` reads, with an empty bag and a repeated id.

    Keys are listed in reverse order (a KeyedJaggedArray need not follow the tables' order).
    Feature k's first bag is empty and, when B > 1, its second bag names one id twice.
    """
    rows = {f: t.num_embeddings for t in ebc.tables for f in t.feature_names}
    keys = sorted(rows, reverse=True)
    values, lengths = [], []
    for key in keys:
        sizes = rng.integers(0, max_length + 1, size=batch)
        sizes[0] = 0  # an empty bag
        if batch > 1:
            sizes[1] = max(sizes[1], 3)
        ids = rng.integers(0, rows[key], size=int(sizes.sum()))
        if batch > 1:
            ids[1] = ids[0]  # bag 1 starts with one id twice (bag 0 is empty)
        values.append(ids)
        lengths.append(sizes)
    values, lengths = np.concatenate(values), np.concatenate(lengths)
    weights = rng.uniform(0.5, 1.5, size=len(values)) if ebc.is_weighted else None
    return KeyedJaggedArray.from_lengths(keys, values, lengths, weights)


def _builder(name, batch):
    def build(rng):
        ebc = build_collection(name, seed=rng)
        return ebc, (draw_features(rng, ebc, batch),)

    return build


def sparse_parity_check(layer: str, config: str, build, torch_module) -> Check:
    """A parity check for a layer that reads a KeyedJaggedArray (the collection, the models)."""
    from refimpl.tools.parity import compare_sparse_with_torch

    def compare(net, module, inputs):
        return compare_sparse_with_torch(net, module, inputs, seed=1)

    return parity_check(layer, config, build, torch_module, compare)


def _torch_collection(ebc):
    from refimpl.tools.parity import keep_table_dtype, torch_ebc_like

    return keep_table_dtype(torch_ebc_like(ebc))


def _hand_collection(name):
    def compute():
        ebc = build_collection(name)
        for key, weight in ebc.params.items():  # linspace tables, one per key
            weight[...] = np.linspace(-1.0, 1.0, weight.size).reshape(weight.shape) + len(key)
        features = draw_features(np.random.default_rng(3), ebc, batch=4)
        pooled, cache = ebc.forward(features)
        d_pooled = np.linspace(-2.0, 2.0, pooled.size).reshape(pooled.shape)  # (B, ΣD)
        _, d_params = ebc.backward(d_pooled, cache)
        expected_pooled, expected_grads, ours_grads = [], [], []
        start = 0
        grads = {k: 0.0 for k in ebc.params}
        for table in ebc.tables:
            key = f"embedding_bags.{table.name}.weight"
            for feature in table.feature_names:
                ids, lengths, weights = features.feature(feature)
                weights = weights if ebc.is_weighted else None
                args = (ids, lengths, weights, table.pooling)
                expected_pooled.append(embedding_bag_loop(ebc.params[key], *args))
                d_bag = d_pooled[:, start : start + table.embedding_dim]
                grads[key] = grads[key] + embedding_bag_grad_loop(
                    d_bag, table.num_embeddings, *args
                )
                start += table.embedding_dim
        for key in ebc.params:
            expected_grads.append(grads[key].reshape(-1))
            ours_grads.append(d_params[key].to_dense().reshape(-1))
        ours = np.concatenate([pooled.reshape(-1), *ours_grads])
        return ours, np.concatenate(
            [np.concatenate(expected_pooled, axis=1).reshape(-1), *expected_grads]
        )

    return compute


def _symbolic_bag(**options):
    def witness():
        from derivations.embedding import symbolic_witness

        return symbolic_witness(**options)

    return witness


# ------------------------------------------------------------------------------ the loss

LOGITS = np.array([[3.0], [-0.5], [12.0], [-7.0], [0.25]])  # (B, 1)
LABELS = np.array([[1.0], [0.0], [0.0], [1.0], [0.3]])  # a soft label too


def _loss_builder(pos_weight):
    def build(rng):
        return BCEWithLogitsLoss(pos_weight), (
            LOGITS + 0.1 * rng.standard_normal(LOGITS.shape),
            LABELS,
        )

    return build


def _loss_parity(pos_weight):
    def run() -> float:
        torch, _ = needs_torchrec()
        from refimpl.tools.gradcheck import rel_error

        logits = torch.tensor(LOGITS, requires_grad=True)
        weight = None if pos_weight is None else torch.tensor([pos_weight], dtype=torch.float64)
        theirs = torch.nn.BCEWithLogitsLoss(pos_weight=weight)(logits, torch.tensor(LABELS))
        theirs.backward(torch.tensor(0.7, dtype=torch.float64))
        loss_fn = BCEWithLogitsLoss(pos_weight)
        ours, cache = loss_fn.forward(LOGITS, LABELS)
        d_logits, _, _ = loss_fn.backward(0.7, cache)
        return max(rel_error(ours, theirs.item()), rel_error(d_logits, logits.grad.numpy()))

    return Check("BCEWithLogitsLoss", _loss_label(pos_weight), "parity", run, PARITY_TOL)


def _loss_label(pos_weight) -> str:
    return "B=5 soft label" + ("" if pos_weight is None else f" pos_weight={pos_weight}")


def _hand_loss(pos_weight):
    def compute():
        logits = np.linspace(-3.0, 4.0, 6).reshape(6, 1)
        labels = np.array([[1.0], [0.0], [1.0], [0.0], [0.5], [1.0]])
        loss = BCEWithLogitsLoss(pos_weight)(logits, labels)
        return loss, bce_with_logits_loop(logits, labels, 1.0 if pos_weight is None else pos_weight)

    return compute


def checks():
    layer = "EmbeddingBagCollection"
    yield symbolic_check(layer, "B=3 D=2 sum, repeated id, empty bag", _symbolic_bag())
    yield symbolic_check(layer, "B=3 D=2 mean", _symbolic_bag(pooling="mean"))
    yield symbolic_check(layer, "B=3 D=2 weighted", _symbolic_bag(weighted=True))
    for name in COLLECTIONS:
        for batch in (1, 4):
            config = f"B={batch} {name}"
            yield finite_difference_check(layer, config, _builder(name, batch))
        yield hand_check(layer, f"B=4 {name} linspace", _hand_collection(name))
        config = f"B=5 {name}"
        yield sparse_parity_check(layer, config, _builder(name, 5), _torch_collection)

    loss = "BCEWithLogitsLoss"
    yield symbolic_check(loss, "B=3", _symbolic_loss())
    for pos_weight in (None, 2.5):
        label = _loss_label(pos_weight)
        yield finite_difference_check(loss, label, _loss_builder(pos_weight))
        yield _loss_parity(pos_weight)
        yield hand_check(loss, label.replace("B=5", "B=6") + " linspace", _hand_loss(pos_weight))


def _symbolic_loss():
    def witness():
        from derivations.loss import symbolic_witness

        return symbolic_witness()

    return witness
