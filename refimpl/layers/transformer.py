"""The transformer interaction: layer norm, multi-head self-attention, the encoder layer, and
TorchRec's ``InteractionTransformerArch`` — and how TorchRec's attends across the batch.

PyTorch's ``torch.nn.LayerNorm``, ``torch.nn.MultiheadAttention`` (self-attention) and
``torch.nn.TransformerEncoderLayer`` (post-norm, as torch's default), and TorchRec's
``torchrec.models.experimental.transformerdlrm.InteractionTransformerArch``. Paper: Vaswani et
al., "Attention Is All You Need", 2017, https://arxiv.org/abs/1706.03762.

Letters: N independent sequences, S tokens per sequence, E = D the model width, H heads of
``h = E / H`` each, M the feed-forward width (torch's ``dim_feedforward``, 2048 by default).
Inside the interaction arch the tokens are the F+1 rows of ``[dense; sparse]``.

Dropout is the identity here: refimpl is the deterministic layer, which is what torch computes
in eval mode (``module.eval()``); the parity tests run torch that way.

The textbook functions (``layer_norm_forward`` … ``transformer_interaction_backward``) work on
arrays laid out (N, S, E), run unchanged on float arrays and on exact object arrays (SymPy
symbols, rationals; ``derivations/`` proves them that way), and the layers call them.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import numpy as np

from refimpl.fast import transformer as fast
from refimpl.layers.activations import get_activation, softmax, softmax_backward, sqrt
from refimpl.layers.base import (
    Layer,
    as_rng,
    check_array,
    check_positive_int,
    combine_features,
    linear_uniform,
    xavier_uniform,
)
from refimpl.layers.mlp import Linear, linear_backward, linear_forward, prefixed, sub_params

ATTEND_ACROSS = ("features", "batch")


# ------------------------------------------------------------------------- array helpers


def as_rows(x: np.ndarray) -> np.ndarray:
    """Every token a row: (…, I) to (N·S, I)."""
    return x.reshape(-1, x.shape[-1])


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """``x Wᵀ + b`` on every token, as ``nn.Linear``: (…, I) to (…, O), one matrix product."""
    out, _ = linear_forward({"weight": weight, "bias": bias}, as_rows(x))  # (N·S, O)
    return out.reshape(*x.shape[:-1], weight.shape[0])  # (…, O)


def linear_tokens_backward(weight, bias, d_out, x):
    """:func:`~refimpl.layers.mlp.linear_backward` over every token: ``(dx, dW, db)``."""
    d_rows, grads = linear_backward({"weight": weight, "bias": bias}, as_rows(d_out), as_rows(x))
    return d_rows.reshape(x.shape), grads["weight"], grads["bias"]


def sum_tokens(a: np.ndarray) -> np.ndarray:
    """Σ over every axis but the last: a bias gradient, (…, O) to (O,)."""
    return a.reshape(-1, a.shape[-1]).sum(axis=0)


def split_heads(x: np.ndarray, num_heads: int) -> np.ndarray:
    """(N, S, E) to (N, H, S, h): head j owns columns j·h … (j+1)·h − 1, as torch."""
    n, s, e = x.shape
    return x.reshape(n, s, num_heads, e // num_heads).transpose(0, 2, 1, 3)


def merge_heads(x: np.ndarray) -> np.ndarray:
    """(N, H, S, h) to (N, S, E): the inverse of :func:`split_heads`."""
    n, h, s, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(n, s, h * d)


def attention_scale(head_dim: int, dtype) -> np.ndarray:
    """``1/√h`` in the arrays' own number type (exact on object arrays)."""
    return 1 / sqrt(np.asarray(head_dim, dtype=dtype))


# ------------------------------------------------------------------------------ layer norm


class LayerNormCache(NamedTuple):
    normalized: np.ndarray  # x̂ = (x − μ) / σ, (…, E)
    inv_std: np.ndarray  # 1/σ = 1/√(var + eps), (…, 1)


def layer_norm_forward(params, x: np.ndarray, eps) -> tuple[np.ndarray, LayerNormCache]:
    """``y = γ ⊙ (x − μ)/√(var + eps) + β`` over the last axis (the biased variance, as torch).

    >>> params = {"weight": np.ones(2), "bias": np.zeros(2)}
    >>> layer_norm_forward(params, np.array([[1.0, 3.0]]), eps=0.0)[0]
    array([[-1.,  1.]])
    """
    mean = x.mean(axis=-1, keepdims=True)  # μ, (…, 1)
    centered = x - mean  # (…, E)
    var = (centered * centered).mean(axis=-1, keepdims=True)  # (…, 1)
    inv_std = 1 / sqrt(var + eps)  # (…, 1)
    normalized = centered * inv_std  # x̂, (…, E)
    return normalized * params["weight"] + params["bias"], LayerNormCache(normalized, inv_std)


def layer_norm_backward(params, d_out: np.ndarray, cache: LayerNormCache):
    """``dx = (1/σ)(dx̂ − mean(dx̂) − x̂ ⊙ mean(dx̂ ⊙ x̂))`` with ``dx̂ = γ ⊙ dy``.

    The two means are the gradient through μ and through σ: every entry of x moves the mean
    and the spread that all of the row's outputs read.

    >>> params = {"weight": np.ones(2), "bias": np.zeros(2)}
    >>> _, cache = layer_norm_forward(params, np.array([[1.0, 3.0]]), eps=0.0)
    >>> layer_norm_backward(params, np.array([[1.0, 1.0]]), cache)[0]   # a shift: no change
    array([[0., 0.]])
    """
    normalized, inv_std = cache
    d_normalized = d_out * params["weight"]  # dx̂, (…, E)
    d_mean = d_normalized.mean(axis=-1, keepdims=True)  # through μ, (…, 1)
    d_spread = (d_normalized * normalized).mean(axis=-1, keepdims=True)  # through σ, (…, 1)
    d_x = inv_std * (d_normalized - d_mean - normalized * d_spread)  # (…, E)
    return d_x, {"weight": sum_tokens(d_out * normalized), "bias": sum_tokens(d_out)}


# ------------------------------------------------------------------------------- attention


class AttentionCache(NamedTuple):
    input: np.ndarray  # x, (N, S, E)
    q: np.ndarray  # queries, (N, H, S, h)
    k: np.ndarray  # keys, (N, H, S, h)
    v: np.ndarray  # values, (N, H, S, h)
    probs: np.ndarray  # P = softmax(q kᵀ/√h), (N, H, S, S)
    context: np.ndarray  # P v with the heads merged, out_proj's input, (N, S, E)


def attention_forward(params, x: np.ndarray, num_heads: int):
    """Multi-head self-attention over the S tokens of each of N sequences.

    >>> e = 2
    >>> params = {"in_proj_weight": np.vstack([np.eye(e)] * 3), "in_proj_bias": np.zeros(3 * e),
    ...           "out_proj.weight": np.eye(e), "out_proj.bias": np.zeros(e)}
    >>> x = np.array([[[1.0, 0.0], [1.0, 0.0]]])      # two equal tokens: equal weights
    >>> attention_forward(params, x, num_heads=1)[0]
    array([[[1., 0.],
            [1., 0.]]])
    """
    e = x.shape[-1]
    qkv = linear(x, params["in_proj_weight"], params["in_proj_bias"])  # (N, S, 3E)
    q, k, v = (split_heads(qkv[..., i * e : (i + 1) * e], num_heads) for i in range(3))
    scale = attention_scale(e // num_heads, x.dtype)  # 1/√h
    scores = (q @ k.swapaxes(-1, -2)) * scale  # (N, H, S, S)
    probs = softmax(scores)  # each query's weights over the keys, (N, H, S, S)
    context = merge_heads(probs @ v)  # (N, S, E)
    out = linear(context, params["out_proj.weight"], params["out_proj.bias"])  # (N, S, E)
    return out, AttentionCache(x, q, k, v, probs, context)


def scores_backward(d_scores, q, k, scale):
    """``scores = (q kᵀ)·s`` gives ``dq = (d_scores k)·s`` and ``dk = (d_scoresᵀ q)·s``."""
    d_q = (d_scores @ k) * scale  # (N, H, S, h)
    d_k = (d_scores.swapaxes(-1, -2) @ q) * scale  # (N, H, S, h)
    return d_q, d_k


def attention_backward(params, d_out: np.ndarray, cache: AttentionCache):
    """``(d_x, d_params)`` for :func:`attention_forward`, each step undone in reverse."""
    x, q, k, v, probs, context = cache
    num_heads, head_dim = q.shape[1], q.shape[3]
    d_context, d_out_weight, d_out_bias = linear_tokens_backward(
        params["out_proj.weight"], params["out_proj.bias"], d_out, context
    )  # dc: (N, S, E)
    d_heads = split_heads(d_context, num_heads)  # d(P v), (N, H, S, h)
    d_probs = d_heads @ v.swapaxes(-1, -2)  # (N, H, S, S)
    d_v = probs.swapaxes(-1, -2) @ d_heads  # (N, H, S, h)
    d_scores = softmax_backward(probs, d_probs)  # (N, H, S, S)
    d_q, d_k = scores_backward(d_scores, q, k, attention_scale(head_dim, x.dtype))
    d_qkv = np.concatenate([merge_heads(d_q), merge_heads(d_k), merge_heads(d_v)], axis=-1)
    d_x, d_in_weight, d_in_bias = linear_tokens_backward(
        params["in_proj_weight"], params["in_proj_bias"], d_qkv, x
    )  # (N, S, E)
    return d_x, {
        "in_proj_weight": d_in_weight,  # (3E, E)
        "in_proj_bias": d_in_bias,  # (3E,)
        "out_proj.weight": d_out_weight,  # (E, E)
        "out_proj.bias": d_out_bias,  # (E,)
    }


# -------------------------------------------------------------------------- feed-forward


class FeedForwardCache(NamedTuple):
    input: np.ndarray  # x, linear1's input, (N, S, E)
    hidden: np.ndarray  # g(x W₁ᵀ + b₁), linear2's input, (N, S, M)


def feed_forward(params, x: np.ndarray, activation: str = "relu"):
    """The encoder layer's feed-forward block, ``g(x W₁ᵀ + b₁) W₂ᵀ + b₂``, on every token."""
    hidden = get_activation(activation).forward(
        linear(x, params["linear1.weight"], params["linear1.bias"])
    )  # (N, S, M)
    out = linear(hidden, params["linear2.weight"], params["linear2.bias"])  # (N, S, E)
    return out, FeedForwardCache(x, hidden)


def feed_forward_backward(params, d_out, cache: FeedForwardCache, activation: str = "relu"):
    """``(d_x, d_params)`` for :func:`feed_forward`; g' is read from g's output."""
    x, hidden = cache
    d_hidden, d_weight2, d_bias2 = linear_tokens_backward(
        params["linear2.weight"], params["linear2.bias"], d_out, hidden
    )  # (N, S, M)
    d_pre = d_hidden * get_activation(activation).derivative(hidden)  # (N, S, M)
    d_x, d_weight1, d_bias1 = linear_tokens_backward(
        params["linear1.weight"], params["linear1.bias"], d_pre, x
    )  # (N, S, E)
    return d_x, {
        "linear1.weight": d_weight1,  # (M, E)
        "linear1.bias": d_bias1,  # (M,)
        "linear2.weight": d_weight2,  # (E, M)
        "linear2.bias": d_bias2,  # (E,)
    }


# --------------------------------------------------------------------------- encoder layer


class EncoderLayerCache(NamedTuple):
    attention: AttentionCache
    norm1: LayerNormCache
    feed_forward: FeedForwardCache  # its input is y₁ = norm1(x + attention(x))
    norm2: LayerNormCache


def encoder_layer_forward(params, x: np.ndarray, num_heads: int, eps, activation: str = "relu"):
    """torch's post-norm encoder layer: ``y₁ = norm1(x + attn(x))``, ``y = norm2(y₁ + ff(y₁))``."""
    a, attention = attention_forward(sub_params(params, "self_attn."), x, num_heads)  # (N, S, E)
    attended, norm1 = layer_norm_forward(sub_params(params, "norm1."), x + a, eps)  # y₁
    f, ff = feed_forward(params, attended, activation)  # ff(y₁), (N, S, E)
    out, norm2 = layer_norm_forward(sub_params(params, "norm2."), attended + f, eps)  # (N, S, E)
    return out, EncoderLayerCache(attention, norm1, ff, norm2)


def encoder_layer_backward(params, d_out, cache: EncoderLayerCache, activation: str = "relu"):
    """``(d_x, d_params)`` for :func:`encoder_layer_forward`: norm2, the feed-forward block and
    its residual, norm1, attention and its residual, in reverse."""
    attention, norm1, ff, norm2 = cache
    d_sum2, d_norm2 = layer_norm_backward(sub_params(params, "norm2."), d_out, norm2)  # d(y₁+f)
    d_ff_input, d_ff = feed_forward_backward(params, d_sum2, ff, activation)  # (N, S, E)
    d_attended = d_sum2 + d_ff_input  # residual + feed-forward, (N, S, E)
    d_sum1, d_norm1 = layer_norm_backward(sub_params(params, "norm1."), d_attended, norm1)
    d_x_attention, d_attention = attention_backward(
        sub_params(params, "self_attn."), d_sum1, attention
    )
    d_params = {
        **prefixed("self_attn", d_attention),
        **d_ff,
        **prefixed("norm1", d_norm1),
        **prefixed("norm2", d_norm2),
    }
    return d_sum1 + d_x_attention, d_params  # residual + attention, (N, S, E)


# ------------------------------------------------------------------------ interaction arch


def encoder_layer_count(params) -> int:
    """The number of encoder layers, from the ``interarch_TE.layers.i.`` keys."""
    return len({k.split(".")[2] for k in params if k.startswith("interarch_TE.layers.")})


def as_sequences(combined: np.ndarray, attend_across: str) -> np.ndarray:
    """(B, F+1, D) as the (N, S, E) the encoder attends within: per sample over the F+1 features
    (``"features"``), or — TorchRec's reading — per feature over the B samples (``"batch"``)."""
    return combined if attend_across == "features" else combined.transpose(1, 0, 2)


class TransformerInteractionCache(NamedTuple):
    batch: int  # B
    layers: tuple  # each encoder layer's cache


def transformer_interaction_forward(
    params, dense, sparse, num_heads: int, eps, attend_across="features", layer_forward=None
):
    """``[dense; sparse]`` (B, F+1, D) through the encoder layers, flattened to (B, (F+1)·D).

    ``layer_forward`` (default :func:`encoder_layer_forward`) runs one encoder layer."""
    layer_forward = layer_forward or encoder_layer_forward
    combined = np.concatenate([dense[:, None, :], sparse], axis=1)  # (B, F+1, D)
    x = as_sequences(combined, attend_across)  # (N, S, D)
    caches = []
    for i in range(encoder_layer_count(params)):
        layer = sub_params(params, f"interarch_TE.layers.{i}.")
        x, cache = layer_forward(layer, x, num_heads, eps)
        caches.append(cache)
    out = as_sequences(x, attend_across)  # back to (B, F+1, D)
    return out.reshape(out.shape[0], -1), TransformerInteractionCache(dense.shape[0], tuple(caches))


def transformer_interaction_backward(
    params, d_out, cache, attend_across="features", layer_backward=None
):
    """``(d_dense, d_sparse, d_params)`` for :func:`transformer_interaction_forward`;
    ``layer_backward`` (default :func:`encoder_layer_backward`) runs one layer's backward."""
    layer_backward = layer_backward or encoder_layer_backward
    batch, caches = cache
    dim = caches[0].norm2.normalized.shape[-1]
    d_x = as_sequences(d_out.reshape(batch, -1, dim), attend_across)  # (N, S, D)
    d_params = {}
    for i in reversed(range(len(caches))):
        prefix = f"interarch_TE.layers.{i}"
        d_x, d_layer = layer_backward(sub_params(params, prefix + "."), d_x, caches[i])
        d_params.update(prefixed(prefix, d_layer))
    d_combined = as_sequences(d_x, attend_across)  # (B, F+1, D)
    return d_combined[:, 0], d_combined[:, 1:], {k: d_params[k] for k in params}


# ---------------------------------------------------------------------------------- layers


class LayerNorm(Layer):
    """Layer normalisation over the last axis, as ``torch.nn.LayerNorm(E, eps)``.

    Parameters
    ----------
    normalized_shape : int
        E, the size of the last axis.
    eps : float
        Added to the variance before the square root; torch's default 1e-5.
    dtype : float32 or float64

    Attributes
    ----------
    params : dict
        ``weight`` γ (E,) initialised to ones, ``bias`` β (E,) to zeros.

    Notes
    -----
    Each row x of E numbers, with ``μ = mean(x)`` and ``σ² = mean((x − μ)²)`` (biased)::

        x̂  = (x − μ) / √(σ² + eps)
        y  = γ ⊙ x̂ + β

    Backward, with ``dx̂ = γ ⊙ dy``::

        dx = (dx̂ − mean(dx̂) − x̂ ⊙ mean(dx̂ ⊙ x̂)) / √(σ² + eps)
        dγ = Σ_rows dy ⊙ x̂,    dβ = Σ_rows dy

    Examples
    --------
    >>> norm = LayerNorm(2, eps=0.0)
    >>> y, cache = norm.forward(np.array([[1.0, 3.0], [2.0, 2.5]]))
    >>> y
    array([[-1.,  1.],
           [-1.,  1.]])
    """

    input_names = ("input",)

    def __init__(self, normalized_shape: int, eps: float = 1e-5, *, dtype=np.float64):
        super().__init__(dtype)
        self.normalized_shape = check_positive_int("normalized_shape", normalized_shape)
        if not isinstance(eps, float | int) or not eps >= 0:
            raise ValueError(f"eps: expected a number >= 0, got {eps!r}")
        self.eps = float(eps)
        self._params["weight"] = np.ones(self.normalized_shape, self.dtype)
        self._params["bias"] = np.zeros(self.normalized_shape, self.dtype)

    def _config(self) -> str:
        return f"{self.normalized_shape}" + ("" if self.eps == 1e-5 else f", eps={self.eps}")

    def _check(self, name: str, x: np.ndarray, dtype) -> np.ndarray:
        letters = " ".join([f"A{i}" for i in range(getattr(x, "ndim", 1) - 1)] + ["E"])
        try:
            return check_array(name, x, letters, {"E": self.normalized_shape}, dtype)
        except ValueError as exc:
            shape = getattr(x, "shape", None)
            raise ValueError(
                f"{name}: expected shape (…, E) with E = {self.normalized_shape}, got {shape}"
            ) from exc

    def forward(self, input: np.ndarray) -> tuple[np.ndarray, LayerNormCache]:
        """
        Parameters
        ----------
        input : ndarray, shape (…, E)

        Returns
        -------
        out : ndarray, shape (…, E)
        cache : LayerNormCache
        """
        self._check("input", input, self.dtype)
        return layer_norm_forward(self._params, input, self.eps)

    def backward(self, d_out: np.ndarray, cache: LayerNormCache):
        """
        Returns
        -------
        d_input : ndarray, shape (…, E)
        d_params : dict, ``weight`` (E,) and ``bias`` (E,)
        """
        self._check("d_out", d_out, self.dtype)
        if d_out.shape != cache.normalized.shape:
            raise ValueError(
                f"d_out: expected the forward output's shape {cache.normalized.shape}, "
                f"got {d_out.shape}"
            )
        return layer_norm_backward(self._params, d_out, cache)


def _check_heads(embed_dim: int, num_heads: int) -> tuple[int, int]:
    embed_dim = check_positive_int("embed_dim", embed_dim)
    num_heads = check_positive_int("num_heads", num_heads)
    if embed_dim % num_heads:
        raise ValueError(
            f"num_heads: the width E = {embed_dim} must split evenly into H = {num_heads} heads"
        )
    return embed_dim, num_heads


class _TokenLayer(Layer):
    """Shared by the attention and the encoder layer: torch's (S, N, E) or (N, S, E) layout."""

    input_names = ("input",)
    embed_dim: int
    batch_first: bool

    @property
    def _letters(self) -> str:
        return "N S E" if self.batch_first else "S N E"

    def _to_sequences(self, name: str, x: np.ndarray) -> np.ndarray:
        """The input as (N, S, E), whichever layout it arrived in."""
        check_array(name, x, self._letters, {"E": self.embed_dim}, self.dtype)
        return x if self.batch_first else x.transpose(1, 0, 2)

    def _check_d_out(self, d_out: np.ndarray, x: np.ndarray) -> np.ndarray:
        n, s, e = x.shape
        sizes = {"N": n, "S": s, "E": e}
        check_array("d_out", d_out, self._letters, sizes, self.dtype)
        return d_out if self.batch_first else d_out.transpose(1, 0, 2)

    def _from_sequences(self, x: np.ndarray) -> np.ndarray:
        return x if self.batch_first else x.transpose(1, 0, 2)


class MultiheadAttention(_TokenLayer):
    """Multi-head self-attention, as ``torch.nn.MultiheadAttention`` called with
    ``query = key = value`` and ``need_weights=False``.

    Parameters
    ----------
    embed_dim : int
        E, the token width.
    num_heads : int
        H; E must be a multiple of H. Each head works in ``h = E / H`` dimensions.
    batch_first : bool
        torch's layout flag: the input is (S, N, E) when False (torch's default) and
        (N, S, E) when True. Attention always runs over the S axis.
    seed : int or Generator, optional
        torch's initialisation: ``in_proj_weight`` xavier-uniform, ``out_proj.weight``
        U(±1/√E) (``nn.Linear``'s), both biases zero.
    dtype : float32 or float64

    Attributes
    ----------
    params : dict
        ``in_proj_weight`` (3E, E) — the query, key and value projections stacked —,
        ``in_proj_bias`` (3E,), ``out_proj.weight`` (E, E), ``out_proj.bias`` (E,).

    Notes
    -----
    Per sequence x (S, E), with ``[W_q; W_k; W_v] = in_proj_weight`` and heads j = 1 … H
    taking columns ``j·h … (j+1)·h − 1``::

        q, k, v = x W_qᵀ + b_q, x W_kᵀ + b_k, x W_vᵀ + b_v       (S, E) each
        P_j     = softmax(q_j k_jᵀ / √h)      row-wise             (S, S)
        c       = [P_1 v_1, …, P_H v_H]                             (S, E)
        out     = c W_oᵀ + b_o                                      (S, E)

    Backward, from ``d_out``::

        dc  = d_out W_o,   dW_o = Σ d_outᵀ c,   db_o = Σ d_out
        dP_j = dc_j v_jᵀ,  dv_j = P_jᵀ dc_j
        dZ_j = P_j ⊙ (dP_j − rowsum(P_j ⊙ dP_j))         softmax, Z_j = q_j k_jᵀ/√h
        dq_j = dZ_j k_j / √h,   dk_j = dZ_jᵀ q_j / √h
        dx  = [dq, dk, dv] W_in,   dW_in = Σ [dq, dk, dv]ᵀ x,   db_in = Σ [dq, dk, dv]

    (sums over every token of every sequence). Vectorized over sequences and heads.

    Examples
    --------
    >>> mha = MultiheadAttention(4, 2, batch_first=True, seed=0)
    >>> x = np.random.default_rng(1).standard_normal((3, 5, 4))   # N=3, S=5, E=4
    >>> out, cache = mha.forward(x)
    >>> d_x, d_params = mha.backward(np.ones_like(out), cache)
    >>> out.shape, d_x.shape, list(d_params)
    ((3, 5, 4), (3, 5, 4), ['in_proj_weight', 'in_proj_bias', 'out_proj.weight', 'out_proj.bias'])
    """

    def __init__(
        self, embed_dim: int, num_heads: int, *, batch_first: bool = False, seed=None,
        dtype=np.float64,
    ):  # fmt: skip
        super().__init__(dtype)
        self.embed_dim, self.num_heads = _check_heads(embed_dim, num_heads)
        self.batch_first = bool(batch_first)
        rng, e = as_rng(seed), self.embed_dim
        self._params["in_proj_weight"] = xavier_uniform(rng, (3 * e, e), self.dtype)
        self._params["in_proj_bias"] = np.zeros(3 * e, self.dtype)
        self._params["out_proj.weight"] = linear_uniform(rng, (e, e), e, self.dtype)
        self._params["out_proj.bias"] = np.zeros(e, self.dtype)

    def _config(self) -> str:
        return f"{self.embed_dim}, {self.num_heads}" + (
            ", batch_first=True" if self.batch_first else ""
        )

    def forward(self, input: np.ndarray) -> tuple[np.ndarray, AttentionCache]:
        """
        Parameters
        ----------
        input : ndarray, shape (S, N, E), or (N, S, E) with ``batch_first``

        Returns
        -------
        out : ndarray, the input's shape
        cache : AttentionCache
        """
        x = self._to_sequences("input", input)  # (N, S, E)
        out, cache = attention_forward(self._params, x, self.num_heads)
        return self._from_sequences(out), cache

    def backward(self, d_out: np.ndarray, cache: AttentionCache):
        """
        Returns
        -------
        d_input : ndarray, the input's shape
        d_params : dict keyed like ``params``
        """
        d_out = self._check_d_out(d_out, cache.input)  # (N, S, E)
        d_x, d_params = attention_backward(self._params, d_out, cache)
        return self._from_sequences(d_x), d_params


class TransformerEncoderLayer(_TokenLayer):
    """torch's ``nn.TransformerEncoderLayer`` with its defaults: post-norm, ReLU, eval mode.

    Parameters
    ----------
    d_model : int
        E, the token width.
    nhead : int
        H, the attention heads (E must be a multiple of H).
    dim_feedforward : int
        M, the feed-forward width; torch's default 2048.
    dropout : float
        Accepted for torch's signature and ignored: refimpl computes the layer as torch does
        in eval mode, where dropout is the identity.
    activation : str
        The feed-forward activation by name; torch's default ``"relu"``.
    layer_norm_eps : float
        Both layer norms' eps; torch's default 1e-5.
    batch_first : bool
        The input is (S, N, E) when False (torch's default), (N, S, E) when True.
    seed : int or Generator, optional
        torch's initialisation of each part (see :class:`MultiheadAttention`,
        :class:`~refimpl.layers.mlp.Linear`, :class:`LayerNorm`).
    dtype : float32 or float64

    Attributes
    ----------
    params : dict
        torch's keys: ``self_attn.in_proj_weight`` (3E, E), ``self_attn.in_proj_bias``,
        ``self_attn.out_proj.weight`` (E, E), ``self_attn.out_proj.bias``,
        ``linear1.weight`` (M, E), ``linear1.bias``, ``linear2.weight`` (E, M),
        ``linear2.bias``, ``norm1.weight``, ``norm1.bias``, ``norm2.weight``, ``norm2.bias``.

    Notes
    -----
    Per sequence x (S, E)::

        y₁  = norm1(x + attention(x))                       (S, E)
        y   = norm2(y₁ + relu(y₁ W₁ᵀ + b₁) W₂ᵀ + b₂)         (S, E)

    Backward runs the blocks in reverse; each residual adds its two paths' gradients::

        ds₂ = norm2ᵀ(dy)                      the gradient of y₁ + ff(y₁)
        dy₁ = ds₂ + ffᵀ(ds₂)                  residual + feed-forward
        ds₁ = norm1ᵀ(dy₁)                     the gradient of x + attention(x)
        dx  = ds₁ + attentionᵀ(ds₁)           residual + attention

    Examples
    --------
    >>> layer = TransformerEncoderLayer(4, 2, dim_feedforward=8, seed=0)
    >>> x = np.random.default_rng(1).standard_normal((5, 3, 4))   # S=5, N=3, E=4
    >>> out, cache = layer.forward(x)
    >>> np.allclose(out.mean(axis=-1), 0)        # norm2 last, with γ = 1, β = 0
    True
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str = "relu",
        layer_norm_eps: float = 1e-5,
        batch_first: bool = False,
        *,
        seed=None,
        dtype=np.float64,
    ):
        super().__init__(dtype)
        self.embed_dim, self.nhead = _check_heads(d_model, nhead)
        self.dim_feedforward = check_positive_int("dim_feedforward", dim_feedforward)
        if not isinstance(dropout, float | int) or not 0 <= dropout < 1:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.activation = get_activation(activation).name
        self.batch_first = bool(batch_first)
        rng, e, m = as_rng(seed), self.embed_dim, self.dim_feedforward
        self._children["self_attn"] = MultiheadAttention(e, nhead, seed=rng, dtype=dtype)
        self._children["linear1"] = Linear(e, m, seed=rng, dtype=dtype)
        self._children["linear2"] = Linear(m, e, seed=rng, dtype=dtype)
        self._children["norm1"] = LayerNorm(e, layer_norm_eps, dtype=dtype)
        self._children["norm2"] = LayerNorm(e, layer_norm_eps, dtype=dtype)
        self.layer_norm_eps = self._children["norm1"].eps

    @property
    def d_model(self) -> int:
        return self.embed_dim

    def _config(self) -> str:
        extra = "" if self.dim_feedforward == 2048 else f", dim_feedforward={self.dim_feedforward}"
        extra += "" if self.activation == "relu" else f", activation={self.activation!r}"
        extra += "" if self.layer_norm_eps == 1e-5 else f", layer_norm_eps={self.layer_norm_eps}"
        return f"{self.embed_dim}, {self.nhead}{extra}" + (
            ", batch_first=True" if self.batch_first else ""
        )

    def forward(self, src: np.ndarray) -> tuple[np.ndarray, EncoderLayerCache]:
        """
        Parameters
        ----------
        src : ndarray, shape (S, N, E), or (N, S, E) with ``batch_first``

        Returns
        -------
        out : ndarray, the input's shape
        cache : EncoderLayerCache
        """
        x = self._to_sequences("src", src)  # (N, S, E)
        if self.activation == "relu":  # torch's default: the fast path (same numbers)
            out, cache = fast.encoder_layer_forward_fast(
                self.params, x, self.nhead, self.layer_norm_eps
            )
        else:
            out, cache = encoder_layer_forward(
                self.params, x, self.nhead, self.layer_norm_eps, self.activation
            )
        return self._from_sequences(out), cache

    def backward(self, d_out: np.ndarray, cache: EncoderLayerCache):
        """
        Returns
        -------
        d_src : ndarray, the input's shape
        d_params : dict keyed like ``params``
        """
        d_out = self._check_d_out(d_out, cache.attention.input)  # (N, S, E)
        if self.activation == "relu":
            d_x, d_params = fast.encoder_layer_backward_fast(self.params, d_out, cache)
        else:
            d_x, d_params = encoder_layer_backward(self.params, d_out, cache, self.activation)
        return self._from_sequences(d_x), {k: d_params[k] for k in self.params}

    def pre_activations(self, src: np.ndarray) -> np.ndarray:
        """``y₁ W₁ᵀ + b₁`` (the feed-forward block's pre-activations) for ``src``, recomputed."""
        _, cache = self.forward(src)
        params = self.params
        return linear(cache.feed_forward.input, params["linear1.weight"], params["linear1.bias"])

    def kink_distance(self, src: np.ndarray) -> float:
        """Smallest |pre-activation| of the feed-forward block when its activation has a kink."""
        if not get_activation(self.activation).kinked:
            return float("inf")
        pre = self.pre_activations(src)
        return float(np.min(np.abs(pre))) if pre.size else float("inf")


class InteractionTransformerArch(Layer):
    """TorchRec's ``InteractionTransformerArch``: a transformer encoder over ``[dense; sparse]``.

    Parameters
    ----------
    num_sparse_features : int
        F. F = 0 returns ``dense`` unchanged, as TorchRec does.
    embedding_dim : int
        D, the token width (a multiple of ``nhead``).
    nhead : int
        H, attention heads per layer; TorchRec's default 8.
    ntransformer_layers : int
        The number of encoder layers; TorchRec's default 4.
    attend_across : {"features", "batch"}
        ``"features"`` (default): each sample's F+1 feature vectors attend to one another,
        what a feature interaction is for. ``"batch"``: TorchRec's actual behaviour. It builds
        ``nn.TransformerEncoderLayer`` with torch's default ``batch_first=False`` and feeds it
        (B, F+1, D), so torch reads B as the sequence: every feature attends across the B
        samples of the batch, and a sample's output depends on the other samples. Use it to
        reproduce TorchRec's numbers (the parity tests do).
    dim_feedforward : int
        M, the encoder layers' feed-forward width. TorchRec fixes torch's default 2048;
        refimpl lets it be set for small checks.
    seed : int or Generator, optional
        torch's initialisation of one encoder layer (:class:`TransformerEncoderLayer`), copied
        into every layer: ``nn.TransformerEncoder`` deep-copies the layer it is given, so all
        layers start equal.
    dtype : float32 or float64

    Attributes
    ----------
    params : dict
        TorchRec's ``state_dict()`` keys: ``interarch_TE.layers.i.`` followed by the
        :class:`TransformerEncoderLayer` keys (``self_attn.in_proj_weight`` …
        ``norm2.bias``), for i = 0 … ``ntransformer_layers`` − 1.

    Notes
    -----
    With ``C = [dense; sparse]`` (B, F+1, D)::

        X   = C                 (N = B sequences of S = F+1 tokens)    "features"
        X   = Cᵀ (axes 0, 1)    (N = F+1 sequences of S = B tokens)    "batch" (TorchRec)
        X   ← encoder layer i (X), for i = 0 … L−1
        out = X, back in (B, F+1, D), reshaped to (B, (F+1)·D)

    TorchRec's docstring promises an output of B × (D + F + F choose 2) and says it concatenates
    the dense input; it returns B × (F+1)·D and concatenates nothing. Backward runs the
    encoder layers in reverse and splits the gradient of C into dense (row 0) and sparse.

    Examples
    --------
    >>> arch = InteractionTransformerArch(2, 4, nhead=2, ntransformer_layers=1,
    ...                                   dim_feedforward=8, seed=0)
    >>> dense = np.random.default_rng(1).standard_normal((3, 4))        # B=3, D=4
    >>> sparse = np.random.default_rng(2).standard_normal((3, 2, 4))    # F=2
    >>> out, cache = arch.forward(dense, sparse)
    >>> out.shape                                   # (B, (F+1)·D)
    (3, 12)
    >>> d_dense, d_sparse, d_params = arch.backward(np.ones_like(out), cache)
    >>> d_dense.shape, d_sparse.shape
    ((3, 4), (3, 2, 4))
    """

    input_names = ("dense", "sparse")

    def __init__(
        self,
        num_sparse_features: int,
        embedding_dim: int,
        nhead: int = 8,
        ntransformer_layers: int = 4,
        *,
        attend_across: str = "features",
        dim_feedforward: int = 2048,
        seed=None,
        dtype=np.float64,
    ):
        super().__init__(dtype)
        self.num_sparse_features = check_positive_int("num_sparse_features", num_sparse_features, 0)
        self.embedding_dim, self.nhead = _check_heads(embedding_dim, nhead)
        self.ntransformer_layers = check_positive_int("ntransformer_layers", ntransformer_layers)
        if attend_across not in ATTEND_ACROSS:
            raise ValueError(
                f"attend_across: expected one of {ATTEND_ACROSS}, got {attend_across!r}"
            )
        self.attend_across = attend_across
        self.dim_feedforward = check_positive_int("dim_feedforward", dim_feedforward)
        # TorchRec's layers take (B, F+1, D) as torch's (S, N, E) (batch_first=False): the
        # batch is the sequence. Per-sample attention reads it as (N, S, E) instead.
        first = TransformerEncoderLayer(
            self.embedding_dim,
            self.nhead,
            self.dim_feedforward,
            batch_first=attend_across == "features",
            seed=seed,
            dtype=dtype,
        )
        for i in range(self.ntransformer_layers):
            # nn.TransformerEncoder deep-copies the layer it is given: all layers start equal.
            self._children[f"interarch_TE.layers.{i}"] = copy.deepcopy(first)
        self.layer_norm_eps = first.layer_norm_eps

    @property
    def layers(self) -> list[TransformerEncoderLayer]:
        return list(self._children.values())

    def output_size(self, embedding_dim: int | None = None) -> int:
        """(F+1)·D (D when F = 0: dense passes through). D is the arch's own."""
        return (self.num_sparse_features + 1) * self.embedding_dim

    def _config(self) -> str:
        extra = "" if self.attend_across == "features" else ", attend_across='batch'"
        extra += "" if self.dim_feedforward == 2048 else f", dim_feedforward={self.dim_feedforward}"
        return (
            f"num_sparse_features={self.num_sparse_features}, embedding_dim={self.embedding_dim}, "
            f"nhead={self.nhead}, ntransformer_layers={self.ntransformer_layers}{extra}"
        )

    def _check_inputs(self, dense, sparse) -> int:
        check_array("dense", dense, "B D", {"D": self.embedding_dim}, self.dtype)
        combine_features(dense, sparse, self.num_sparse_features, self.dtype)
        return dense.shape[0]

    def forward(self, dense: np.ndarray, sparse: np.ndarray):
        """
        Parameters
        ----------
        dense : ndarray, shape (B, D)
        sparse : ndarray, shape (B, F, D)

        Returns
        -------
        out : ndarray, shape (B, (F+1)·D); a copy of ``dense`` when F = 0
        cache : TransformerInteractionCache
        """
        batch = self._check_inputs(dense, sparse)
        if self.num_sparse_features == 0:  # TorchRec returns dense itself; a copy is safer
            return dense.copy(), TransformerInteractionCache(batch, ())
        if batch == 0:  # "batch" would attend over zero tokens: nothing to compute either way
            return np.zeros((0, self.output_size()), self.dtype), TransformerInteractionCache(0, ())
        return transformer_interaction_forward(
            self.params,
            dense,
            sparse,
            self.nhead,
            self.layer_norm_eps,
            self.attend_across,
            fast.encoder_layer_forward_fast,
        )

    def backward(self, d_out: np.ndarray, cache: TransformerInteractionCache):
        """
        Parameters
        ----------
        d_out : ndarray, shape (B, (F+1)·D), or (B, D) when F = 0
        cache : TransformerInteractionCache from ``forward``

        Returns
        -------
        d_dense : ndarray, shape (B, D)
        d_sparse : ndarray, shape (B, F, D)
        d_params : dict keyed like ``params``
        """
        batch, layers = cache
        f, d = self.num_sparse_features, self.embedding_dim
        check_array("d_out", d_out, "B W", {"B": batch, "W": self.output_size()}, self.dtype)
        if not layers:
            d_dense = d_out.copy() if f == 0 else np.zeros((batch, d), self.dtype)
            return d_dense, np.zeros((batch, f, d), self.dtype), self.zero_param_grads()
        return transformer_interaction_backward(
            self.params, d_out, cache, self.attend_across, fast.encoder_layer_backward_fast
        )

    def kink_distance(self, dense: np.ndarray, sparse: np.ndarray) -> float:
        """Smallest |pre-activation| of any encoder layer's ReLU."""
        self._check_inputs(dense, sparse)
        if self.num_sparse_features == 0 or dense.shape[0] == 0:
            return float("inf")
        # (B, F+1, D) is what every layer takes, in its own layout (see __init__)
        x = np.concatenate([dense[:, None, :], sparse], axis=1)
        distances = []
        for layer in self.layers:
            distances.append(layer.kink_distance(x))
            x = layer.forward(x)[0]
        return min(distances)
