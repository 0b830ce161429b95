"""The softmax, layer norm and multi-head attention of the transformer interaction, proven
symbolically: refimpl's textbook backward of each is SymPy's derivative, exactly.

- **softmax** (:func:`prove_softmax_vjp`): ``dz = p ⊙ (dp − Σ_k p_k dp_k)`` is the
  vector–Jacobian product of ``p = softmax(z)``, as an identity (each ``exp(z_k)`` a free
  positive symbol); also that ``dz`` sums to zero over each row.
- **layer norm** (:func:`prove_layer_norm`): ``dx = (dx̂ − mean(dx̂) − x̂ ⊙ mean(dx̂ ⊙ x̂)) / σ``,
  ``dγ``, ``dβ``, exactly at a random rational point (square roots stay exact).
- **attention** (:func:`prove_attention`): one head (and two) over a sequence of two tokens,
  every input and parameter gradient, exactly at a random rational point with every ``exp``
  a free positive rational: softmax over the keys, the ``1/√h`` scaling, ``P v``, both
  projections.
- **the key bias** (:func:`prove_key_bias_gradient_is_zero`): the key third of
  ``in_proj_bias`` has gradient exactly 0 (softmax ignores ``q·b_k``, the same for all keys).

:data:`MISTAKES` are deliberately broken backwards each proof must reject:
``softmax_without_centering``, ``layer_norm_without_mean_term``, ``attention_without_scale``.

:func:`symbolic_witness` (``python -m refimpl check``) proves a configuration, then compares
refimpl's layer (the class) in float64 with SymPy's gradient evaluated at random numbers.

>>> prove_softmax_vjp(3)
'softmax over 3: the backward equals the symbolic gradient (an identity)'
"""

from __future__ import annotations

from functools import cache
from unittest import mock

import numpy as np
import sympy as sp

from derivations.exact import Exp, gradient_at, named_exponentials, prove_vjp, symbols
from refimpl.layers import activations, transformer
from refimpl.layers.base import as_rng
from refimpl.tools.gradcheck import rel_error

EPS = sp.Rational(1, 10**5)  # torch's layer-norm eps, exactly
MISTAKES = {
    "softmax_without_centering": ("softmax_backward", lambda p, dp: p * dp),
    "layer_norm_without_mean_term": ("layer_norm_backward", None),  # built below
    "attention_without_scale": (
        "scores_backward",
        lambda d_scores, q, k, scale: (d_scores @ k, d_scores.swapaxes(-1, -2) @ q),
    ),
}


def _layer_norm_without_mean_term(params, d_out, cache):
    normalized, inv_std = cache
    d_normalized = d_out * params["weight"]
    d_spread = (d_normalized * normalized).mean(axis=-1, keepdims=True)
    return inv_std * (d_normalized - normalized * d_spread), {
        "weight": transformer.sum_tokens(d_out * normalized),
        "bias": transformer.sum_tokens(d_out),
    }


def _broken(mistake):
    """A context in which refimpl's textbook code has the deliberate ``mistake``."""
    if mistake is None:
        return mock.patch.dict({})
    name, function = MISTAKES[mistake]
    function = function or _layer_norm_without_mean_term
    return mock.patch.object(transformer, name, function)


def prove_softmax_vjp(size: int = 3, rows: int = 1, mistake=None) -> str:
    """``activations.softmax_backward`` is the VJP of ``activations.softmax``, identically."""
    leaves = {"z": symbols("z", (rows, size))}

    def forward(v):
        probs = activations.softmax(v["z"])
        return probs, probs

    def backward(v, d_probs, probs):
        if mistake == "softmax_without_centering":
            return {"z": probs * d_probs}
        d_z = activations.softmax_backward(probs, d_probs)
        for row in d_z:  # rows of dz sum to zero: softmax ignores a shift of its row
            assert sp.cancel(sp.Add(*row)) == 0
        return {"z": d_z}

    return prove_vjp(f"softmax over {size}", forward, backward, leaves, at_point=False)


def _layer_norm_leaves(rows, width):
    return {
        "x": symbols("x", (rows, width)),
        "weight": symbols("γ", (width,)),
        "bias": symbols("β", (width,)),
    }


def _layer_norm_functions():
    def forward(v):
        return transformer.layer_norm_forward(v, v["x"], EPS)

    def backward(v, d_out, cache):
        d_x, d_params = transformer.layer_norm_backward(v, d_out, cache)
        return {"x": d_x, **d_params}

    return forward, backward


def prove_layer_norm(rows: int = 2, width: int = 3, mistake=None, seed: int = 0) -> str:
    """refimpl's layer-norm backward equals SymPy's gradient, exactly at a random point."""
    forward, backward = _layer_norm_functions()
    with _broken(mistake):
        return prove_vjp(
            f"LayerNorm rows={rows} E={width} eps=1e-5",
            forward,
            backward,
            _layer_norm_leaves(rows, width),
            at_point=True,
            seed=seed,
        )


def _attention_leaves(batch, seq, width):
    return {
        "x": symbols("x", (batch, seq, width)),
        "in_proj_weight": symbols("W", (3 * width, width)),
        "in_proj_bias": symbols("b", (3 * width,)),
        "out_proj.weight": symbols("O", (width, width)),
        "out_proj.bias": symbols("c", (width,)),
    }


def _attention_functions(heads):
    def forward(v):
        return transformer.attention_forward(v, v["x"], heads)

    def backward(v, d_out, cache):
        d_x, d_params = transformer.attention_backward(v, d_out, cache)
        return {"x": d_x, **d_params}

    return forward, backward


def prove_attention(
    batch: int = 1, seq: int = 2, width: int = 2, heads: int = 1, mistake=None, seed: int = 0
) -> str:
    """refimpl's multi-head attention backward equals SymPy's gradient, exactly at a random
    point (every ``exp`` a free positive rational)."""
    forward, backward = _attention_functions(heads)
    with _broken(mistake):
        return prove_vjp(
            f"MultiheadAttention N={batch} S={seq} E={width} H={heads}",
            forward,
            backward,
            _attention_leaves(batch, seq, width),
            at_point=True,
            seed=seed,
        )


def prove_key_bias_gradient_is_zero(seq: int = 3, width: int = 2) -> str:
    """The key third of ``in_proj_bias`` gets no gradient: an identity, for any inputs."""
    leaves = _attention_leaves(1, seq, width)
    with named_exponentials():
        out, cache = transformer.attention_forward(leaves, leaves["x"], 1)
        _, d_params = transformer.attention_backward(leaves, symbols("g", out.shape), cache)
    exponentials = sorted(set().union(*(p.atoms(Exp) for p in cache.probs.ravel())), key=str)
    free = {a: sp.Symbol(f"e_{i}", positive=True) for i, a in enumerate(exponentials)}
    for value in d_params["in_proj_bias"][width : 2 * width]:  # the key third
        assert sp.cancel(sp.sympify(value).xreplace(free)) == 0
    return f"the key bias's gradient is identically 0 (S={seq} E={width})"


@cache
def symbolic_witness(name: str, seed: int = 0, **config) -> float:
    """Prove, then compare refimpl's layer with SymPy's gradient in float64 at random numbers;
    the worst relative error over the output and every gradient.

    ``name``: "LayerNorm" (``rows``, ``width``) or "MultiheadAttention" (``batch``, ``seq``,
    ``width``, ``heads``).

    >>> symbolic_witness("LayerNorm", rows=1, width=2) < 1e-12
    True
    """
    rng = as_rng(seed)
    if name == "LayerNorm":
        rows, width = config["rows"], config["width"]
        prove_layer_norm(rows, width)
        layer = transformer.LayerNorm(width)
        leaves = _layer_norm_leaves(rows, width)
        forward, _ = _layer_norm_functions()
        values = {
            "x": rng.standard_normal((rows, width)),
            "weight": rng.uniform(0.5, 1.5, width),
            "bias": rng.standard_normal(width),
        }
        layer.load_state_dict({"weight": values["weight"], "bias": values["bias"]})
        inputs = "x"
    elif name == "MultiheadAttention":
        batch, seq, width, heads = (config[k] for k in ("batch", "seq", "width", "heads"))
        prove_attention(batch, seq, width, heads)
        layer = transformer.MultiheadAttention(width, heads, batch_first=True, seed=rng)
        leaves = _attention_leaves(batch, seq, width)
        forward, _ = _attention_functions(heads)
        values = {"x": rng.standard_normal((batch, seq, width)), **layer.params}
        values["in_proj_bias"] = rng.standard_normal(3 * width)
        layer.load_state_dict({k: v for k, v in values.items() if k != "x"})
        inputs = "x"
    else:
        raise ValueError(f"name: no symbolic witness for {name!r}")
    out, cache = layer.forward(values[inputs])
    upstream = rng.standard_normal(out.shape)
    d_input, d_params = layer.backward(upstream, cache)
    expected_out, expected = gradient_at(forward, leaves, values, upstream)
    ours = {inputs: d_input, **d_params}
    errors = [rel_error(out, expected_out)]
    for key, value in expected.items():
        if key == "in_proj_bias":  # its key third is exactly 0: compare the other two thirds
            keep = np.r_[0 : value.size // 3, 2 * value.size // 3 : value.size]
            errors.append(rel_error(ours[key][keep], value[keep]))
        else:
            errors.append(rel_error(ours[key], value))
    return max(errors)
