"""VectorCrossNet, fast: :func:`refimpl.layers.crossnet.vector_crossnet_forward` and
:func:`~refimpl.layers.crossnet.vector_crossnet_backward` without forming any ``x_l``.

Each layer adds to ``x_l`` a multiple of ``x̂`` (its score ``s_l``, one number per sample) and a
constant row ``b_l``, so every ``x_l`` is ``x̂`` scaled per sample plus one row::

    x_l = a_l x̂ + β_l,      a_l = 1 + Σ_{m<l} s_m  (B,),     β_l = Σ_{m<l} b_m  (N,)
    s_l = x_l w_l = a_l (x̂ w_l) + β_l·w_l

All L products ``x̂ w_l`` are one (B, N) @ (N, L) product, after which the scores are a
recursion on (B,) vectors, and the output ``a_L x̂ + β_L`` is one pass. Backward likewise: the
upstream gradient ``dx_{l+1} = G + Σ_{m>l} ds_m w_mᵀ`` (G = d_out) is G plus rank-one terms, so::

    ds_l      = x̂·G + Σ_{m>l} ds_m (x̂ w_m)                  (B,)
    dw_l      = x̂ᵀ (a_l ⊙ ds_l) + β_l Σ_batch ds_l          all l: one (N, B) @ (B, L)
    db_l      = Σ_batch G + Σ_{m>l} (Σ_batch ds_m) w_m       (N,)
    d_input   = a_L ⊙ G + Σ_l (a_l ⊙ ds_l) w_lᵀ               one (B, L) @ (L, N), one pass

The textbook form makes eight passes over (B, N) arrays per layer forward and fifteen
backward; this makes five forward (``x̂`` read by the product, read again and scaled into the
output, which is read and written once more to add ``β_L``) and ten backward (``x̂`` read
twice, ``G`` three times, ``d_input`` written by the product, then ``a_L ⊙ G`` added through
one temporary), whatever L. The least
any implementation can move is ``x̂`` read and the output written forward, ``x̂`` and ``G``
read and ``d_input`` written backward: five (B, N) arrays. The cache is ``x̂`` itself (the
input) and two (B, L) arrays, not L arrays of (B, N).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class FastVectorCache(NamedTuple):
    x_hat: np.ndarray  # the input x̂, (B, N)
    scores: np.ndarray  # s_l = x_l w_l for every layer, (B, L)
    projections: np.ndarray  # x̂ w_l for every layer, (B, L)


def _rows(params, name: str, num_layers: int) -> np.ndarray:
    """``name.0`` … ``name.{L-1}``, each (N, 1), as the rows of one (L, N) array."""
    return np.concatenate([params[f"{name}.{l}"].T for l in range(num_layers)])


def _offsets(biases: np.ndarray) -> np.ndarray:
    """β_l = Σ_{m<l} b_m for l = 0 … L from the biases' rows (L, N); (L+1, N), β_0 = 0."""
    return np.concatenate([np.zeros_like(biases[:1]), np.cumsum(biases, axis=0)])


def _scales(scores: np.ndarray) -> np.ndarray:
    """a_l = 1 + Σ_{m<l} s_m for l = 0 … L, (B, L+1); a_0 = 1."""
    return np.concatenate([np.ones_like(scores[:, :1]), 1 + np.cumsum(scores, axis=1)], axis=1)


def vector_forward_fast(params, x_hat: np.ndarray):
    """:func:`refimpl.layers.crossnet.vector_crossnet_forward`'s ``x_L``, never forming x_l.

    Returns ``(x_L, FastVectorCache)``.
    """
    num_layers = sum(key.startswith("bias.") for key in params)
    kernels = _rows(params, "kernels", num_layers)  # w_lᵀ, (L, N)
    offsets = _offsets(_rows(params, "bias", num_layers))  # β_l, (L+1, N)
    offset_scores = np.vecdot(offsets[:num_layers], kernels)  # β_l·w_l, (L,)
    projections = x_hat @ kernels.T  # x̂ w_l, (B, L)
    scores = np.empty_like(projections)  # (B, L)
    scale = np.ones_like(projections[:, 0])  # a_0 = 1, (B,)
    for l in range(num_layers):
        scores[:, l] = scale * projections[:, l] + offset_scores[l]  # s_l, (B,)
        scale = scale + scores[:, l]  # a_{l+1}, (B,)
    out = np.multiply(x_hat, scale[:, None])  # a_L x̂, (B, N)
    out += offsets[num_layers]  # + β_L, (B, N)
    return out, FastVectorCache(x_hat, scores, projections)


def vector_backward_fast(params, d_out: np.ndarray, cache: FastVectorCache):
    """:func:`refimpl.layers.crossnet.vector_crossnet_backward`'s ``(d_input, d_params)``."""
    x_hat, scores, projections = cache
    num_layers = scores.shape[1]
    kernels = _rows(params, "kernels", num_layers)  # w_lᵀ, (L, N)
    offsets = _offsets(_rows(params, "bias", num_layers))  # β_l, (L+1, N)
    scales = _scales(scores)  # a_l, (B, L+1)
    d_scores = np.empty_like(scores)  # ds_l, (B, L)
    running = np.vecdot(x_hat, d_out)  # x̂·G per sample, (B,)
    for l in reversed(range(num_layers)):
        d_scores[:, l] = running  # ds_l = x̂·G + Σ_{m>l} ds_m (x̂ w_m)
        running = running + d_scores[:, l] * projections[:, l]
    weighted = scales[:, :num_layers] * d_scores  # a_l ⊙ ds_l, (B, L)
    score_sums = d_scores.sum(axis=0)  # Σ_batch ds_l, (L,)
    d_kernels = weighted.T @ x_hat + score_sums[:, None] * offsets[:num_layers]  # dw_lᵀ, (L, N)
    # db_l = Σ_batch G + Σ_{m>l} (Σ_batch ds_m) w_m: a running sum over the later layers.
    later = np.cumsum((score_sums[:, None] * kernels)[::-1], axis=0)[::-1]  # Σ_{m>=l}, (L, N)
    d_biases = d_out.sum(axis=0) + np.concatenate([later[1:], np.zeros_like(later[:1])])  # (L, N)
    d_input = weighted @ kernels  # Σ_l (a_l ⊙ ds_l) w_lᵀ, (B, N)
    d_input += scales[:, num_layers, None] * d_out  # + a_L ⊙ G, (B, N)
    d_params = {}
    for l in range(num_layers):
        d_params[f"kernels.{l}"] = d_kernels[l][:, None]  # (N, 1)
        d_params[f"bias.{l}"] = d_biases[l][:, None]  # (N, 1)
    return d_input, {k: d_params[k] for k in params}
