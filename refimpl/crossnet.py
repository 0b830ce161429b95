"""The cross networks of DCN (Deep & Cross Network), as TorchRec's ``torchrec.modules.crossnet``.

Paper: DCN-V2, Wang et al. 2020, https://arxiv.org/abs/2008.13535 (the vector form is DCN-V1,
https://arxiv.org/abs/1708.05123). Every network maps a batch ``x`` (B, N) to (B, N) by ``L``
layers that all multiply elementwise by the input, written ``x̂`` as in the seed (TorchRec
calls it ``x_0`` and so does the code here, ``x0``; it is also where the recurrence
starts)::

    x_{l+1} = x̂ ⊙ c_l(x_l) + x_l        (VectorCrossNet adds its bias outside the product)

where ``c_l`` is the layer's "cross": ``W x + b`` (CrossNet), ``W (V x) + b``
(LowRankCrossNet), or a softmax-gated mixture of low-rank experts (LowRankMixtureCrossNet).

Backward runs the layers in reverse. With ``dx_{l+1} = ∂L/∂x_{l+1}``, each layer hands down::

    dx_l  = dx_{l+1} + (∂c_l/∂x_l)ᵀ (x̂ ⊙ dx_{l+1})     (the identity path, then the cross)
    dx̂   += c_l ⊙ dx_{l+1}                               (every layer reads x̂)

and at the end ``d_input = dx_0 + dx̂``: the input is both the first ``x_l`` and the ``x̂``
every layer multiplies by, so its gradient is the sum of the two.

Arrays are kept as (B, N) rows; TorchRec's trailing unit axis (B, N, 1) is dropped.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from refimpl._layer import (
    Layer,
    as_rng,
    check_array,
    check_positive_int,
    linear_uniform,
    xavier_normal,
)
from refimpl.activations import get_activation

PAPER = "https://arxiv.org/abs/2008.13535"
KINDS = ("CrossNet", "LowRankCrossNet", "VectorCrossNet", "LowRankMixtureCrossNet")


class _CrossNetBase(Layer):
    """What the four networks share: sizes, input validation, and the config string."""

    input_names = ("x",)

    def __init__(self, in_features: int, num_layers: int, dtype):
        super().__init__(dtype)
        self.in_features = check_positive_int("in_features", in_features)
        self.num_layers = check_positive_int("num_layers", num_layers)

    def _check_input(self, x: np.ndarray) -> np.ndarray:
        return check_array("x", x, "B N", {"N": self.in_features}, self.dtype)

    def _check_d_out(self, d_out: np.ndarray, xs: np.ndarray) -> np.ndarray:
        _, batch, n = xs.shape
        return check_array("d_out", d_out, "B N", {"B": batch, "N": n}, xs.dtype)

    def _config(self) -> str:
        return f"in_features={self.in_features}, num_layers={self.num_layers}"

    def backward(self, d_out: np.ndarray, cache) -> tuple[np.ndarray, dict]:
        """Backward of CrossNet, LowRankCrossNet and VectorCrossNet (the mixture has its own).

        Their caches are ``(xs, *per-layer arrays)``; each network's ``_layer_backward`` takes
        one layer in reverse. Every layer's share of dx̂ is added up, and the input's gradient
        is ``dx_0 + dx̂``.

        Parameters
        ----------
        d_out : ndarray, shape (B, N)
        cache : the network's cache from ``forward``

        Returns
        -------
        d_x : ndarray, shape (B, N)
        d_params : dict, keyed and shaped like ``params``
        """
        xs, *per_layer = cache
        self._check_d_out(d_out, xs)
        x0 = xs[0]
        d_x, d_x0, grads = d_out, np.zeros_like(x0), {}
        for l in reversed(range(self.num_layers)):
            saved = (array[l] for array in per_layer)
            d_x, d_x0_l, layer_grads = self._layer_backward(l, d_x, x0, xs[l], *saved)
            d_x0 += d_x0_l  # every layer multiplies by x̂
            grads.update(layer_grads)
        d_x0 += d_x  # the input's gradient: dx_0 + dx̂, (B, N)
        return d_x0, {k: grads[k] for k in self._params}


def _layer_inputs(x0: np.ndarray, num_layers: int) -> np.ndarray:
    """The cache's ``xs`` (L, B, N), ``xs[0] = x̂``; layer l writes ``x_{l+1}`` into ``xs[l+1]``
    (:func:`_next_x`), so no list of per-layer arrays is copied into a stack at the end."""
    xs = np.empty((num_layers, *x0.shape), x0.dtype)  # (L, B, N)
    xs[0] = x0
    return xs


def _next_x(xs: np.ndarray, l: int) -> np.ndarray:
    """Where layer l writes ``x_{l+1}``: the next slot of ``xs``, or a fresh output array."""
    return xs[l + 1] if l + 1 < len(xs) else np.empty_like(xs[0])  # (B, N)


class CrossCache(NamedTuple):
    xs: np.ndarray  # x_l entering each layer, (L, B, N); xs[0] is x̂
    crosses: np.ndarray  # c_l = W_l x_l + b_l, (L, B, N)


class CrossNet(_CrossNetBase):
    """Full-rank cross network: ``x_{l+1} = x̂ ⊙ (W_l x_l + b_l) + x_l``.

    DCN-V2's cross layer (https://arxiv.org/abs/2008.13535), TorchRec's
    ``torchrec.modules.crossnet.CrossNet``.

    Parameters
    ----------
    in_features : int
        N, the width of the input (``(F+1)·D`` inside ``InteractionDCNArch``).
    num_layers : int
        L >= 1.
    seed : int or Generator, optional
        Initialisation as TorchRec: kernels xavier-normal, biases zero.
    dtype : float32 or float64

    Attributes
    ----------
    params : dict
        ``kernels.l`` (N, N) for every layer, then ``bias.l`` (N, 1).

    Notes
    -----
    Forward, for l = 0 … L-1, with rows ``x_l`` of shape (B, N)::

        c_l     = x_l W_lᵀ + b_lᵀ                   (B, N)
        x_{l+1} = x̂ ⊙ c_l + x_l                     (B, N)

    Backward, for l = L-1 … 0, from ``dx_L = d_out``::

        dc_l    = x̂ ⊙ dx_{l+1}                      (B, N)
        dW_l    = dc_lᵀ x_l                         (N, N)
        db_l    = Σ_batch dc_l                      (N, 1)
        dx̂     += c_l ⊙ dx_{l+1}                    (B, N)
        dx_l    = dx_{l+1} + dc_l W_l               (B, N)

    and ``d_input = dx_0 + dx̂``.

    Examples
    --------
    With ``W = I`` and ``b = 0`` one layer gives ``x ⊙ x + x``:

    >>> net = CrossNet(in_features=2, num_layers=1)
    >>> net.load_state_dict({"kernels.0": np.eye(2), "bias.0": np.zeros((2, 1))})
    >>> y, cache = net.forward(np.array([[1.0, -2.0]]))
    >>> y
    array([[2., 2.]])
    >>> d_x, d_params = net.backward(np.ones_like(y), cache)
    >>> d_x                                           # 2x + 1
    array([[ 3., -3.]])
    """

    def __init__(self, in_features: int, num_layers: int, *, seed=None, dtype=np.float64):
        super().__init__(in_features, num_layers, dtype)
        rng, n = as_rng(seed), self.in_features
        for l in range(self.num_layers):
            self._params[f"kernels.{l}"] = xavier_normal(rng, (n, n), self.dtype)
        for l in range(self.num_layers):
            self._params[f"bias.{l}"] = np.zeros((n, 1), self.dtype)

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, CrossCache]:
        """
        Parameters
        ----------
        x : ndarray, shape (B, N)

        Returns
        -------
        out : ndarray, shape (B, N)
        cache : CrossCache
        """
        x0 = self._check_input(x)
        xs = _layer_inputs(x0, self.num_layers)  # (L, B, N)
        crosses = np.empty_like(xs)  # (L, B, N)
        for l in range(self.num_layers):
            cross = np.matmul(xs[l], self._params[f"kernels.{l}"].T, out=crosses[l])  # (B, N)
            cross += self._params[f"bias.{l}"][:, 0]  # c_l = W_l x_l + b_l, (B, N)
            x_next = np.multiply(x0, cross, out=_next_x(xs, l))  # x̂ ⊙ c_l, (B, N)
            x_next += xs[l]  # x_{l+1} = x̂ ⊙ c_l + x_l, (B, N)
        return x_next, CrossCache(xs, crosses)

    def _layer_backward(self, l, d_next, x0, x_l, cross):
        """One layer in reverse: ``(dx_l, this layer's share of dx̂, its parameter grads)``."""
        kernel = self._params[f"kernels.{l}"]  # (N, N)
        d_cross = x0 * d_next  # (B, N)
        grads = {
            f"kernels.{l}": d_cross.T @ x_l,  # (N, N)
            f"bias.{l}": d_cross.sum(axis=0)[:, None],  # (N, 1)
        }
        d_x = d_cross @ kernel  # the cross path, (B, N)
        d_x += d_next  # + the identity path
        return d_x, cross * d_next, grads


class LowRankCache(NamedTuple):
    xs: np.ndarray  # x_l entering each layer, (L, B, N)
    projections: np.ndarray  # v_l = V_l x_l, (L, B, r)
    crosses: np.ndarray  # c_l = W_l v_l + b_l, (L, B, N)


class LowRankCrossNet(_CrossNetBase):
    """Low-rank cross network: ``x_{l+1} = x̂ ⊙ (W_l (V_l x_l) + b_l) + x_l``.

    DCN-V2's low-rank cross layer (https://arxiv.org/abs/2008.13535), TorchRec's
    ``torchrec.modules.crossnet.LowRankCrossNet`` (the cross net of the DLRM DCN example).

    Parameters
    ----------
    in_features : int
        N.
    num_layers : int
        L >= 1.
    low_rank : int
        r >= 1, the rank of each layer's ``W_l V_l``.
    seed : int or Generator, optional
        Initialisation as TorchRec: kernels xavier-normal, biases zero.
    dtype : float32 or float64

    Attributes
    ----------
    params : dict
        ``W_kernels.l`` (N, r), then ``V_kernels.l`` (r, N), then ``bias.l`` (N,).

    Notes
    -----
    Forward, for l = 0 … L-1::

        v_l     = x_l V_lᵀ                          (B, r)
        c_l     = v_l W_lᵀ + b_l                    (B, N)
        x_{l+1} = x̂ ⊙ c_l + x_l                     (B, N)

    Backward, for l = L-1 … 0, from ``dx_L = d_out``::

        dc_l    = x̂ ⊙ dx_{l+1}                      (B, N)
        dW_l    = dc_lᵀ v_l                         (N, r)
        db_l    = Σ_batch dc_l                      (N,)
        dv_l    = dc_l W_l                          (B, r)
        dV_l    = dv_lᵀ x_l                         (r, N)
        dx̂     += c_l ⊙ dx_{l+1}                    (B, N)
        dx_l    = dx_{l+1} + dv_l V_l               (B, N)

    and ``d_input = dx_0 + dx̂``.

    Examples
    --------
    >>> net = LowRankCrossNet(in_features=3, num_layers=2, low_rank=1, seed=0)
    >>> [(k, v.shape) for k, v in net.params.items()][:3]
    [('W_kernels.0', (3, 1)), ('W_kernels.1', (3, 1)), ('V_kernels.0', (1, 3))]
    >>> y, cache = net.forward(np.zeros((4, 3)))  # x̂ = 0 makes every cross vanish
    >>> float(np.abs(y).max())
    0.0
    """

    def __init__(
        self,
        in_features: int,
        num_layers: int,
        low_rank: int = 1,
        *,
        seed=None,
        dtype=np.float64,
    ):
        super().__init__(in_features, num_layers, dtype)
        self.low_rank = check_positive_int("low_rank", low_rank)
        rng, n, r = as_rng(seed), self.in_features, self.low_rank
        for l in range(self.num_layers):
            self._params[f"W_kernels.{l}"] = xavier_normal(rng, (n, r), self.dtype)
        for l in range(self.num_layers):
            self._params[f"V_kernels.{l}"] = xavier_normal(rng, (r, n), self.dtype)
        for l in range(self.num_layers):
            self._params[f"bias.{l}"] = np.zeros(n, self.dtype)

    def _config(self) -> str:
        return f"{super()._config()}, low_rank={self.low_rank}"

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, LowRankCache]:
        """
        Parameters
        ----------
        x : ndarray, shape (B, N)

        Returns
        -------
        out : ndarray, shape (B, N)
        cache : LowRankCache
        """
        x0 = self._check_input(x)
        xs = _layer_inputs(x0, self.num_layers)  # (L, B, N)
        projections = np.empty((self.num_layers, x0.shape[0], self.low_rank), self.dtype)
        crosses = np.empty_like(xs)  # (L, B, N)
        for l in range(self.num_layers):
            v, w = self._params[f"V_kernels.{l}"], self._params[f"W_kernels.{l}"]
            projection = np.matmul(xs[l], v.T, out=projections[l])  # v_l = V_l x_l, (B, r)
            cross = np.matmul(projection, w.T, out=crosses[l])  # W_l v_l, (B, N)
            cross += self._params[f"bias.{l}"]  # c_l = W_l v_l + b_l, (B, N)
            x_next = np.multiply(x0, cross, out=_next_x(xs, l))  # x̂ ⊙ c_l, (B, N)
            x_next += xs[l]  # x_{l+1} = x̂ ⊙ c_l + x_l, (B, N)
        return x_next, LowRankCache(xs, projections, crosses)

    def _layer_backward(self, l, d_next, x0, x_l, projection, cross):
        """One layer in reverse: ``(dx_l, this layer's share of dx̂, its parameter grads)``."""
        w, v = self._params[f"W_kernels.{l}"], self._params[f"V_kernels.{l}"]  # (N, r), (r, N)
        d_cross = x0 * d_next  # (B, N)
        d_projection = d_cross @ w  # (B, r)
        grads = {
            f"W_kernels.{l}": d_cross.T @ projection,  # (N, r)
            f"V_kernels.{l}": d_projection.T @ x_l,  # (r, N)
            f"bias.{l}": d_cross.sum(axis=0),  # (N,)
        }
        d_x = d_projection @ v  # the cross path, (B, N)
        d_x += d_next  # + the identity path
        return d_x, cross * d_next, grads


class VectorCache(NamedTuple):
    xs: np.ndarray  # x_l entering each layer, (L, B, N)
    scores: np.ndarray  # s_l = x_l · w_l, (L, B, 1)


class VectorCrossNet(_CrossNetBase):
    """Vector cross network (DCN-V1): ``x_{l+1} = x̂ (x_lᵀ w_l) + b_l + x_l``.

    TorchRec's ``torchrec.modules.crossnet.VectorCrossNet``; DCN-V1
    (https://arxiv.org/abs/1708.05123), the rank-one special case of DCN-V2
    (https://arxiv.org/abs/2008.13535). The bias is added *outside* the product with ``x̂``:
    that is what TorchRec's code computes (its docstring writes ``x̂ * (W·x + b)``).

    Parameters
    ----------
    in_features : int
        N.
    num_layers : int
        L >= 1.
    seed : int or Generator, optional
        Initialisation as TorchRec: kernels xavier-normal, biases zero.
    dtype : float32 or float64

    Attributes
    ----------
    params : dict
        ``kernels.l`` (N, 1), then ``bias.l`` (N, 1).

    Notes
    -----
    Forward, for l = 0 … L-1::

        s_l     = x_l w_l                           (B, 1)   one score per sample
        x_{l+1} = x̂ s_l + b_lᵀ + x_l                (B, N)

    Backward, for l = L-1 … 0, from ``dx_L = d_out``::

        ds_l    = Σ_N x̂ ⊙ dx_{l+1}                  (B, 1)
        dw_l    = x_lᵀ ds_l                         (N, 1)
        db_l    = Σ_batch dx_{l+1}                  (N, 1)   no x̂ factor: b sits outside
        dx̂     += s_l dx_{l+1}                      (B, N)
        dx_l    = dx_{l+1} + ds_l w_lᵀ              (B, N)

    and ``d_input = dx_0 + dx̂``.

    Examples
    --------
    With ``w = 0`` a layer just adds its bias:

    >>> net = VectorCrossNet(in_features=2, num_layers=1)
    >>> net.load_state_dict({"kernels.0": np.zeros((2, 1)), "bias.0": np.array([[1.0], [2.0]])})
    >>> net(np.array([[10.0, 20.0]]))
    array([[11., 22.]])
    """

    def __init__(self, in_features: int, num_layers: int, *, seed=None, dtype=np.float64):
        super().__init__(in_features, num_layers, dtype)
        rng, n = as_rng(seed), self.in_features
        for l in range(self.num_layers):
            self._params[f"kernels.{l}"] = xavier_normal(rng, (n, 1), self.dtype)
        for l in range(self.num_layers):
            self._params[f"bias.{l}"] = np.zeros((n, 1), self.dtype)

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, VectorCache]:
        """
        Parameters
        ----------
        x : ndarray, shape (B, N)

        Returns
        -------
        out : ndarray, shape (B, N)
        cache : VectorCache
        """
        x0 = self._check_input(x)
        xs = _layer_inputs(x0, self.num_layers)  # (L, B, N)
        scores = np.empty((self.num_layers, x0.shape[0], 1), self.dtype)  # (L, B, 1)
        for l in range(self.num_layers):
            score = np.matmul(xs[l], self._params[f"kernels.{l}"], out=scores[l])  # s_l, (B, 1)
            x_next = np.multiply(x0, score, out=_next_x(xs, l))  # x̂ s_l, (B, N)
            x_next += self._params[f"bias.{l}"][:, 0]  # + b_l
            x_next += xs[l]  # x_{l+1} = x̂ s_l + b_l + x_l, (B, N)
        return x_next, VectorCache(xs, scores)

    def _layer_backward(self, l, d_next, x0, x_l, score):
        """One layer in reverse: ``(dx_l, this layer's share of dx̂, its parameter grads)``."""
        kernel = self._params[f"kernels.{l}"]  # (N, 1)
        d_score = np.vecdot(x0, d_next)[:, None]  # Σ_N x̂ ⊙ dx_{l+1}, no (B, N) temporary, (B, 1)
        grads = {
            f"kernels.{l}": x_l.T @ d_score,  # (N, 1)
            f"bias.{l}": d_next.sum(axis=0)[:, None],  # (N, 1)
        }
        d_x = d_score * kernel[:, 0]  # the score path, ds_l w_lᵀ (an outer product), (B, N)
        d_x += d_next  # + the identity path
        return d_x, score * d_next, grads


class MixtureCache(NamedTuple):
    xs: np.ndarray  # x_l entering each layer, (L, B, N)
    act1: np.ndarray  # h_l = g(a_l), a_l = V_l x_l, expert by expert, (L, K, B, r)
    act2: np.ndarray  # h̃_l = g(e_l), e_l = C_l h_l, (L, K, B, r)
    mixes: np.ndarray  # m_l = Σ_k p_lk c_lk, c_lk = U_lk h̃_lk + b_l, (L, B, N)
    probs: np.ndarray  # softmax of the gate logits, (L, B, K); all ones when K = 1


def _side_by_side(stacked: np.ndarray) -> np.ndarray:
    """(K, B, r) -> (B, K·r): the experts' rows next to each other, expert k in columns
    k·r … k·r + r − 1, so that a sum over experts of (B, r) @ (r, N) products is one product
    (B, K·r) @ (K·r, N) with the experts' matrices stacked in the same order."""
    k, batch, r = stacked.shape
    return stacked.transpose(1, 0, 2).reshape(batch, k * r)


class LowRankMixtureCrossNet(_CrossNetBase):
    """Mixture of low-rank cross experts with softmax gating (DCN-V2's DCN-Mix).

    DCN-V2 (https://arxiv.org/abs/2008.13535), TorchRec's
    ``torchrec.modules.crossnet.LowRankMixtureCrossNet``. Expert k of layer l is
    ``x̂ ⊙ (U_lk g(C_lk g(V_lk x_l)) + b_l)``; the layer adds the softmax-weighted sum of its
    experts to ``x_l``. The gate weights are one set shared by every layer. With K = 1 there is
    no gate at all (TorchRec skips it): ``x_{l+1} = expert + x_l``.

    Parameters
    ----------
    in_features : int
        N.
    num_layers : int
        L >= 1.
    num_experts : int
        K >= 1.
    low_rank : int
        r >= 1.
    activation : {"relu", "tanh", "identity"}
        g, by name (see :mod:`refimpl.activations`). TorchRec takes a callable (default
        ``torch.relu``); a callable here is a TypeError.
    seed : int or Generator, optional
        Initialisation as TorchRec: kernels xavier-normal (torch's fan rule for 3-D tensors),
        biases zero, gates ``nn.Linear``'s U(±1/√N).
    dtype : float32 or float64

    Attributes
    ----------
    params : dict
        ``U_kernels.l`` (K, N, r), ``V_kernels.l`` (K, r, N), ``bias.l`` (N, 1),
        ``gates.k.weight`` (1, N) for k < K only when K > 1, then ``C_kernels.l`` (K, r, r)
        — TorchRec's order.

    Notes
    -----
    Forward, for l = 0 … L-1, with samples as rows and all K experts at once (G stacks the K
    gate rows, (K, N))::

        a_lk    = x_l V_lkᵀ                         (K, B, r)
        h_lk    = g(a_lk)                           (K, B, r)
        e_lk    = h_lk C_lkᵀ                        (K, B, r)
        h̃_lk    = g(e_lk)                           (K, B, r)
        c_lk    = h̃_lk U_lkᵀ + b_lᵀ                 (K, B, N)   never formed, see below
        p_l     = softmax_k(x_l Gᵀ)                 (B, K)    (p_l = 1 when K = 1)
        m_l     = Σ_k p_lk c_lk                     (B, N)
        x_{l+1} = x̂ ⊙ m_l + x_l                     (B, N)    = Σ_k p_lk expert_lk + x_l

    Backward, for l = L-1 … 0, from ``dx_L = d_out``::

        dm_l    = x̂ ⊙ dx_{l+1}                      (B, N)
        dx̂     += m_l ⊙ dx_{l+1}                    (B, N)
        dp_lk   = Σ_N c_lk ⊙ dm_l                   (B, K)
        dz_l    = p_l ⊙ (dp_l − Σ_k p_lk dp_lk)     (B, K)    softmax backward (K > 1)
        dG     += dz_lᵀ x_l                         (K, N)    summed over layers: shared
        dc_lk   = p_lk dm_l                         (K, B, N)
        dU_lk   = dc_lkᵀ h̃_lk                       (K, N, r)
        db_l    = Σ_batch,k dc_lk                   (N, 1)
        dh̃_lk   = dc_lk U_lk                        (K, B, r)
        de_lk   = dh̃_lk ⊙ g'(e_lk)                  (K, B, r)
        dC_lk   = de_lkᵀ h_lk                       (K, r, r)
        da_lk   = (de_lk C_lk) ⊙ g'(a_lk)           (K, B, r)
        dV_lk   = da_lkᵀ x_l                        (K, r, N)
        dx_l    = dx_{l+1} + Σ_k da_lk V_lk + dz_l G   (B, N)

    and ``d_input = dx_0 + dx̂``.

    The code computes exactly this without the K crosses ``c_lk`` or their gradients
    ``dc_lk`` (each (K, B, N): K times the size of everything else in a layer). Since
    ``c_lk = h̃_lk U_lkᵀ + b_lᵀ`` and the weights sum to 1::

        m_l     = Σ_k (p_lk h̃_lk) U_lkᵀ + b_lᵀ      one (B, K·r) @ (K·r, N) product
        dh̃_lk   = p_lk (dm_l U_lk)
        dp_lk   = h̃_lk · (dm_l U_lk) + b_l · dm_l   per sample, reusing dm_l U_lk
        dU_lk   = dm_lᵀ (p_lk h̃_lk)
        db_l    = Σ_batch dm_l

    So the cache holds what those read and no more: ``x_l`` (dV, dG), ``h_l`` (dC, g'(a)),
    ``h̃_l`` (dU, dp, g'(e)), ``m_l`` (dx̂) and ``p_l``: L·(2N + 2K·r + K) numbers per sample.
    ``g'`` is read from g's output (see :mod:`refimpl.activations`), so the pre-activations
    are not kept; :meth:`pre_activations` recomputes them.

    Examples
    --------
    >>> net = LowRankMixtureCrossNet(8, 2, num_experts=3, low_rank=2, activation="tanh", seed=0)
    >>> [k for k in net.params if k.startswith("gates")]
    ['gates.0.weight', 'gates.1.weight', 'gates.2.weight']
    >>> y, cache = net.forward(np.ones((5, 8)))
    >>> cache.probs.shape, np.allclose(cache.probs.sum(axis=-1), 1.0)
    ((2, 5, 3), True)
    >>> cache.act1.shape, cache.mixes.shape            # (L, K, B, r), (L, B, N)
    ((2, 3, 5, 2), (2, 5, 8))
    >>> d_x, d_params = net.backward(np.ones_like(y), cache)
    >>> d_params["gates.0.weight"].shape
    (1, 8)
    """

    def __init__(
        self,
        in_features: int,
        num_layers: int,
        num_experts: int = 1,
        low_rank: int = 1,
        activation: str = "relu",
        *,
        seed=None,
        dtype=np.float64,
    ):
        super().__init__(in_features, num_layers, dtype)
        self.num_experts = check_positive_int("num_experts", num_experts)
        self.low_rank = check_positive_int("low_rank", low_rank)
        self._activation = get_activation(activation)
        self.activation = self._activation.name
        rng, n, k, r = as_rng(seed), self.in_features, self.num_experts, self.low_rank
        for l in range(self.num_layers):
            self._params[f"U_kernels.{l}"] = xavier_normal(rng, (k, n, r), self.dtype)
        for l in range(self.num_layers):
            self._params[f"V_kernels.{l}"] = xavier_normal(rng, (k, r, n), self.dtype)
        for l in range(self.num_layers):
            self._params[f"bias.{l}"] = np.zeros((n, 1), self.dtype)
        if k > 1:
            for i in range(k):
                self._params[f"gates.{i}.weight"] = linear_uniform(rng, (1, n), n, self.dtype)
        for l in range(self.num_layers):
            self._params[f"C_kernels.{l}"] = xavier_normal(rng, (k, r, r), self.dtype)

    def _config(self) -> str:
        return (
            f"{super()._config()}, num_experts={self.num_experts}, low_rank={self.low_rank}, "
            f"activation={self.activation!r}"
        )

    def _gates(self) -> np.ndarray:
        """The K gate rows stacked, (K, N)."""
        return np.concatenate([self._params[f"gates.{i}.weight"] for i in range(self.num_experts)])

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, MixtureCache]:
        """
        Parameters
        ----------
        x : ndarray, shape (B, N)

        Returns
        -------
        out : ndarray, shape (B, N)
        cache : MixtureCache
        """
        x0 = self._check_input(x)
        g = self._activation.forward
        gates = self._gates() if self.num_experts > 1 else None  # (K, N)
        num_layers, (batch, n), k, r = self.num_layers, x0.shape, self.num_experts, self.low_rank
        xs = _layer_inputs(x0, num_layers)  # (L, B, N)
        act1 = np.empty((num_layers, k, batch, r), self.dtype)  # (L, K, B, r)
        act2 = np.empty_like(act1)  # (L, K, B, r)
        mixes = np.empty_like(xs)  # (L, B, N)
        probs = np.ones((num_layers, batch, k), self.dtype)  # (L, B, K); 1 when K = 1 (no gate)
        for l in range(num_layers):
            u, v, c = (self._params[f"{name}_kernels.{l}"] for name in "UVC")
            x_l = xs[l]  # (B, N)
            # Rows times transposed weights, as in the other networks, with the experts
            # stacked on a leading axis: (B, N) @ (K, N, r) broadcasts to (K, B, r).
            act1[l] = g(x_l @ v.transpose(0, 2, 1))  # h = g(a), a = V x_l, (K, B, r)
            act2[l] = g(act1[l] @ c.transpose(0, 2, 1))  # h̃ = g(e), e = C h, (K, B, r)
            if gates is not None:
                probs[l] = softmax(x_l @ gates.T)  # (B, K)
            weighted = probs[l].T[:, :, None] * act2[l]  # p_k h̃_k, (K, B, r)
            u_rows = u.transpose(0, 2, 1).reshape(k * r, n)  # U_kᵀ stacked, (K·r, N)
            # m = Σ_k p_k (h̃_k U_kᵀ + b) = Σ_k (p_k h̃_k) U_kᵀ + b, Σ_k p_k = 1: one product,
            # never the K crosses c_k (K, B, N).
            mix = np.matmul(_side_by_side(weighted), u_rows, out=mixes[l])  # (B, N)
            mix += self._params[f"bias.{l}"][:, 0]  # m_l, (B, N)
            x_next = np.multiply(x0, mix, out=_next_x(xs, l))  # Σ_k p_k (x̂ ⊙ c_k), (B, N)
            x_next += x_l  # x_{l+1}, (B, N)
        return x_next, MixtureCache(xs, act1, act2, mixes, probs)

    def backward(self, d_out: np.ndarray, cache: MixtureCache):
        """
        Parameters
        ----------
        d_out : ndarray, shape (B, N)
        cache : MixtureCache from ``forward``

        Returns
        -------
        d_x : ndarray, shape (B, N)
        d_params : dict, keyed and shaped like ``params``
        """
        self._check_d_out(d_out, cache.xs)
        x0 = cache.xs[0]
        gates = self._gates() if self.num_experts > 1 else None  # (K, N)
        d_x, d_x0, grads = d_out, np.zeros_like(x0), {}
        d_gates = None if gates is None else np.zeros_like(gates)  # (K, N)
        for l in reversed(range(self.num_layers)):
            layer_cache = tuple(array[l] for array in cache)
            d_x, d_x0_l, layer_grads, d_gates_l = self._layer_backward(
                l, d_x, x0, gates, *layer_cache
            )
            d_x0 += d_x0_l  # every layer multiplies by x̂
            grads.update(layer_grads)
            if d_gates is not None:
                d_gates += d_gates_l  # one set of gates serves every layer
        if d_gates is not None:
            for i in range(self.num_experts):
                grads[f"gates.{i}.weight"] = d_gates[i : i + 1]  # (1, N)
        d_x0 += d_x  # the input's gradient: dx_0 + dx̂, (B, N)
        return d_x0, {k: grads[k] for k in self._params}

    def _layer_backward(self, l, d_next, x0, gates, x_l, act1, act2, mix, probs):
        """One layer in reverse: ``(dx_l, share of dx̂, parameter grads, gate grad or None)``."""
        u, v, c = (self._params[f"{name}_kernels.{l}"] for name in "UVC")
        derivative = self._activation.derivative
        weights = probs.T[:, :, None]  # p_k per sample, (K, B, 1)
        d_mix = x0 * d_next  # dm, (B, N)
        d_x0 = mix * d_next  # the mix times dx_{l+1}, (B, N)
        # dc_k = p_k dm (K, B, N) is never formed: each use below moves p_k to the r side.
        d_mix_u = d_mix @ u  # dm U_k, (B, N) @ (K, N, r) -> (K, B, r)
        d_act2 = weights * d_mix_u  # dh̃_k = dc_k U_k = p_k (dm U_k), (K, B, r)
        d_pre2 = d_act2 * derivative(None, act2)  # de, g' from g's output, (K, B, r)
        d_act1 = d_pre2 @ c  # dh, (K, B, r)
        d_pre1 = d_act1 * derivative(None, act1)  # da, (K, B, r)
        grads = {
            f"U_kernels.{l}": d_mix.T @ (weights * act2),  # dc_kᵀ h̃_k = dmᵀ (p_k h̃_k), (K, N, r)
            f"V_kernels.{l}": d_pre1.transpose(0, 2, 1) @ x_l,  # (K, r, N)
            f"bias.{l}": d_mix.sum(axis=0)[:, None],  # Σ_batch,k p_k dm = Σ_batch dm, (N, 1)
            f"C_kernels.{l}": d_pre2.transpose(0, 2, 1) @ act1,  # (K, r, r)
        }
        k, r, n = v.shape
        # The expert path Σ_k da_k V_k as one product, (B, K·r) @ (K·r, N) with V_k stacked.
        d_x = _side_by_side(d_pre1) @ v.reshape(k * r, n)  # (B, N)
        d_x += d_next  # + the identity path
        d_gates = None
        if gates is not None:
            bias = self._params[f"bias.{l}"]  # (N, 1)
            # dp_k = Σ_N c_k ⊙ dm = h̃_k · (dm U_k) + b · dm, from c_k = h̃_k U_kᵀ + b. (b · dm is
            # the same for every expert, so the softmax's backward below cancels it.)
            d_probs = np.vecdot(act2, d_mix_u).T + d_mix @ bias  # (B, K)
            d_logits = probs * (d_probs - np.sum(probs * d_probs, axis=1, keepdims=True))  # (B, K)
            d_gates = d_logits.T @ x_l  # (K, N)
            d_x += d_logits @ gates  # + the gate path, (B, N)
        return d_x, d_x0, grads, d_gates

    def kink_distance(self, x: np.ndarray) -> float:
        """Smallest |pre-activation| of either activation, over all layers and experts.

        ``inf`` unless the activation is ReLU. A second pre-activation ``C g(a)`` whose input
        ``g(a)`` is entirely zero (every entry of ``a`` strictly negative) is identically zero
        near this point, not at a kink, and is left out: with r = 1 that happens for about half
        of all (sample, expert) pairs and would otherwise refuse almost every input.
        """
        if not self._activation.kinked:
            return float("inf")
        pre1, pre2 = self.pre_activations(x)  # (L, K, B, r) each
        live = np.any(pre1 > 0, axis=-1, keepdims=True)  # g(a) not all zero, (L, K, B, 1)
        distances = [np.abs(pre1).min()]
        if live.any():
            distances.append(np.abs(np.where(live, pre2, np.inf)).min())
        return float(min(distances))

    def pre_activations(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``a = V_l x_l`` and ``e = C_l g(a)`` of every layer and expert, each (L, K, B, r),
        recomputed: the cache keeps only ``g(a)`` and ``g(e)`` (backward reads g' from them)."""
        _, cache = self.forward(x)
        v, c = (
            np.stack([self._params[f"{name}_kernels.{l}"] for l in range(self.num_layers)])
            for name in "VC"
        )  # (L, K, r, N), (L, K, r, r)
        pre1 = cache.xs[:, None] @ v.transpose(0, 1, 3, 2)  # (L, 1, B, N) @ (L, K, N, r)
        pre2 = cache.act1 @ c.transpose(0, 1, 3, 2)  # (L, K, B, r)
        return pre1, pre2


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, shifted by the row maximum so ``exp`` never overflows.

    >>> softmax(np.array([[1e4, -1e4, 0.0]]))
    array([[1., 0., 0.]])
    """
    shifted = logits - logits.max(axis=-1, keepdims=True)  # every entry <= 0
    weights = np.exp(shifted)
    return weights / weights.sum(axis=-1, keepdims=True)


def crossnet_loop(
    x: np.ndarray, params: dict[str, np.ndarray], kind: str, activation: str = "relu"
) -> np.ndarray:
    """Any of the four cross networks written as plain loops over samples, layers and sums.

    Slow, obvious and independent of the vectorized layers, which are tested against it.
    ``params`` is a ``params``/``state_dict`` mapping; the layer count, rank and number of
    experts are read from its shapes. ``activation`` only matters for the mixture.

    >>> params = {"kernels.0": np.eye(2), "bias.0": np.zeros((2, 1))}
    >>> crossnet_loop(np.array([[1.0, -2.0]]), params, "CrossNet")
    array([[2., 2.]])
    """
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    g = {"relu": lambda z: max(z, 0.0), "tanh": math.tanh, "identity": lambda z: z}[activation]
    p = {k: np.asarray(v, dtype=np.float64).tolist() for k, v in params.items()}
    num_layers = sum(k.startswith("bias.") for k in params)
    num_gates = sum(k.startswith("gates.") for k in params)

    def matvec(matrix, vector):
        return [sum(m * v for m, v in zip(row, vector, strict=True)) for row in matrix]

    out = []
    for sample in np.asarray(x, dtype=np.float64).tolist():
        x0 = list(sample)
        xl = list(sample)
        n = len(x0)
        for l in range(num_layers):
            if kind == "CrossNet":
                wx = matvec(p[f"kernels.{l}"], xl)
                xl = [x0[i] * (wx[i] + p[f"bias.{l}"][i][0]) + xl[i] for i in range(n)]
            elif kind == "LowRankCrossNet":
                wvx = matvec(p[f"W_kernels.{l}"], matvec(p[f"V_kernels.{l}"], xl))
                xl = [x0[i] * (wvx[i] + p[f"bias.{l}"][i]) + xl[i] for i in range(n)]
            elif kind == "VectorCrossNet":
                score = sum(xl[i] * p[f"kernels.{l}"][i][0] for i in range(n))
                xl = [x0[i] * score + p[f"bias.{l}"][i][0] + xl[i] for i in range(n)]
            else:
                experts = []
                for k in range(len(p[f"U_kernels.{l}"])):
                    hidden = [g(a) for a in matvec(p[f"V_kernels.{l}"][k], xl)]
                    hidden = [g(e) for e in matvec(p[f"C_kernels.{l}"][k], hidden)]
                    uh = matvec(p[f"U_kernels.{l}"][k], hidden)
                    experts.append([x0[i] * (uh[i] + p[f"bias.{l}"][i][0]) for i in range(n)])
                if num_gates:
                    logits = [matvec(p[f"gates.{k}.weight"], xl)[0] for k in range(num_gates)]
                    top = max(logits)
                    weights = [math.exp(z - top) for z in logits]
                    total = sum(weights)
                    weights = [w / total for w in weights]
                else:
                    weights = [1.0]
                mix = [
                    sum(w * e[i] for w, e in zip(weights, experts, strict=True)) for i in range(n)
                ]
                xl = [mix[i] + xl[i] for i in range(n)]
        out.append(xl)
    return np.array(out, dtype=x.dtype)
