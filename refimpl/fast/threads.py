"""Per-sample work spread over threads, a slice of the batch each (or cache-sized blocks of rows).

NumPy runs an elementwise pass, a gather, or a stack of small matrix products
``(B, m, k) @ (B, k, n)`` on one core (each product is too small for BLAS to spread over
more). It lets go of the GIL inside each of them, so the same calls on separate slices of the
batch, on separate threads, use the other cores. Each thread writes its own rows of arrays
allocated before the split, so the result is the same as one call on the whole batch.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

SPLIT_MIN_WORK = 1 << 22  # operations below which one thread beats handing out slices
BLOCK_BYTES = 1 << 20  # a block of rows: about a megabyte, small enough to stay in cache


def num_threads() -> int:
    """Threads to split the batch over: ``OMP_NUM_THREADS`` if set, else the usable cores."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def batch_slices(batch: int, parts: int) -> list[slice]:
    """``parts`` consecutive slices covering ``range(batch)``, as equal as can be.

    >>> batch_slices(5, 2)
    [slice(0, 2, None), slice(2, 5, None)]
    """
    bounds = [batch * i // parts for i in range(parts + 1)]
    return [slice(lo, hi) for lo, hi in itertools.pairwise(bounds)]


def on_batch_slices(
    work: Callable[[slice], None], batch: int, work_per_sample: int, threads: int | None = None
) -> None:
    """``work(rows)`` for slices ``rows`` covering the batch, one slice per thread.

    One call ``work(slice(0, batch))`` when there is one thread or too little work to share
    (``batch · work_per_sample`` below :data:`SPLIT_MIN_WORK`). The threads live only for the
    call: starting two costs far less than the work worth splitting, and nothing outlives it.

    >>> import numpy as np
    >>> out = np.zeros(6)
    >>> def double(rows):
    ...     out[rows] = 2 * np.arange(6)[rows]
    >>> on_batch_slices(double, 6, SPLIT_MIN_WORK, threads=2)
    >>> out
    array([ 0.,  2.,  4.,  6.,  8., 10.])
    """
    threads = num_threads() if threads is None else threads
    if threads < 2 or batch < threads or batch * work_per_sample < SPLIT_MIN_WORK:
        work(slice(0, batch))
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="refimpl-batch") as pool:
        list(pool.map(work, batch_slices(batch, threads)))  # list(): re-raises a thread's error


def row_blocks(rows: int, width: int, itemsize: int) -> list[slice]:
    """Consecutive slices of ``range(rows)``, each about :data:`BLOCK_BYTES` of a (rows, width)
    array of ``itemsize``-byte numbers (at least one row).

    >>> row_blocks(10, 3, 8)                 # 24-byte rows: one block holds them all
    [slice(0, 10, None)]
    """
    step = max(1, BLOCK_BYTES // max(1, width * itemsize))
    return [slice(lo, min(lo + step, rows)) for lo in range(0, rows, step)]


def on_threads(work: Callable, items: list, size: int | None = None) -> list:
    """``work(item)`` for every item (blocks of rows, tables), on up to :func:`num_threads`
    threads; the results in the items' order. Blocks small enough to stay in cache let a
    chain of NumPy passes over the same rows read them from cache rather than from memory.

    ``size``, when given, is the number of elements all the items touch: below
    :data:`SPLIT_MIN_WORK` one thread does them all, as starting threads would cost more.
    """
    threads = min(num_threads(), len(items))
    if threads < 2 or (size is not None and size < SPLIT_MIN_WORK):
        return [work(item) for item in items]
    with ThreadPoolExecutor(threads, thread_name_prefix="refimpl-blocks") as pool:
        return list(pool.map(work, items))  # list(): re-raises a thread's error
