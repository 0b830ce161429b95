"""Embedding bags, fast: the numbers of :func:`refimpl.layers.embedding.embedding_bag_forward`
and :func:`~refimpl.layers.embedding.embedding_bag_backward`, without their slow steps.

Measured at MLPerf's DLRM-DCNv2 shape (26 tables of 100,000 rows, D = 128, B = 1024, 214 ids
per sample), float32, one process on this project's 2-core machine:

- forward: ``np.add.reduceat`` over the looked-up rows (the textbook's segment sum) takes
  ~200 ms, ``np.add.at`` into the bags ~250 ms; ``np.add.reduceat`` pays about a microsecond
  per segment. Bags of one size ``h`` are a (n, h) block of ids, so ``T[block].sum(axis=1)``
  sums them in one call: ~50 ms. Taken a few bags at a time, so that the (bags, h, D) rows
  looked up stay in cache: ~27 ms; the features on two threads: ~17 ms. :func:`bag_sums`
  loops over the distinct bag sizes (at most √(2M) of them, one for fixed multi-hot
  features) and over cache-sized blocks of bags, never over single bags or ids.
- backward: the textbook's ``RowSparse.from_rows`` of the (M, D) gradient rows, sorted and
  summed with ``np.add.reduceat``, takes ~370 ms; ``np.unique`` with ``np.add.at`` ~290 ms.
  :func:`table_gradient` sorts the ids (as one ``np.sort`` of ``id · M + position``: the
  stable order, ~7× faster than a stable ``argsort``), gathers each distinct id's first
  occurrence straight from the small (B, D) bag gradients (cache-resident), then adds the
  second occurrences of every id seen twice, the third of every id seen three times, …: each
  such step is a plain indexed add (no id twice in it). What is left after :data:`LEVELS` of
  them belongs to few ids (each seen more than LEVELS times), added by ``np.add.at``. ~45 ms,
  the tables on two threads. Every row's additions happen in the textbook's order, so the
  gradient is the textbook's to the last bit (tested), and a float32 training run is the
  same run, bit for bit.
"""

from __future__ import annotations

import numpy as np

from refimpl.fast.threads import row_blocks
from refimpl.layers.rowsparse import RowSparse

LEVELS = 8  # occurrences of one id added by plain indexed adds; np.add.at the rest


def bag_sums(weight, ids, lengths, per_id_weights=None):
    """``segment_sum(T[ids] · w, lengths)`` of :func:`~refimpl.layers.embedding.segment_sum`.

    Returns the (B, D) sums and, when weighted, the looked-up rows ``T[ids]`` (M, D) that the
    weights' gradient reads (None otherwise).

    >>> weight = np.arange(8.0).reshape(4, 2)
    >>> bag_sums(weight, np.array([1, 3, 0, 2, 2]), np.array([2, 0, 3]))[0]
    array([[ 8., 10.],
           [ 0.,  0.],
           [ 8., 10.]])
    """
    batch, dim = len(lengths), weight.shape[1]
    rows = None if per_id_weights is None else weight[ids]  # T[ids], (M, D)
    sizes = np.unique(lengths)
    if len(sizes) == 1 and sizes[0] > 0:  # fixed multi-hot: one (B, h) block of ids
        return _block_sums(weight, ids, rows, per_id_weights, np.s_[:], (batch, sizes[0])), rows
    sums = np.zeros((batch, dim), weight.dtype)  # (B, D); empty bags stay zero
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)  # (B,)
    for size in sizes[sizes > 0]:
        bags = np.flatnonzero(lengths == size)  # the bags of this size, (n,)
        positions = (starts[bags][:, None] + np.arange(size)).reshape(-1)  # their ids, (n·h,)
        sums[bags] = _block_sums(weight, ids, rows, per_id_weights, positions, (len(bags), size))
    return sums, rows


def _block_sums(weight, ids, rows, per_id_weights, positions, shape):
    """Σ_i w_i T[id_i] over the columns of a (n, h) block of bags of one size h, (n, D); a few
    bags at a time, so that their looked-up rows stay in cache."""
    block_ids = ids[positions].reshape(shape)  # (n, h)
    out = np.empty((shape[0], weight.shape[1]), weight.dtype)  # (n, D)
    if per_id_weights is None:

        def block(bags: slice) -> None:
            np.take(weight, block_ids[bags], axis=0).sum(axis=1, out=out[bags])  # (bags, D)

    else:
        looked_up = rows[positions].reshape(*shape, -1)  # (n, h, D)
        w = per_id_weights[positions].reshape(shape)  # (n, h)

        def block(bags: slice) -> None:
            out[bags] = (w[bags, None, :] @ looked_up[bags])[:, 0]  # (bags, D)

    for bags in row_blocks(shape[0], shape[1] * weight.shape[1], weight.itemsize):
        block(bags)
    return out


def stable_order(ids: np.ndarray, num_rows: int) -> np.ndarray:
    """``np.argsort(ids, kind="stable")``, as one sort of ``id · M + position`` when that fits
    in 63 bits (the ids are in ``range(num_rows)``).

    >>> stable_order(np.array([2, 0, 2, 1]), 3)
    array([1, 3, 0, 2])
    """
    count = len(ids)
    if num_rows * count >= 2**62:
        return np.argsort(ids, kind="stable")
    keys = ids.astype(np.int64) * count + np.arange(count)  # unique, in the stable order
    return np.sort(keys) % count  # (M,)


def table_gradient(ids, sources, source_index, num_rows, scale=None):
    """``RowSparse.from_rows(ids, sources[source_index] · scale, num_rows)``, without forming
    the (M, D) rows.

    ``sources`` (S, D) are the bag gradients, ``source_index`` (M,) the bag of each id,
    ``scale`` (M,) the per-id weights or None.

    >>> d_bags = np.array([[1.0, 10.0], [5.0, 5.0]])
    >>> grad = table_gradient(np.array([0, 2, 0]), d_bags, np.array([0, 0, 1]), 3)
    >>> grad.indices, grad.values
    (array([0, 2]), array([[ 6., 15.],
           [ 1., 10.]]))
    """
    dim = sources.shape[1]
    if len(ids) == 0:
        return RowSparse(np.zeros(0, np.int64), np.zeros((0, dim), sources.dtype), num_rows)
    order = stable_order(ids, num_rows)
    sorted_ids = ids[order]
    first = np.empty(len(ids), bool)  # where a run of one id starts in the sorted ids
    first[0] = True
    np.not_equal(sorted_ids[1:], sorted_ids[:-1], out=first[1:])
    firsts = np.flatnonzero(first)  # (U,)
    run_lengths = np.diff(np.append(firsts, len(ids)))  # occurrences of each distinct id, (U,)
    source_sorted = source_index[order]  # (M,)
    scale_sorted = None if scale is None else scale[order]

    def looked_up(positions):  # the gradient rows of these sorted positions, (P, D)
        rows = np.take(sources, source_sorted[positions], axis=0)
        if scale_sorted is not None:
            rows *= scale_sorted[positions, None]
        return rows

    values = looked_up(firsts)  # each distinct id's first occurrence, (U, D)
    runs, level = np.flatnonzero(run_lengths > 1), 1
    while len(runs) and level < LEVELS:  # the level-th occurrence of every id seen more often
        values[runs] += looked_up(firsts[runs] + level)  # no run twice: a plain indexed add
        level += 1
        runs = runs[run_lengths[runs] > level]
    if len(runs):  # the rest of the few runs longer than LEVELS, in order
        extra = run_lengths[runs] - level  # (R,)
        starts = np.cumsum(extra) - extra  # where each run's rest starts among the rows below
        positions = np.repeat(firsts[runs] + level - starts, extra) + np.arange(extra.sum())
        np.add.at(values, np.repeat(runs, extra), looked_up(positions))  # adds in order
    return RowSparse(sorted_ids[firsts].astype(np.int64), values, num_rows)
