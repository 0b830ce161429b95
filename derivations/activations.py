"""The activation registry and the softmax, proven: every rule refimpl's layers lean on.

Each activation in :data:`refimpl.layers.activations.ACTIVATIONS` carries a symbolic form
(what the layers compute on exact arrays) and a derivative read from the output
(``derivative(a)`` with ``a = g(z)``). The layer proofs take both on trust; this module proves
them: SymPy differentiates the symbolic form and the result must be the registry's derivative
of the symbolic output, and the symbolic form must be the function it names (tanh is written
through ``exp``). It also proves that the float forward and the scalar form compute the same
numbers, and the facts about the softmax the mixture's backward uses.

>>> print(prove_activation("tanh"))  # doctest: +NORMALIZE_WHITESPACE
tanh: symbolic form = tanh(z); d/dz of it = derivative(output) = 1 - a**2;
float and scalar forms agree
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from refimpl.layers import activations

Z = sp.Symbol("z", real=True)
A = sp.Symbol("a")

# What each symbolic form must equal: SymPy's own function (or the form itself).
NAMED = {
    "relu": sp.Piecewise((Z, Z > 0), (0, True)),
    "tanh": sp.tanh(Z),
    "sigmoid": 1 / (1 + sp.exp(-Z)),
    "identity": Z,
}


def _simplified(expression: sp.Expr) -> sp.Expr:
    """``expression`` with tanh, Max and Heaviside rewritten (exp, Piecewise) and simplified."""
    rewritten = expression.rewrite(sp.exp).rewrite(sp.Piecewise)
    return sp.simplify(sp.piecewise_fold(rewritten))


def _derivative_of_output(name: str, output) -> sp.Expr:
    """The registry's ``derivative`` applied to one symbolic output."""
    return activations.get_activation(name).derivative(np.array([output], dtype=object))[0]


def prove_activation(name: str) -> str:
    """Prove one registry entry; AssertionError if a rule is wrong.

    1. the symbolic form equals the function it names (:data:`NAMED`);
    2. SymPy's derivative of the symbolic form equals the registry's derivative of the
       symbolic output (ReLU: at rational points on both sides of its kink, and at the kink
       itself the registry gives PyTorch's 0);
    3. the float forward and the scalar form agree with the symbolic form at a few numbers.
    """
    act = activations.get_activation(name)
    symbolic = act.symbolic(Z)
    if _simplified(symbolic - NAMED[name]) != 0:
        raise AssertionError(f"not proven: {name}'s symbolic form is {NAMED[name]}")
    slope = sp.diff(symbolic, Z)
    claimed = _derivative_of_output(name, symbolic)
    if act.kinked:
        for value in (sp.Rational(3, 7), sp.Rational(-2, 5)):
            if slope.subs(Z, value) != claimed.subs(Z, value):
                raise AssertionError(f"not proven: {name}' at z = {value}")
        if _derivative_of_output(name, symbolic.subs(Z, 0)) != 0:
            raise AssertionError(f"not proven: {name}'(0) = 0, PyTorch's convention")
    elif _simplified(slope - claimed) != 0:
        raise AssertionError(f"not proven: d {name}/dz = derivative(output)")
    numbers = np.array([-2.5, -0.3, 0.0, 0.7, 3.0])
    exact = np.array([float(symbolic.subs(Z, sp.Float(v))) for v in numbers])
    scalar = np.array([act.scalar(float(v)) for v in numbers])
    agree = np.allclose(act.numpy(numbers), exact, rtol=1e-14, atol=0)
    if not (agree and np.allclose(scalar, exact, rtol=1e-14, atol=0)):
        raise AssertionError(f"not proven: {name}'s float and scalar forms agree with it")
    rule = sp.simplify(_derivative_of_output(name, A))
    return (
        f"{name}: symbolic form = {NAMED[name]}; d/dz of it = derivative(output) = {rule}; "
        "float and scalar forms agree"
    )


def prove_registry() -> list[str]:
    """:func:`prove_activation` for every activation in the registry."""
    return [prove_activation(name) for name in activations.ACTIVATIONS]


def relu_convention() -> dict[str, sp.Expr]:
    """ReLU's derivative at the kink, five ways.

    ``"derivative(0)"`` (the registry's, from the output 0), ``"Heaviside(0, 0)"`` and
    ``"Piecewise'(0)"`` (SymPy's derivative of ``Piecewise((z, z > 0), (0, True))``) are 0,
    PyTorch's convention. ``"Max'(0)"`` (SymPy's derivative of ``Max(z, 0)``, i.e.
    ``Heaviside(0)``) and ``"central difference at 0"`` (``(ReLU(h) − ReLU(−h)) / 2h``, any
    h > 0) are 1/2.

    >>> relu_convention()["derivative(0)"], relu_convention()["Max'(0)"]
    (0, 1/2)
    """
    z = sp.Symbol("z")
    h = sp.Symbol("h", positive=True)
    relu = activations.get_activation("relu")
    piecewise = sp.Piecewise((z, z > 0), (0, True))
    return {
        "derivative(0)": _derivative_of_output("relu", relu.symbolic(sp.Integer(0))),
        "Heaviside(0, 0)": sp.Heaviside(0, 0),
        "Piecewise'(0)": sp.diff(piecewise, z).subs(z, 0),
        "Max'(0)": sp.diff(sp.Max(z, 0), z).subs(z, 0),
        "central difference at 0": (sp.Max(h, 0) - sp.Max(-h, 0)) / (2 * h),
    }


def softmax_symbols(num_experts: int = 3) -> tuple[sp.Matrix, sp.Matrix, sp.Matrix]:
    """Logits ``z`` (K, 1), an upstream vector ``v`` (K, 1) and ``s`` = refimpl's ``softmax``
    of ``z`` (K, 1), on SymPy symbols."""
    z = sp.Matrix(sp.symbols(f"z_0:{num_experts}", real=True))
    v = sp.Matrix(sp.symbols(f"v_0:{num_experts}", real=True))
    logits = np.array([list(z)], dtype=object)  # (1, K): one sample
    s = sp.Matrix(activations.softmax(logits)[0])
    return z, v, s


def prove_softmax_vjp(num_experts: int = 3) -> list[str]:
    """The softmax's Jacobian and vector–Jacobian product, proven with SymPy.

    1. refimpl's ``softmax`` on symbols is ``exp(z_i) / Σ_k exp(z_k)``, and
       ``∂s_i/∂z_j = s_i (δ_ij − s_j)``, i.e. ``J = diag(s) − s sᵀ``;
    2. ``vᵀ J = s ⊙ (v − v·s)`` for symbolic ``s`` and ``v`` — the form the mixture's backward
       uses: it never builds the K × K Jacobian;
    3. shifting every logit by the same ``c`` leaves ``s`` unchanged, so refimpl may subtract
       the row maximum before ``exp`` (no overflow at logits like 1e4);
    4. the same product without ``− (v·s)`` is *not* ``vᵀJ`` (the check can fail).

    >>> len(prove_softmax_vjp(2))
    4
    """
    z, v, s = softmax_symbols(num_experts)
    k = num_experts
    exps = z.applyfunc(sp.exp)
    if any(sp.simplify(e) != 0 for e in s - exps / sum(exps)):
        raise AssertionError("not proven: softmax(z) = exp(z) / Σ exp(z)")
    jacobian = s.jacobian(z)
    if any(sp.simplify(e) != 0 for e in jacobian - (sp.diag(*s) - s * s.T)):
        raise AssertionError("not proven: J = diag(s) − s sᵀ")
    ss = sp.Matrix(sp.symbols(f"s_0:{k}", real=True))
    vjp = (v.T * (sp.diag(*ss) - ss * ss.T)).T  # (K, 1)
    dot = (v.T * ss)[0, 0]
    if any(sp.expand(e) != 0 for e in vjp - ss.multiply_elementwise(v - dot * sp.ones(k, 1))):
        raise AssertionError("not proven: vᵀ J = s ⊙ (v − v·s)")
    c = sp.Symbol("c", real=True)
    shifted = z.applyfunc(lambda zi: sp.exp(zi - c))
    if any(sp.simplify(e) != 0 for e in shifted / sum(shifted) - s):
        raise AssertionError("not proven: softmax(z − c) = softmax(z)")
    if all(sp.expand(e) == 0 for e in vjp - ss.multiply_elementwise(v)):
        raise AssertionError("s ⊙ v unexpectedly equals vᵀ J")
    return [
        "J = diag(s) − s sᵀ",
        "vᵀ J = s ⊙ (v − v·s)",
        "softmax(z − c) = softmax(z)",
        "s ⊙ v ≠ vᵀ J (the shift term matters)",
    ]
