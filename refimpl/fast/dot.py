"""The dot interaction, fast: :func:`refimpl.layers.dot.dot_interaction` and its backward.

Forward: the kept pairs of ``Z = C Cᵀ`` are read from ``C Sᵀ`` instead. Z is symmetric, so pair
(i, j) is Z[min, max], and max >= 1 except for (0, 0); ``(C Sᵀ)[b, i, j-1] = c_i·c_j``. ``C Sᵀ``
is a plain matrix product per sample, where NumPy runs ``C @ Cᵀ`` (one buffer twice) through
the slower syrk. Backward: ``G + Gᵀ`` is gathered into one array from the pair gradients
instead of scattering ``G`` and adding its transpose. Both stacks of per-sample products run
on all cores (:func:`refimpl.fast.threads.stacked_matmul`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from refimpl.fast.threads import stacked_matmul


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


def dot_forward(
    dense: np.ndarray, sparse: np.ndarray, combined: np.ndarray, indices: DotIndices
) -> np.ndarray:
    """The output of :func:`refimpl.layers.dot.dot_interaction` for F >= 1, read from ``C Sᵀ``.

    ``concat(dense, (C Cᵀ)[:, rows, cols])``, (B, D + P).

    ``combined`` is ``C = [dense; sparse]`` (B, F+1, D), already stacked by the caller.
    """
    batch, num_features, _ = sparse.shape
    cross = stacked_matmul(combined, sparse.transpose(0, 2, 1))  # C Sᵀ, (B, F+1, F)
    flat = cross.reshape(batch, (num_features + 1) * num_features)  # (B, (F+1)·F)
    pairs = np.take(flat, indices.cross_index, axis=1)  # (B, P)
    self_pairs = indices.cross_index < 0  # (0, 0): the dense vector's own square
    if self_pairs.any():
        pairs[:, self_pairs] = np.einsum("bd,bd->b", dense, dense)[:, None]
    return np.concatenate([dense, pairs], axis=1)  # (B, D + P)


def dot_backward(
    d_out: np.ndarray, combined: np.ndarray, indices: DotIndices
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`refimpl.layers.dot.dot_interaction_backward`, with ``G + Gᵀ`` gathered.

    ``dC = (G + Gᵀ) C`` split into ``(d_dense, d_sparse)``.
    """
    batch, num_vectors, dim = combined.shape  # (B, F+1, D)
    d_pairs = d_out[:, dim:]  # (B, P)
    # Entry (i, j) of G + Gᵀ is the gradient of the kept pair {i, j}, 0 if no pair {i, j} is
    # kept, twice the pair's on the diagonal (d(c·c)/dc = 2c).
    zero = np.zeros((batch, 1), combined.dtype)
    values = np.concatenate([d_pairs, zero, 2 * d_pairs[:, indices.diagonal]], axis=1)
    d_gram_sym = np.take(values, indices.sym_index, axis=1).reshape(
        batch, num_vectors, num_vectors
    )  # G + Gᵀ
    d_combined = stacked_matmul(d_gram_sym, combined)  # (B, F+1, D)
    d_dense = d_out[:, :dim] + d_combined[:, 0]  # (B, D)
    return d_dense, d_combined[:, 1:]  # d_sparse: a view of d_combined, (B, F, D)
