"""The rows with sparse input: the embedding bags, the whole DLRM_DCN, and its training step.

All at MLPerf's DLRM-DCNv2 shape (:data:`~refimpl.tools.bench.spec.PRODUCTION`): 26 sparse
features, each with a table of its own (MLPerf's rows, capped at 100,000), every bag of feature
f holding exactly h_f ids (MLPerf's multi-hot sizes: 214 ids per sample), D = 128, and 13
dense features through the bottom MLP. Tables and features are named as in TorchRec's DLRM
example: feature ``cat_i`` looked up in table ``t_cat_i``.

The ids are drawn uniformly from each table's rows, as TorchRec's own
``torchrec.datasets.random.RandomRecDataset`` draws them. Real click logs are skewed (a few
ids are most of the lookups), which repeats ids within a batch: fewer distinct rows, and so
less work for refimpl's row-sparse gradients and updates, whose cost follows the distinct
rows, while TorchRec's dense table gradients cost the same whatever the ids. Uniform ids are
the harder case for refimpl, so they cannot flatter it.

The sparse features cross the file as two arrays, ``values`` and ``lengths`` (key-major):
refimpl times its :class:`~refimpl.KeyedJaggedArray`, TorchRec a ``KeyedJaggedTensor`` made
from the same arrays, both built before the timed runs.
"""

from __future__ import annotations

import math
import time

import numpy as np

import refimpl
from refimpl.tools.bench.spec import Sizes, normal

LEARNING_RATE = 0.01  # every optimizer of the training-step rows, dense and tables
# torchrec.models.dlrm's prefix of the tables' parameters (refimpl's is the same)
TABLE_PREFIX = "sparse_arch.embedding_bag_collection.embedding_bags."


def feature_names(sizes: Sizes) -> list[str]:
    return [f"cat_{i}" for i in range(sizes.features)]


def sparse_features(sizes: Sizes, rng: np.random.Generator):
    """A KeyedJaggedArray of B bags per feature: h_f ids each, uniform over the table's rows."""
    lengths = np.repeat(np.array(sizes.multi_hot, dtype=np.int64), sizes.batch)  # (F·B,)
    values = np.concatenate(
        [
            rng.integers(0, rows, size=sizes.batch * ids_per_bag, dtype=np.int64)
            for rows, ids_per_bag in zip(sizes.table_rows, sizes.multi_hot, strict=True)
        ]
    )  # (M,)
    return refimpl.KeyedJaggedArray.from_lengths(feature_names(sizes), values, lengths)


def _collection(sizes: Sizes, dtype, rng):
    config = refimpl.EmbeddingBagConfig
    tables = [
        config(rows, sizes.dim, f"t_{name}", [name])
        for rows, name in zip(sizes.table_rows, feature_names(sizes), strict=True)
    ]
    return refimpl.EmbeddingBagCollection(tables, seed=rng, dtype=dtype)


def _torch_collection(sizes: Sizes, fused: bool = False):
    """TorchRec's EmbeddingBagCollection with the same tables, or its FusedEmbeddingBagCollection
    with FBGEMM's row-wise Adagrad applied inside the backward."""
    from torchrec.modules.embedding_configs import EmbeddingBagConfig

    tables = [
        EmbeddingBagConfig(
            num_embeddings=rows, embedding_dim=sizes.dim, name=f"t_{name}", feature_names=[name]
        )
        for rows, name in zip(sizes.table_rows, feature_names(sizes), strict=True)
    ]
    if not fused:
        from torchrec.modules.embedding_modules import EmbeddingBagCollection

        return EmbeddingBagCollection(tables=tables)
    from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection
    from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

    # eps: torchrec.optim.RowWiseAdagrad's default (and refimpl's), not FBGEMM's 1e-8
    return FusedEmbeddingBagCollection(
        tables=tables,
        optimizer_type=RowWiseAdagrad,
        optimizer_kwargs={"lr": LEARNING_RATE, "eps": 1e-10},
    )


def sparse_arrays(inputs) -> list[np.ndarray]:
    """``(features,)`` or ``(dense, features)`` as the arrays written to the file."""
    *dense, features = inputs
    return [*dense, features.values, features.lengths]


def torch_sparse_inputs(arrays, sizes: Sizes) -> list:
    """TorchRec's arguments: the dense features (if any) recording their gradient, and a
    ``KeyedJaggedTensor`` of the same ids."""
    import torch
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    *dense, values, lengths = arrays
    features = KeyedJaggedTensor.from_lengths_sync(
        keys=feature_names(sizes),
        values=torch.from_numpy(values),
        lengths=torch.from_numpy(lengths),
    )
    return [*(torch.from_numpy(x).requires_grad_(True) for x in dense), features]


# --------------------------------------------------------------------- embedding bags


def build_collection(sizes: Sizes, dtype, rng):
    return _collection(sizes, dtype, rng), (sparse_features(sizes, rng),)


def torch_collection(sizes: Sizes):
    return _torch_collection(sizes)


def keyed_module_step(module, inputs, d_out):
    """:func:`~refimpl.tools.bench.spec.module_step` for TorchRec's collection, whose output
    is a ``KeyedTensor``: backward from its ``values()``. TorchRec pools into float32 whatever
    its tables' dtype, so the upstream gradient is cast to float32 once, before the runs."""
    d_values = d_out.float()
    params = list(module.parameters())

    def run():
        for p in params:
            p.grad = None
        start = time.perf_counter()
        out = module(*inputs).values()  # (B, F·D)
        middle = time.perf_counter()
        out.backward(d_values)
        return middle - start, time.perf_counter() - start

    return run


def expected_distinct(rows: int, draws: int) -> float:
    """How many distinct rows ``draws`` uniform draws from ``rows`` rows hit, on average.

    >>> round(expected_distinct(100_000, 102_400))
    64085
    """
    return rows * -math.expm1(draws * math.log1p(-1 / rows))


def collection_traffic(sizes: Sizes, itemsize: int) -> int:
    """The least bytes a forward and backward must move: the ids (8 bytes each) and bag sizes;
    every distinct row looked up once; the (B, F·D) output written; its gradient read; one
    gradient row and its index per distinct row written. Distinct rows: their expected number
    under uniform ids (:func:`expected_distinct`)."""
    b, d = sizes.batch, sizes.dim
    ids = b * sum(sizes.multi_hot)
    distinct = sum(
        expected_distinct(rows, b * h)
        for rows, h in zip(sizes.table_rows, sizes.multi_hot, strict=True)
    )
    pooled = b * sizes.features * d
    indices = 8 * (ids + b * sizes.features + distinct)  # ids, bag sizes, gradient rows' ids
    return int(indices + itemsize * (2 * distinct * d + 2 * pooled))


# ----------------------------------------------------------------------- DLRM_DCN


def build_dlrm_dcn(sizes: Sizes, dtype, rng):
    in_features, layer_sizes = sizes.dense_arch
    model = refimpl.DLRM_DCN(
        _collection(sizes, dtype, rng),
        in_features,
        list(layer_sizes),
        list(sizes.over_arch_sizes),
        dcn_num_layers=sizes.layers,
        dcn_low_rank_dim=sizes.low_rank,
        seed=rng,
        dtype=dtype,
    )
    dense = normal(rng, (sizes.batch, in_features), dtype)  # (B, I)
    return model, (dense, sparse_features(sizes, rng))


def torch_dlrm_dcn(sizes: Sizes, fused: bool = False):
    from torchrec.models.dlrm import DLRM_DCN

    in_features, layer_sizes = sizes.dense_arch
    return DLRM_DCN(
        embedding_bag_collection=_torch_collection(sizes, fused),
        dense_in_features=in_features,
        dense_arch_layer_sizes=list(layer_sizes),
        over_arch_layer_sizes=list(sizes.over_arch_sizes),
        dcn_num_layers=sizes.layers,
        dcn_low_rank_dim=sizes.low_rank,
    )


def torch_fused_dlrm_dcn(sizes: Sizes):
    return torch_dlrm_dcn(sizes, fused=True)


# --------------------------------------------------------------------- training step


def labels(batch: int) -> np.ndarray:
    """The click labels of the training-step rows, the same on both sides: (B,) of 0.0, 1.0."""
    return np.random.default_rng(1).integers(0, 2, batch).astype(np.float64)


def refimpl_training(dense_optimizer: str, table_optimizer: str):
    """A ``refimpl_step``: :func:`refimpl.train.loop.train_step` (forward, loss, backward,
    update) with :func:`refimpl.train.loop.build_optimizer`'s optimizers. A run reports no
    forward time of its own (nan)."""

    def step(model, inputs, d_out):
        from refimpl.data.batch import Batch
        from refimpl.layers.loss import BCEWithLogitsLoss
        from refimpl.train.loop import build_optimizer, train_step

        dense, features = inputs
        batch = Batch(
            dense, features.keys, features.values, features.lengths, None, labels(len(dense))
        )
        optimizer = build_optimizer(
            model, dense_optimizer, LEARNING_RATE, table_optimizer, LEARNING_RATE
        )
        loss_fn = BCEWithLogitsLoss()

        def run():
            start = time.perf_counter()
            train_step(model, loss_fn, optimizer, batch)
            return math.nan, time.perf_counter() - start

        return run

    return step


def torch_training(dense_optimizer: str, table_optimizer: str, fused: bool = False):
    """A ``torch_step``: zero_grad, forward, ``BCEWithLogitsLoss``, backward, step.

    Unfused, the optimizer is :func:`refimpl.tools.parity.torch_optimizer_like`'s, the one
    the training parity tests check step for step against refimpl's. Fused, the tables are
    updated inside the backward by FBGEMM, and ``torch.optim`` steps the other parameters.
    The dense features record no gradient (a training step needs none).
    """

    def step(module, inputs, d_out):
        import torch

        from refimpl.tools.parity import torch_optimizer_like

        dense, features = inputs
        dense = dense.detach()  # (B, I)
        targets = torch.from_numpy(labels(len(dense))[:, None]).to(dense.dtype)  # (B, 1)
        if fused:
            others = [p for k, p in module.named_parameters() if not k.startswith(TABLE_PREFIX)]
            optimizer = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad}[dense_optimizer](
                others, lr=LEARNING_RATE, foreach=False
            )
        else:
            optimizer = torch_optimizer_like(
                module, dense_optimizer, LEARNING_RATE, table_optimizer, LEARNING_RATE
            )
        loss_fn = torch.nn.BCEWithLogitsLoss()

        def run():
            start = time.perf_counter()
            optimizer.zero_grad()
            loss_fn(module(dense, features), targets).backward()
            optimizer.step()
            return math.nan, time.perf_counter() - start

        return run

    return step
