"""Stacks of small matrix products spread over threads.

NumPy multiplies a stack ``(S, m, k) @ (S, k, n)`` one matrix at a time on one core, and each
product is too small for BLAS to spread over more. NumPy lets go of the GIL while it
multiplies, so slices of the stack on separate threads use the other cores.
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

SPLIT_MIN_WORK = 1 << 22  # multiply-adds below which one thread beats handing out slices


def matmul_threads() -> int:
    """Threads for :func:`stacked_matmul`: ``OMP_NUM_THREADS`` if set, else the usable cores."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def stacked_matmul(a: np.ndarray, b: np.ndarray, threads: int | None = None) -> np.ndarray:
    """``a @ b`` for stacks of small matrices, (S, m, k) @ (S, k, n), the stack split on threads.

    The threads live only for the call (a pool that is started and joined here), so nothing
    outlives it; starting two threads costs far less than the products worth splitting.

    >>> a, b = np.ones((4, 2, 3)), np.ones((4, 3, 5))
    >>> bool(np.array_equal(stacked_matmul(a, b, threads=2), a @ b))
    True
    """
    threads = matmul_threads() if threads is None else threads
    stack, m, k = a.shape
    n = b.shape[-1]
    if threads < 2 or stack < threads or stack * m * k * n < SPLIT_MIN_WORK:
        return a @ b
    out = np.empty((stack, m, n), np.result_type(a, b))  # (S, m, n)
    bounds = [stack * i // threads for i in range(threads + 1)]
    parts = [slice(lo, hi) for lo, hi in itertools.pairwise(bounds)]
    with ThreadPoolExecutor(threads, thread_name_prefix="refimpl-matmul") as pool:
        list(pool.map(lambda part: np.matmul(a[part], b[part], out=out[part]), parts))
    return out
