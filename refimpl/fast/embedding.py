"""Embedding bags, fast: the numbers of :func:`refimpl.layers.embedding.embedding_bag_forward`
and :func:`~refimpl.layers.embedding.embedding_bag_backward`, without their slow steps.

Measured at MLPerf's DLRM-DCNv2 shape (26 tables of 100,000 rows, D = 128, B = 1024, 214 ids
per sample), float32, one process on this project's 2-core machine:

- forward: ``np.add.reduceat`` over the looked-up rows (the textbook's segment sum) takes
  ~200 ms, ``np.add.at`` into the bags ~250 ms; ``np.add.reduceat`` pays about a microsecond
  per segment. Bags of one size ``h`` are a (n, h) block of ids, so ``T[block].sum(axis=1)``
  sums them in one call: ~50 ms. :func:`bag_sums` loops over the distinct bag sizes (at most
  √(2M) of them, one for fixed multi-hot features), never over bags or ids.
- backward: the textbook's ``RowSparse.from_rows`` of the (M, D) gradient rows, sorted and
  summed with ``np.add.reduceat``, takes ~370 ms; ``np.unique`` with ``np.add.at`` ~290 ms.
  :func:`table_gradient` sorts the ids, gathers each distinct id's first occurrence straight
  from the small (B, D) bag gradients (cache-resident) and adds only the repeats with
  ``np.add.at``: ~90 ms.
"""

from __future__ import annotations

import numpy as np

from refimpl.layers.rowsparse import RowSparse


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
    """Σ_i w_i T[id_i] over the columns of a (n, h) block of bags of one size h, (n, D)."""
    if per_id_weights is None:
        return weight[ids[positions].reshape(shape)].sum(axis=1)  # (n, D)
    looked_up = rows[positions].reshape(*shape, -1)  # (n, h, D)
    w = per_id_weights[positions].reshape(shape)  # (n, h)
    return (w[:, None, :] @ looked_up)[:, 0]  # (n, D)


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
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    first = np.concatenate([[True], sorted_ids[1:] != sorted_ids[:-1]])  # a run of one id starts
    source_sorted = source_index[order]  # (M,)
    firsts = np.flatnonzero(first)  # (U,)
    values = sources[source_sorted[firsts]]  # each distinct id's first occurrence, (U, D)
    if scale is not None:
        scale_sorted = scale[order]
        values *= scale_sorted[firsts, None]
    repeats = np.flatnonzero(~first)
    if len(repeats):
        run = np.cumsum(first) - 1  # the distinct id each sorted position belongs to, (M,)
        extra = sources[source_sorted[repeats]]  # (R, D)
        if scale is not None:
            extra *= scale_sorted[repeats, None]
        np.add.at(values, run[repeats], extra)
    return RowSparse(sorted_ids[firsts].astype(np.int64), values, num_rows)
