"""``python -m refimpl bench``: time every layer's forward and backward, beside TorchRec's.

For each layer at production sizes (B=1024, F=26, D=128, so N=3456) and for float32 and
float64 the table reports:

- forward time and forward+backward time: the median of ``--repeats`` runs after a warm-up.
  One run is ``forward`` then ``backward`` on a fixed random upstream gradient; the forward
  time is read inside the same run, so it includes building the cache (TorchRec's forward is
  likewise timed with autograd recording, as in training);
- GFLOP/s from :mod:`refimpl.tools.flops` (forward plus backward), and that as a fraction of this
  machine's NumPy matmul peak, measured in the same run with a square GEMM;
- cache bytes per sample: the ``nbytes`` of the distinct arrays in the cache over B;
- where PyTorch and TorchRec are installed, the same TorchRec module (same weights) in the
  same process with torch's intra-op threads set to NumPy's BLAS threads, its runs interleaved
  with refimpl's so both see the same machine load, and the ratio refimpl / TorchRec;
- each layer's target (issue 5) and whether this run met it.

Layers that are not importable yet are listed as "not available yet". ``--quick`` runs tiny
sizes in a few seconds (a smoke test, not a measurement).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib
import importlib.metadata
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from refimpl.tools.flops import FlopCount, count_flops, projection_flops

DTYPES = {"float32": np.float32, "float64": np.float64}
PEAK_TARGET = 0.70  # matmul-bound layers: at least this fraction of NumPy's matmul peak
# Untimed pause before every run: torch's OpenMP threads keep spinning for a while after each
# parallel region (OpenBLAS's after each call), so a short layer timed right after TorchRec ran
# about 1.5x slower on this 2-core machine; 50 ms lets them go idle.
SETTLE_SECONDS = 0.05

COLUMNS = (
    "layer",
    "configuration",
    "dtype",
    "fwd ms",
    "fwd+bwd ms",
    "GFLOP/s",
    "% peak",
    "cache B/sample",
    "TorchRec fwd ms",
    "TorchRec fwd+bwd ms",
    "ratio",
    "target",
    "met",
)


# --------------------------------------------------------------------------- sizes and cases


@dataclass(frozen=True)
class Sizes:
    """Everything the cases are built from. ``PRODUCTION`` is issue 5's; ``QUICK`` is tiny."""

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
    """``kind`` "ratio": forward+backward at most ``value`` × TorchRec's time.
    ``kind`` "peak": forward+backward at least ``value`` of NumPy's matmul peak."""

    kind: str
    value: float

    def __str__(self) -> str:
        if self.kind == "ratio":
            return f"<= {self.value:g}x TorchRec"
        return f">= {self.value:.0%} peak"


@dataclass(frozen=True)
class Case:
    """One benchmarked layer configuration.

    ``build(sizes, dtype, rng)`` returns ``(layer, inputs)`` and may raise ImportError or
    AttributeError while the layer is not written yet. ``torch_module(layer, sizes)`` builds the
    TorchRec module (torch imported inside). ``flops(layer, *inputs)`` defaults to
    :func:`refimpl.tools.flops.count_flops`.
    """

    name: str
    config: Callable[[Sizes], str]
    build: Callable
    torch_module: Callable
    target: Target | None = None
    flops: Callable = count_flops


def _layer(name: str):
    """A refimpl layer class by name, or ImportError while it does not exist yet."""
    import refimpl

    try:
        return getattr(refimpl, name)
    except AttributeError as exc:
        raise ImportError(f"refimpl.{name} does not exist yet") from exc


def _normal(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def _dot_inputs(sizes, dtype, rng):
    dense = _normal(rng, (sizes.batch, sizes.dim), dtype)  # (B, D)
    sparse = _normal(rng, (sizes.batch, sizes.features, sizes.dim), dtype)  # (B, F, D)
    return dense, sparse


def _flat_inputs(sizes, dtype, rng, width=None):
    return (_normal(rng, (sizes.batch, width or sizes.n), dtype),)  # (B, N)


def _crossnet(kind: str, **options):
    def build(sizes, dtype, rng):
        cls = _layer(kind)
        opts = {k: v(sizes) for k, v in options.items()}
        net = cls(sizes.n, sizes.layers, **opts, seed=rng, dtype=dtype)
        return net, _flat_inputs(sizes, dtype, rng)

    def torch_module(layer, sizes):
        from torchrec.modules import crossnet

        opts = {k: v(sizes) for k, v in options.items()}
        return getattr(crossnet, kind)(in_features=sizes.n, num_layers=sizes.layers, **opts)

    return build, torch_module


def _build_dot(sizes, dtype, rng):
    return _layer("InteractionArch")(sizes.features, dtype=dtype), _dot_inputs(sizes, dtype, rng)


def _torch_dot(layer, sizes):
    from torchrec.models.dlrm import InteractionArch

    return InteractionArch(num_sparse_features=sizes.features)


def _build_dcn(sizes, dtype, rng):
    net = _layer("LowRankCrossNet")(sizes.n, sizes.layers, sizes.low_rank, seed=rng, dtype=dtype)
    return _layer("InteractionDCNArch")(sizes.features, net), _dot_inputs(sizes, dtype, rng)


def _torch_dcn(layer, sizes):
    from torchrec.models.dlrm import InteractionDCNArch
    from torchrec.modules.crossnet import LowRankCrossNet

    net = LowRankCrossNet(in_features=sizes.n, num_layers=sizes.layers, low_rank=sizes.low_rank)
    return InteractionDCNArch(num_sparse_features=sizes.features, crossnet=net)


def _projection(which: str):
    def build(sizes, dtype, rng):
        branches = getattr(sizes, which)
        dense_arch = _layer("DenseArch")
        b1, b2 = (dense_arch(sizes.n, s, seed=rng, dtype=dtype) for s in branches)
        arch = _layer("InteractionProjectionArch")(sizes.features, b1, b2)
        return arch, _dot_inputs(sizes, dtype, rng)

    def torch_module(layer, sizes):
        from torchrec.models.dlrm import DenseArch, InteractionProjectionArch

        b1, b2 = (
            DenseArch(in_features=sizes.n, layer_sizes=list(s)) for s in getattr(sizes, which)
        )
        return InteractionProjectionArch(sizes.features, b1, b2)

    return build, torch_module


def _slice_widths(sizes):
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
    arch = _layer("InteractionProjectionArch")(
        sizes.features, SliceBranch(sizes.n, w1), SliceBranch(sizes.n, w2)
    )
    return arch, _dot_inputs(sizes, dtype, rng)


def _torch_projection_only(layer, sizes):
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


def _build_dense_arch(sizes, dtype, rng):
    in_features, layer_sizes = sizes.dense_arch
    arch = _layer("DenseArch")(in_features, layer_sizes, seed=rng, dtype=dtype)
    return arch, _flat_inputs(sizes, dtype, rng, in_features)


def _torch_dense_arch(layer, sizes):
    from torchrec.models.dlrm import DenseArch

    in_features, layer_sizes = sizes.dense_arch
    return DenseArch(in_features=in_features, layer_sizes=list(layer_sizes))


def _build_over_arch(sizes, dtype, rng):
    arch = _layer("OverArch")(sizes.over_arch_in, sizes.over_arch_sizes, seed=rng, dtype=dtype)
    return arch, _flat_inputs(sizes, dtype, rng, sizes.over_arch_in)


def _torch_over_arch(layer, sizes):
    from torchrec.models.dlrm import OverArch

    return OverArch(in_features=sizes.over_arch_in, layer_sizes=list(sizes.over_arch_sizes))


def _build_mlp(sizes, dtype, rng):
    return _layer("MLP")(sizes.n, sizes.mlp, seed=rng, dtype=dtype), _flat_inputs(sizes, dtype, rng)


def _torch_mlp(layer, sizes):
    from torchrec.modules.mlp import MLP

    return MLP(in_size=sizes.n, layer_sizes=list(sizes.mlp))


def _cases() -> list[Case]:
    ratio_half, ratio_one = Target("ratio", 0.5), Target("ratio", 1.0)
    peak = Target("peak", PEAK_TARGET)
    cross_cfg = "N={0.n} L={0.layers}".format
    cases = [
        Case(
            "InteractionArch", "F={0.features} D={0.dim}".format, _build_dot, _torch_dot, ratio_half
        ),
        Case("CrossNet", cross_cfg, *_crossnet("CrossNet"), peak),
        Case(
            "LowRankCrossNet",
            "N={0.n} L={0.layers} r={0.low_rank}".format,
            *_crossnet("LowRankCrossNet", low_rank=lambda s: s.low_rank),
            peak,
        ),
        Case("VectorCrossNet", cross_cfg, *_crossnet("VectorCrossNet"), ratio_one),
        Case(
            "LowRankMixtureCrossNet",
            "N={0.n} L={0.layers} K={0.experts} r={0.expert_rank}".format,
            *_crossnet(
                "LowRankMixtureCrossNet",
                num_experts=lambda s: s.experts,
                low_rank=lambda s: s.expert_rank,
            ),
            ratio_one,
        ),
        Case(
            "InteractionDCNArch",
            "F={0.features} D={0.dim} LowRankCrossNet L={0.layers} r={0.low_rank}".format,
            _build_dcn,
            _torch_dcn,
        ),
        Case(
            "InteractionProjectionArch",
            lambda s: (
                f"seed's branches N->{list(s.seed_branches[0])}, N->{list(s.seed_branches[1])}"
            ),
            *_projection("seed_branches"),
        ),
        Case(
            "InteractionProjectionArch",
            lambda s: f"TorchRec example's branches N->{list(s.torchrec_branches[0])} x2",
            *_projection("torchrec_branches"),
        ),
        Case(
            "InteractionProjectionArch",
            lambda s: "without its MLPs (branches x[:, :{}], x[:, :{}])".format(*_slice_widths(s)),
            _build_projection_only,
            _torch_projection_only,
            ratio_one,
            _projection_only_flops,
        ),
        Case(
            "DenseArch",
            lambda s: f"{s.dense_arch[0]}->{list(s.dense_arch[1])}",
            _build_dense_arch,
            _torch_dense_arch,
            peak,
        ),
        Case(
            "OverArch",
            lambda s: f"{s.over_arch_in}->{list(s.over_arch_sizes)}",
            _build_over_arch,
            _torch_over_arch,
            peak,
        ),
        Case("MLP", lambda s: f"N={s.n}->{list(s.mlp)}", _build_mlp, _torch_mlp, peak),
    ]
    return cases


# --------------------------------------------------------------------------- the machine


def blas_info() -> list[dict]:
    """threadpoolctl's view of the BLAS libraries NumPy loaded (empty if it is not installed)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    np.dot(np.ones((2, 2)), np.ones((2, 2)))  # make sure the BLAS is loaded
    return [i for i in threadpool_info() if i.get("user_api") == "blas"]


def blas_threads() -> int | None:
    """The thread count of NumPy's BLAS, as threadpoolctl reports it."""
    infos = blas_info()
    return infos[0]["num_threads"] if infos else None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, str]:
    """What the numbers depend on: CPU, cores, Python, NumPy and its BLAS, torch, TorchRec.

    >>> sorted(machine_info())[:3]
    ['BLAS', 'BLAS threads', 'CPU']
    """
    blas = blas_info()
    if blas:
        b = blas[0]
        kernel = b.get("architecture") or "?"
        blas_text = f"{b.get('internal_api')} {b.get('version')} (kernel {kernel})"
        threads = str(b.get("num_threads"))
    else:
        blas_text, threads = "unknown (threadpoolctl not installed)", "?"
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    cores = f"{os.cpu_count()}" + (f" ({affinity} usable)" if affinity != os.cpu_count() else "")
    env = {k: os.environ.get(k, "unset") for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    return {
        "CPU": _cpu_model(),
        "cores": cores,
        "Python": platform.python_version(),
        "NumPy": np.__version__,
        "BLAS": blas_text,
        "BLAS threads": threads,
        "OPENBLAS_CORETYPE": env["OPENBLAS_CORETYPE"],
        "OPENBLAS_L2_SIZE": env["OPENBLAS_L2_SIZE"],
        "torch": _version("torch"),
        "torchrec": _version("torchrec"),
    }


def format_machine(info: dict[str, str] | None = None) -> str:
    info = machine_info() if info is None else info
    width = max(len(k) for k in info)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in info.items())


# --------------------------------------------------------------------------- measuring


def _gemm_run(dtype, size: int):
    """One timed n×n by n×n NumPy product; returns its time twice (a run's shape)."""
    rng = np.random.default_rng(0)
    a, b = _normal(rng, (size, size), dtype), _normal(rng, (size, size), dtype)

    def run():
        start = time.perf_counter()
        a @ b
        elapsed = time.perf_counter() - start
        return elapsed, elapsed

    return run


def measure_peak(dtype, size: int, repeats: int) -> float:
    """NumPy's matmul GFLOP/s on an n×n by n×n product (2n³ FLOPs), median of ``repeats``."""
    times = _time_runs(_gemm_run(dtype, size), 1, repeats)
    return 2 * size**3 / statistics.median(t for t, _ in times) / 1e9


def walk_cache(cache, prefix: str = ""):
    """``(name, array)`` for every array in a cache: NamedTuples, tuples, dicts, nested caches."""
    if isinstance(cache, np.ndarray):
        yield prefix or "cache", cache
    elif hasattr(cache, "_fields"):  # NamedTuple
        for name in cache._fields:
            yield from walk_cache(getattr(cache, name), f"{prefix}.{name}" if prefix else name)
    elif isinstance(cache, tuple | list):
        for i, item in enumerate(cache):
            yield from walk_cache(item, f"{prefix}[{i}]")
    elif isinstance(cache, dict):
        for key, item in cache.items():
            yield from walk_cache(item, f"{prefix}[{key!r}]")


@dataclass
class CacheEntry:
    name: str
    shape: str  # with the batch axis written as "B"
    dtype: str
    nbytes: int
    note: str = ""  # "input": (a view of) a forward input; "view of X": memory already counted


def _extent(array: np.ndarray) -> tuple[int, int]:
    """The byte range ``[start, end)`` an array's elements occupy."""
    start = end = array.__array_interface__["data"][0]
    for size, stride in zip(array.shape, array.strides, strict=True):
        if size == 0:
            return start, start
        reach = (size - 1) * stride
        start, end = (start + reach, end) if reach < 0 else (start, end + reach)
    return start, end + array.itemsize


def describe_cache(cache, batch: int, inputs=()) -> list[CacheEntry]:
    """The arrays a cache holds; memory that another entry already covers is marked a view.

    An entry whose bytes lie inside an earlier entry's (the same array kept twice, or a
    reshape of it) is "view of <name>" and not counted again; one that shares memory with a
    forward input is marked "input" (counted: the cache keeps it alive).
    """
    entries, seen = [], []
    for name, array in walk_cache(cache):
        axes = [str(s) for s in array.shape]
        if batch in array.shape:  # the first axis of size B is the batch axis
            axes[array.shape.index(batch)] = "B"
        start, end = _extent(array)
        owner = next((n for n, (a, b) in seen if a <= start and end <= b), None)
        if owner is not None:
            note = f"view of {owner}"
        elif any(np.may_share_memory(array, x) for x in inputs):
            note = "input"
        else:
            note = ""
        if owner is None:
            seen.append((name, (start, end)))
        shape = "(" + ", ".join(axes) + ("," if len(axes) == 1 else "") + ")"
        entries.append(CacheEntry(name, shape, str(array.dtype), array.nbytes, note))
    return entries


def cache_bytes(entries: list[CacheEntry]) -> int:
    """Bytes of the distinct arrays (inputs the cache refers to included)."""
    return sum(e.nbytes for e in entries if not e.note.startswith("view of"))


def _time_runs(run: Callable[[], tuple[float, float]], warmup: int, repeats: int):
    for _ in range(warmup):
        run()
    return [run() for _ in range(repeats)]


def _refimpl_run(layer, inputs, d_out):
    def run():
        start = time.perf_counter()
        _, cache = layer.forward(*inputs)
        middle = time.perf_counter()
        layer.backward(d_out, cache)
        end = time.perf_counter()
        return middle - start, end - start

    return run


def _torch_run(module, inputs, d_out):
    params = list(module.parameters())

    def run():
        for t in (*inputs, *params):
            t.grad = None  # a fresh step, as after optimizer.zero_grad()
        start = time.perf_counter()
        out = module(*inputs)
        middle = time.perf_counter()
        out.backward(d_out)
        end = time.perf_counter()
        return middle - start, end - start

    return run


def _torch_setup(layer, case: Case, sizes: Sizes, inputs, d_out, dtype):
    import torch

    module = case.torch_module(layer, sizes)
    module.to(torch.float64 if dtype == np.float64 else torch.float32)
    state = layer.params
    if state:  # the same weights (ReLU patterns and so the work match too)
        module.load_state_dict(
            {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
        )
    torch_inputs = [torch.from_numpy(x.copy()).requires_grad_(True) for x in inputs]
    return _torch_run(module, torch_inputs, torch.from_numpy(d_out))


@dataclass
class Result:
    layer: str
    config: str
    dtype: str
    status: str = "ok"  # "ok", "not available yet", or "error: …"
    fwd_ms: float = math.nan
    fb_ms: float = math.nan
    flops: FlopCount | None = None
    gflops: float = math.nan
    peak_gflops: float = math.nan  # the GEMM's rate, measured between this layer's runs
    peak_fraction: float = math.nan
    cache_per_sample: float = math.nan
    cache: list[CacheEntry] = field(default_factory=list)
    torch_fwd_ms: float = math.nan
    torch_fb_ms: float = math.nan
    torch_note: str = ""
    target: Target | None = None

    @property
    def ratio(self) -> float:
        return self.fb_ms / self.torch_fb_ms

    @property
    def met(self) -> bool | None:
        """Whether the target is met; None when it cannot be judged (no target or no TorchRec)."""
        if self.target is None or self.status != "ok":
            return None
        if self.target.kind == "ratio":
            return None if math.isnan(self.ratio) else bool(self.ratio <= self.target.value)
        return bool(self.peak_fraction >= self.target.value)

    def cells(self) -> tuple[str, ...]:
        def num(x, fmt="{:.1f}"):
            return "-" if x is None or math.isnan(x) else fmt.format(x)

        if self.status != "ok":
            status = self.status if len(self.status) <= 20 else "error (see below)"
            return (self.layer, self.config, self.dtype, status, *["-"] * (len(COLUMNS) - 4))
        met = {True: "yes", False: "NO", None: "-"}[self.met]
        if self.met is None and self.target is not None:
            met = "n/a"
        measured = ""
        if self.target is not None and self.target.kind == "ratio" and not math.isnan(self.ratio):
            measured = f" ({_ratio_text(self.ratio)}x)"
        elif self.target is not None and self.target.kind == "peak":
            measured = f" ({self.peak_fraction:.0%})"
        return (
            self.layer,
            self.config,
            self.dtype,
            num(self.fwd_ms, _ms_format(self.fwd_ms)),
            num(self.fb_ms, _ms_format(self.fb_ms)),
            num(self.gflops),
            _percent_text(self.peak_fraction),
            num(self.cache_per_sample, "{:,.0f}"),
            num(self.torch_fwd_ms, _ms_format(self.torch_fwd_ms)),
            num(self.torch_fb_ms, _ms_format(self.torch_fb_ms)),
            _ratio_text(self.ratio),
            "-" if self.target is None else str(self.target),
            met + measured,
        )


def _percent_text(x: float) -> str:
    if math.isnan(x):
        return "-"
    return f"{100 * x:.0f}%" if x >= 0.01 else f"{100 * x:.1g}%"


def _ratio_text(x: float) -> str:
    if math.isnan(x):
        return "-"
    return f"{x:.2f}" if x >= 0.01 else f"{x:.2g}"


def _ms_format(x: float) -> str:
    return "{:.3f}" if x < 1 else "{:.2f}" if x < 100 else "{:.0f}"


def run_case(
    case: Case,
    sizes: Sizes,
    dtype,
    peak_size: int,
    repeats: int,
    warmup: int,
    use_torch: bool,
    progress: Callable[[str], None] = lambda s: None,
    careful: bool = True,
    peak: float = math.nan,
) -> Result:
    """Build, measure and compare one layer configuration in one dtype.

    ``careful`` (not in ``--quick``): collect garbage first, and time the peak GEMM between the
    layer's runs; otherwise ``peak`` (GFLOP/s measured once) is used.
    """
    dtype_name = np.dtype(dtype).name
    result = Result(case.name, case.config(sizes), dtype_name, target=case.target)
    rng = np.random.default_rng(0)
    try:
        layer, inputs = case.build(sizes, dtype, rng)
    except (ImportError, AttributeError) as exc:
        result.status = "not available yet"
        result.torch_note = str(exc)
        return result
    try:
        out, cache = layer.forward(*inputs)
        d_out = _normal(rng, out.shape, dtype)
        result.cache = describe_cache(cache, sizes.batch, inputs)
        result.cache_per_sample = cache_bytes(result.cache) / sizes.batch
        del out, cache
        result.flops = case.flops(layer, *inputs)
        # The GEMM that defines "peak" runs in the same loop, so it sees the same load.
        runs = {"refimpl": _refimpl_run(layer, inputs, d_out)}
        if careful:
            runs["peak"] = _gemm_run(dtype, peak_size)
        if use_torch:
            try:
                runs["TorchRec"] = _torch_setup(layer, case, sizes, inputs, d_out, dtype)
            except Exception as exc:  # an unusable TorchRec must not stop the refimpl numbers
                result.torch_note = f"{type(exc).__name__}: {exc}".splitlines()[0]
        times = {name: [] for name in runs}
        if careful:
            gc.collect()
        gc.disable()
        try:
            for i in range(warmup + repeats):
                progress(f"run {i + 1 - warmup}/{repeats}" if i >= warmup else "warm-up")
                for name, run in runs.items():  # interleaved: both see the same machine load
                    if careful:
                        time.sleep(SETTLE_SECONDS)
                    timing = run()
                    if i >= warmup:
                        times[name].append(timing)
        finally:
            gc.enable()
    except Exception as exc:
        result.status = f"error: {type(exc).__name__}: {exc}".splitlines()[0]
        return result
    fwd, fb = zip(*times["refimpl"], strict=True)
    result.fwd_ms, result.fb_ms = 1e3 * statistics.median(fwd), 1e3 * statistics.median(fb)
    result.gflops = result.flops.total / (result.fb_ms / 1e3) / 1e9
    if careful:
        peak = 2 * peak_size**3 / statistics.median(t for t, _ in times["peak"]) / 1e9
    result.peak_gflops = peak
    result.peak_fraction = result.gflops / result.peak_gflops
    if times.get("TorchRec"):
        fwd, fb = zip(*times["TorchRec"], strict=True)
        result.torch_fwd_ms = 1e3 * statistics.median(fwd)
        result.torch_fb_ms = 1e3 * statistics.median(fb)
    return result


# --------------------------------------------------------------------------- output


def format_table(results: list[Result], markdown: bool = False) -> str:
    rows = [r.cells() for r in results]
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(r[i]) for r in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    numeric = set(range(3, 11))

    def line(cells):
        return "  ".join(
            f"{c:>{w}}" if i in numeric else f"{c:<{w}}"
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(COLUMNS), line(["-" * w for w in widths]), *map(line, rows)])


def format_targets(results: list[Result]) -> str:
    lines = []
    for r in results:
        if r.target is None or r.status != "ok":
            continue
        if r.target.kind == "ratio":
            measured = "no TorchRec" if math.isnan(r.ratio) else f"{_ratio_text(r.ratio)}x TorchRec"
        else:
            measured = (
                f"{r.peak_fraction:.0%} of peak ({r.gflops:.1f} of {r.peak_gflops:.1f} GFLOP/s)"
            )
        verdict = {True: "met", False: "MISSED", None: "not judged"}[r.met]
        lines.append(
            f"{verdict:<10} {r.layer} {r.config} {r.dtype}: {r.target}, measured {measured}"
        )
    return "\n".join(lines)


# What each backward reads, and so the least a cache must hold (without recomputing).
BACKWARD_NEEDS = {
    "InteractionArch": "C = [dense; sparse], (F+1)·D: dC = (G + Gᵀ) C",
    "CrossNet": "x_l (for dW_l) and c_l = W_l x_l + b_l (for dx₀ += c_l ⊙ g), 2·L·N",
    "LowRankCrossNet": "x_l (dV_l), V_l x_l (dW_l), c_l (dx₀): L·(2N + r)",
    "VectorCrossNet": "x_l (dw_l) and s_l = x_l·w_l (dx₀ += s_l g): L·(N + 1)",
    "LowRankMixtureCrossNet": (
        "x_l (dV, dG), h = φ(V x_l) (dC, φ'), h̃ = φ(C h) (dU, dp, φ'), m = Σ_k p_k c_k "
        "(dx₀ += m ⊙ g) and p (softmax): L·(2N + 2K·r + K), exactly what the cache holds. "
        "No pre-activations (φ' is read from φ's output) and no experts' crosses c_k (K·N per "
        "layer): with dm = x₀ ⊙ g, dp_k = h̃_k·(dm U_k) + b·dm and dU_k = dmᵀ(p_k h̃_k), and "
        "dm U_k is needed for dh̃_k anyway"
    ),
    "InteractionDCNArch": "its cross network's (the flattened C is its x₀)",
    "InteractionProjectionArch": (
        "Y and Z (dY = dI Zᵀ, dZ = Yᵀ dI) and the branches' caches; Y, Z are the branches' "
        "outputs, kept once"
    ),
    "MLP": (
        "each Linear's input (dW) and φ' of each layer: the inputs plus the last layer's "
        "output, exactly what the cache holds (layer i's output is layer i+1's input; φ' is "
        "read from φ's output, so no pre-activations)"
    ),
}
for _name in ("DenseArch", "OverArch"):
    BACKWARD_NEEDS[_name] = BACKWARD_NEEDS["MLP"]


def format_caches(results: list[Result], markdown: bool = False) -> str:
    """What each layer's cache holds (first dtype measured), per sample."""
    seen, lines = set(), []
    for r in results:
        key = (r.layer, r.config)
        if r.status != "ok" or key in seen:
            continue
        seen.add(key)
        parts = [f"{e.name} {e.shape}" + (f" [{e.note}]" if e.note else "") for e in r.cache]
        text = ", ".join(parts) if parts else "nothing"
        per_sample = f"{r.cache_per_sample:,.0f} B/sample in {r.dtype}"
        needs = BACKWARD_NEEDS.get(r.layer, "?")
        lines.append(
            f"{'- ' if markdown else ''}{r.layer} {r.config}: {text} ({per_sample}). "
            f"Backward needs: {needs}."
        )
    return "\n".join(lines)


def write_chart(results: list[Result], path: str, batch: int | None = None) -> None:
    """Forward+backward time per layer, refimpl beside TorchRec, one panel per dtype, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if r.status == "ok"]
    dtypes = sorted({r.dtype for r in ok}, key=list(DTYPES).index)
    labels = list(dict.fromkeys(f"{r.layer}\n{r.config}" for r in ok))
    fig, axes = plt.subplots(
        1,
        max(len(dtypes), 1),
        figsize=(7 * max(len(dtypes), 1), 0.55 * len(labels) + 2.2),
        sharey=True,
        squeeze=False,
    )
    y = np.arange(len(labels))
    for ax, dtype in zip(axes[0], dtypes, strict=False):
        by_label = {f"{r.layer}\n{r.config}": r for r in ok if r.dtype == dtype}
        ours = np.array([by_label[k].fb_ms if k in by_label else np.nan for k in labels])
        theirs = np.array([by_label[k].torch_fb_ms if k in by_label else np.nan for k in labels])
        ax.barh(y - 0.2, ours, height=0.4, label="refimpl (NumPy)", color="tab:blue")
        ax.barh(y + 0.2, theirs, height=0.4, label="TorchRec (torch autograd)", color="tab:orange")
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            if not (np.isnan(a) or np.isnan(b)):  # refimpl / TorchRec beside the pair
                ax.annotate(
                    f"{_ratio_text(a / b)}x",
                    (max(a, b), i),
                    xytext=(4, 0),
                    textcoords="offset points",
                    va="center",
                    fontsize=7,
                )
        ax.set_xscale("log")
        ax.set_xlabel("forward + backward time, ms (log scale)")
        ax.set_title(dtype + (f", B={batch}" if batch else "") + ": refimpl / TorchRec ratios")
        ax.grid(axis="x", which="both", alpha=0.3)
        ax.margins(x=0.15)
    axes[0][0].set_yticks(y, labels, fontsize=8)
    axes[0][0].invert_yaxis()  # the y axis is shared: invert it once, first case on top
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=2, fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- the command


def select_cases(names: list[str] | None) -> list[Case]:
    cases = _cases()
    if not names:
        return cases
    wanted = {n.lower() for n in names}
    known = {c.name.lower() for c in cases}
    unknown = wanted - known
    if unknown:
        raise SystemExit(
            f"unknown layer(s) {sorted(unknown)}; choose from {sorted({c.name for c in cases})}"
        )
    return [c for c in cases if c.name.lower() in wanted]


def _torch_available() -> tuple[bool, str]:
    try:
        import torch  # noqa: F401
        import torchrec  # noqa: F401
    except Exception as exc:
        return False, f"TorchRec columns empty: {type(exc).__name__}: {exc}".splitlines()[0]
    return True, ""


@dataclass
class BenchReport:
    sizes: Sizes
    results: list[Result]
    peaks: dict[str, float]
    machine: dict[str, str]
    settings: dict[str, str]
    seconds: float = 0.0
    careful: bool = True

    def header(self) -> str:
        peaks = ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in self.peaks.items())
        settings = ", ".join(f"{k} {v}" for k, v in self.settings.items())
        return (
            f"NumPy matmul peak ({self.sizes.peak_size}^3 GEMM, at the start): {peaks}; "
            + (
                "% peak uses the same GEMM timed between each layer's runs"
                if self.careful
                else "% peak uses it (quick mode)"
            )
            + f"\n{settings}"
        )

    def problems(self) -> str:
        return "\n".join(
            f"{r.layer} {r.config} {r.dtype}: {r.status}"
            for r in self.results
            if r.status.startswith("error")
        )

    def text(self) -> str:
        return "\n\n".join(
            [
                self.header(),
                format_table(self.results),
                *(["Errors:\n" + self.problems()] if self.problems() else []),
                "Targets:\n" + (format_targets(self.results) or "none measured"),
                "Cache contents (per sample):\n" + format_caches(self.results),
            ]
        )

    def markdown(self) -> str:
        machine = "\n".join(f"| {k} | {v} |" for k, v in self.machine.items())
        return "\n\n".join(
            [
                "# refimpl benchmark",
                "## Machine\n\n| | |\n|---|---|\n" + machine,
                "## Settings\n\n" + self.header().replace("\n", "  \n"),
                "## Results\n\n" + format_table(self.results, markdown=True),
                "## Targets\n\n"
                + "\n".join(f"- {line}" for line in format_targets(self.results).splitlines()),
                "## Cache contents\n\n" + format_caches(self.results, markdown=True),
                "## Method\n\n" + METHOD,
            ]
        )


METHOD = """\
Times are medians of the timed runs after warm-up; one run is forward then backward on a fixed
random upstream gradient, the forward time read inside the same run. TorchRec runs the same
module with the same weights and inputs, with torch's intra-op threads set to NumPy's BLAS
threads, interleaved run by run with refimpl's, with an untimed 50 ms pause before each run so
that the other library's spinning worker threads have gone idle. FLOPs are refimpl.tools.flops'
analytic counts of the layer's formulas (2 per multiply-add, 1 per other + − × ÷ exp;
selections and copies free), so GFLOP/s rewards doing less redundant work. "% peak" divides by
the n×n×n GEMM rate measured between the same layer's runs. Cache bytes count each distinct
array in the cache once, including inputs the cache refers to (marked [input]). The machine
may be shared: compare ratios, not absolute times."""


def run_bench(
    sizes: Sizes,
    cases: list[Case],
    dtypes: list[str],
    repeats: int,
    warmup: int,
    use_torch: bool,
    threads: int | None = None,
    progress=None,
    careful: bool = True,
) -> BenchReport:
    """Measure every case in every dtype; the report the command prints."""
    start = time.perf_counter()
    progress = progress or (lambda s: None)
    machine = machine_info()
    settings = {"B": str(sizes.batch), "repeats": f"{repeats} (+{warmup} warm-up)"}
    if threads is not None:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # refimpl.fast.threads.stacked_matmul reads it
    numpy_threads = blas_threads()
    settings["NumPy BLAS threads"] = str(numpy_threads)
    from refimpl.fast.threads import matmul_threads

    settings["refimpl stacked-matmul threads"] = str(matmul_threads())
    if use_torch:
        use_torch, note = _torch_available()
        if use_torch:
            import torch

            if threads or numpy_threads:
                torch.set_num_threads(threads or numpy_threads)
            settings["torch threads"] = str(torch.get_num_threads())
        else:
            settings["TorchRec"] = note
    else:
        settings["TorchRec"] = "not run (--no-torch)"
    peaks = {}
    for name in dtypes:
        progress(f"measuring the {name} matmul peak")
        peaks[name] = measure_peak(DTYPES[name], sizes.peak_size, max(repeats, 3))
    results = []
    total = len(cases) * len(dtypes)
    i = 0
    for name in dtypes:
        for case in cases:
            i += 1
            label = f"[{i}/{total}] {case.name} {case.config(sizes)} {name}"
            results.append(
                run_case(
                    case,
                    sizes,
                    DTYPES[name],
                    sizes.peak_size,
                    repeats,
                    warmup,
                    use_torch,
                    progress=lambda step, label=label: progress(f"{label}: {step}"),
                    careful=careful,
                    peak=peaks[name],
                )
            )
    seconds = time.perf_counter() - start
    return BenchReport(sizes, results, peaks, machine, settings, seconds, careful)


def _progress_printer(stream):
    tty = stream.isatty()

    def show(message: str) -> None:
        if tty:
            print(f"\r\033[K{message[:120]}", end="", file=stream, flush=True)
        else:
            print(message, file=stream, flush=True)

    def done() -> None:
        if tty:
            print("\r\033[K", end="", file=stream, flush=True)

    return show, done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m refimpl bench",
        description="Time every layer's forward and forward+backward (refimpl and TorchRec).",
    )
    parser.add_argument("--layer", action="append", help="only this layer class (repeatable)")
    parser.add_argument("--batch", type=int, help="batch size B (default 1024; quick 64)")
    parser.add_argument("--dtype", choices=[*DTYPES, "both"], default="both")
    parser.add_argument("--repeats", type=int, help="timed runs per layer (default 5; quick 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--no-torch", action="store_true", help="skip TorchRec")
    parser.add_argument("--threads", type=int, help="BLAS and torch threads (default: BLAS's)")
    parser.add_argument("--markdown", metavar="PATH", help="also write the report as Markdown")
    parser.add_argument("--chart", metavar="PATH", help="also write a bar chart (PNG)")
    parser.add_argument("--machine", action="store_true", help="print the machine and exit")
    args = parser.parse_args(argv)
    if args.machine:
        print(format_machine())
        return 0
    sizes = QUICK if args.quick else PRODUCTION
    if args.batch is not None:
        if args.batch < 1:
            parser.error("--batch must be >= 1")
        sizes = dataclasses.replace(sizes, batch=args.batch)
    repeats = args.repeats or (3 if args.quick else 5)
    if repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    dtypes = list(DTYPES) if args.dtype == "both" else [args.dtype]
    cases = select_cases(args.layer)
    show, done = _progress_printer(sys.stderr)
    report = run_bench(
        sizes,
        cases,
        dtypes,
        repeats,
        args.warmup,
        not args.no_torch,
        args.threads,
        show,
        careful=not args.quick,
    )
    done()
    print(report.text())
    print(f"\n{len(report.results)} rows in {report.seconds:.1f} s")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(report.markdown() + "\n")
    if args.chart:
        write_chart(report.results, args.chart, sizes.batch)
    return 0
