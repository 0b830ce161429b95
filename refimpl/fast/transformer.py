"""The encoder layer, fast: :func:`refimpl.layers.transformer.encoder_layer_forward` and its
backward, the elementwise work done in row blocks on all cores.

The matrix products already run on every core (BLAS). What the textbook form does between them
— bias, ReLU and its derivative over (N·S, M) arrays with M = 2048 hidden units per token, the
softmax over (N·H·S, S) scores, the layer norms — is a chain of NumPy passes on one core, each
into a fresh array the size of the whole batch. Here the same textbook functions
(:func:`~refimpl.layers.transformer.layer_norm_forward`, ``softmax``, ``softmax_backward``, …)
run on blocks of rows small enough to stay in cache, on threads (NumPy lets go of the GIL in its
loops), writing into one output array; ReLU's bias and mask work in place. The products and
their order are the textbook's, but for one: ``dW₂`` is computed as ``(hiddenᵀ d_out)ᵀ``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from refimpl.fast.threads import num_threads
from refimpl.layers import transformer as textbook  # read at call time: the layer imports us
from refimpl.layers.mlp import linear_backward, linear_forward, prefixed

BLOCK_BYTES = 1 << 20  # rows per block: about a megabyte of the (tokens, M) array


def _blocks(rows: int, width: int, itemsize: int) -> list[slice]:
    step = max(1, BLOCK_BYTES // max(1, width * itemsize))
    return [slice(lo, min(lo + step, rows)) for lo in range(0, rows, step)]


def _run_blocks(function, blocks: list[slice]):
    threads = min(num_threads(), len(blocks))
    if threads < 2:
        return [function(block) for block in blocks]
    with ThreadPoolExecutor(threads, thread_name_prefix="refimpl-ff") as pool:
        return list(pool.map(function, blocks))


def _row_blocks(array: np.ndarray) -> list[slice]:
    return _blocks(array.shape[0], array.shape[-1], array.itemsize)


def layer_norm_forward_fast(params, x: np.ndarray, eps):
    """Equals :func:`refimpl.layers.transformer.layer_norm_forward` (run block by block)."""
    rows = textbook.as_rows(x)  # (N·S, E)
    out, normalized = np.empty_like(rows), np.empty_like(rows)
    inv_std = np.empty((rows.shape[0], 1), rows.dtype)

    def block(part: slice) -> None:
        out[part], (normalized[part], inv_std[part]) = textbook.layer_norm_forward(
            params, rows[part], eps
        )

    _run_blocks(block, _row_blocks(rows))
    cache = textbook.LayerNormCache(normalized.reshape(x.shape), inv_std.reshape(*x.shape[:-1], 1))
    return out.reshape(x.shape), cache


def layer_norm_backward_fast(params, d_out: np.ndarray, cache):
    """Equals :func:`refimpl.layers.transformer.layer_norm_backward` (run block by block, the
    parameter gradients summed over the blocks)."""
    d_rows = textbook.as_rows(d_out)
    normalized, inv_std = textbook.as_rows(cache.normalized), textbook.as_rows(cache.inv_std)
    d_x = np.empty_like(d_rows)

    def block(part: slice) -> dict:
        part_cache = textbook.LayerNormCache(normalized[part], inv_std[part])
        d_x[part], d_params = textbook.layer_norm_backward(params, d_rows[part], part_cache)
        return d_params

    shares = _run_blocks(block, _row_blocks(d_rows))
    d_params = {k: np.sum([s[k] for s in shares], axis=0, dtype=d_x.dtype) for k in shares[0]}
    return d_x.reshape(d_out.shape), d_params


def _softmax_rows(scores: np.ndarray) -> np.ndarray:
    rows = scores.reshape(-1, scores.shape[-1])
    probs = np.empty_like(rows)

    def block(part: slice) -> None:
        probs[part] = textbook.softmax(rows[part])

    _run_blocks(block, _row_blocks(rows))
    return probs.reshape(scores.shape)


def _softmax_backward_rows(probs: np.ndarray, d_probs: np.ndarray) -> np.ndarray:
    rows, d_rows = probs.reshape(-1, probs.shape[-1]), d_probs.reshape(-1, probs.shape[-1])
    d_scores = np.empty_like(rows)

    def block(part: slice) -> None:
        d_scores[part] = textbook.softmax_backward(rows[part], d_rows[part])

    _run_blocks(block, _row_blocks(rows))
    return d_scores.reshape(probs.shape)


def attention_forward_fast(params, x: np.ndarray, num_heads: int):
    """Equals :func:`refimpl.layers.transformer.attention_forward` (same steps; the softmax by
    blocks of rows)."""
    e = x.shape[-1]
    qkv = textbook.linear(x, params["in_proj_weight"], params["in_proj_bias"])  # (N, S, 3E)
    q, k, v = (textbook.split_heads(qkv[..., i * e : (i + 1) * e], num_heads) for i in range(3))
    scale = textbook.attention_scale(e // num_heads, x.dtype)
    probs = _softmax_rows((q @ k.swapaxes(-1, -2)) * scale)  # (N, H, S, S)
    context = textbook.merge_heads(probs @ v)  # (N, S, E)
    out = textbook.linear(context, params["out_proj.weight"], params["out_proj.bias"])
    return out, textbook.AttentionCache(x, q, k, v, probs, context)


def attention_backward_fast(params, d_out: np.ndarray, cache):
    """Equals :func:`refimpl.layers.transformer.attention_backward` (same steps; the softmax's
    backward by blocks of rows)."""
    x, q, k, v, probs, context = cache
    num_heads, head_dim = q.shape[1], q.shape[3]
    d_context, d_out_weight, d_out_bias = textbook.linear_tokens_backward(
        params["out_proj.weight"], params["out_proj.bias"], d_out, context
    )
    d_heads = textbook.split_heads(d_context, num_heads)  # (N, H, S, h)
    d_probs = d_heads @ v.swapaxes(-1, -2)  # (N, H, S, S)
    d_v = probs.swapaxes(-1, -2) @ d_heads  # (N, H, S, h)
    d_scores = _softmax_backward_rows(probs, d_probs)  # (N, H, S, S)
    scale = textbook.attention_scale(head_dim, x.dtype)
    d_q, d_k = textbook.scores_backward(d_scores, q, k, scale)
    merged = [textbook.merge_heads(d) for d in (d_q, d_k, d_v)]
    d_x, d_in_weight, d_in_bias = textbook.linear_tokens_backward(
        params["in_proj_weight"], params["in_proj_bias"], np.concatenate(merged, axis=-1), x
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

    _run_blocks(bias_relu, _blocks(*hidden.shape, hidden.itemsize))
    out, _ = linear_forward(textbook.sub_params(params, "linear2."), hidden)  # (N·S, E)
    hidden = hidden.reshape(*x.shape[:-1], -1)  # (N, S, M)
    return out.reshape(x.shape), textbook.FeedForwardCache(x, hidden)


def feed_forward_backward_fast(params, d_out: np.ndarray, cache):
    """Equals :func:`refimpl.layers.transformer.feed_forward_backward` with ReLU."""
    x, hidden = cache
    hidden_rows, d_out_rows = (
        textbook.as_rows(hidden),
        textbook.as_rows(d_out),
    )  # (N·S, M), (N·S, E)
    # dW₂ = d_outᵀ hidden, computed as (hiddenᵀ d_out)ᵀ: OpenBLAS runs a product with the wide
    # (N·S, M) operand transposed on the left about three times faster at these shapes.
    d_weight2 = (hidden_rows.T @ d_out_rows).T  # (E, M)
    d_pre = d_out_rows @ params["linear2.weight"]  # d_hidden for now, (N·S, M)

    def mask_and_sum(block: slice) -> np.ndarray:
        part = d_pre[block]
        part *= hidden_rows[block] > 0  # ReLU's derivative, read from its output (0 at 0)
        return part.sum(axis=0)  # this block's share of linear1's bias gradient

    partial_sums = _run_blocks(mask_and_sum, _blocks(*d_pre.shape, d_pre.itemsize))
    d_x, d_linear1 = linear_backward(
        {"weight": params["linear1.weight"]}, d_pre, textbook.as_rows(x)
    )  # (N·S, E)
    return d_x.reshape(x.shape), {
        "linear1.weight": d_linear1["weight"],
        "linear1.bias": np.sum(partial_sums, axis=0, dtype=d_pre.dtype),
        "linear2.weight": d_weight2,
        "linear2.bias": d_out_rows.sum(axis=0),
    }


def encoder_layer_forward_fast(params, x: np.ndarray, num_heads: int, eps):
    """Equals :func:`refimpl.layers.transformer.encoder_layer_forward` with ReLU (same steps)."""
    a, attention = attention_forward_fast(textbook.sub_params(params, "self_attn."), x, num_heads)
    attended, norm1 = layer_norm_forward_fast(textbook.sub_params(params, "norm1."), x + a, eps)
    f, ff = feed_forward_fast(params, attended)  # (N, S, E)
    out, norm2 = layer_norm_forward_fast(textbook.sub_params(params, "norm2."), attended + f, eps)
    return out, textbook.EncoderLayerCache(attention, norm1, ff, norm2)


def encoder_layer_backward_fast(params, d_out: np.ndarray, cache):
    """Equals :func:`refimpl.layers.transformer.encoder_layer_backward` with ReLU (same steps)."""
    attention, norm1, ff, norm2 = cache
    d_sum2, d_norm2 = layer_norm_backward_fast(textbook.sub_params(params, "norm2."), d_out, norm2)
    d_ff_input, d_ff = feed_forward_backward_fast(params, d_sum2, ff)
    d_sum1, d_norm1 = layer_norm_backward_fast(
        textbook.sub_params(params, "norm1."), d_sum2 + d_ff_input, norm1
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
