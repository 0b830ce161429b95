"""The encoder layer, fast: :func:`refimpl.layers.transformer.encoder_layer_forward` and its
backward, with the ReLU feed-forward block's elementwise work done in place and on all cores.

At TorchRec's sizes the feed-forward block holds most of the work: (N·S, M) arrays with
M = 2048 hidden units per token. Its matrix products already run on every core (BLAS), but the
textbook form adds the bias, applies ReLU and multiplies by ReLU's derivative in fresh arrays,
one NumPy pass on one core each. Here those passes work in place, in row blocks small enough to
stay in cache, spread over threads (NumPy lets go of the GIL in its loops), and the bias
gradient is summed in the same pass. Attention and the layer norms are the textbook functions.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from refimpl.fast.threads import matmul_threads
from refimpl.layers import transformer as textbook  # read at call time: the layer imports us
from refimpl.layers.mlp import linear_backward, linear_forward, prefixed

BLOCK_BYTES = 1 << 20  # rows per block: about a megabyte of the (tokens, M) array


def _blocks(rows: int, width: int, itemsize: int) -> list[slice]:
    step = max(1, BLOCK_BYTES // max(1, width * itemsize))
    return [slice(lo, min(lo + step, rows)) for lo in range(0, rows, step)]


def _run_blocks(function, blocks: list[slice]):
    threads = min(matmul_threads(), len(blocks))
    if threads < 2:
        return [function(block) for block in blocks]
    with ThreadPoolExecutor(threads, thread_name_prefix="refimpl-ff") as pool:
        return list(pool.map(function, blocks))


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
    hidden_rows = textbook.as_rows(hidden)  # (N·S, M)
    d_pre, d_linear2 = linear_backward(
        textbook.sub_params(params, "linear2."), textbook.as_rows(d_out), hidden_rows
    )  # d_hidden for now, (N·S, M)

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
        "linear2.weight": d_linear2["weight"],
        "linear2.bias": d_linear2["bias"],
    }


def encoder_layer_forward_fast(params, x: np.ndarray, num_heads: int, eps):
    """Equals :func:`refimpl.layers.transformer.encoder_layer_forward` with ReLU (same steps)."""
    a, attention = textbook.attention_forward(
        textbook.sub_params(params, "self_attn."), x, num_heads
    )
    attended, norm1 = textbook.layer_norm_forward(textbook.sub_params(params, "norm1."), x + a, eps)
    f, ff = feed_forward_fast(params, attended)  # (N, S, E)
    out, norm2 = textbook.layer_norm_forward(
        textbook.sub_params(params, "norm2."), attended + f, eps
    )
    return out, textbook.EncoderLayerCache(attention, norm1, ff, norm2)


def encoder_layer_backward_fast(params, d_out: np.ndarray, cache):
    """Equals :func:`refimpl.layers.transformer.encoder_layer_backward` with ReLU (same steps)."""
    attention, norm1, ff, norm2 = cache
    d_sum2, d_norm2 = textbook.layer_norm_backward(
        textbook.sub_params(params, "norm2."), d_out, norm2
    )
    d_ff_input, d_ff = feed_forward_backward_fast(params, d_sum2, ff)
    d_sum1, d_norm1 = textbook.layer_norm_backward(
        textbook.sub_params(params, "norm1."), d_sum2 + d_ff_input, norm1
    )
    d_x_attention, d_attention = textbook.attention_backward(
        textbook.sub_params(params, "self_attn."), d_sum1, attention
    )
    d_params = {
        **prefixed("self_attn", d_attention),
        **d_ff,
        **prefixed("norm1", d_norm1),
        **prefixed("norm2", d_norm2),
    }
    return d_sum1 + d_x_attention, d_params
