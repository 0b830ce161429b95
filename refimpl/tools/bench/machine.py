"""The machine the numbers depend on: CPU, cores, the two BLAS libraries, threads, bandwidth.

:func:`machine_info` is what ``python -m refimpl bench --machine`` prints and what the report
heads with. :func:`worker_env` is the one place the thread count of every worker is set, so
that NumPy's OpenBLAS, torch's OpenMP and MKL, and refimpl's own threads all use the same
number. :func:`measure_bandwidth` is the memory bandwidth NumPy's elementwise passes see,
measured in a worker like everything else.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import time

import numpy as np

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def usable_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def worker_env(threads: int) -> dict[str, str]:
    """The environment of a worker: this one, with every thread-count variable set to
    ``threads`` (read by OpenBLAS, OpenMP, MKL and :mod:`refimpl.fast.threads` at start-up)."""
    env = dict(os.environ)
    env.update(dict.fromkeys(THREAD_VARIABLES, str(threads)))
    return env


def blas_info() -> list[dict]:
    """threadpoolctl's view of the BLAS libraries NumPy loaded (empty if it is not installed)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    np.dot(np.ones((2, 2)), np.ones((2, 2)))  # make sure the BLAS is loaded
    return [i for i in threadpool_info() if i.get("user_api") == "blas"]


def numpy_blas() -> dict[str, str]:
    """NumPy's BLAS library and its thread count, as text."""
    blas = blas_info()
    if not blas:
        return {"NumPy BLAS": "unknown (threadpoolctl not installed)", "NumPy BLAS threads": "?"}
    b = blas[0]
    name = f"{b.get('internal_api')} {b.get('version')} (kernel {b.get('architecture') or '?'})"
    return {"NumPy BLAS": name, "NumPy BLAS threads": str(b.get("num_threads"))}


def torch_blas() -> dict[str, str]:
    """torch's BLAS library (from its build configuration) and its intra-op threads."""
    import torch

    config = torch.__config__.show()
    line = next(
        (s.strip(" -") for s in config.splitlines() if "Math Kernel Library" in s),
        next((s for s in config.split(", ") if s.startswith("BLAS_INFO=")), "unknown"),
    )
    return {"torch BLAS": line.split(" for ")[0], "torch threads": str(torch.get_num_threads())}


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
    ['CPU', 'NumPy', 'NumPy BLAS']
    """
    affinity, cpus = usable_cores(), os.cpu_count()
    return {
        "CPU": _cpu_model(),
        "cores": f"{cpus}" + (f" ({affinity} usable)" if affinity != cpus else ""),
        "Python": platform.python_version(),
        "NumPy": np.__version__,
        **numpy_blas(),
        **{k: os.environ.get(k, "unset") for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")},
        "torch": _version("torch"),
        "torchrec": _version("torchrec"),
    }


def format_machine(info: dict[str, str]) -> str:
    width = max(len(k) for k in info)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in info.items())


def measure_bandwidth(nbytes: int, repeats: int = 7) -> dict[str, float]:
    """Memory bandwidth in GB/s that one NumPy pass sees, on arrays of ``nbytes`` bytes.

    ``copy`` counts the bytes read and written by ``np.copyto`` (2·nbytes per pass); ``read``
    the bytes read by a float64 ``sum`` (compute is negligible beside the reads in float64).
    Medians of ``repeats`` passes after one warm-up: the elementwise passes of a layer see
    the same.

    >>> sorted(measure_bandwidth(1 << 16, repeats=1))
    ['copy', 'read']
    """
    count = max(nbytes // 8, 1)
    src = np.ones(count)
    dst = np.empty_like(src)
    rates = {}
    for name, moved, run in (
        ("copy", 2 * src.nbytes, lambda: np.copyto(dst, src)),
        ("read", src.nbytes, src.sum),
    ):
        run()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        rates[name] = moved / statistics.median(times) / 1e9
    return rates
