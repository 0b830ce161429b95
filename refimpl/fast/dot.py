"""The dot interaction, fast: :func:`refimpl.layers.dot.dot_interaction` and its backward.

Forward: the kept pairs of ``Z = C Cᵀ`` are read from ``C Sᵀ`` instead. Z is symmetric, so pair
(i, j) is Z[min, max], and max >= 1 except for (0, 0); ``(C Sᵀ)[b, i, j-1] = c_i·c_j``. ``C Sᵀ``
is a plain matrix product per sample, where NumPy runs ``C @ Cᵀ`` (one buffer twice) through
the slower syrk; S is read as rows 1… of C, so each sample's numbers come from memory once
(reading the input ``sparse`` instead made the product 1.4–1.6x slower). Backward: ``G + Gᵀ`` is
gathered into one array from the pair gradients instead of scattering ``G`` and adding its
transpose. All of it is per-sample work, so each thread takes a slice of the batch through
every step (:func:`on_batch_slices`): the products, the gathers and the copies.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from refimpl.fast.threads import on_batch_slices


class DotIndices(NamedTuple):
    """Index arrays of the fast forward and backward, for one pair list.

    ``cross_index`` (P,): where pair (i, j) sits in ``C Sᵀ`` flattened, (B, (F+1)·F), read as
    (min, max) since Z is symmetric; -1 for (0, 0), which ``C Sᵀ`` does not hold.
    ``sym_index`` ((F+1)²,): for entry (i, j) of ``G + Gᵀ``, the column of
    ``[d_pairs, 0, 2·d_pairs[:, diagonal]]`` (B, P+1+len(diagonal)) that holds its value.
    ``diagonal``: the positions of the pairs (i, i) in the pair list.
    """

    cross_index: np.ndarray
    sym_index: np.ndarray
    diagonal: np.ndarray


def dot_indices(num_sparse_features: int, rows: np.ndarray, cols: np.ndarray) -> DotIndices:
    """The :class:`DotIndices` of the kept pairs ``(rows[k], cols[k])``."""
    n, p = num_sparse_features + 1, len(rows)
    low, high = np.minimum(rows, cols), np.maximum(rows, cols)
    cross_index = np.where(high >= 1, low * num_sparse_features + high - 1, -1)
    diagonal = np.flatnonzero(rows == cols)
    sym_index = np.full(n * n, p)  # column P of the values is 0: pairs not kept
    sym_index[rows * n + cols] = np.arange(p)
    sym_index[cols * n + rows] = np.arange(p)
    sym_index[rows[diagonal] * (n + 1)] = p + 1 + np.arange(len(diagonal))
    return DotIndices(cross_index, sym_index, diagonal)


def dot_forward(dense: np.ndarray, combined: np.ndarray, indices: DotIndices) -> np.ndarray:
    """The output of :func:`refimpl.layers.dot.dot_interaction` for F >= 1, read from ``C Sᵀ``.

    ``concat(dense, (C Cᵀ)[:, rows, cols])``, (B, D + P).

    ``combined`` is ``C = [dense; sparse]`` (B, F+1, D), already stacked by the caller.
    """
    batch, n, dim = combined.shape
    num_features = n - 1
    out = np.empty((batch, dim + len(indices.cross_index)), combined.dtype)  # (B, D + P)
    self_pairs = np.flatnonzero(indices.cross_index < 0)  # (0, 0): the dense vector's square

    def rows_of(rows: slice) -> None:
        c = combined[rows]  # C, (b, F+1, D)
        cross = c @ c[:, 1:].transpose(0, 2, 1)  # C Sᵀ, (b, F+1, F)
        flat = cross.reshape(len(cross), (num_features + 1) * num_features)  # (b, (F+1)·F)
        np.take(flat, indices.cross_index, axis=1, out=out[rows, dim:])  # the pairs, (b, P)
        out[rows, :dim] = dense[rows]
        if self_pairs.size:
            out[rows, dim + self_pairs] = np.vecdot(dense[rows], dense[rows])[:, None]

    on_batch_slices(rows_of, batch, n * num_features * dim)
    return out


def dot_backward(
    d_out: np.ndarray, combined: np.ndarray, indices: DotIndices
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`refimpl.layers.dot.dot_interaction_backward`, with ``G + Gᵀ`` gathered.

    ``dC = (G + Gᵀ) C`` split into ``(d_dense, d_sparse)``.
    """
    batch, n, dim = combined.shape
    num_pairs = d_out.shape[1] - dim
    d_combined = np.empty_like(combined)  # dC, (B, F+1, D)
    d_dense = np.empty((batch, dim), combined.dtype)  # (B, D)

    def rows_of(rows: slice) -> None:
        d_pairs = d_out[rows, dim:]  # (b, P)
        # Entry (i, j) of G + Gᵀ is the gradient of the kept pair {i, j}, 0 if no pair {i, j}
        # is kept, twice the pair's on the diagonal (d(c·c)/dc = 2c).
        values = np.empty((len(d_pairs), num_pairs + 1 + len(indices.diagonal)), d_out.dtype)
        values[:, :num_pairs] = d_pairs
        values[:, num_pairs] = 0
        np.multiply(d_pairs[:, indices.diagonal], 2, out=values[:, num_pairs + 1 :])
        d_gram_sym = np.take(values, indices.sym_index, axis=1).reshape(-1, n, n)  # G + Gᵀ
        np.matmul(d_gram_sym, combined[rows], out=d_combined[rows])  # (b, F+1, D)
        np.add(d_out[rows, :dim], d_combined[rows, 0], out=d_dense[rows])  # (b, D)

    on_batch_slices(rows_of, batch, n * n * dim)
    return d_dense, d_combined[:, 1:]  # d_sparse: a view of d_combined, (B, F, D)
