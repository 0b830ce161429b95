"""The cross networks of DCN (Deep & Cross Network), as TorchRec's ``torchrec.modules.crossnet``.

Paper: DCN-V2, Wang et al. 2020, https://arxiv.org/abs/2008.13535 (the vector form is DCN-V1,
https://arxiv.org/abs/1708.05123). Every network maps a batch ``x`` (B, N) to (B, N) by ``L``
layers that all multiply elementwise by the input, written ``x̂`` as in the seed (TorchRec
calls it ``x_0``; here it is ``x_hat``)::

    x_0 = x̂,    x_{l+1} = x̂ ⊙ c_l(x_l) + x_l     (VectorCrossNet adds its bias outside)

where ``c_l`` is the layer's "cross": ``W x + b`` (CrossNet), ``W (V x) + b``
(LowRankCrossNet), or a softmax-gated mixture of low-rank experts (LowRankMixtureCrossNet).

Backward runs the layers in reverse. With ``dx_{l+1} = ∂L/∂x_{l+1}``, each layer hands down::

    dx_l  = dx_{l+1} + (∂c_l/∂x_l)ᵀ (x̂ ⊙ dx_{l+1})     (the identity path, then the cross)
    dx̂   += c_l ⊙ dx_{l+1}                               (every layer reads x̂)

and at the end ``d_input = dx_0 + dx̂``: the input is both the first ``x_l`` and the ``x̂``
every layer multiplies by, so its gradient is the sum of the two.

Each network's forward and backward is written once as a pair of functions over a ``params``
dict keyed like TorchRec's ``state_dict()`` (``crossnet_forward``, ``crossnet_backward``, …).
They are the textbook form: they run unchanged on float arrays and on exact object arrays
(SymPy symbols, rationals), which is how ``derivations/`` proves them. Arrays are (B, N) rows
(samples as rows, so ``W x`` is written ``x Wᵀ``); TorchRec's trailing unit axis is dropped.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from refimpl.fast.crossnet import mixture_backward_fast, mixture_forward_fast
from refimpl.fast.vector_crossnet import vector_backward_fast, vector_forward_fast
from refimpl.layers.activations import Activation, get_activation, softmax
from refimpl.layers.base import (
    Layer,
    as_rng,
    check_array,
    check_positive_int,
    linear_uniform,
    xavier_normal,
)


def num_layers_of(params) -> int:
    """L, counted from the ``bias.l`` keys every network has once per layer."""
    return sum(key.startswith("bias.") for key in params)


# --------------------------------------------------------------------------------- CrossNet


class CrossCache(NamedTuple):
    xs: tuple  # x_l entering each layer, L arrays (B, N); xs[0] is x̂
    crosses: tuple  # c_l = x_l W_lᵀ + b_l, L arrays (B, N)


def crossnet_forward(params, x_hat):
    """``x_{l+1} = x̂ ⊙ (x_l W_lᵀ + b_l) + x_l`` for l = 0 … L-1; returns ``(x_L, cache)``.

    >>> params = {"kernels.0": np.eye(2), "bias.0": np.zeros((2, 1))}
    >>> crossnet_forward(params, np.array([[1.0, -2.0]]))[0]     # x ⊙ x + x
    array([[2., 2.]])
    """
    xs, crosses = [x_hat], []
    for l in range(num_layers_of(params)):
        cross = xs[l] @ params[f"kernels.{l}"].T + params[f"bias.{l}"][:, 0]  # c_l, (B, N)
        crosses.append(cross)
        xs.append(x_hat * cross + xs[l])  # x_{l+1}, (B, N)
    return xs[-1], CrossCache(tuple(xs[:-1]), tuple(crosses))


def crossnet_backward(params, d_out, cache: CrossCache):
    """``(d_input, d_params)`` for :func:`crossnet_forward`, layer by layer from the last."""
    xs, crosses = cache
    x_hat = xs[0]
    d_x, d_x_hat, d_params = d_out, np.zeros_like(x_hat), {}
    for l in reversed(range(len(xs))):
        d_cross = x_hat * d_x  # dc_l, (B, N)
        d_params[f"kernels.{l}"] = d_cross.T @ xs[l]  # (N, N)
        d_params[f"bias.{l}"] = d_cross.sum(axis=0)[:, None]  # (N, 1)
        d_x_hat = d_x_hat + crosses[l] * d_x  # this layer's share of dx̂, (B, N)
        d_x = d_x + d_cross @ params[f"kernels.{l}"]  # dx_l: identity + cross path, (B, N)
    return d_x + d_x_hat, {k: d_params[k] for k in params}


class _CrossNetBase(Layer):
    """What the four networks share: sizes, input validation, and the config string."""

    input_names = ("x",)

    def __init__(self, in_features: int, num_layers: int, dtype):
        super().__init__(dtype)
        self.in_features = check_positive_int("in_features", in_features)
        self.num_layers = check_positive_int("num_layers", num_layers)

    def _check_input(self, x: np.ndarray) -> np.ndarray:
        return check_array("x", x, "B N", {"N": self.in_features}, self.dtype)

    def _check_d_out(self, d_out: np.ndarray, x_hat: np.ndarray) -> np.ndarray:
        batch, n = x_hat.shape
        return check_array("d_out", d_out, "B N", {"B": batch, "N": n}, x_hat.dtype)

    def _config(self) -> str:
        return f"in_features={self.in_features}, num_layers={self.num_layers}"


class CrossNet(_CrossNetBase):
    """Full-rank cross network: ``x_{l+1} = x̂ ⊙ (x_l W_lᵀ + b_l) + x_l``, samples as rows.

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

    and ``d_input = dx_0 + dx̂`` (:func:`crossnet_forward`, :func:`crossnet_backward`).

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
        return crossnet_forward(self._params, self._check_input(x))

    def backward(self, d_out: np.ndarray, cache: CrossCache) -> tuple[np.ndarray, dict]:
        """
        Parameters
        ----------
        d_out : ndarray, shape (B, N)
        cache : CrossCache from ``forward``

        Returns
        -------
        d_x : ndarray, shape (B, N)
        d_params : dict, keyed and shaped like ``params``
        """
        self._check_d_out(d_out, cache.xs[0])
        return crossnet_backward(self._params, d_out, cache)


# -------------------------------------------------------------------------- LowRankCrossNet


class LowRankCache(NamedTuple):
    xs: tuple  # x_l entering each layer, L arrays (B, N)
    projections: tuple  # v_l = x_l V_lᵀ, L arrays (B, r)
    crosses: tuple  # c_l = v_l W_lᵀ + b_l, L arrays (B, N)


def low_rank_crossnet_forward(params, x_hat):
    """``x_{l+1} = x̂ ⊙ ((x_l V_lᵀ) W_lᵀ + b_l) + x_l`` for l = 0 … L-1; ``(x_L, cache)``."""
    xs, projections, crosses = [x_hat], [], []
    for l in range(num_layers_of(params)):
        projection = xs[l] @ params[f"V_kernels.{l}"].T  # v_l, (B, r)
        cross = projection @ params[f"W_kernels.{l}"].T + params[f"bias.{l}"]  # c_l, (B, N)
        projections.append(projection)
        crosses.append(cross)
        xs.append(x_hat * cross + xs[l])  # x_{l+1}, (B, N)
    return xs[-1], LowRankCache(tuple(xs[:-1]), tuple(projections), tuple(crosses))


def low_rank_crossnet_backward(params, d_out, cache: LowRankCache):
    """``(d_input, d_params)`` for :func:`low_rank_crossnet_forward`."""
    xs, projections, crosses = cache
    x_hat = xs[0]
    d_x, d_x_hat, d_params = d_out, np.zeros_like(x_hat), {}
    for l in reversed(range(len(xs))):
        d_cross = x_hat * d_x  # dc_l, (B, N)
        d_projection = d_cross @ params[f"W_kernels.{l}"]  # dv_l, (B, r)
        d_params[f"W_kernels.{l}"] = d_cross.T @ projections[l]  # (N, r)
        d_params[f"V_kernels.{l}"] = d_projection.T @ xs[l]  # (r, N)
        d_params[f"bias.{l}"] = d_cross.sum(axis=0)  # (N,)
        d_x_hat = d_x_hat + crosses[l] * d_x  # (B, N)
        d_x = d_x + d_projection @ params[f"V_kernels.{l}"]  # dx_l, (B, N)
    return d_x + d_x_hat, {k: d_params[k] for k in params}


class LowRankCrossNet(_CrossNetBase):
    """Low-rank cross network: ``x_{l+1} = x̂ ⊙ ((x_l V_lᵀ) W_lᵀ + b_l) + x_l`` (rows).

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

    and ``d_input = dx_0 + dx̂`` (:func:`low_rank_crossnet_forward`,
    :func:`low_rank_crossnet_backward`).

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
        return low_rank_crossnet_forward(self._params, self._check_input(x))

    def backward(self, d_out: np.ndarray, cache: LowRankCache) -> tuple[np.ndarray, dict]:
        """
        Parameters
        ----------
        d_out : ndarray, shape (B, N)
        cache : LowRankCache from ``forward``

        Returns
        -------
        d_x : ndarray, shape (B, N)
        d_params : dict, keyed and shaped like ``params``
        """
        self._check_d_out(d_out, cache.xs[0])
        return low_rank_crossnet_backward(self._params, d_out, cache)


# --------------------------------------------------------------------------- VectorCrossNet


class VectorCache(NamedTuple):
    xs: tuple  # x_l entering each layer, L arrays (B, N)
    scores: tuple  # s_l = x_l w_l, L arrays (B, 1)


def vector_crossnet_forward(params, x_hat):
    """``x_{l+1} = x̂ (x_l w_l) + b_l + x_l`` for l = 0 … L-1; ``(x_L, cache)``."""
    xs, scores = [x_hat], []
    for l in range(num_layers_of(params)):
        score = xs[l] @ params[f"kernels.{l}"]  # s_l, one number per sample, (B, 1)
        scores.append(score)
        xs.append(x_hat * score + params[f"bias.{l}"][:, 0] + xs[l])  # x_{l+1}, (B, N)
    return xs[-1], VectorCache(tuple(xs[:-1]), tuple(scores))


def vector_crossnet_backward(params, d_out, cache: VectorCache):
    """``(d_input, d_params)`` for :func:`vector_crossnet_forward`."""
    xs, scores = cache
    x_hat = xs[0]
    d_x, d_x_hat, d_params = d_out, np.zeros_like(x_hat), {}
    for l in reversed(range(len(xs))):
        d_score = (x_hat * d_x).sum(axis=1, keepdims=True)  # ds_l, (B, 1)
        d_params[f"kernels.{l}"] = xs[l].T @ d_score  # (N, 1)
        d_params[f"bias.{l}"] = d_x.sum(axis=0)[:, None]  # (N, 1): b sits outside, no x̂
        d_x_hat = d_x_hat + scores[l] * d_x  # (B, N)
        d_x = d_x + d_score @ params[f"kernels.{l}"].T  # dx_l: identity + score path, (B, N)
    return d_x + d_x_hat, {k: d_params[k] for k in params}


class VectorCrossNet(_CrossNetBase):
    """Vector cross network (DCN-V1): ``x_{l+1} = x̂ (x_l w_l) + b_l + x_l``, samples as rows.

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

    and ``d_input = dx_0 + dx̂`` (:func:`vector_crossnet_forward`,
    :func:`vector_crossnet_backward`).

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

    def forward(self, x: np.ndarray):
        """
        Parameters
        ----------
        x : ndarray, shape (B, N)

        Returns
        -------
        out : ndarray, shape (B, N)
        cache : refimpl.fast.vector_crossnet.FastVectorCache (the numbers of
            :func:`vector_crossnet_forward`, with no ``x_l`` formed)
        """
        return vector_forward_fast(self._params, self._check_input(x))

    def backward(self, d_out: np.ndarray, cache) -> tuple[np.ndarray, dict]:
        """
        Parameters
        ----------
        d_out : ndarray, shape (B, N)
        cache : the cache from ``forward``

        Returns
        -------
        d_x : ndarray, shape (B, N)
        d_params : dict, keyed and shaped like ``params``
        """
        self._check_d_out(d_out, cache.x_hat)
        return vector_backward_fast(self._params, d_out, cache)


# ------------------------------------------------------------------- LowRankMixtureCrossNet


class MixtureCache(NamedTuple):
    xs: tuple  # x_l entering each layer, L arrays (B, N)
    h: tuple  # h_l = g(a_l), a_l = x_l V_lᵀ, L arrays (K, B, r)
    h_tilde: tuple  # h̃_l = g(e_l), e_l = h_l C_lᵀ, L arrays (K, B, r)
    crosses: tuple  # c_lk = h̃_lk U_lkᵀ + b_l, L arrays (K, B, N)
    probs: tuple  # p_l = softmax of the gate logits, L arrays (B, K); ones when K = 1
    mixes: tuple  # m_l = Σ_k p_lk c_lk, L arrays (B, N)


def stacked_gates(params) -> np.ndarray | None:
    """The K gates ``gates.k.weight`` (1, N) stacked: Γ (K, N); None when there are none."""
    gates = [
        params[f"gates.{k}.weight"] for k in range(len(params)) if f"gates.{k}.weight" in params
    ]
    return np.concatenate(gates) if gates else None


def mixture_forward(params, x_hat, activation: str = "relu"):
    """The mixture in its textbook form, every expert's cross ``c_lk`` formed; ``(x_L, cache)``.

    For l = 0 … L-1: ``x_{l+1} = x̂ ⊙ Σ_k p_lk (g(g(x_l V_lkᵀ) C_lkᵀ) U_lkᵀ + b_l) + x_l`` with
    ``p_l = softmax(Γ x_l)`` (``p_l = 1`` when K = 1: no gates).
    """
    g = get_activation(activation).forward
    gates = stacked_gates(params)  # (K, N) or None
    xs, hs, h_tildes, crosses, probs, mixes = [x_hat], [], [], [], [], []
    for l in range(num_layers_of(params)):
        u, v, c = (params[f"{name}_kernels.{l}"] for name in "UVC")  # (K,N,r) (K,r,N) (K,r,r)
        h = g(xs[l] @ v.transpose(0, 2, 1))  # h = g(a), a = x_l V_kᵀ, (K, B, r)
        h_tilde = g(h @ c.transpose(0, 2, 1))  # h̃ = g(e), e = h C_kᵀ, (K, B, r)
        cross = h_tilde @ u.transpose(0, 2, 1) + params[f"bias.{l}"][:, 0]  # c_k, (K, B, N)
        if gates is None:
            prob = np.ones((x_hat.shape[0], 1), dtype=x_hat.dtype)  # one expert, weight 1
        else:
            prob = softmax(xs[l] @ gates.T)  # p, (B, K)
        mix = (prob.T[:, :, None] * cross).sum(axis=0)  # m = Σ_k p_k c_k, (B, N)
        hs.append(h)
        h_tildes.append(h_tilde)
        crosses.append(cross)
        probs.append(prob)
        mixes.append(mix)
        xs.append(x_hat * mix + xs[l])  # x_{l+1}, (B, N)
    cache = MixtureCache(*(tuple(a) for a in (xs[:-1], hs, h_tildes, crosses, probs, mixes)))
    return xs[-1], cache


def mixture_backward(params, d_out, cache: MixtureCache, activation: str = "relu"):
    """``(d_input, d_params)`` for :func:`mixture_forward`, in the order of the Notes of
    :class:`LowRankMixtureCrossNet`."""
    derivative = get_activation(activation).derivative
    gates = stacked_gates(params)  # (K, N) or None
    x_hat = cache.xs[0]
    d_x, d_x_hat, d_params = d_out, np.zeros_like(x_hat), {}
    d_gates = None if gates is None else np.zeros_like(gates)  # (K, N)
    for l in reversed(range(len(cache.xs))):
        x_l, h, h_tilde, cross, prob, mix = (array[l] for array in cache)
        u, v, c = (params[f"{name}_kernels.{l}"] for name in "UVC")
        d_mix = x_hat * d_x  # dm, (B, N)
        d_x_hat = d_x_hat + mix * d_x  # (B, N)
        d_cross = prob.T[:, :, None] * d_mix  # dc_k = p_k dm, (K, B, N)
        d_params[f"U_kernels.{l}"] = d_cross.transpose(0, 2, 1) @ h_tilde  # (K, N, r)
        d_params[f"bias.{l}"] = d_cross.sum(axis=(0, 1))[:, None]  # (N, 1)
        d_e = (d_cross @ u) * derivative(h_tilde)  # de = dh̃ ⊙ g'(e), (K, B, r)
        d_params[f"C_kernels.{l}"] = d_e.transpose(0, 2, 1) @ h  # (K, r, r)
        d_a = (d_e @ c) * derivative(h)  # da = dh ⊙ g'(a), (K, B, r)
        d_params[f"V_kernels.{l}"] = d_a.transpose(0, 2, 1) @ x_l  # (K, r, N)
        d_x = d_x + (d_a @ v).sum(axis=0)  # identity + expert paths, (B, N)
        if gates is not None:
            d_prob = (cross * d_mix).sum(axis=2).T  # dp_k = Σ_N c_k ⊙ dm, (B, K)
            d_logits = prob * (d_prob - (prob * d_prob).sum(axis=1, keepdims=True))  # (B, K)
            d_gates = d_gates + d_logits.T @ x_l  # one set of gates serves every layer
            d_x = d_x + d_logits @ gates  # + the gate path, (B, N)
    if gates is not None:
        for k in range(len(gates)):
            d_params[f"gates.{k}.weight"] = d_gates[k : k + 1]  # (1, N)
    return d_x + d_x_hat, {k: d_params[k] for k in params}


class LowRankMixtureCrossNet(_CrossNetBase):
    """Mixture of low-rank cross experts with softmax gating (DCN-V2's DCN-Mix).

    DCN-V2 (https://arxiv.org/abs/2008.13535), TorchRec's
    ``torchrec.modules.crossnet.LowRankMixtureCrossNet``. Expert k of layer l is
    ``x̂ ⊙ (g(g(x_l V_lkᵀ) C_lkᵀ) U_lkᵀ + b_l)``, samples as rows; the layer adds the
    softmax-weighted sum of its experts to ``x_l``. The gates are one set shared by every layer.
    With K = 1 there is no gate at all (TorchRec skips it): ``x_{l+1} = expert + x_l``.

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
    activation : str
        g, by name (see :mod:`refimpl.layers.activations`). TorchRec takes a callable (default
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
    Forward, for l = 0 … L-1, with samples as rows and all K experts at once (Γ stacks the K
    gates, (K, N))::

        a_lk    = x_l V_lkᵀ                         (K, B, r)
        h_lk    = g(a_lk)                           (K, B, r)
        e_lk    = h_lk C_lkᵀ                        (K, B, r)
        h̃_lk    = g(e_lk)                           (K, B, r)
        c_lk    = h̃_lk U_lkᵀ + b_lᵀ                 (K, B, N)
        p_l     = softmax_k(x_l Γᵀ)                 (B, K)    (p_l = 1 when K = 1)
        m_l     = Σ_k p_lk c_lk                     (B, N)
        x_{l+1} = x̂ ⊙ m_l + x_l                     (B, N)    = Σ_k p_lk expert_lk + x_l

    Backward, for l = L-1 … 0, from ``dx_L = d_out``::

        dm_l    = x̂ ⊙ dx_{l+1}                      (B, N)
        dx̂     += m_l ⊙ dx_{l+1}                    (B, N)
        dc_lk   = p_lk dm_l                         (K, B, N)
        dU_lk   = dc_lkᵀ h̃_lk                       (K, N, r)
        db_l    = Σ_batch,k dc_lk                   (N, 1)
        de_lk   = (dc_lk U_lk) ⊙ g'(e_lk)           (K, B, r)
        dC_lk   = de_lkᵀ h_lk                       (K, r, r)
        da_lk   = (de_lk C_lk) ⊙ g'(a_lk)           (K, B, r)
        dV_lk   = da_lkᵀ x_l                        (K, r, N)
        dp_lk   = Σ_N c_lk ⊙ dm_l                   (B, K)
        dz_l    = p_l ⊙ (dp_l − Σ_k p_lk dp_lk)     (B, K)    softmax backward (K > 1)
        dΓ     += dz_lᵀ x_l                         (K, N)    summed over layers: shared
        dx_l    = dx_{l+1} + Σ_k da_lk V_lk + dz_l Γ   (B, N)

    and ``d_input = dx_0 + dx̂`` (:func:`mixture_forward`, :func:`mixture_backward`). ``g'``
    is read from g's output (see :mod:`refimpl.layers.activations`), so the pre-activations
    ``a`` and ``e`` are not kept; :meth:`pre_activations` recomputes them.

    The layer computes the same numbers without the K crosses ``c_lk`` or their gradients
    ``dc_lk`` (each (K, B, N): K times the size of everything else in a layer), in
    :mod:`refimpl.fast.crossnet`.

    Examples
    --------
    >>> net = LowRankMixtureCrossNet(8, 2, num_experts=3, low_rank=2, activation="tanh", seed=0)
    >>> [k for k in net.params if k.startswith("gates")]
    ['gates.0.weight', 'gates.1.weight', 'gates.2.weight']
    >>> y, cache = net.forward(np.ones((5, 8)))
    >>> cache.probs.shape, np.allclose(cache.probs.sum(axis=-1), 1.0)
    ((2, 5, 3), True)
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
        self._activation: Activation = get_activation(activation)
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

    def forward(self, x: np.ndarray):
        """
        Parameters
        ----------
        x : ndarray, shape (B, N)

        Returns
        -------
        out : ndarray, shape (B, N)
        cache : refimpl.fast.crossnet.FastMixtureCache
        """
        return mixture_forward_fast(self._params, self._check_input(x), self._activation)

    def backward(self, d_out: np.ndarray, cache) -> tuple[np.ndarray, dict]:
        """
        Parameters
        ----------
        d_out : ndarray, shape (B, N)
        cache : the cache from ``forward``

        Returns
        -------
        d_x : ndarray, shape (B, N)
        d_params : dict, keyed and shaped like ``params``
        """
        self._check_d_out(d_out, cache.xs[0])
        return mixture_backward_fast(self._params, d_out, cache, self._activation)

    def kink_distance(self, x: np.ndarray) -> float:
        """Smallest |pre-activation| of either activation, over all layers and experts.

        ``inf`` unless the activation has a kink. A second pre-activation ``C g(a)`` whose
        input ``g(a)`` is entirely zero (every entry of ``a`` strictly negative) is identically
        zero near this point, not at a kink, and is left out: with r = 1 that happens for about
        half of all (sample, expert) pairs and would otherwise refuse almost every input.
        """
        if not self._activation.kinked:
            return float("inf")
        pre1, pre2 = self.pre_activations(x)  # (L, K, B, r) each
        if pre1.size == 0:  # an empty batch
            return float("inf")
        live = np.any(pre1 > 0, axis=-1, keepdims=True)  # g(a) not all zero, (L, K, B, 1)
        distances = [np.abs(pre1).min()]
        if live.any():
            distances.append(np.abs(np.where(live, pre2, np.inf)).min())
        return float(min(distances))

    def pre_activations(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``a = x_l V_lᵀ`` and ``e = h_l C_lᵀ`` of every layer and expert, each (L, K, B, r),
        recomputed: the cache keeps only ``g(a)`` and ``g(e)`` (backward reads g' from them)."""
        _, cache = mixture_forward(self._params, self._check_input(x), self.activation)
        pre1 = np.stack(
            [
                x_l @ self._params[f"V_kernels.{l}"].transpose(0, 2, 1)
                for l, x_l in enumerate(cache.xs)
            ]
        )  # (L, K, B, r)
        pre2 = np.stack(
            [h @ self._params[f"C_kernels.{l}"].transpose(0, 2, 1) for l, h in enumerate(cache.h)]
        )  # (L, K, B, r)
        return pre1, pre2
