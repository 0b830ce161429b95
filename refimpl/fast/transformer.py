"""The encoder layer, fast: :func:`refimpl.layers.transformer.encoder_layer_forward` and its
backward, the elementwise work done in row blocks on all cores.

The matrix products already run on every core (BLAS). What the textbook form does between them
— bias, ReLU and its derivative over (N·S, M) arrays with M = 2048 hidden units per token, the
softmax over (N·H·S, S) scores, the layer norms — is a chain of NumPy passes on one core, each
into a fresh array the size of the whole batch. Here the same textbook functions
(:func:`~refimpl.layers.transformer.layer_norm_forward`, ``softmax``, ``softmax_backward``, …)
run on blocks of rows small enough to stay in cache, on threads (NumPy lets go of the GIL in its
loops), writing into one output array; ReLU's bias works in place, and the residual sums are
added inside the layer norms' blocks instead of in passes of their own.

The feed-forward block's backward runs by blocks of tokens: each block's gradient of the
hidden layer, (rows, M), is made, masked by ReLU's derivative and consumed by the two products
that read it while it is still in cache, and the weight gradients are summed over the blocks.
The whole (N·S, M) array, 226 MB per layer in float32 at B = 1024, F = 26, M = 2048, is never
written: that pass over memory, and the fresh pages it would take, were a third of the block's
time. ``dW₂`` is computed as ``(hiddenᵀ d_out)ᵀ``: OpenBLAS runs the product with the wide
operand transposed on the left several times faster at these shapes. Sums over blocks add in
another order than the textbook's one product, so float32 results differ in the last bits.
"""

from __future__ import annotations

import numpy as np

from refimpl.fast.threads import on_threads, row_blocks
from refimpl.layers import transformer as textbook  # read at call time: the layer imports us
from refimpl.layers.mlp import linear_forward, prefixed

FF_BLOCK_BYTES = 1 << 24  # the feed-forward backward's blocks: 16 MB of (tokens, M)


def _row_blocks(array: np.ndarray) -> list[slice]:
    return row_blocks(array.shape[0], array.shape[-1], array.itemsize)


def layer_norm_forward_fast(params, x: np.ndarray, eps, residual=None):
    """Equals :func:`refimpl.layers.transformer.layer_norm_forward` of ``x`` (of ``x +
    residual`` when given; run block by block, the sum made block by block)."""
    rows = textbook.as_rows(x)  # (N·S, E)
    extra = None if residual is None else textbook.as_rows(residual)
    out, normalized = np.empty_like(rows), np.empty_like(rows)
    inv_std = np.empty((rows.shape[0], 1), rows.dtype)

    def block(part: slice) -> None:
        summed = rows[part] if extra is None else rows[part] + extra[part]
        out[part], (normalized[part], inv_std[part]) = textbook.layer_norm_forward(
            params, summed, eps
        )

    on_threads(block, _row_blocks(rows))
    cache = textbook.LayerNormCache(normalized.reshape(x.shape), inv_std.reshape(*x.shape[:-1], 1))
    return out.reshape(x.shape), cache


def layer_norm_backward_fast(params, d_out: np.ndarray, cache, d_residual=None):
    """Equals :func:`refimpl.layers.transformer.layer_norm_backward` with ``d_out`` (with
    ``d_out + d_residual`` when given; run block by block, the parameter gradients summed over
    the blocks)."""
    d_rows = textbook.as_rows(d_out)
    extra = None if d_residual is None else textbook.as_rows(d_residual)
    normalized, inv_std = textbook.as_rows(cache.normalized), textbook.as_rows(cache.inv_std)
    d_x = np.empty_like(d_rows)

    def block(part: slice) -> dict:
        part_cache = textbook.LayerNormCache(normalized[part], inv_std[part])
        d_part = d_rows[part] if extra is None else d_rows[part] + extra[part]
        d_x[part], d_params = textbook.layer_norm_backward(params, d_part, part_cache)
        return d_params

    shares = on_threads(block, _row_blocks(d_rows))
    d_params = {k: np.sum([s[k] for s in shares], axis=0, dtype=d_x.dtype) for k in shares[0]}
    return d_x.reshape(d_out.shape), d_params


def _softmax_rows(scores: np.ndarray) -> np.ndarray:
    rows = scores.reshape(-1, scores.shape[-1])
    probs = np.empty_like(rows)

    def block(part: slice) -> None:
        probs[part] = textbook.softmax(rows[part])

    on_threads(block, _row_blocks(rows))
    return probs.reshape(scores.shape)


def _softmax_backward_rows(probs: np.ndarray, d_probs: np.ndarray) -> np.ndarray:
    rows, d_rows = probs.reshape(-1, probs.shape[-1]), d_probs.reshape(-1, probs.shape[-1])
    d_scores = np.empty_like(rows)

    def block(part: slice) -> None:
        d_scores[part] = textbook.softmax_backward(rows[part], d_rows[part])

    on_threads(block, _row_blocks(rows))
    return d_scores.reshape(probs.shape)


def _linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """:func:`refimpl.layers.transformer.linear` with the bias added in place."""
    out = textbook.as_rows(x) @ weight.T  # (N·S, O)
    out += bias
    return out.reshape(*x.shape[:-1], weight.shape[0])


def _heads_into(out: np.ndarray) -> np.ndarray:
    """A view of ``out`` (N, S, H, h) as (N, H, S, h): a product written there is merged."""
    return out.transpose(0, 2, 1, 3)


def attention_forward_fast(params, x: np.ndarray, num_heads: int):
    """Equals :func:`refimpl.layers.transformer.attention_forward` (same steps; the scale
    applied in place, the softmax by blocks of rows, ``P v`` written straight into the merged
    heads)."""
    n, s, e = x.shape
    qkv = _linear(x, params["in_proj_weight"], params["in_proj_bias"])  # (N, S, 3E)
    q, k, v = (textbook.split_heads(qkv[..., i * e : (i + 1) * e], num_heads) for i in range(3))
    scores = q @ k.swapaxes(-1, -2)  # (N, H, S, S)
    scores *= textbook.attention_scale(e // num_heads, x.dtype)
    probs = _softmax_rows(scores)  # (N, H, S, S)
    context = np.empty((n, s, num_heads, e // num_heads), x.dtype)  # (N, S, H, h)
    np.matmul(probs, v, out=_heads_into(context))  # merge_heads(P v)
    context = context.reshape(n, s, e)  # (N, S, E)
    out = _linear(context, params["out_proj.weight"], params["out_proj.bias"])
    return out, textbook.AttentionCache(x, q, k, v, probs, context)


def attention_backward_fast(params, d_out: np.ndarray, cache):
    """Equals :func:`refimpl.layers.transformer.attention_backward` (same steps; the softmax's
    backward by blocks of rows, ``dq``, ``dk``, ``dv`` merged into one array, ``dv`` written
    there by its product)."""
    x, q, k, v, probs, context = cache
    n, s, e = x.shape
    num_heads, head_dim = q.shape[1], q.shape[3]
    d_context, d_out_weight, d_out_bias = textbook.linear_tokens_backward(
        params["out_proj.weight"], params["out_proj.bias"], d_out, context
    )
    d_heads = textbook.split_heads(d_context, num_heads)  # (N, H, S, h)
    d_probs = d_heads @ v.swapaxes(-1, -2)  # (N, H, S, S)
    d_scores = _softmax_backward_rows(probs, d_probs)  # (N, H, S, S)
    scale = textbook.attention_scale(head_dim, x.dtype)
    d_q, d_k = textbook.scores_backward(d_scores, q, k, scale)  # (N, H, S, h) each
    # [merge_heads(dq), merge_heads(dk), merge_heads(dv)] side by side, each written once
    d_qkv = np.empty((n, s, 3, num_heads, head_dim), x.dtype)  # (N, S, 3, H, h)
    _heads_into(d_qkv[:, :, 0])[...] = d_q
    _heads_into(d_qkv[:, :, 1])[...] = d_k
    np.matmul(probs.swapaxes(-1, -2), d_heads, out=_heads_into(d_qkv[:, :, 2]))  # dv = Pᵀ dc
    d_x, d_in_weight, d_in_bias = textbook.linear_tokens_backward(
        params["in_proj_weight"], params["in_proj_bias"], d_qkv.reshape(n, s, 3 * e), x
    )
    return d_x, {
        "in_proj_weight": d_in_weight,
        "in_proj_bias": d_in_bias,
        "out_proj.weight": d_out_weight,
        "out_proj.bias": d_out_bias,
    }


def feed_forward_fast(params, x: np.ndarray):
    """Equals :func:`refimpl.layers.transformer.feed_forward` with ReLU."""
    rows = textbook.as_rows(x)  # every token a row, (N·S, E)
    hidden, _ = linear_forward({"weight": params["linear1.weight"]}, rows)  # x W₁ᵀ, (N·S, M)
    bias = params["linear1.bias"]

    def bias_relu(block: slice) -> None:
        part = hidden[block]  # a view: written in place
        part += bias
        np.maximum(part, 0, out=part)

    on_threads(bias_relu, row_blocks(*hidden.shape, hidden.itemsize))
    out, _ = linear_forward(textbook.sub_params(params, "linear2."), hidden)  # (N·S, E)
    hidden = hidden.reshape(*x.shape[:-1], -1)  # (N, S, M)
    return out.reshape(x.shape), textbook.FeedForwardCache(x, hidden)


def feed_forward_backward_fast(params, d_out: np.ndarray, cache):
    """Equals :func:`refimpl.layers.transformer.feed_forward_backward` with ReLU (by blocks of
    tokens, the weight and bias gradients summed over the blocks)."""
    x, hidden = cache
    x_rows, hidden_rows = textbook.as_rows(x), textbook.as_rows(hidden)  # (N·S, E), (N·S, M)
    d_rows = textbook.as_rows(d_out)  # (N·S, E)
    weight1, weight2 = params["linear1.weight"], params["linear2.weight"]  # (M, E), (E, M)
    tokens, width = hidden_rows.shape
    d_x = np.empty_like(x_rows)  # (N·S, E)
    d_weight1, d_weight2_t = np.zeros_like(weight1), np.zeros_like(weight2.T)  # (M, E), (M, E)
    d_bias1 = np.zeros(width, hidden.dtype)  # (M,)
    rows = max(1, FF_BLOCK_BYTES // max(1, width * hidden.itemsize))
    d_pre_buffer = np.empty((min(rows, tokens), width), hidden.dtype)  # one block's, reused
    share = np.empty_like(d_weight1)  # one block's share of a weight gradient, (M, E)
    for lo in range(0, tokens, rows):
        part = slice(lo, min(lo + rows, tokens))
        h, d = hidden_rows[part], d_rows[part]  # (rows, M), (rows, E)
        d_pre = d_pre_buffer[: h.shape[0]]
        np.matmul(h.T, d, out=share)  # this block's (hiddenᵀ d_out), (M, E)
        d_weight2_t += share
        np.matmul(d, weight2, out=d_pre)  # d_hidden, (rows, M)
        d_pre *= h > 0  # ReLU's derivative, read from its output (0 at 0)
        d_bias1 += d_pre.sum(axis=0)
        np.matmul(d_pre, weight1, out=d_x[part])  # (rows, E)
        np.matmul(d_pre.T, x_rows[part], out=share)  # (M, E)
        d_weight1 += share
    return d_x.reshape(x.shape), {
        "linear1.weight": d_weight1,
        "linear1.bias": d_bias1,
        "linear2.weight": d_weight2_t.T,  # dW₂ = (Σ hiddenᵀ d_out)ᵀ, (E, M)
        "linear2.bias": d_rows.sum(axis=0),
    }


def encoder_layer_forward_fast(params, x: np.ndarray, num_heads: int, eps):
    """Equals :func:`refimpl.layers.transformer.encoder_layer_forward` with ReLU (same steps)."""
    a, attention = attention_forward_fast(textbook.sub_params(params, "self_attn."), x, num_heads)
    attended, norm1 = layer_norm_forward_fast(textbook.sub_params(params, "norm1."), x, eps, a)
    f, ff = feed_forward_fast(params, attended)  # (N, S, E)
    out, norm2 = layer_norm_forward_fast(textbook.sub_params(params, "norm2."), attended, eps, f)
    return out, textbook.EncoderLayerCache(attention, norm1, ff, norm2)


def encoder_layer_backward_fast(params, d_out: np.ndarray, cache):
    """Equals :func:`refimpl.layers.transformer.encoder_layer_backward` with ReLU (same steps)."""
    attention, norm1, ff, norm2 = cache
    d_sum2, d_norm2 = layer_norm_backward_fast(textbook.sub_params(params, "norm2."), d_out, norm2)
    d_ff_input, d_ff = feed_forward_backward_fast(params, d_sum2, ff)
    d_sum1, d_norm1 = layer_norm_backward_fast(
        textbook.sub_params(params, "norm1."), d_sum2, norm1, d_ff_input
    )
    d_x_attention, d_attention = attention_backward_fast(
        textbook.sub_params(params, "self_attn."), d_sum1, attention
    )
    d_params = {
        **prefixed("self_attn", d_attention),
        **d_ff,
        **prefixed("norm1", d_norm1),
        **prefixed("norm2", d_norm2),
    }
    return d_sum1 + d_x_attention, d_params
