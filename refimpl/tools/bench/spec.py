"""What a row of the benchmark is: the sizes, the :class:`Case` and :class:`Target` records,
and one timed run of refimpl (:func:`layer_step`) and of TorchRec (:func:`module_step`).

The rows themselves are in :mod:`refimpl.tools.bench.cases` (the layers) and
:mod:`refimpl.tools.bench.dlrm_cases` (whole models and training steps). Nothing here imports
torch at module level.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from refimpl.tools.flops import count_flops

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
    multi_hot: tuple[int, ...]  # ids in every bag of each sparse feature (F entries)
    table_rows: tuple[int, ...]  # rows of each sparse feature's table (F entries)
    deep_fm_dimension: int  # DI, the width of FMInteractionArch's deep branch
    transformer_layers: int  # InteractionTransformerArch's encoder layers

    def __post_init__(self):
        for name in ("multi_hot", "table_rows"):
            if len(getattr(self, name)) != self.features:
                raise ValueError(
                    f"{name}: expected one entry per sparse feature, F = {self.features}, got "
                    f"{len(getattr(self, name))}"
                )

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


# Rows of MLPerf's DLRM-DCNv2 tables (Criteo 1TB), one per sparse feature.
MLPERF_TABLE_ROWS = (
    40_000_000, 39_060, 17_295, 7_424, 20_265, 3, 7_122, 1_543, 63, 40_000_000, 3_067_956,
    405_282, 10, 2_209, 11_938, 155, 4, 976, 14, 40_000_000, 40_000_000, 40_000_000, 590_152,
    12_973, 108, 36,
)  # fmt: skip

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
    # MLPerf's DLRM-DCNv2 (Criteo 1TB, multi-hot): ids per bag of each of the 26 features, and
    # its tables' rows capped at 100,000 (the uncapped tables hold 204 million rows).
    multi_hot=(3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 100, 27, 10, 3, 1, 1),
    table_rows=tuple(min(rows, 100_000) for rows in MLPERF_TABLE_ROWS),
    deep_fm_dimension=512,  # as wide as the DCN's rank r: a deep branch N -> 512
    transformer_layers=4,  # TorchRec's default
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
    multi_hot=(3, 1, 8, 2),
    table_rows=(1000, 3, 500, 40),
    deep_fm_dimension=32,
    transformer_layers=1,
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
    tensors = [*held_tensors(inputs), *module.parameters()]

    def run():
        for t in tensors:
            t.grad = None  # a fresh step, as after optimizer.zero_grad()
        start = time.perf_counter()
        out = module(*inputs)
        middle = time.perf_counter()
        out.backward(d_out)
        return middle - start, time.perf_counter() - start

    return run


def held_tensors(value):
    """Every tensor an input holds: itself, a list's or dict's items, or the ``values()`` of
    a TorchRec ``KeyedTensor`` or ``KeyedJaggedTensor``."""
    if isinstance(value, list | tuple):
        for item in value:
            yield from held_tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from held_tensors(item)
    elif hasattr(value, "grad"):
        yield value
    elif callable(getattr(value, "values", None)):
        yield value.values()


def torch_tensors(arrays, sizes: Sizes) -> list:
    """TorchRec's arguments when each input is one float array: a tensor each, recording its
    gradient (refimpl's backward returns every input's gradient too)."""
    import torch

    return [torch.from_numpy(x).requires_grad_(True) for x in arrays]


@dataclass(frozen=True)
class Case:
    """One row of the table: a refimpl layer (or model) at some sizes, and its TorchRec twin.

    ``build(sizes, dtype, rng)`` returns ``(layer, inputs)``. ``torchrec(sizes)`` builds the
    TorchRec module (None: no TorchRec column). ``flops(layer, *inputs)`` gives the analytic
    :class:`~refimpl.tools.flops.FlopCount` (None: not counted). ``traffic(sizes, itemsize)``:
    the least bytes one run must move, for the bandwidth bound (None: not stated).
    ``arrays(inputs)``: the arrays the inputs are written as; ``torch_inputs(arrays, sizes)``:
    TorchRec's arguments made from them; ``torch_dtypes``: the dtypes TorchRec's module runs
    in; ``dtypes``: the dtypes the row is measured in at all (its note says why, when not
    every one); ``note``: what the row compares, for the report.
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
    arrays: Callable = list
    torch_inputs: Callable = torch_tensors
    torch_dtypes: tuple[str, ...] = tuple(DTYPES)
    dtypes: tuple[str, ...] = tuple(DTYPES)
    note: str = ""

    def label(self, sizes: Sizes) -> str:
        return f"{self.name} {self.config(sizes)}"


def normal(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    """Standard normal draws of ``shape`` in ``dtype``."""
    return rng.standard_normal(shape).astype(dtype)
