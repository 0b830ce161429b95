"""FLOP counts of the FM and transformer pieces (refimpl.tools.flops) against a brute-force count:
per-scalar loops on numbers that count their operations (``Counted``, as in test_flops.py), sums
starting from the literal 0. The loops also compute values, checked against refimpl, so each
count is the count of the right computation. Free, by the convention: comparisons, selections,
and the maximum subtracted before a softmax's exp."""

import math

import numpy as np
import pytest
from test_flops import Counted, dot, unwrap, wrap

import refimpl
from refimpl.layers import transformer
from refimpl.tools import flops


def _sqrt(c):
    return c._op(math.sqrt(c.v))


# ------------------------------------------------------------------------------------- FM


def fm_loop(rows, features, pairs):
    """The FM's forward per scalar, then its backward for upstream 1; ``rows`` (B, N). Returns
    (out, gradients, the forward's op count)."""
    out, sums = [], []
    dim = len(rows[0]) // features
    for row in rows:
        squares = 0
        for x in row:
            squares = squares + x * x
        if pairs == "scalars":
            total = 0
            for x in row:
                total = total + x
            out.append((total * total - squares) / 2)
            sums.append([total] * len(row))  # s, for every scalar
        else:
            per_dim = []
            for d in range(dim):
                s = 0
                for i in range(features):
                    s = s + row[i * dim + d]
                per_dim.append(s)
            squared_sums = 0
            for s in per_dim:
                squared_sums = squared_sums + s * s
            out.append((squared_sums - squares) / 2)
            sums.append([per_dim[a % dim] for a in range(len(row))])  # s_d of each scalar
    forward = Counted.ops
    grads = [
        [1 * (s - x) for s, x in zip(s_row, row, strict=True)]
        for s_row, row in zip(sums, rows, strict=True)
    ]
    return out, grads, forward


@pytest.mark.parametrize("pairs", ["scalars", "features"])
def test_fm_flops(rng, pairs):
    batch, features, dim = 3, 4, 5
    v = rng.standard_normal((batch, features, dim))
    Counted.ops = 0
    out, grads, forward = fm_loop(wrap(v.reshape(batch, -1)), features, pairs)
    backward = Counted.ops - forward
    layer = refimpl.FactorizationMachine(pairs=pairs)
    expected, cache = layer.forward([v])
    (d_v,), _ = layer.backward(np.ones((batch, 1)), cache)
    np.testing.assert_allclose(unwrap(out), expected[:, 0], rtol=1e-12)
    np.testing.assert_allclose(unwrap(grads), d_v.reshape(batch, -1), rtol=1e-12)
    assert flops.fm_flops(batch, features * dim, features, pairs) == (forward, backward)


# ----------------------------------------------------------------------------- layer norm


def layer_norm_loop(rows, weight, bias, eps, d_rows):
    """Forward and backward of a layer norm, one scalar at a time; returns (y, dx, dγ, dβ, ops
    of the forward)."""
    width = len(weight)
    ys, caches = [], []
    for row in rows:
        total = 0
        for x in row:
            total = total + x
        mean = total / width
        centered = [x - mean for x in row]
        spread = 0
        for c in centered:
            spread = spread + c * c
        inv_std = Counted(1.0) / _sqrt(spread / width + eps)
        normalized = [c * inv_std for c in centered]
        ys.append([n * w + b for n, w, b in zip(normalized, weight, bias, strict=True)])
        caches.append((normalized, inv_std))
    forward = Counted.ops
    d_weight, d_bias, d_x = [0] * width, [0] * width, []
    for d_row, (normalized, inv_std) in zip(d_rows, caches, strict=True):
        d_hat = [d * w for d, w in zip(d_row, weight, strict=True)]
        total = 0
        for d in d_hat:
            total = total + d
        d_mean = total / width
        total = 0
        for d, n in zip(d_hat, normalized, strict=True):
            total = total + d * n
        d_spread = total / width
        d_x.append(
            [inv_std * (d - d_mean - n * d_spread) for d, n in zip(d_hat, normalized, strict=True)]
        )
        for j in range(width):
            d_weight[j] = d_weight[j] + d_row[j] * normalized[j]
            d_bias[j] = d_bias[j] + d_row[j]
    return ys, d_x, d_weight, d_bias, forward


def test_layer_norm_flops(rng):
    rows, width = 4, 5
    x, dy = rng.standard_normal((rows, width)), rng.standard_normal((rows, width))
    weight, bias = rng.uniform(0.5, 1.5, width), rng.standard_normal(width)
    Counted.ops = 0
    y, d_x, d_weight, d_bias, forward = layer_norm_loop(
        wrap(x), wrap(weight), wrap(bias), 1e-5, wrap(dy)
    )
    backward = Counted.ops - forward
    params = {"weight": weight, "bias": bias}
    out, cache = transformer.layer_norm_forward(params, x, 1e-5)
    expected_dx, expected = transformer.layer_norm_backward(params, dy, cache)
    for ours, theirs in ((y, out), (d_x, expected_dx), (d_weight, expected["weight"])):
        np.testing.assert_allclose(unwrap(ours), theirs, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(unwrap(d_bias), expected["bias"], rtol=1e-12)
    assert flops.layer_norm_flops(rows, width) == (forward, backward)


# ------------------------------------------------------------------------------ attention


def attention_loop(x, params, heads, upstream):
    """Self-attention over N sequences of S tokens and its backward, per scalar; returns the
    output, dx, the parameter gradients and the forward's op count."""
    seq, e = len(x[0]), len(x[0][0])
    h = e // heads
    w_in, b_in = params["in_proj_weight"], params["in_proj_bias"]
    w_out, b_out = params["out_proj.weight"], params["out_proj.bias"]
    scale = Counted(1 / math.sqrt(h))  # a constant, as refimpl's attention_scale

    def project(token, weight, bias):
        return [dot(row, token) + b for row, b in zip(weight, bias, strict=True)]

    out, caches = [], []
    for tokens in x:
        qkv = [project(t, w_in, b_in) for t in tokens]
        probs, context = [], [[None] * e for _ in range(seq)]
        for head in range(heads):
            cols = range(head * h, (head + 1) * h)
            head_probs = []
            for i in range(seq):
                scores = [
                    dot([qkv[i][c] for c in cols], [qkv[j][e + c] for c in cols]) * scale
                    for j in range(seq)
                ]
                top = max(s.v for s in scores)
                weights = [Counted(s.v - top).exp() for s in scores]  # the max shift is free
                total = 0
                for w in weights:
                    total = total + w
                head_probs.append([w / total for w in weights])
            for i in range(seq):
                for c in cols:
                    context[i][c] = dot(head_probs[i], [qkv[j][2 * e + c] for j in range(seq)])
            probs.append(head_probs)
        out.append([project(c, w_out, b_out) for c in context])
        caches.append((tokens, qkv, probs, context))
    forward = Counted.ops

    d_w_out, d_b_out = [[0] * e for _ in range(e)], [0] * e
    d_w_in, d_b_in = [[0] * e for _ in range(3 * e)], [0] * (3 * e)
    d_x = []
    for g_seq, (tokens, qkv, probs, context) in zip(upstream, caches, strict=True):
        d_context = [[dot(g, [w_out[r][c] for r in range(e)]) for c in range(e)] for g in g_seq]
        for g, c in zip(g_seq, context, strict=True):
            for r in range(e):
                d_b_out[r] = d_b_out[r] + g[r]
                for k in range(e):
                    d_w_out[r][k] = d_w_out[r][k] + g[r] * c[k]
        d_qkv = [[None] * (3 * e) for _ in range(seq)]
        for head in range(heads):
            cols = range(head * h, (head + 1) * h)
            p = probs[head]
            d_p = [
                [
                    dot([d_context[i][c] for c in cols], [qkv[j][2 * e + c] for c in cols])
                    for j in range(seq)
                ]
                for i in range(seq)
            ]
            for j in range(seq):
                for c in cols:
                    d_qkv[j][2 * e + c] = dot(
                        [p[i][j] for i in range(seq)], [d_context[i][c] for i in range(seq)]
                    )
            d_z = []
            for i in range(seq):
                weighted = [p[i][j] * d_p[i][j] for j in range(seq)]
                total = 0
                for w in weighted:
                    total = total + w
                d_z.append([(d_p[i][j] - total) * p[i][j] for j in range(seq)])
            for i in range(seq):
                for c in cols:
                    d_qkv[i][c] = dot(d_z[i], [qkv[j][e + c] for j in range(seq)]) * scale
            for j in range(seq):
                for c in cols:
                    d_qkv[j][e + c] = (
                        dot([d_z[i][j] for i in range(seq)], [qkv[i][c] for i in range(seq)])
                        * scale
                    )
        d_x.append([[dot(d, [w_in[r][c] for r in range(3 * e)]) for c in range(e)] for d in d_qkv])
        for d, t in zip(d_qkv, tokens, strict=True):
            for r in range(3 * e):
                d_b_in[r] = d_b_in[r] + d[r]
                for k in range(e):
                    d_w_in[r][k] = d_w_in[r][k] + d[r] * t[k]
    grads = {
        "in_proj_weight": d_w_in,
        "in_proj_bias": d_b_in,
        "out_proj.weight": d_w_out,
        "out_proj.bias": d_b_out,
    }
    return out, d_x, grads, forward


@pytest.mark.parametrize(("heads", "width"), [(1, 2), (2, 4)])
def test_attention_flops(rng, heads, width):
    n_seq, seq = 2, 3
    mha = refimpl.MultiheadAttention(width, heads, batch_first=True, seed=0)
    mha.params["in_proj_bias"][...] = rng.standard_normal(3 * width)
    x, g = rng.standard_normal((n_seq, seq, width)), rng.standard_normal((n_seq, seq, width))
    Counted.ops = 0
    out, d_x, grads, forward = attention_loop(
        wrap(x), {k: wrap(v) for k, v in mha.params.items()}, heads, wrap(g)
    )
    backward = Counted.ops - forward
    expected_out, cache = mha.forward(x)
    expected_dx, expected = mha.backward(g, cache)
    np.testing.assert_allclose(unwrap(out), expected_out, rtol=1e-10)
    np.testing.assert_allclose(unwrap(d_x), expected_dx, rtol=1e-9, atol=1e-12)
    for key, value in grads.items():
        np.testing.assert_allclose(unwrap(value), expected[key], rtol=1e-9, atol=1e-12, err_msg=key)
    assert flops.attention_flops(n_seq, seq, width, heads) == (forward, backward)


# ------------------------------------------------------------------------------- compositions


def test_encoder_layer_and_arch_add_up_their_parts():
    t, e, m = 6 * 5, 8, 16
    parts = (
        flops.attention_flops(6, 5, e, 2)
        + flops.layer_norm_flops(t, e)
        + flops.layer_norm_flops(t, e)
        + flops.linear_flops(t, e, m, True, "relu")
        + flops.linear_flops(t, m, e)
    )
    residuals = (2 * t * e, 2 * t * e)  # x + a, y₁ + f; and the two paths added back
    layer = flops.encoder_layer_flops(6, 5, e, 2, m)
    assert layer == (parts.forward + residuals[0], parts.backward + residuals[1])
    features = flops.transformer_interaction_flops(6, 4, e, 2, 3, m)
    assert features == (3 * layer.forward, 3 * layer.backward)
    swapped = flops.encoder_layer_flops(5, 6, e, 2, m)  # F+1 = 5 sequences of B = 6 tokens
    batch = flops.transformer_interaction_flops(6, 4, e, 2, 3, m, attend_across="batch")
    assert batch == (3 * swapped.forward, 3 * swapped.backward)
    assert flops.transformer_interaction_flops(6, 0, e, 2, 3, m) == (0, 0)


def test_fm_interaction_flops_add_up_its_parts():
    b, d, n, di = 4, 3, 12, 5
    expected = flops.linear_flops(b, n, di, True, "relu") + flops.fm_flops(b, n, n // d)
    got = flops.fm_interaction_flops(b, d, n, di)
    assert got == (expected.forward, expected.backward + b * (n + d))
    arch = refimpl.FMInteractionArch(n, ["a", "b", "c"], di)
    assert flops.count_flops(arch, np.zeros((b, d)), {}) == got
