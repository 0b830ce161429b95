"""DLRM's DCN interaction: a cross network over the flattened ``[dense; sparse]``.

TorchRec's ``torchrec.models.dlrm.InteractionDCNArch``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from refimpl.layers.base import (
    Layer,
    check_array,
    check_positive_int,
    combine_features,
    prefixed,
)
from refimpl.layers.crossnet import _CrossNetBase


class DCNCache(NamedTuple):
    crossnet: tuple | None  # the cross network's cache; None when F = 0 (passthrough)
    shape: tuple[int, int, int]  # (B, F+1, D), to fold d_x back into dense and sparse


def dcn_forward(dense, sparse, crossnet):
    """The DCN interaction's textbook forward: ``crossnet([dense; sparse] flattened)``.

    ``crossnet`` is the cross network's forward, ``x (B, N) -> (out, cache)`` (a layer's
    ``forward``, or e.g. :func:`~refimpl.layers.crossnet.low_rank_crossnet_forward` over its
    parameters). Returns ``(out (B, N), DCNCache)``; float and exact arrays alike.

    >>> square = lambda x: (x * x, x)
    >>> dcn_forward(np.array([[1.0, 2.0]]), np.array([[[3.0, 4.0]]]), square)[0]
    array([[ 1.,  4.,  9., 16.]])
    """
    batch, num_features, dim = sparse.shape
    combined = np.concatenate([dense[:, None, :], sparse], axis=1)  # (B, F+1, D)
    out, crossnet_cache = crossnet(combined.reshape(batch, (num_features + 1) * dim))  # (B, N)
    return out, DCNCache(crossnet_cache, combined.shape)


def dcn_backward(d_out, cache: DCNCache, crossnet):
    """``(d_dense, d_sparse, d_crossnet)`` of :func:`dcn_forward`.

    ``crossnet`` is the cross network's backward, ``(d_out, cache) -> (d_x, d_params)``. The
    reshape and the concatenation only move numbers, so their backward moves the gradient
    back: row 0 of ``d_x.reshape(B, F+1, D)`` to dense, the others to sparse.
    """
    crossnet_cache, (batch, num_vectors, dim) = cache  # (B, F+1, D)
    d_flat, d_crossnet = crossnet(d_out, crossnet_cache)  # (B, N)
    d_combined = d_flat.reshape(batch, num_vectors, dim)  # (B, F+1, D)
    return d_combined[:, 0].copy(), d_combined[:, 1:].copy(), d_crossnet


class InteractionDCNArch(Layer):
    """A cross network applied to ``combined = [dense; sparse]`` flattened to (B, N).

    DCN-V2 (https://arxiv.org/abs/2008.13535) as DLRM's interaction layer. The output is the
    cross network's output, (B, N) with N = (F+1)·D; the dense vector is not concatenated again.

    Parameters
    ----------
    num_sparse_features : int
        F >= 0. With F = 0 the layer returns ``dense`` unchanged and never calls the cross
        network, as TorchRec does.
    crossnet : CrossNet, LowRankCrossNet, VectorCrossNet or LowRankMixtureCrossNet
        Its ``in_features`` must be (F+1)·D for the inputs given; its dtype is the layer's.

    Attributes
    ----------
    params : dict
        The cross network's parameters, prefixed ``crossnet.`` as in TorchRec's state_dict.

    Notes
    -----
    Forward, with ``crossnet`` written f::

        combined = concat(dense[:, None], sparse, axis=1)   (B, F+1, D)
        out      = f(combined.reshape(B, N))                (B, N)

    Backward: the reshape and the concatenation only move numbers, so their backward moves the
    gradient back::

        d_combined = f.backward(d_out).reshape(B, F+1, D)
        d_dense    = d_combined[:, 0]                       (B, D)
        d_sparse   = d_combined[:, 1:]                      (B, F, D)

    Examples
    --------
    >>> from refimpl.layers.crossnet import LowRankCrossNet
    >>> dcn = InteractionDCNArch(2, LowRankCrossNet(in_features=9, num_layers=1, seed=0))
    >>> list(dcn.params)
    ['crossnet.W_kernels.0', 'crossnet.V_kernels.0', 'crossnet.bias.0']
    >>> out, cache = dcn.forward(np.ones((4, 3)), np.ones((4, 2, 3)))   # B=4, F=2, D=3
    >>> out.shape
    (4, 9)
    >>> d_dense, d_sparse, d_params = dcn.backward(np.ones_like(out), cache)
    >>> d_dense.shape, d_sparse.shape
    ((4, 3), (4, 2, 3))
    """

    input_names = ("dense", "sparse")

    def __init__(self, num_sparse_features: int, crossnet: _CrossNetBase):
        if not isinstance(crossnet, _CrossNetBase):
            raise TypeError(
                "crossnet: expected a refimpl CrossNet, LowRankCrossNet, VectorCrossNet or "
                f"LowRankMixtureCrossNet, got {type(crossnet).__name__}"
            )
        super().__init__(crossnet.dtype)
        self.num_sparse_features = check_positive_int("num_sparse_features", num_sparse_features, 0)
        self.crossnet = crossnet
        self._children = {"crossnet": crossnet}

    def _config(self) -> str:
        return f"num_sparse_features={self.num_sparse_features}, crossnet={self.crossnet!r}"

    def _combine(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        """Validate the inputs and stack them: ``[dense; sparse]``, (B, F+1, D)."""
        combined, sizes = combine_features(dense, sparse, self.num_sparse_features, self.dtype)
        width = (self.num_sparse_features + 1) * sizes["D"]
        if self.crossnet.in_features != width:
            raise ValueError(
                f"crossnet: in_features is {self.crossnet.in_features}, but the inputs give "
                f"N = (F+1)·D = ({self.num_sparse_features}+1)·{sizes['D']} = {width}"
            )
        return combined  # (B, F+1, D)

    def forward(self, dense: np.ndarray, sparse: np.ndarray) -> tuple[np.ndarray, DCNCache]:
        """
        Parameters
        ----------
        dense : ndarray, shape (B, D)
        sparse : ndarray, shape (B, F, D)

        Returns
        -------
        out : ndarray, shape (B, N) with N = (F+1)·D; just ``dense`` when F = 0
        cache : DCNCache
        """
        combined = self._combine(dense, sparse)  # (B, F+1, D)
        if self.num_sparse_features == 0:  # TorchRec returns dense itself; a copy never aliases
            return dense.copy(), DCNCache(None, combined.shape)
        if len(dense) == 0:
            raise ValueError(
                "dense: expected B >= 1 samples, got B = 0 (TorchRec's InteractionDCNArch "
                "fails on an empty batch too: its reshape(B, -1) cannot infer -1 from no numbers)"
            )
        return dcn_forward(dense, sparse, self.crossnet.forward)

    def backward(self, d_out: np.ndarray, cache: DCNCache):
        """
        Parameters
        ----------
        d_out : ndarray, shape (B, N)
        cache : DCNCache from ``forward``

        Returns
        -------
        d_dense : ndarray, shape (B, D)
        d_sparse : ndarray, shape (B, F, D)
        d_params : dict, keyed and shaped like ``params``
        """
        crossnet_cache, (batch, num_vectors, dim) = cache  # (B, F+1, D)
        check_array("d_out", d_out, "B N", {"B": batch, "N": num_vectors * dim}, self.dtype)
        if crossnet_cache is None:  # F = 0: the cross network was never applied
            return d_out.copy(), np.zeros((batch, 0, dim), self.dtype), self.zero_param_grads()
        d_dense, d_sparse, d_crossnet = dcn_backward(d_out, cache, self.crossnet.backward)
        return d_dense, d_sparse, prefixed("crossnet", d_crossnet)

    def kink_distance(self, dense: np.ndarray, sparse: np.ndarray) -> float:
        """The cross network's distance to a ReLU kink on these inputs (inf when F = 0)."""
        combined = self._combine(dense, sparse)  # (B, F+1, D)
        if self.num_sparse_features == 0:
            return float("inf")
        batch, num_vectors, dim = combined.shape  # (B, F+1, D)
        return self.crossnet.kink_distance(combined.reshape(batch, num_vectors * dim))
