"""The mixture of low-rank experts, fast: :func:`refimpl.layers.crossnet.mixture_forward` and
:func:`~refimpl.layers.crossnet.mixture_backward` without the K crosses.

The textbook form builds every expert's cross ``c_lk = h̃_lk U_lkᵀ + b_l`` and its gradient
``dc_lk = p_lk dm_l``, each (K, B, N): K times the size of everything else in a layer. Since
the gate weights sum to 1 over the experts, every use of them moves to the r side::

    m_l     = Σ_k (p_lk h̃_lk) U_lkᵀ + b_lᵀ      one (B, K·r) @ (K·r, N) product
    dh̃_lk   = p_lk (dm_l U_lk)
    dp_lk   = h̃_lk · (dm_l U_lk) + b_l · dm_l   per sample, reusing dm_l U_lk
    dU_lk   = dm_lᵀ (p_lk h̃_lk)
    db_l    = Σ_batch dm_l

So the cache holds what those read and no more: ``x_l`` (dV, dG), ``h_l`` (dC, g'(a)),
``h̃_l`` (dU, dp, g'(e)), ``m_l`` (dx̂) and ``p_l``: L·(2N + 2K·r + K) numbers per sample,
stacked over the layers and written in place as the forward goes.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from refimpl.layers.activations import Activation, softmax


class FastMixtureCache(NamedTuple):
    xs: np.ndarray  # x_l entering each layer, (L, B, N); xs[0] is x̂
    h: np.ndarray  # h_l = g(a_l), expert by expert, (L, K, B, r)
    h_tilde: np.ndarray  # h̃_l = g(e_l), (L, K, B, r)
    mixes: np.ndarray  # m_l = Σ_k p_lk c_lk, (L, B, N)
    probs: np.ndarray  # softmax of the gate logits, (L, B, K); all ones when K = 1


def _side_by_side(stacked: np.ndarray) -> np.ndarray:
    """(K, B, r) -> (B, K·r): the experts' rows next to each other, expert k in columns
    k·r … k·r + r − 1, so that a sum over experts of (B, r) @ (r, N) products is one product
    (B, K·r) @ (K·r, N) with the experts' matrices stacked in the same order."""
    k, batch, r = stacked.shape
    return stacked.transpose(1, 0, 2).reshape(batch, k * r)


def _gates(params, num_experts: int) -> np.ndarray | None:
    if num_experts == 1:
        return None
    return np.concatenate([params[f"gates.{k}.weight"] for k in range(num_experts)])  # (K, N)


def mixture_forward_fast(params, x_hat: np.ndarray, activation: Activation):
    """:func:`refimpl.layers.crossnet.mixture_forward`'s ``x_L``, without the K crosses.

    Returns ``(x_L, FastMixtureCache)``.
    """
    g = activation.forward
    num_layers = sum(key.startswith("bias.") for key in params)
    k, r, n = params["V_kernels.0"].shape
    batch = x_hat.shape[0]
    gates = _gates(params, k)  # (K, N) or None
    xs = np.empty((num_layers, batch, n), x_hat.dtype)  # (L, B, N)
    xs[0] = x_hat
    h_all = np.empty((num_layers, k, batch, r), x_hat.dtype)  # (L, K, B, r)
    h_tilde_all = np.empty_like(h_all)  # (L, K, B, r)
    mixes = np.empty_like(xs)  # (L, B, N)
    probs = np.ones((num_layers, batch, k), x_hat.dtype)  # (L, B, K); 1 when K = 1 (no gate)
    for l in range(num_layers):
        u, v, c = (params[f"{name}_kernels.{l}"] for name in "UVC")
        x_l = xs[l]  # (B, N)
        h_all[l] = g(x_l @ v.transpose(0, 2, 1))  # h = g(a), (K, B, r)
        h_tilde_all[l] = g(h_all[l] @ c.transpose(0, 2, 1))  # h̃ = g(e), (K, B, r)
        if gates is not None:
            probs[l] = softmax(x_l @ gates.T)  # (B, K)
        weighted = probs[l].T[:, :, None] * h_tilde_all[l]  # p_k h̃_k, (K, B, r)
        u_rows = u.transpose(0, 2, 1).reshape(k * r, n)  # U_kᵀ stacked, (K·r, N)
        mix = np.matmul(_side_by_side(weighted), u_rows, out=mixes[l])  # (B, N)
        mix += params[f"bias.{l}"][:, 0]  # m_l = Σ_k (p_k h̃_k) U_kᵀ + b, (B, N)
        x_next = x_hat * mix if l + 1 == num_layers else np.multiply(x_hat, mix, out=xs[l + 1])
        x_next += x_l  # x_{l+1} = x̂ ⊙ m_l + x_l, (B, N)
    return x_next, FastMixtureCache(xs, h_all, h_tilde_all, mixes, probs)


def mixture_backward_fast(params, d_out: np.ndarray, cache: FastMixtureCache, activation):
    """:func:`refimpl.layers.crossnet.mixture_backward`'s ``(d_input, d_params)``, without
    the K crosses' gradients."""
    derivative = activation.derivative
    xs, h_all, h_tilde_all, mixes, probs = cache
    x_hat = xs[0]
    k, r, n = params["V_kernels.0"].shape
    gates = _gates(params, k)  # (K, N) or None
    d_x, d_x_hat, d_params = d_out, np.zeros_like(x_hat), {}
    d_gates = None if gates is None else np.zeros_like(gates)  # (K, N)
    for l in reversed(range(len(xs))):
        u, v, c = (params[f"{name}_kernels.{l}"] for name in "UVC")
        x_l, h, h_tilde, mix, prob = xs[l], h_all[l], h_tilde_all[l], mixes[l], probs[l]
        expert_probs = prob.T[:, :, None]  # p_k per sample, (K, B, 1)
        d_mix = x_hat * d_x  # dm, (B, N)
        d_x_hat += mix * d_x  # (B, N)
        d_mix_u = d_mix @ u  # dm U_k, (B, N) @ (K, N, r) -> (K, B, r)
        d_e = expert_probs * d_mix_u * derivative(h_tilde)  # dh̃ ⊙ g'(e), dh̃ = p_k (dm U_k)
        d_a = (d_e @ c) * derivative(h)  # dh ⊙ g'(a), (K, B, r)
        d_params[f"U_kernels.{l}"] = d_mix.T @ (expert_probs * h_tilde)  # dmᵀ (p_k h̃_k), (K, N, r)
        d_params[f"V_kernels.{l}"] = d_a.transpose(0, 2, 1) @ x_l  # (K, r, N)
        d_params[f"bias.{l}"] = d_mix.sum(axis=0)[:, None]  # Σ_batch,k p_k dm = Σ_batch dm
        d_params[f"C_kernels.{l}"] = d_e.transpose(0, 2, 1) @ h  # (K, r, r)
        # The expert path Σ_k da_k V_k as one product, (B, K·r) @ (K·r, N) with V_k stacked.
        d_x_next = _side_by_side(d_a) @ v.reshape(k * r, n)  # (B, N)
        d_x_next += d_x  # + the identity path
        if gates is not None:
            bias = params[f"bias.{l}"]  # (N, 1)
            # dp_k = Σ_N c_k ⊙ dm = h̃_k · (dm U_k) + b · dm, from c_k = h̃_k U_kᵀ + b. (b · dm is
            # the same for every expert, so the softmax's backward below cancels it.)
            d_prob = np.vecdot(h_tilde, d_mix_u).T + d_mix @ bias  # (B, K)
            d_logits = prob * (d_prob - np.sum(prob * d_prob, axis=1, keepdims=True))  # (B, K)
            d_gates += d_logits.T @ x_l  # one set of gates serves every layer, (K, N)
            d_x_next += d_logits @ gates  # + the gate path, (B, N)
        d_x = d_x_next
    if gates is not None:
        for i in range(k):
            d_params[f"gates.{i}.weight"] = d_gates[i : i + 1]  # (1, N)
    d_x_hat += d_x  # the input's gradient: dx_0 + dx̂, (B, N)
    return d_x_hat, {key: d_params[key] for key in params}
