"""What is measured: the rows of the table, and the builders of the layers' rows.

Each row is one :class:`~refimpl.tools.bench.spec.Case` (:mod:`refimpl.tools.bench.spec` says
what a row is), a declarative entry in :func:`cases`. Adding a row (the embedding bags, a
whole model, a training step, another interaction) is one entry::

    Case(
        "EmbeddingBagCollection",                    # the refimpl class name (--layer picks it)
        lambda s: f"F={s.features} D={s.dim}",       # the configuration column, from Sizes
        build=build_ebc,        # (sizes, dtype, rng) -> (refimpl layer or model, inputs)
        torchrec=torch_ebc,     # (sizes) -> the TorchRec torch.nn.Module, or None
        flops=count_flops,      # (layer, *inputs) -> FlopCount, or None when not counted
        target=Target("ratio", 1.0),   # or Target("peak", PEAK_TARGET), or None
    )

The refimpl object and the TorchRec module must share ``state_dict`` keys and shapes: the
harness hands refimpl's weights to TorchRec through a file. One timed run is ``layer_step``
(forward, then backward on a fixed upstream gradient) and ``module_step`` for TorchRec; a
row that times something else, such as a training step with its optimizer, passes its own
``refimpl_step`` and ``torch_step`` with the same signature. ``traffic`` (optional) is the
least number of bytes any implementation must move per run; the report then states the
memory-bandwidth bound. New sizes go into ``Sizes``, with a value in both ``PRODUCTION`` and
``QUICK``.

Inputs that are not one array each (a :class:`~refimpl.KeyedJaggedArray`, a list, a dict of
features) cross the file as arrays: ``arrays(inputs)`` gives the arrays refimpl writes, and
``torch_inputs(arrays, sizes)`` makes TorchRec's arguments from them (a
``KeyedJaggedTensor``, a ``KeyedTensor``, a list of tensors). ``torch_dtypes`` names the
dtypes TorchRec's module runs in (others get no TorchRec column, said in the report),
``dtypes`` those the row is measured in at all, and ``note`` is what the report prints under
the table: what exactly is compared. The rows of whole models and training steps are built
in :mod:`refimpl.tools.bench.dlrm_cases`.

Nothing here imports torch at module level: the builders import it when a TorchRec worker
calls them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

import refimpl
from refimpl.tools.bench import dlrm_cases as dlrm
from refimpl.tools.bench.spec import (
    DTYPES,
    PEAK_TARGET,
    Case,
    Sizes,
    Target,
    normal,
    torch_tensors,
)
from refimpl.tools.flops import FlopCount, fm_flops, projection_flops


def dot_inputs(sizes: Sizes, dtype, rng):
    dense = normal(rng, (sizes.batch, sizes.dim), dtype)  # (B, D)
    sparse = normal(rng, (sizes.batch, sizes.features, sizes.dim), dtype)  # (B, F, D)
    return dense, sparse


def _flat_inputs(sizes: Sizes, dtype, rng, width=None):
    return (normal(rng, (sizes.batch, width or sizes.n), dtype),)  # (B, N)


# ----------------------------------------------------------------------------- the builders


def _crossnet(kind: str, **options):
    def build(sizes, dtype, rng):
        opts = {k: v(sizes) for k, v in options.items()}
        net = getattr(refimpl, kind)(sizes.n, sizes.layers, **opts, seed=rng, dtype=dtype)
        return net, _flat_inputs(sizes, dtype, rng)

    def torchrec(sizes):
        from torchrec.modules import crossnet

        opts = {k: v(sizes) for k, v in options.items()}
        return getattr(crossnet, kind)(in_features=sizes.n, num_layers=sizes.layers, **opts)

    return {"build": build, "torchrec": torchrec}


def _build_dot(sizes, dtype, rng):
    arch = refimpl.InteractionArch(sizes.features, dtype=dtype)
    return arch, dot_inputs(sizes, dtype, rng)


def _torch_dot(sizes):
    from torchrec.models.dlrm import InteractionArch

    return InteractionArch(num_sparse_features=sizes.features)


def _dot_traffic(sizes: Sizes, itemsize: int) -> int:
    """Forward reads dense and sparse and writes the output; backward reads d_out and the
    inputs again (dC = (G + Gᵀ) C needs C) and writes d_dense and d_sparse."""
    b, f, d = sizes.batch, sizes.features, sizes.dim
    inputs, out = b * (f + 1) * d, b * (d + f * (f + 1) // 2)
    return itemsize * ((inputs + out) + (out + 2 * inputs))


def _vector_traffic(sizes: Sizes, itemsize: int) -> int:
    """Forward reads x̂ and writes x_L; backward reads d_out and x̂ and writes d_x: five (B, N)
    arrays, whatever the number of layers (every x_l is x̂ scaled per row plus a constant row)."""
    return 5 * sizes.batch * sizes.n * itemsize


def _build_dcn(sizes, dtype, rng):
    net = refimpl.LowRankCrossNet(sizes.n, sizes.layers, sizes.low_rank, seed=rng, dtype=dtype)
    return refimpl.InteractionDCNArch(sizes.features, net), dot_inputs(sizes, dtype, rng)


def _torch_dcn(sizes):
    from torchrec.models.dlrm import InteractionDCNArch
    from torchrec.modules.crossnet import LowRankCrossNet

    net = LowRankCrossNet(in_features=sizes.n, num_layers=sizes.layers, low_rank=sizes.low_rank)
    return InteractionDCNArch(num_sparse_features=sizes.features, crossnet=net)


def _projection(which: str):
    def build(sizes, dtype, rng):
        dense_arch = refimpl.DenseArch
        b1, b2 = (dense_arch(sizes.n, s, seed=rng, dtype=dtype) for s in getattr(sizes, which))
        arch = refimpl.InteractionProjectionArch(sizes.features, b1, b2)
        return arch, dot_inputs(sizes, dtype, rng)

    def torchrec(sizes):
        from torchrec.models.dlrm import DenseArch, InteractionProjectionArch

        b1, b2 = (
            DenseArch(in_features=sizes.n, layer_sizes=list(s)) for s in getattr(sizes, which)
        )
        return InteractionProjectionArch(sizes.features, b1, b2)

    return {"build": build, "torchrec": torchrec}


def _slice_widths(sizes: Sizes) -> tuple[int, int]:
    return sizes.torchrec_branches[0][-1], sizes.torchrec_branches[1][-1]


def _build_projection_only(sizes, dtype, rng):
    """The projection arch with both MLPs replaced by ``x ↦ x[:, :width]`` (TorchRec's widths)."""
    from refimpl.layers.base import Layer

    class SliceBranch(Layer):
        """``x[:, :out_features]``: a branch with no arithmetic, to time the rest of the arch."""

        def __init__(self, in_features, out_features):
            super().__init__(dtype)
            self.in_features, self.out_features = in_features, out_features

        def forward(self, x):
            return x[:, : self.out_features], x.shape  # a view, (B, F_i·D)

        def backward(self, d_out, shape):
            d_x = np.zeros(shape, d_out.dtype)  # (B, N)
            d_x[:, : self.out_features] = d_out
            return d_x, {}

    w1, w2 = _slice_widths(sizes)
    arch = refimpl.InteractionProjectionArch(
        sizes.features, SliceBranch(sizes.n, w1), SliceBranch(sizes.n, w2)
    )
    return arch, dot_inputs(sizes, dtype, rng)


def _torch_projection_only(sizes):
    import torch
    from torchrec.models.dlrm import InteractionProjectionArch

    class SliceBranch(torch.nn.Module):
        def __init__(self, width):
            super().__init__()
            self.width = width

        def forward(self, x):
            return x[:, : self.width]

    w1, w2 = _slice_widths(sizes)
    return InteractionProjectionArch(sizes.features, SliceBranch(w1), SliceBranch(w2))


def _projection_only_flops(layer, *inputs):
    batch, dim = inputs[0].shape
    zero = FlopCount(0, 0)
    return projection_flops(batch, layer.num_sparse_features, dim, layer.projected_dims, zero, zero)


def _mlp_like(kind: str, in_features: Callable[[Sizes], int], sizes_of: Callable):
    def build(sizes, dtype, rng):
        width = in_features(sizes)
        layer = getattr(refimpl, kind)(width, sizes_of(sizes), seed=rng, dtype=dtype)
        return layer, _flat_inputs(sizes, dtype, rng, width)

    def torchrec(sizes):
        if kind == "MLP":
            from torchrec.modules.mlp import MLP

            return MLP(in_size=in_features(sizes), layer_sizes=list(sizes_of(sizes)))
        from torchrec.models import dlrm

        arch = getattr(dlrm, kind)
        return arch(in_features=in_features(sizes), layer_sizes=list(sizes_of(sizes)))

    return {"build": build, "torchrec": torchrec}


# ------------------------------------------------------------ the FM and transformer interactions


def _build_fm(sizes, dtype, rng):
    """TorchRec's FactorizationMachine over the list ``[dense (B, D), sparse (B, F, D)]``."""
    return refimpl.FactorizationMachine(dtype=dtype), (list(dot_inputs(sizes, dtype, rng)),)


def _torch_fm(sizes):
    from torchrec.modules.deepfm import FactorizationMachine

    return FactorizationMachine()


def _list_arrays(inputs) -> list[np.ndarray]:
    return list(inputs[0])  # the one argument is the list of arrays


def _torch_list_inputs(arrays, sizes: Sizes) -> list:
    return [torch_tensors(arrays, sizes)]  # one argument: the list of tensors


def _fm_flops(layer, embeddings):
    """TorchRec's FM (pairs of scalars) over N = Σ of each input's scalars per sample."""
    width = sum(int(np.prod(e.shape[1:])) for e in embeddings)  # N
    return fm_flops(embeddings[0].shape[0], width)


def _fm_feature_names(sizes: Sizes) -> list[str]:
    return [f"cat_{i}" for i in range(sizes.features)]


def _build_fm_arch(sizes, dtype, rng):
    """TorchRec's FMInteractionArch: dense (B, D) and F features of (B, D) by name, views into
    one (B, F·D) array as a KeyedTensor's ``values()`` would be."""
    names = _fm_feature_names(sizes)
    arch = refimpl.FMInteractionArch(sizes.n, names, sizes.deep_fm_dimension, seed=rng, dtype=dtype)
    dense, sparse = dot_inputs(sizes, dtype, rng)
    flat = sparse.reshape(sizes.batch, sizes.features * sizes.dim)  # (B, F·D)
    d = sizes.dim
    return arch, (dense, {name: flat[:, i * d : (i + 1) * d] for i, name in enumerate(names)})


def _torch_fm_arch(sizes):
    from torchrec.models.deepfm import FMInteractionArch

    return FMInteractionArch(
        fm_in_features=sizes.n,
        sparse_feature_names=_fm_feature_names(sizes),
        deep_fm_dimension=sizes.deep_fm_dimension,
    )


def _keyed_arrays(inputs) -> list[np.ndarray]:
    dense, features = inputs
    return [dense, np.concatenate(list(features.values()), axis=1)]  # (B, D), (B, F·D)


def _torch_keyed_inputs(arrays, sizes: Sizes) -> list:
    """dense and a TorchRec ``KeyedTensor`` over the (B, F·D) array, both recording gradients."""
    from torchrec.sparse.jagged_tensor import KeyedTensor

    dense, values = torch_tensors(arrays, sizes)
    names = _fm_feature_names(sizes)
    return [dense, KeyedTensor(keys=names, length_per_key=[sizes.dim] * len(names), values=values)]


def _transformer(attend_across: str):
    def build(sizes, dtype, rng):
        arch = refimpl.InteractionTransformerArch(
            sizes.features,
            sizes.dim,
            ntransformer_layers=sizes.transformer_layers,
            attend_across=attend_across,
            seed=rng,
            dtype=dtype,
        )
        return arch, dot_inputs(sizes, dtype, rng)

    return build


def _torch_transformer(sizes):
    """TorchRec's InteractionTransformerArch as shipped, in eval mode: dropout off, as refimpl."""
    from torchrec.models.experimental.transformerdlrm import InteractionTransformerArch

    arch = InteractionTransformerArch(
        sizes.features, sizes.dim, ntransformer_layers=sizes.transformer_layers
    )
    return arch.eval()


def _torch_per_sample_transformer(sizes):
    """torch's ``nn.TransformerEncoder`` with ``batch_first=True`` over [dense; sparse], keyed
    like TorchRec's arch (``interarch_TE.layers.i.…``); eval mode: dropout off, as refimpl."""
    import torch

    class PerSampleTransformer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            layer = torch.nn.TransformerEncoderLayer(sizes.dim, nhead=8, batch_first=True)
            self.interarch_TE = torch.nn.TransformerEncoder(layer, sizes.transformer_layers)

        def forward(self, dense, sparse):
            combined = torch.cat((dense.unsqueeze(1), sparse), dim=1)  # (B, F+1, D)
            return self.interarch_TE(combined).reshape(dense.shape[0], -1)  # (B, (F+1)·D)

    return PerSampleTransformer().eval()


def cases() -> list[Case]:
    """Every row, in the table's order."""
    half, one, peak = Target("ratio", 0.5), Target("ratio", 1.0), Target("peak", PEAK_TARGET)
    cross_cfg = "N={0.n} L={0.layers}".format
    mlperf = "B={0.batch} F={0.features} D={0.dim}, {1} ids/sample, tables <= {2:,} rows"

    def dlrm_cfg(sizes):
        return mlperf.format(sizes, sum(sizes.multi_hot), max(sizes.table_rows))

    def training_rows(dense_opt, table_opt, versus, fused=False, note=""):
        return Case(
            "train_step",
            lambda s: f"DLRM_DCN, {dense_opt} + {table_opt} (tables), vs {versus}",
            dlrm.build_dlrm_dcn,
            dlrm.torch_fused_dlrm_dcn if fused else dlrm.torch_dlrm_dcn,
            one,
            flops=None,
            refimpl_step=dlrm.refimpl_training(dense_opt, table_opt),
            torch_step=dlrm.torch_training(dense_opt, table_opt, fused),
            arrays=dlrm.sparse_arrays,
            torch_inputs=dlrm.torch_sparse_inputs,
            torch_dtypes=("float32",) if fused else tuple(DTYPES),
            note=note,
        )

    transformer_cfg = "F={0.features} D={0.dim} H=8 L={0.transformer_layers} M=2048, {1}"
    return [
        Case(
            "InteractionArch",
            "F={0.features} D={0.dim}".format,
            _build_dot,
            _torch_dot,
            half,
            traffic=_dot_traffic,
        ),
        Case("CrossNet", cross_cfg, **_crossnet("CrossNet"), target=peak),
        Case(
            "LowRankCrossNet",
            "N={0.n} L={0.layers} r={0.low_rank}".format,
            **_crossnet("LowRankCrossNet", low_rank=lambda s: s.low_rank),
            target=peak,
        ),
        Case(
            "VectorCrossNet",
            cross_cfg,
            **_crossnet("VectorCrossNet"),
            target=one,
            traffic=_vector_traffic,
        ),
        Case(
            "LowRankMixtureCrossNet",
            "N={0.n} L={0.layers} K={0.experts} r={0.expert_rank}".format,
            **_crossnet(
                "LowRankMixtureCrossNet",
                num_experts=lambda s: s.experts,
                low_rank=lambda s: s.expert_rank,
            ),
            target=one,
        ),
        Case(
            "InteractionDCNArch",
            "F={0.features} D={0.dim} LowRankCrossNet L={0.layers} r={0.low_rank}".format,
            _build_dcn,
            _torch_dcn,
            peak,
        ),
        Case(
            "InteractionProjectionArch",
            lambda s: "seed's branches N->{}, N->{}".format(*map(list, s.seed_branches)),
            **_projection("seed_branches"),
            target=peak,
        ),
        Case(
            "InteractionProjectionArch",
            lambda s: f"TorchRec example's branches N->{list(s.torchrec_branches[0])} x2",
            **_projection("torchrec_branches"),
            target=peak,
        ),
        Case(
            "InteractionProjectionArch",
            lambda s: "without its MLPs (branches x[:, :{}], x[:, :{}])".format(*_slice_widths(s)),
            _build_projection_only,
            _torch_projection_only,
            one,
            _projection_only_flops,
        ),
        Case(
            "DenseArch",
            lambda s: f"{s.dense_arch[0]}->{list(s.dense_arch[1])}",
            **_mlp_like("DenseArch", lambda s: s.dense_arch[0], lambda s: s.dense_arch[1]),
            target=peak,
        ),
        Case(
            "OverArch",
            lambda s: f"{s.over_arch_in}->{list(s.over_arch_sizes)}",
            **_mlp_like("OverArch", lambda s: s.over_arch_in, lambda s: s.over_arch_sizes),
            target=peak,
        ),
        Case(
            "MLP",
            lambda s: f"N={s.n}->{list(s.mlp)}",
            **_mlp_like("MLP", lambda s: s.n, lambda s: s.mlp),
            target=peak,
        ),
        Case(
            "FactorizationMachine",
            "[dense (B, D), sparse (B, F, D)], F={0.features} D={0.dim}".format,
            _build_fm,
            _torch_fm,
            one,
            _fm_flops,
            arrays=_list_arrays,
            torch_inputs=_torch_list_inputs,
        ),
        Case(
            "FMInteractionArch",
            "F={0.features} D={0.dim} DI={0.deep_fm_dimension}".format,
            _build_fm_arch,
            _torch_fm_arch,
            peak,
            arrays=_keyed_arrays,
            torch_inputs=_torch_keyed_inputs,
            note="the sparse features are a dict of (B, D) views for refimpl, a KeyedTensor "
            "over the same (B, F·D) values for TorchRec",
        ),
        Case(
            "InteractionTransformerArch",
            lambda s: transformer_cfg.format(s, "across the batch (TorchRec's)"),
            _transformer("batch"),
            _torch_transformer,
            peak,
            dtypes=("float32",),
            note="refimpl's attend_across='batch' against TorchRec's arch as shipped "
            "(nn.TransformerEncoderLayer's batch_first=False reads B as the sequence), both in "
            "eval mode: dropout off. float32 only: refimpl's cache keeps every layer's "
            "attention probabilities, (F+1)·H·B² per layer (3.6 GB in float32 at B = 1024, "
            "F = 26, H = 8, four layers; 7.2 GB in float64, more than a shared machine can "
            "spare beside TorchRec's worker)",
        ),
        Case(
            "InteractionTransformerArch",
            lambda s: transformer_cfg.format(s, "per sample"),
            _transformer("features"),
            _torch_per_sample_transformer,
            peak,
            note="TorchRec has no per-sample transformer interaction; the TorchRec column is "
            "torch's nn.TransformerEncoder(batch_first=True) over [dense; sparse], built from "
            "the same weights, in eval mode (dropout off)",
        ),
        Case(
            "EmbeddingBagCollection",
            dlrm_cfg,
            dlrm.build_collection,
            dlrm.torch_collection,
            one,
            traffic=dlrm.collection_traffic,
            torch_step=dlrm.keyed_module_step,
            arrays=dlrm.sparse_arrays,
            torch_inputs=dlrm.torch_sparse_inputs,
            note="TorchRec's EmbeddingBagCollection as shipped: nn.EmbeddingBag's dense table "
            "gradients (every row of every table written, zeros included; refimpl's are "
            "row-sparse), and its output cast to float32 whatever the tables' dtype",
        ),
        Case(
            "DLRM_DCN",
            lambda s: f"{dlrm_cfg(s)}, L={s.layers} r={s.low_rank}",
            dlrm.build_dlrm_dcn,
            dlrm.torch_dlrm_dcn,
            one,
            arrays=dlrm.sparse_arrays,
            torch_inputs=dlrm.torch_sparse_inputs,
            note="TorchRec's DLRM_DCN as shipped, its EmbeddingBagCollection's dense table "
            "gradients and float32 pooled embeddings included (in float64 the model promotes "
            "them back when it concatenates them with the dense arch's output)",
        ),
        training_rows(
            "adagrad",
            "rowwise-adagrad",
            "EBC + torch.optim",
            note="one step at the DLRM_DCN row's sizes: forward, mean BCE loss, backward, "
            f"update, lr {dlrm.LEARNING_RATE} everywhere. refimpl: train_step with Adagrad for "
            "the dense layers and RowWiseAdagrad on the row-sparse table gradients (touched "
            "rows only). TorchRec: DLRM_DCN with EmbeddingBagCollection, torch.optim.Adagrad and "
            "torchrec.optim.RowWiseAdagrad (the training parity tests' optimizers) on dense "
            "table gradients: the update touches every row. No forward time (one call).",
        ),
        training_rows(
            "adagrad",
            "rowwise-adagrad",
            "FusedEBC",
            fused=True,
            note="TorchRec's fused CPU path: FusedEmbeddingBagCollection, FBGEMM's row-wise "
            "Adagrad (eps 1e-10 as torchrec.optim.RowWiseAdagrad) applied inside the backward "
            "to the rows of the batch, torch.optim.Adagrad for the rest. It keeps its tables "
            "in float32 at most: no float64 column. Target: at most 1.0x the faster of this "
            "row and the one above.",
        ),
        training_rows(
            "sgd",
            "sgd",
            "EBC + torch.optim",
            note="as the Adagrad row with SGD everywhere (torch.optim.SGD on TorchRec's side, "
            "every table row updated by its dense gradient)",
        ),
    ]


def select_cases(names: list[str] | None) -> list[Case]:
    """The cases whose class name is one of ``names`` (any case), all when ``names`` is empty."""
    every = cases()
    if not names:
        return every
    wanted = {n.lower() for n in names}
    unknown = wanted - {c.name.lower() for c in every}
    if unknown:
        raise SystemExit(
            f"unknown layer(s) {sorted(unknown)}; choose from {sorted({c.name for c in every})}"
        )
    return [c for c in every if c.name.lower() in wanted]


def find_case(label: str, sizes: Sizes) -> Case:
    """The case whose :meth:`Case.label` at ``sizes`` is ``label`` (how a worker finds it)."""
    for case in cases():
        if case.label(sizes) == label:
            return case
    raise KeyError(f"no bench case {label!r}")
