"""No interaction at all: the dense vector and the pooled embeddings side by side.

The baseline every interaction is measured against. The F + 1 vectors of width D are laid end
to end, and the top MLP alone must find whatever products of features matter. TorchRec has no
class for it, but builds the same thing when its ``DLRM_DCN`` is given zero cross layers: its
``InteractionDCNArch`` concatenates exactly so, and a cross network of no layers returns its
input.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from refimpl.layers.base import Layer, check_array, check_positive_int


def concat_interaction(dense, sparse):
    """``[dense, sparse_1, …, sparse_F]`` flattened: (B, D), (B, F, D) → (B, (F+1)·D).

    Textbook form: runs on float and exact object arrays alike. Returns ``(out, shape)``, the
    shape (B, F+1, D) being all the backward needs.

    >>> out, shape = concat_interaction(np.array([[1, 2]]), np.array([[[3, 4], [5, 6]]]))
    >>> out.tolist(), shape
    ([[1, 2, 3, 4, 5, 6]], (1, 3, 2))
    """
    combined = np.concatenate([dense[:, None, :], sparse], axis=1)  # (B, F+1, D)
    batch, rows, dim = combined.shape
    return combined.reshape(batch, rows * dim), combined.shape  # (B, (F+1)·D), even for B = 0


def concat_interaction_backward(d_out, shape):
    """``(d_dense (B, D), d_sparse (B, F, D))`` of :func:`concat_interaction`.

    A concatenation and a reshape only move numbers, so their backward moves the gradient back
    to where each number came from: the first D entries of a row to the dense vector, the next
    D to feature 1, and so on.
    """
    d_combined = d_out.reshape(shape)  # (B, F+1, D)
    return d_combined[:, 0], d_combined[:, 1:]


class ConcatCache(NamedTuple):
    shape: tuple[int, int, int]  # (B, F+1, D)


class InteractionConcatArch(Layer):
    """The no-interaction baseline: ``out = [dense; sparse]`` flattened to (B, (F+1)·D).

    Parameters
    ----------
    num_sparse_features : int
        F >= 1.
    dtype : float32 or float64
        Of the inputs it accepts (it has no parameters).

    Notes
    -----
    Forward and backward::

        out      = concat(dense[:, None], sparse, axis=1).reshape(B, (F+1)·D)
        d_dense  = d_out.reshape(B, F+1, D)[:, 0]          (B, D)
        d_sparse = d_out.reshape(B, F+1, D)[:, 1:]         (B, F, D)

    No sample's output mixes two features: any product of features (the user's taste times the
    movie's genre, say) is left to the top MLP, which has to build it out of ReLUs.

    Examples
    --------
    >>> arch = InteractionConcatArch(2)
    >>> out, cache = arch.forward(np.ones((4, 3)), np.zeros((4, 2, 3)))   # B=4, F=2, D=3
    >>> out.shape, out[0].tolist()
    ((4, 9), [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    >>> d_dense, d_sparse, d_params = arch.backward(np.arange(36.0).reshape(4, 9), cache)
    >>> d_dense[0].tolist(), d_sparse[0, 1].tolist(), d_params
    ([0.0, 1.0, 2.0], [6.0, 7.0, 8.0], {})
    """

    input_names = ("dense", "sparse")

    def __init__(self, num_sparse_features: int, *, dtype=np.float64):
        super().__init__(dtype)
        self.num_sparse_features = check_positive_int("num_sparse_features", num_sparse_features)

    def _config(self) -> str:
        return f"num_sparse_features={self.num_sparse_features}"

    def forward(self, dense: np.ndarray, sparse: np.ndarray) -> tuple[np.ndarray, ConcatCache]:
        """
        Parameters
        ----------
        dense : ndarray, shape (B, D)
        sparse : ndarray, shape (B, F, D)

        Returns
        -------
        out : ndarray, shape (B, (F+1)·D)
        cache : ConcatCache
        """
        sizes = {"F": self.num_sparse_features}
        check_array("dense", dense, "B D", sizes, self.dtype)
        check_array("sparse", sparse, "B F D", sizes, self.dtype)
        out, shape = concat_interaction(dense, sparse)
        return out, ConcatCache(shape)

    def backward(self, d_out: np.ndarray, cache: ConcatCache):
        """
        Parameters
        ----------
        d_out : ndarray, shape (B, (F+1)·D)
        cache : ConcatCache from ``forward``

        Returns
        -------
        d_dense : ndarray, shape (B, D)
        d_sparse : ndarray, shape (B, F, D)
        d_params : dict, empty
        """
        batch, rows, dim = cache.shape
        check_array("d_out", d_out, "B N", {"B": batch, "N": rows * dim}, self.dtype)
        d_dense, d_sparse = concat_interaction_backward(d_out, cache.shape)
        return d_dense.copy(), d_sparse.copy(), {}  # copies: never views of d_out
