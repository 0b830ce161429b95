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

Every proof is a :class:`derivations.proof.Proof` of refimpl's textbook functions.
:data:`MUTANTS` are deliberate one-line mistakes in refimpl's own source that the proofs must
reject (``mistake=`` names one): ``softmax_without_centering``,
``layer_norm_without_mean_term``, ``attention_without_scale``.

:func:`symbolic_witness` (``python -m refimpl check``) proves a configuration at a point, then
runs refimpl's layer (the class) in float64 there against SymPy's numbers.

>>> prove_softmax_vjp(3)
'softmax over 3: the backward equals the symbolic gradient (identity)'
"""

from __future__ import annotations

import contextlib
from functools import cache

import numpy as np
import sympy as sp

from derivations.proof import Proof, mutated, reduce_exactly, symbols
from refimpl.layers import activations, transformer
from refimpl.tools.gradcheck import rel_error

EPS = sp.Rational(1, 10**5)  # torch's layer-norm eps, exactly

# name -> (the function it edits, the text replaced, its replacement)
MUTANTS = {
    "softmax_without_centering": (
        activations.softmax_backward,
        "return probs * (d_probs - (probs * d_probs).sum(axis=-1, keepdims=True))",
        "return probs * d_probs",
    ),
    "layer_norm_without_mean_term": (
        transformer.layer_norm_backward,
        "d_x = inv_std * (d_normalized - d_mean - normalized * d_spread)",
        "d_x = inv_std * (d_normalized - normalized * d_spread)",
    ),
    "attention_without_scale": (
        transformer.attention_backward,
        "scores_backward(d_scores, q, k, attention_scale(head_dim, x.dtype))",
        "scores_backward(d_scores, q, k, 1)",
    ),
}
MISTAKES = tuple(MUTANTS)


def _broken(mistake: str | None):
    """A context in which refimpl's textbook code has the deliberate ``mistake``."""
    if mistake is None:
        return contextlib.nullcontext()
    if mistake not in MUTANTS:
        raise ValueError(f"mistake: expected one of {MISTAKES}, got {mistake!r}")
    return mutated(*MUTANTS[mistake])


def prove_softmax_vjp(size: int = 3, rows: int = 1, mistake=None) -> str:
    """``activations.softmax_backward`` is the VJP of ``activations.softmax``, identically;
    and every row of ``dz`` sums to zero (softmax ignores a shift of its row)."""

    def forward(v):
        probs = activations.softmax(v["z"])
        return probs, probs

    def backward(v, d_probs, probs):
        return {"z": activations.softmax_backward(probs, d_probs)}

    with _broken(mistake):
        proof = Proof(f"softmax over {size}", forward, backward, {"z": symbols("z", (rows, size))})
        statement = proof.statement()
    for row in proof.gradients["z"]:
        if reduce_exactly(sp.Add(*row), {}) != 0:
            raise AssertionError(f"not proven: a row of dz sums to {sp.Add(*row)}")
    return statement


def _layer_norm_leaves(rows, width):
    return {
        "x": symbols("x", (rows, width)),
        "weight": symbols("γ", (width,)),
        "bias": symbols("β", (width,)),
    }


def _layer_norm_forward(v):
    return transformer.layer_norm_forward(v, v["x"], EPS)


def _layer_norm_backward(v, d_out, cache):
    d_x, d_params = transformer.layer_norm_backward(v, d_out, cache)
    return {"x": d_x, **d_params}


@cache
def _layer_norm_proof(rows: int, width: int, mistake, seed: int) -> Proof:
    with _broken(mistake):
        proof = Proof(
            f"LayerNorm rows={rows} E={width} eps=1e-5",
            _layer_norm_forward,
            _layer_norm_backward,
            _layer_norm_leaves(rows, width),
            at_point=True,
            seed=seed,
        )
        proof.gap  # noqa: B018 - decided while the mistake is in place
    return proof


def prove_layer_norm(rows: int = 2, width: int = 3, mistake=None, seed: int = 0) -> str:
    """refimpl's layer-norm backward equals SymPy's gradient, exactly at a random point."""
    return _layer_norm_proof(rows, width, mistake, seed).statement()


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


@cache
def _attention_proof(batch: int, seq: int, width: int, heads: int, mistake, seed: int) -> Proof:
    with _broken(mistake):
        proof = Proof(
            f"MultiheadAttention N={batch} S={seq} E={width} H={heads}",
            *_attention_functions(heads),
            _attention_leaves(batch, seq, width),
            at_point=True,
            seed=seed,
        )
        proof.gap  # noqa: B018 - decided while the mistake is in place
    return proof


def prove_attention(
    batch: int = 1, seq: int = 2, width: int = 2, heads: int = 1, mistake=None, seed: int = 0
) -> str:
    """refimpl's multi-head attention backward equals SymPy's gradient, exactly at a random
    point (every ``exp`` a free positive rational)."""
    return _attention_proof(batch, seq, width, heads, mistake, seed).statement()


def prove_key_bias_gradient_is_zero(seq: int = 3, width: int = 2) -> str:
    """The key third of ``in_proj_bias`` gets no gradient: an identity, for any inputs (every
    ``exp`` a free positive symbol)."""
    leaves = _attention_leaves(1, seq, width)
    out, cache_ = transformer.attention_forward(leaves, leaves["x"], 1)
    _, d_params = transformer.attention_backward(leaves, symbols("g", out.shape), cache_)
    free: dict = {}
    for value in d_params["in_proj_bias"][width : 2 * width]:  # the key third
        if reduce_exactly(value, free) != 0:
            raise AssertionError(f"not proven: a key bias gets the gradient {value}")
    return f"the key bias's gradient is identically 0 (S={seq} E={width})"


@cache
def symbolic_witness(name: str, seed: int = 0, **config) -> float:
    """Prove at a random rational point, then run refimpl's layer in float64 there against
    SymPy's output and gradient; the worst relative error.

    ``name``: "LayerNorm" (``rows``, ``width``) or "MultiheadAttention" (``batch``, ``seq``,
    ``width``, ``heads``). The key third of ``in_proj_bias``, exactly 0 in SymPy
    (:func:`prove_key_bias_gradient_is_zero`), is measured against the size of the whole bias
    gradient: a relative error against 0 would only measure round-off's own size. (Avoid
    LayerNorm at E = 2: two normalised entries are ±1 whatever x is, so dx is of the order
    of eps and float64 can only give it to about 1e-11.)

    >>> symbolic_witness("LayerNorm", rows=2, width=3) < 1e-12
    True
    """
    if name == "LayerNorm":
        rows, width = config["rows"], config["width"]
        proof = _layer_norm_proof(rows, width, None, seed)
        proof.statement()
        return max(proof.float_errors(transformer.LayerNorm(width), ("x",)).values())
    if name != "MultiheadAttention":
        raise ValueError(f"name: no symbolic witness for {name!r}")
    batch, seq, width, heads = (config[k] for k in ("batch", "seq", "width", "heads"))
    proof = _attention_proof(batch, seq, width, heads, None, seed)
    proof.statement()
    layer = transformer.MultiheadAttention(width, heads, batch_first=True)
    floats = {key: value.astype(np.float64) for key, value in proof.values.items()}
    layer.load_state_dict({k: v for k, v in floats.items() if k != "x"})
    out, cache_ = layer.forward(floats["x"])
    d_x, d_params = layer.backward(proof.upstream.astype(np.float64), cache_)
    errors = proof.compare(out, {"x": d_x, **d_params})
    ours, (_, exact) = d_params["in_proj_bias"], proof.exact_floats()
    keys = np.r_[width : 2 * width]  # the key third
    others = np.r_[0:width, 2 * width : 3 * width]
    errors["in_proj_bias"] = max(
        rel_error(ours[others], exact["in_proj_bias"][others]),
        float(np.abs(ours[keys]).max() / np.abs(exact["in_proj_bias"]).max()),
    )
    return max(errors.values())
