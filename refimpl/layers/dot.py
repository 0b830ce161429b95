"""The default DLRM interaction: dense passthrough plus pairwise dot products.

TorchRec's ``torchrec.models.dlrm.InteractionArch``. With ``C = [dense; sparse]`` stacked per
sample (dense at row 0), the output is ``concat(dense, (C Cᵀ)[i, j] for the kept pairs)``.
:func:`dot_interaction` and :func:`dot_interaction_backward` are the textbook forward and
backward (they run on float arrays and on exact object arrays alike); the layer computes the
same numbers through :mod:`refimpl.fast.dot`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from refimpl.fast.dot import dot_backward, dot_forward, dot_indices
from refimpl.layers.base import Layer, check_array, check_positive_int, combine_features

PAIR_ORDERS = ("triu", "tril")


def pair_indices(
    num_sparse_features: int, self_interaction: bool = False, pair_order: str = "triu"
) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices, into the (F+1, F+1) matrix ``C Cᵀ``, of the kept pairs.

    ``"triu"`` is TorchRec's order: the strict upper triangle, row-major,
    (0,1), (0,2), …, (0,F), (1,2), … . ``"tril"`` is facebookresearch/dlrm's: the strict lower
    triangle, row-major, (1,0), (2,0), (2,1), (3,0), … . ``self_interaction=True`` keeps the
    diagonal too (dlrm's ``arch_interaction_itself``).

    >>> rows, cols = pair_indices(2)
    >>> list(zip(rows.tolist(), cols.tolist()))
    [(0, 1), (0, 2), (1, 2)]
    >>> rows, cols = pair_indices(2, self_interaction=True, pair_order="tril")
    >>> list(zip(rows.tolist(), cols.tolist()))
    [(0, 0), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]
    """
    if pair_order not in PAIR_ORDERS:
        raise ValueError(f"pair_order: expected one of {PAIR_ORDERS}, got {pair_order!r}")
    num_vectors = num_sparse_features + 1  # F+1: the dense vector and the F sparse ones
    offset = 0 if self_interaction else 1
    if pair_order == "triu":
        return np.triu_indices(num_vectors, k=offset)
    return np.tril_indices(num_vectors, k=-offset)


class DotCache(NamedTuple):
    combined: np.ndarray  # C = [dense; sparse], (B, F+1, D)


class InteractionArch(Layer):
    """Dense passthrough plus the pairwise dot products of ``[dense; sparse]``.

    Parameters
    ----------
    num_sparse_features : int
        F, the number of sparse (embedding) features.
    self_interaction : bool
        Also keep each feature's dot product with itself (the diagonal of ``C Cᵀ``), as the
        original facebookresearch/dlrm can. TorchRec does not: default False.
    pair_order : {"triu", "tril"}
        The order of the kept pairs; "triu" (default) is TorchRec's, "tril" dlrm's.
    dtype : float32 or float64
        Unused (no parameters); accepted for a uniform constructor.

    Notes
    -----
    With ``C`` of shape (B, F+1, D) and the kept pairs ``(i_k, j_k)``::

        Z = C Cᵀ                                  (B, F+1, F+1)
        out = concat(dense, Z[:, i_k, j_k])       (B, D + P)

    where P = F(F+1)/2 (or (F+1)(F+2)/2 with the diagonal). Backward scatters the pair part of
    the upstream gradient into ``G`` (B, F+1, F+1), zero elsewhere; since ``dZ = G`` and
    ``Z = C Cᵀ``, ``dC = (G + Gᵀ) C``. A diagonal entry of ``G`` appears twice in ``G + Gᵀ``,
    which is exactly ``d(c·c)/dc = 2c``. Then ``d_dense = d_out[:, :D] + dC[:, 0]`` and
    ``d_sparse = dC[:, 1:]``.

    For speed the layer reads the pairs from ``C Sᵀ`` (a plain matrix product per sample)
    rather than ``C Cᵀ`` (which NumPy hands to the slower syrk), gathers ``G + Gᵀ`` into one
    array instead of scattering ``G`` and adding its transpose, and splits the batch over all
    cores (:mod:`refimpl.fast.dot`). :func:`interaction_plain`
    and :func:`interaction_plain_backward` keep the textbook forms above; the tests check that
    the layer gives the same numbers.

    Examples
    --------
    >>> arch = InteractionArch(num_sparse_features=2)
    >>> dense = np.array([[1.0, 2.0]])             # B=1, D=2
    >>> sparse = np.array([[[3.0, 4.0], [5.0, 6.0]]])  # F=2
    >>> out, cache = arch.forward(dense, sparse)
    >>> out                                         # dense, then d·s0, d·s1, s0·s1
    array([[ 1.,  2., 11., 17., 39.]])
    >>> d_dense, d_sparse, d_params = arch.backward(np.ones_like(out), cache)
    >>> d_dense                                     # 1 + s0 + s1
    array([[ 9., 12.]])
    """

    input_names = ("dense", "sparse")

    def __init__(
        self,
        num_sparse_features: int,
        *,
        self_interaction: bool = False,
        pair_order: str = "triu",
        dtype=np.float64,
    ):
        super().__init__(dtype)
        self.num_sparse_features = check_positive_int("num_sparse_features", num_sparse_features, 0)
        self.self_interaction = bool(self_interaction)
        self.pair_order = pair_order
        self.rows, self.cols = pair_indices(self.num_sparse_features, self_interaction, pair_order)
        self._fast_indices = dot_indices(self.num_sparse_features, self.rows, self.cols)

    @property
    def num_pairs(self) -> int:
        return len(self.rows)

    def output_size(self, embedding_dim: int) -> int:
        """D + P, the output width for embedding dimension D."""
        return embedding_dim + self.num_pairs if self.num_sparse_features else embedding_dim

    def _config(self) -> str:
        extra = ", self_interaction=True" if self.self_interaction else ""
        extra += f", pair_order={self.pair_order!r}" if self.pair_order != "triu" else ""
        return f"num_sparse_features={self.num_sparse_features}{extra}"

    def forward(self, dense: np.ndarray, sparse: np.ndarray) -> tuple[np.ndarray, DotCache]:
        """
        Parameters
        ----------
        dense : ndarray, shape (B, D)
        sparse : ndarray, shape (B, F, D)

        Returns
        -------
        out : ndarray, shape (B, D + P); just ``dense`` when F = 0
        cache : DotCache
        """
        combined, _ = combine_features(dense, sparse, self.num_sparse_features)  # (B, F+1, D)
        if self.num_sparse_features == 0:  # TorchRec returns dense itself; a copy is safer
            return dense.copy(), DotCache(combined)
        return dot_forward(dense, combined, self._fast_indices), DotCache(combined)

    def backward(self, d_out: np.ndarray, cache: DotCache):
        """
        Parameters
        ----------
        d_out : ndarray, shape (B, D + P)
        cache : DotCache from ``forward``

        Returns
        -------
        d_dense : ndarray, shape (B, D)
        d_sparse : ndarray, shape (B, F, D)
        d_params : dict, empty (the layer has no parameters)
        """
        (combined,) = cache
        batch, _n, dim = combined.shape
        check_array("d_out", d_out, "B P", {"B": batch, "P": self.output_size(dim)}, combined.dtype)
        if self.num_sparse_features == 0:
            return d_out.copy(), np.zeros((batch, 0, dim), combined.dtype), {}
        d_dense, d_sparse = dot_backward(d_out, combined, self._fast_indices)
        return d_dense, d_sparse, {}


def dot_interaction(
    dense: np.ndarray, sparse: np.ndarray, rows: np.ndarray, cols: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The forward in its textbook form, ``Z = C Cᵀ`` then the kept pairs; also returns C.

    The layer computes the same pairs from ``C Sᵀ`` (faster); this is what it computes.

    >>> rows, cols = pair_indices(2)
    >>> out, combined = dot_interaction(np.array([[1.0, 2.0]]),
    ...                                   np.array([[[3.0, 4.0], [5.0, 6.0]]]), rows, cols)
    >>> out
    array([[ 1.,  2., 11., 17., 39.]])
    """
    combined = np.concatenate([dense[:, None, :], sparse], axis=1)  # C, (B, F+1, D)
    gram = combined @ combined.transpose(0, 2, 1)  # Z = C Cᵀ, (B, F+1, F+1)
    pairs = gram[:, rows, cols]  # (B, P)
    return np.concatenate([dense, pairs], axis=1), combined  # (B, D + P)


def dot_interaction_backward(
    d_out: np.ndarray, combined: np.ndarray, rows: np.ndarray, cols: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The backward in its textbook form: ``G`` scattered, then ``dC = (G + Gᵀ) C``.

    The layer gathers ``G + Gᵀ`` into one array instead of building two; same result.

    >>> rows, cols = pair_indices(2)
    >>> out, combined = dot_interaction(np.array([[1.0, 2.0]]),
    ...                                   np.array([[[3.0, 4.0], [5.0, 6.0]]]), rows, cols)
    >>> d_dense, d_sparse = dot_interaction_backward(np.ones_like(out), combined, rows, cols)
    >>> d_dense                                     # 1 + s0 + s1
    array([[ 9., 12.]])
    """
    batch, num_vectors, dim = combined.shape  # (B, F+1, D)
    d_gram = np.zeros((batch, num_vectors, num_vectors), combined.dtype)  # G, (B, F+1, F+1)
    d_gram[:, rows, cols] = d_out[:, dim:]
    d_combined = (d_gram + d_gram.transpose(0, 2, 1)) @ combined  # (B, F+1, D)
    d_dense = d_out[:, :dim] + d_combined[:, 0]  # (B, D)
    return d_dense, d_combined[:, 1:]  # (B, D), (B, F, D)
