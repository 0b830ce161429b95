"""What is measured: the sizes, the rows of the table, and what one timed run is.

Each row is one :class:`Case`, a declarative entry in :func:`cases`. Adding a row (the
embedding bags, a whole model, a training step, another interaction) is one entry::

    Case(
        "EmbeddingBagCollection",                    # the refimpl class name (--layer picks it)
        lambda s: f"F={s.features} D={s.dim}",       # the configuration column, from Sizes
        build=build_ebc,        # (sizes, dtype, rng) -> (refimpl layer or model, inputs)
        torchrec=torch_ebc,     # (sizes) -> the TorchRec torch.nn.Module, or None
        flops=count_flops,      # (layer, *inputs) -> FlopCount, or None when not counted
        target=Target("ratio", 1.0),   # or Target("peak", PEAK_TARGET), or None
    )

The refimpl object and the TorchRec module must share ``state_dict`` keys and shapes: the
harness hands refimpl's weights to TorchRec through a file. One timed run is
:func:`layer_step` (forward, then backward on a fixed upstream gradient) and
:func:`module_step` for TorchRec; a row that times something else, such as a training step
with its optimizer, passes its own ``refimpl_step`` and ``torch_step`` with the same
signature. ``traffic`` (optional) is the least number of bytes any implementation must move
per run; the report then states the memory-bandwidth bound. New sizes go into :class:`Sizes`
with a value in both ``PRODUCTION`` and ``QUICK``.

Nothing here imports torch at module level: the builders import it when a TorchRec worker
calls them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from refimpl.tools.flops import FlopCount, count_flops, projection_flops

DTYPES = {"float32": np.float32, "float64": np.float64}
PEAK_TARGET = 0.70  # matmul-bound layers: at least this fraction of NumPy's GEMM rate


@dataclass(frozen=True)
class Sizes:
    """Everything the cases are built from. ``PRODUCTION`` is the layers' real sizes (B=1024,
    F=26, D=128, so N=3456); ``QUICK`` is tiny, for a smoke test."""

    batch: int
    features: int  # F
    dim: int  # D
    layers: int  # L of the cross networks
    low_rank: int  # LowRankCrossNet's r
    experts: int  # LowRankMixtureCrossNet's K
    expert_rank: int  # LowRankMixtureCrossNet's r
    seed_branches: tuple[tuple[int, ...], tuple[int, ...]]  # the seed's projection
    torchrec_branches: tuple[tuple[int, ...], tuple[int, ...]]  # TorchRec's example's
    dense_arch: tuple[int, tuple[int, ...]]  # (in_features, layer_sizes)
    over_arch_sizes: tuple[int, ...]  # its in_features is D + P of the dot interaction
    mlp: tuple[int, ...]  # an MLP over N: one projection branch of TorchRec's example
    peak_size: int  # n of the n×n×n GEMM that measures the matmul peak

    @property
    def n(self) -> int:
        return (self.features + 1) * self.dim

    @property
    def over_arch_in(self) -> int:
        return self.dim + self.features * (self.features + 1) // 2

    def to_json(self) -> dict:
        """A plain dict (tuples become lists) that :meth:`from_json` reads back."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_json(cls, data: dict) -> Sizes:
        def tuples(x):
            return tuple(tuples(i) for i in x) if isinstance(x, list) else x

        return cls(**{k: tuples(v) for k, v in data.items()})


PRODUCTION = Sizes(
    batch=1024,
    features=26,
    dim=128,
    layers=3,
    low_rank=512,  # TorchRec's DLRM example's --dcn_low_rank_dim default
    experts=4,
    expert_rank=128,
    seed_branches=((256,), (512,)),  # the seed: [B, 256] -> (B, 2, 128), [B, 512] -> (B, 128, 4)
    # TorchRec's DLRM example: --interaction_branch{1,2}_layer_sizes default "2048,2048", each
    # a DenseArch of two layers.
    torchrec_branches=((2048, 2048), (2048, 2048)),
    dense_arch=(13, (512, 256, 128)),
    over_arch_sizes=(1024, 1024, 512, 256, 1),
    mlp=(2048, 2048),
    peak_size=2048,
)

QUICK = Sizes(
    batch=64,
    features=4,
    dim=16,
    layers=2,
    low_rank=16,
    experts=2,
    expert_rank=8,
    seed_branches=((32,), (64,)),
    torchrec_branches=((64, 64), (64, 64)),
    dense_arch=(13, (64, 32, 16)),
    over_arch_sizes=(64, 32, 1),
    mlp=(64, 64),
    peak_size=256,
)


@dataclass(frozen=True)
class Target:
    """``kind`` "ratio": forward+backward at most ``value`` × TorchRec's time (layers that
    matrix products do not bound). ``kind`` "peak": at least ``value`` of NumPy's own GEMM
    rate, measured beside it (matmul-bound layers)."""

    kind: str
    value: float

    def __str__(self) -> str:
        if self.kind == "ratio":
            return f"<= {self.value:g}x TorchRec"
        return f">= {self.value:.0%} peak"


def layer_step(layer, inputs, d_out) -> Callable[[], tuple[float, float]]:
    """One refimpl run: ``forward`` then ``backward(d_out)``; returns (forward s, total s).

    The forward time is read inside the same run, so it includes building the cache.
    """

    def run():
        start = time.perf_counter()
        _, cache = layer.forward(*inputs)
        middle = time.perf_counter()
        layer.backward(d_out, cache)
        return middle - start, time.perf_counter() - start

    return run


def module_step(module, inputs, d_out) -> Callable[[], tuple[float, float]]:
    """One TorchRec run: forward with autograd recording (as in training), then
    ``backward(d_out)`` into freshly zeroed gradients; returns (forward s, total s)."""
    params = list(module.parameters())

    def run():
        for t in (*inputs, *params):
            t.grad = None  # a fresh step, as after optimizer.zero_grad()
        start = time.perf_counter()
        out = module(*inputs)
        middle = time.perf_counter()
        out.backward(d_out)
        return middle - start, time.perf_counter() - start

    return run


@dataclass(frozen=True)
class Case:
    """One row of the table: a refimpl layer (or model) at some sizes, and its TorchRec twin.

    ``build(sizes, dtype, rng)`` returns ``(layer, inputs)`` and may raise ImportError while
    the layer is not written yet. ``torchrec(sizes)`` builds the TorchRec module (None: no
    TorchRec column). ``flops(layer, *inputs)`` gives the analytic :class:`FlopCount` (None:
    not counted). ``traffic(sizes, itemsize)``: the least bytes one run must move, for the
    bandwidth bound (None: not stated).
    """

    name: str
    config: Callable[[Sizes], str]
    build: Callable
    torchrec: Callable | None
    target: Target | None = None
    flops: Callable | None = count_flops
    traffic: Callable | None = None
    refimpl_step: Callable = layer_step
    torch_step: Callable = module_step

    def label(self, sizes: Sizes) -> str:
        return f"{self.name} {self.config(sizes)}"


def layer_class(name: str):
    """A refimpl layer class by name, or ImportError while it does not exist yet."""
    import refimpl

    try:
        return getattr(refimpl, name)
    except AttributeError as exc:
        raise ImportError(f"refimpl.{name} does not exist yet") from exc


def normal(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


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
        net = layer_class(kind)(sizes.n, sizes.layers, **opts, seed=rng, dtype=dtype)
        return net, _flat_inputs(sizes, dtype, rng)

    def torchrec(sizes):
        from torchrec.modules import crossnet

        opts = {k: v(sizes) for k, v in options.items()}
        return getattr(crossnet, kind)(in_features=sizes.n, num_layers=sizes.layers, **opts)

    return {"build": build, "torchrec": torchrec}


def _build_dot(sizes, dtype, rng):
    arch = layer_class("InteractionArch")(sizes.features, dtype=dtype)
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
    net = layer_class("LowRankCrossNet")(
        sizes.n, sizes.layers, sizes.low_rank, seed=rng, dtype=dtype
    )
    return layer_class("InteractionDCNArch")(sizes.features, net), dot_inputs(sizes, dtype, rng)


def _torch_dcn(sizes):
    from torchrec.models.dlrm import InteractionDCNArch
    from torchrec.modules.crossnet import LowRankCrossNet

    net = LowRankCrossNet(in_features=sizes.n, num_layers=sizes.layers, low_rank=sizes.low_rank)
    return InteractionDCNArch(num_sparse_features=sizes.features, crossnet=net)


def _projection(which: str):
    def build(sizes, dtype, rng):
        dense_arch = layer_class("DenseArch")
        b1, b2 = (dense_arch(sizes.n, s, seed=rng, dtype=dtype) for s in getattr(sizes, which))
        arch = layer_class("InteractionProjectionArch")(sizes.features, b1, b2)
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
    arch = layer_class("InteractionProjectionArch")(
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
        layer = layer_class(kind)(width, sizes_of(sizes), seed=rng, dtype=dtype)
        return layer, _flat_inputs(sizes, dtype, rng, width)

    def torchrec(sizes):
        if kind == "MLP":
            from torchrec.modules.mlp import MLP

            return MLP(in_size=in_features(sizes), layer_sizes=list(sizes_of(sizes)))
        from torchrec.models import dlrm

        arch = getattr(dlrm, kind)
        return arch(in_features=in_features(sizes), layer_sizes=list(sizes_of(sizes)))

    return {"build": build, "torchrec": torchrec}


def cases() -> list[Case]:
    """Every row, in the table's order."""
    half, one, peak = Target("ratio", 0.5), Target("ratio", 1.0), Target("peak", PEAK_TARGET)
    cross_cfg = "N={0.n} L={0.layers}".format
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
