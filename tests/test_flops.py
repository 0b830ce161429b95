"""refimpl.tools.flops against a brute-force count: scalar loops on numbers that count their ops.

Each layer's forward and backward is written below as plain loops over scalars, the formulas of
refimpl's textbook functions step by step, on :class:`Counted` numbers that tally every
``+ − × ÷ exp tanh``. Sums
start from the literal 0 (so a length-k dot product is 2k, the convention refimpl.tools.flops
states). The loops also compute real values, which must match the refimpl layers, so the count
is the count of the right computation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import refimpl
from refimpl.tools import flops


class Counted:
    """A float that adds one to ``Counted.ops`` for every arithmetic operation on it."""

    ops = 0
    __slots__ = ("v",)

    def __init__(self, v):
        self.v = float(v)

    @staticmethod
    def _value(other):
        return other.v if isinstance(other, Counted) else float(other)

    def _op(self, value):
        Counted.ops += 1
        return Counted(value)

    def __add__(self, o):
        return self._op(self.v + self._value(o))

    def __radd__(self, o):
        return self._op(self._value(o) + self.v)

    def __sub__(self, o):
        return self._op(self.v - self._value(o))

    def __rsub__(self, o):
        return self._op(self._value(o) - self.v)

    def __mul__(self, o):
        return self._op(self.v * self._value(o))

    def __rmul__(self, o):
        return self._op(self._value(o) * self.v)

    def __truediv__(self, o):
        return self._op(self.v / self._value(o))

    def __rtruediv__(self, o):
        return self._op(self._value(o) / self.v)

    def negated(self):  # a sign flip is free, like a comparison
        return Counted(-self.v)

    def __gt__(self, o):  # comparisons are free
        return self.v > self._value(o)

    def exp(self):
        return self._op(math.exp(self.v))

    def tanh(self):
        return self._op(math.tanh(self.v))


def count(fn, *args):
    """``(result, ops)`` of ``fn(*args)``."""
    Counted.ops = 0
    result = fn(*args)
    return result, Counted.ops


def wrap(array):
    """Nested lists of Counted from an array (any rank)."""
    if np.ndim(array) == 0:
        return Counted(array)
    return [wrap(a) for a in array]


def unwrap(nested):
    if isinstance(nested, Counted):
        return nested.v
    if isinstance(nested, int | float):
        return float(nested)
    return np.array([unwrap(a) for a in nested])


def zeros(*shape):
    """Nested lists of the literal 0: an accumulator's start, which costs nothing."""
    if len(shape) == 1:
        return [0] * shape[0]
    return [zeros(*shape[1:]) for _ in range(shape[0])]


def dot(xs, ys):
    total = 0
    for x, y in zip(xs, ys, strict=True):
        total = total + x * y
    return total


def column(matrix, j):
    return [row[j] for row in matrix]


def transpose(matrix):
    return [list(col) for col in zip(*matrix, strict=True)]


def matvec(matrix, vector):
    """``matrix @ vector``, rows of the matrix dotted with the vector."""
    return [dot(row, vector) for row in matrix]


ACTIVATIONS = {
    # forward, derivative applied to an upstream gradient: (z, a, d) -> dz
    "relu": (lambda z: z if z > 0 else Counted(0.0), lambda z, a, d: d if z > 0 else Counted(0.0)),
    "tanh": (lambda z: z.tanh(), lambda z, a, d: d * (1 - a * a)),
    "identity": (lambda z: z, lambda z, a, d: d),
    "sigmoid": (lambda z: 1 / (1 + z.negated().exp()), lambda z, a, d: d * (a * (1 - a))),
}


# --------------------------------------------------------------------------- dot interaction


def dot_loop(dense, sparse, pairs):
    """Forward of the dot interaction; ``pairs`` are the kept (i, j). Also returns C."""
    batch = len(dense)
    combined = [[dense[b], *sparse[b]] for b in range(batch)]
    out = [
        list(dense[b]) + [dot(combined[b][i], combined[b][j]) for i, j in pairs]
        for b in range(batch)
    ]
    return out, combined


def dot_backward_loop(d_out, combined, pairs, dim):
    d_dense, d_sparse = [], []
    for b, rows in enumerate(combined):
        if not pairs:  # F = 0: the output is dense itself
            d_dense.append(list(d_out[b]))
            d_sparse.append([])
            continue
        d_comb = zeros(len(rows), dim)
        for p, (i, j) in enumerate(pairs):
            g = d_out[b][dim + p]
            for k in range(dim):
                d_comb[i][k] = d_comb[i][k] + g * rows[j][k]
                d_comb[j][k] = d_comb[j][k] + g * rows[i][k]
        d_dense.append([d_out[b][k] + d_comb[0][k] for k in range(dim)])
        d_sparse.append(d_comb[1:])
    return d_dense, d_sparse


@pytest.mark.parametrize(
    ("features", "self_interaction"), [(3, False), (3, True), (1, False), (0, False)]
)
def test_dot_interaction(rng, features, self_interaction):
    batch, dim = 2, 4
    arch = refimpl.InteractionArch(features, self_interaction=self_interaction)
    dense = rng.standard_normal((batch, dim))  # (B, D)
    sparse = rng.standard_normal((batch, features, dim))  # (B, F, D)
    out, cache = arch.forward(dense, sparse)
    d_out = rng.standard_normal(out.shape)
    pairs = list(zip(arch.rows.tolist(), arch.cols.tolist(), strict=True)) if features else []

    (loop_out, combined), fwd = count(dot_loop, wrap(dense), wrap(sparse), pairs)
    (d_dense, d_sparse), bwd = count(dot_backward_loop, wrap(d_out), combined, pairs, dim)

    expected = flops.dot_flops(batch, features, dim, self_interaction)
    assert (fwd, bwd) == expected
    assert expected == flops.count_flops(arch, dense, sparse)
    ours = arch.backward(d_out, cache)
    np.testing.assert_allclose(unwrap(loop_out), out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(unwrap(d_dense), ours[0], rtol=1e-12, atol=1e-12)
    if features:
        np.testing.assert_allclose(unwrap(d_sparse), ours[1], rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- cross networks


def cross_loop(kind, x, params, num_layers, activation="relu"):
    """Forward of every cross network, one sample at a time: (outputs, what backward reads)."""
    act = ACTIVATIONS[activation][0]
    outs, saved = [], []
    for x0 in x:
        x_l, layers = x0, []
        n = len(x0)
        for l in range(num_layers):
            if kind == "CrossNet":
                w, bias = params[f"kernels.{l}"], params[f"bias.{l}"]
                cross = [dot(w[i], x_l) + bias[i][0] for i in range(n)]
                layers.append((x_l, cross))
                x_l = [x0[i] * cross[i] + x_l[i] for i in range(n)]
            elif kind == "LowRankCrossNet":
                w, v, bias = params[f"W_kernels.{l}"], params[f"V_kernels.{l}"], params[f"bias.{l}"]
                projection = matvec(v, x_l)
                cross = [dot(w[i], projection) + bias[i] for i in range(n)]
                layers.append((x_l, projection, cross))
                x_l = [x0[i] * cross[i] + x_l[i] for i in range(n)]
            elif kind == "VectorCrossNet":
                w, bias = params[f"kernels.{l}"], params[f"bias.{l}"]
                score = dot(column(w, 0), x_l)
                layers.append((x_l, score))
                x_l = [x0[i] * score + bias[i][0] + x_l[i] for i in range(n)]
            else:  # LowRankMixtureCrossNet
                layers.append(mixture_layer(params, l, x0, x_l, act))
                x_l = layers[-1][-1]
        outs.append(x_l)
        saved.append(layers)
    return outs, saved


def mixture_layer(params, l, x0, x_l, act):
    u, v, c, bias = (params[f"{k}.{l}"] for k in ("U_kernels", "V_kernels", "C_kernels", "bias"))
    n, k_experts = len(x0), len(u)
    experts, crosses = [], []
    for k in range(k_experts):
        pre1 = matvec(v[k], x_l)
        act1 = [act(z) for z in pre1]
        pre2 = matvec(c[k], act1)
        act2 = [act(z) for z in pre2]
        cross = [dot(u[k][i], act2) + bias[i][0] for i in range(n)]
        experts.append([x0[i] * cross[i] for i in range(n)])
        crosses.append((pre1, act1, pre2, act2, cross))
    if k_experts == 1:
        probs = None
        x_next = [experts[0][i] + x_l[i] for i in range(n)]
    else:
        logits = [dot(params[f"gates.{k}.weight"][0], x_l) for k in range(k_experts)]
        top = max(logits, key=lambda z: z.v)  # the shift is a selection: free
        weights = [(z - top).exp() for z in logits]
        total = 0
        for w in weights:
            total = total + w
        probs = [w / total for w in weights]
        mixed = [dot(probs, [experts[k][i] for k in range(k_experts)]) for i in range(n)]
        x_next = [mixed[i] + x_l[i] for i in range(n)]
    return x_l, crosses, experts, probs, x_next


def cross_backward_loop(kind, d_out, x, saved, params, num_layers, activation="relu"):
    """Backward of every cross network: per sample, then the parameter gradients over the batch."""
    derivative = ACTIVATIONS[activation][1]
    n = len(x[0])
    d_inputs = []
    # Per-sample parameter contributions, summed over the batch (from zero) at the end.
    contributions = []
    for x0, layers, g in zip(x, saved, d_out, strict=True):
        d_x0 = zeros(n)
        grads = {}
        for l in reversed(range(num_layers)):
            if kind == "CrossNet":
                x_l, cross = layers[l]
                w = params[f"kernels.{l}"]
                d_cross = [x0[i] * g[i] for i in range(n)]
                grads[f"kernels.{l}"] = [[d_cross[i] * x_l[j] for j in range(n)] for i in range(n)]
                grads[f"bias.{l}"] = [[d] for d in d_cross]
                d_x0 = [d_x0[i] + cross[i] * g[i] for i in range(n)]
                g = [g[j] + dot(column(w, j), d_cross) for j in range(n)]
            elif kind == "LowRankCrossNet":
                x_l, projection, cross = layers[l]
                w, v = params[f"W_kernels.{l}"], params[f"V_kernels.{l}"]
                d_cross = [x0[i] * g[i] for i in range(n)]
                d_projection = [dot(column(w, q), d_cross) for q in range(len(v))]
                grads[f"W_kernels.{l}"] = [[d * p for p in projection] for d in d_cross]
                grads[f"V_kernels.{l}"] = [[d * xj for xj in x_l] for d in d_projection]
                grads[f"bias.{l}"] = d_cross
                d_x0 = [d_x0[i] + cross[i] * g[i] for i in range(n)]
                g = [g[j] + dot(column(v, j), d_projection) for j in range(n)]
            elif kind == "VectorCrossNet":
                x_l, score = layers[l]
                w = params[f"kernels.{l}"]
                d_score = dot(g, x0)
                grads[f"kernels.{l}"] = [[d_score * xj] for xj in x_l]
                grads[f"bias.{l}"] = [[gi] for gi in g]
                d_x0 = [d_x0[i] + g[i] * score for i in range(n)]
                g = [g[j] + d_score * w[j][0] for j in range(n)]
            else:
                g = mixture_layer_backward(params, l, x0, layers[l], g, d_x0, grads, derivative)
        d_inputs.append([g[i] + d_x0[i] for i in range(n)])
        contributions.append(grads)
    d_params = {}
    for key in contributions[0]:
        d_params[key] = batch_sum([c[key] for c in contributions])
    return d_inputs, d_params


def batch_sum(per_sample):
    """Σ over the batch from zero, elementwise over nested lists."""
    if not isinstance(per_sample[0], list):
        total = 0
        for value in per_sample:
            total = total + value
        return total
    return [batch_sum([s[i] for s in per_sample]) for i in range(len(per_sample[0]))]


def mixture_layer_backward(params, l, x0, layer, g, d_x0, grads, derivative):
    """One mixture layer in reverse for one sample; updates d_x0 and grads in place."""
    u, v, c = (params[f"{k}.{l}"] for k in ("U_kernels", "V_kernels", "C_kernels"))
    x_l, crosses, experts, probs, _ = layer
    n, k_experts, rank = len(x0), len(u), len(c[0])
    if probs is None:
        d_experts = [g]
        d_from_gates = None
    else:
        d_experts = [[probs[k] * g[i] for i in range(n)] for k in range(k_experts)]
        d_probs = [dot(g, experts[k]) for k in range(k_experts)]
        mean = dot(probs, d_probs)
        d_logits = [probs[k] * (d_probs[k] - mean) for k in range(k_experts)]
        for k in range(k_experts):
            key = f"gates.{k}.weight"
            layer_grad = [[d_logits[k] * xj for xj in x_l]]
            grads[key] = layer_grad if key not in grads else add_nested(grads[key], layer_grad)
        d_from_gates = [
            dot(d_logits, [params[f"gates.{k}.weight"][0][j] for k in range(k_experts)])
            for j in range(n)
        ]
    d_bias = None  # Σ over experts here and over the batch later: BK additions, from zero
    d_u, d_v, d_c, d_from_experts = [], [], [], zeros(n)
    for k in range(k_experts):
        pre1, act1, pre2, act2, cross = crosses[k]
        d_cross = [x0[i] * d_experts[k][i] for i in range(n)]
        for i in range(n):
            d_x0[i] = d_x0[i] + cross[i] * d_experts[k][i]
        column_bias = [[d] for d in d_cross]
        d_bias = column_bias if d_bias is None else add_nested(d_bias, column_bias)
        d_u.append([[d * a for a in act2] for d in d_cross])
        d_act2 = [dot(column(u[k], q), d_cross) for q in range(rank)]
        d_pre2 = [derivative(z, a, d) for z, a, d in zip(pre2, act2, d_act2, strict=True)]
        d_c.append([[d * a for a in act1] for d in d_pre2])
        d_act1 = [dot(column(c[k], q), d_pre2) for q in range(rank)]
        d_pre1 = [derivative(z, a, d) for z, a, d in zip(pre1, act1, d_act1, strict=True)]
        d_v.append([[d * xj for xj in x_l] for d in d_pre1])
        for j in range(n):
            for q in range(rank):
                d_from_experts[j] = d_from_experts[j] + v[k][q][j] * d_pre1[q]
    grads[f"U_kernels.{l}"], grads[f"V_kernels.{l}"] = d_u, d_v
    grads[f"C_kernels.{l}"], grads[f"bias.{l}"] = d_c, d_bias
    if d_from_gates is None:
        return [g[j] + d_from_experts[j] for j in range(n)]
    return [g[j] + d_from_experts[j] + d_from_gates[j] for j in range(n)]


def add_nested(a, b):
    if not isinstance(a, list):
        return a + b
    return [add_nested(x, y) for x, y in zip(a, b, strict=True)]


CROSS_CASES = [
    ("CrossNet", {}, lambda b, n, L, o: flops.crossnet_flops(b, n, L)),
    (
        "LowRankCrossNet",
        {"low_rank": 2},
        lambda b, n, L, o: flops.low_rank_crossnet_flops(b, n, L, 2),
    ),
    ("VectorCrossNet", {}, lambda b, n, L, o: flops.vector_crossnet_flops(b, n, L)),
    *[
        (
            "LowRankMixtureCrossNet",
            {"num_experts": k, "low_rank": 2, "activation": act},
            lambda b, n, L, o: flops.mixture_crossnet_flops(b, n, L, **o),
        )
        for k, act in ((3, "relu"), (3, "tanh"), (1, "identity"), (2, "identity"), (2, "sigmoid"))
    ],
]


@pytest.mark.parametrize(("kind", "options", "formula"), CROSS_CASES)
def test_cross_networks(rng, kind, options, formula):
    batch, n, num_layers = 2, 4, 2
    net = getattr(refimpl, kind)(n, num_layers, **options, seed=3)
    params = net.params
    for key in params:  # non-zero biases, so a dropped bias term would show in the values
        if key.startswith("bias"):
            params[key][...] = rng.standard_normal(params[key].shape)
    x = rng.standard_normal((batch, n))  # (B, N)
    out, cache = net.forward(x)
    d_out = rng.standard_normal(out.shape)
    activation = options.get("activation", "relu")
    plain = {k: wrap(v) for k, v in params.items()}

    (loop_out, saved), fwd = count(cross_loop, kind, wrap(x), plain, num_layers, activation)
    (d_x, d_params), bwd = count(
        cross_backward_loop, kind, wrap(d_out), wrap(x), saved, plain, num_layers, activation
    )

    expected = formula(batch, n, num_layers, options)
    assert (fwd, bwd) == expected
    assert expected == flops.count_flops(net, x)
    ours_dx, ours_dparams = net.backward(d_out, cache)
    np.testing.assert_allclose(unwrap(loop_out), out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(unwrap(d_x), ours_dx, rtol=1e-11, atol=1e-12)
    assert d_params.keys() == ours_dparams.keys()
    for key, value in d_params.items():
        np.testing.assert_allclose(
            unwrap(value).reshape(ours_dparams[key].shape),
            ours_dparams[key],
            rtol=1e-11,
            atol=1e-12,
            err_msg=key,
        )


def test_dcn_arch_counts_its_crossnet(rng):
    net = refimpl.LowRankCrossNet(12, 2, low_rank=3)
    dcn = refimpl.InteractionDCNArch(2, net)
    dense, sparse = rng.standard_normal((5, 4)), rng.standard_normal((5, 2, 4))
    assert flops.count_flops(dcn, dense, sparse) == flops.low_rank_crossnet_flops(5, 12, 2, 3)


# --------------------------------------------------------------------------- MLPs, projection


def mlp_loop(x, layers):
    """``layers``: (weight, bias or None, activation name) each; returns outputs and saved."""
    outs, saved = [], []
    for row in x:
        values, per_layer = row, []
        for weight, bias, name in layers:
            pre = [
                dot(w, values) + bias[o] if bias else dot(w, values) for o, w in enumerate(weight)
            ]
            post = [ACTIVATIONS[name][0](z) for z in pre]
            per_layer.append((values, pre, post))
            values = post
        outs.append(values)
        saved.append(per_layer)
    return outs, saved


def mlp_backward_loop(d_out, saved, layers):
    d_inputs, contributions = [], []
    for g, per_layer in zip(d_out, saved, strict=True):
        grads = []
        for (weight, bias, name), (inputs, pre, post) in zip(
            reversed(layers), reversed(per_layer), strict=True
        ):
            derivative = ACTIVATIONS[name][1]
            d_pre = [derivative(z, a, d) for z, a, d in zip(pre, post, g, strict=True)]
            grads.append(([[d * xi for xi in inputs] for d in d_pre], d_pre if bias else None))
            g = [dot(column(weight, i), d_pre) for i in range(len(inputs))]
        d_inputs.append(g)
        contributions.append(grads)
    d_params = []
    for i in range(len(layers)):
        d_weight = batch_sum([c[i][0] for c in contributions])
        d_bias = batch_sum([c[i][1] for c in contributions]) if layers[-1 - i][1] else None
        d_params.append((d_weight, d_bias))
    return d_inputs, d_params[::-1]


def _mlp_layers(params, prefix, sizes, activation, last_activation, bias=True):
    out = []
    for i in range(len(sizes)):
        name = activation if i < len(sizes) - 1 else last_activation
        weight = wrap(params[f"{prefix}{i}._linear.weight"])
        b = wrap(params[f"{prefix}{i}._linear.bias"]) if bias else None
        out.append((weight, b, name))
    return out


@pytest.mark.parametrize(
    ("options", "activation"),
    [
        ({}, "relu"),
        ({"bias": False}, "relu"),
        ({"activation": "tanh"}, "tanh"),
        ({"activation": "sigmoid"}, "sigmoid"),
        ({"activation_on_last": False}, "relu"),
    ],
)
def test_mlp(rng, options, activation):
    batch, sizes = 3, (4, 2)
    mlp = refimpl.MLP(3, sizes, seed=1, **options)
    x = rng.standard_normal((batch, 3))
    last = activation if options.get("activation_on_last", True) else "identity"
    layers = _mlp_layers(mlp.params, "_mlp.", sizes, activation, last, options.get("bias", True))
    (out, saved), fwd = count(mlp_loop, wrap(x), layers)
    ours, cache = mlp.forward(x)
    d_out = rng.standard_normal(ours.shape)
    (d_x, d_params), bwd = count(mlp_backward_loop, wrap(d_out), saved, layers)

    expected = flops.mlp_flops(
        batch,
        3,
        sizes,
        activation=activation,
        **{k: v for k, v in options.items() if k != "activation"},
    )
    assert (fwd, bwd) == expected == flops.count_flops(mlp, x)
    ours_dx, ours_dparams = mlp.backward(d_out, cache)
    np.testing.assert_allclose(unwrap(out), ours, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(unwrap(d_x), ours_dx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        unwrap(d_params[0][0]), ours_dparams["_mlp.0._linear.weight"], rtol=1e-12, atol=1e-12
    )


def test_dense_and_over_arch(rng):
    batch = 2
    dense_arch = refimpl.DenseArch(3, [4, 2], seed=0)
    over = refimpl.OverArch(3, [4, 3, 1], seed=0)
    x = rng.standard_normal((batch, 3))
    dense_layers = _mlp_layers(dense_arch.params, "model._mlp.", (4, 2), "relu", "relu")
    over_layers = _mlp_layers(over.params, "model.0._mlp.", (4, 3), "relu", "relu")
    over_layers.append(
        (wrap(over.params["model.1.weight"]), wrap(over.params["model.1.bias"]), "identity")
    )
    for layer, layers in ((dense_arch, dense_layers), (over, over_layers)):
        (out, saved), fwd = count(mlp_loop, wrap(x), layers)
        ours, _ = layer.forward(x)
        np.testing.assert_allclose(unwrap(out), ours, rtol=1e-12, atol=1e-12)
        _, bwd = count(mlp_backward_loop, wrap(np.ones_like(ours)), saved, layers)
        assert (fwd, bwd) == flops.count_flops(layer, x)
    assert flops.count_flops(over, x) == flops.over_arch_flops(batch, 3, [4, 3, 1])


def projection_loop(dense, sparse, branch1, branch2, dim):
    """Forward of the projection arch: both branches on the flattened [dense; sparse]."""
    flat = [list(d) + [v for row in s for v in row] for d, s in zip(dense, sparse, strict=True)]
    y, saved1 = mlp_loop(flat, branch1)
    z, saved2 = mlp_loop(flat, branch2)
    out = []
    for b in range(len(dense)):
        f1, f2 = len(y[b]) // dim, len(z[b]) // dim
        rows = [y[b][i * dim : (i + 1) * dim] for i in range(f1)]  # Y (F1, D)
        z_mat = [z[b][k * f2 : (k + 1) * f2] for k in range(dim)]  # Z (D, F2), a reshape
        out.append(list(dense[b]) + [dot(r, column(z_mat, j)) for r in rows for j in range(f2)])
    return out, (y, z, saved1, saved2)


def projection_backward_loop(d_out, saved, branch1, branch2, dim):
    y, z, saved1, saved2 = saved
    d_y, d_z = [], []
    for b in range(len(d_out)):
        f1, f2 = len(y[b]) // dim, len(z[b]) // dim
        d_i = [d_out[b][dim + i * f2 : dim + (i + 1) * f2] for i in range(f1)]  # (F1, F2)
        z_mat = [z[b][k * f2 : (k + 1) * f2] for k in range(dim)]
        rows = [y[b][i * dim : (i + 1) * dim] for i in range(f1)]
        d_y.append([dot(d_i[i], z_mat[k]) for i in range(f1) for k in range(dim)])
        d_z.append([dot(column(rows, k), column(d_i, j)) for k in range(dim) for j in range(f2)])
    d_flat1, _ = mlp_backward_loop(d_y, saved1, branch1)
    d_flat2, _ = mlp_backward_loop(d_z, saved2, branch2)
    d_flat = [
        [a + c for a, c in zip(p, q, strict=True)] for p, q in zip(d_flat1, d_flat2, strict=True)
    ]
    d_dense = [[d_out[b][k] + d_flat[b][k] for k in range(dim)] for b in range(len(d_out))]
    return d_dense, [row[dim:] for row in d_flat]


def test_projection_arch(rng):
    batch, features, dim = 2, 2, 2  # N = 6
    arch = refimpl.InteractionProjectionArch(
        features, refimpl.DenseArch(6, [4], seed=0), refimpl.DenseArch(6, [5, 6], seed=1)
    )
    dense, sparse = rng.standard_normal((batch, dim)), rng.standard_normal((batch, features, dim))
    params = arch.params
    b1 = _mlp_layers(params, "interaction_branch1.model._mlp.", (4,), "relu", "relu")
    b2 = _mlp_layers(params, "interaction_branch2.model._mlp.", (5, 6), "relu", "relu")
    (out, saved), fwd = count(projection_loop, wrap(dense), wrap(sparse), b1, b2, dim)
    ours, cache = arch.forward(dense, sparse)
    d_out = rng.standard_normal(ours.shape)
    (d_dense, d_sparse), bwd = count(projection_backward_loop, wrap(d_out), saved, b1, b2, dim)

    expected = flops.projection_flops(
        batch,
        features,
        dim,
        (2, 3),
        flops.mlp_flops(batch, 6, [4]),
        flops.mlp_flops(batch, 6, [5, 6]),
    )
    assert (fwd, bwd) == expected == flops.count_flops(arch, dense, sparse)
    ours_dd, ours_ds, _ = arch.backward(d_out, cache)
    np.testing.assert_allclose(unwrap(out), ours, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(unwrap(d_dense), ours_dd, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        unwrap(d_sparse).reshape(ours_ds.shape), ours_ds, rtol=1e-12, atol=1e-12
    )


# --------------------------------------------------------------------------- conventions


def test_conventions():
    assert flops.matmul_flops(2, 3, 4) == 48
    assert flops.num_pairs(26) == 351 and flops.num_pairs(2, self_interaction=True) == 6
    assert flops.FlopCount(1, 2) + flops.FlopCount(3, 4) == (4, 6)
    assert flops.FlopCount(1, 2).total == 3
    with pytest.raises(ValueError, match="activation"):
        flops.mixture_crossnet_flops(1, 2, 1, 2, 1, "gelu")
    with pytest.raises(TypeError, match="no FLOP count"):
        flops.count_flops(object(), np.zeros((1, 2)))
    # A dot product of length k is 2k under the convention, counted by the loop helpers too.
    _, ops = count(dot, wrap(np.ones(5)), wrap(np.ones(5)))
    assert ops == 10
