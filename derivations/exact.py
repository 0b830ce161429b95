"""Exact proofs that a textbook backward is the derivative, for the FM and transformer layers.

A layer's textbook forward and backward (``refimpl.layers``) run unchanged on NumPy object
arrays of SymPy expressions. :func:`prove_vjp` runs them on arrays of symbols, forms
``L = Σ G ⊙ Y`` with a symbolic upstream gradient ``G``, differentiates ``L`` with SymPy with
respect to every entry of every input and parameter (``sympy.diff``: no rule of ours is
involved), and checks that the backward returned exactly that.

Exponentials are kept as a named function :class:`Exp` (SymPy's rule ``exp' = exp``, without
SymPy's habit of merging ``exp(a)·exp(b)`` into ``exp(a + b)``, which would hide equal terms
behind different atoms); refimpl's textbook code is unchanged and builds it where it would
build ``exp`` (:func:`named_exponentials`).

Two ways to be exact
--------------------
* ``at_point=False`` — **an identity**: the difference between SymPy's derivative and the
  backward's expression, put over a common denominator, must be zero; every ``exp(·)`` in it
  is first named by a free symbol. For the factorization machines (polynomials) and the
  softmax.
* ``at_point=True`` — **exact at a random rational point**, for layers with ``exp``, square
  roots and ReLU. SymPy still differentiates the symbolic ``L``; then every symbol (inputs,
  parameters, ``G``) gets a random rational ``n / 2²⁴``, ReLU's ``max`` and slope are
  evaluated exactly, square roots stay exact algebraic numbers, and every exponential — each
  distinct one an *atom* — gets a random positive rational of its own on both sides alike.
  The difference must then be exactly 0. Treating the exponentials as free values proves
  more, not less: the backward is right whatever values they take, provided SymPy's own rule
  ``exp' = exp`` holds for them (the softmax's backward is then right for any positive
  weights). A wrong backward would leave a nonzero rational function of the point, which
  vanishes at a random point of this size with probability of order d / 2²⁵ (Schwartz–Zippel,
  d its degree, a few dozen here); the deliberate mistakes in the tests are all caught.

:func:`gradient_at` evaluates the symbolic gradient in float64 at a point (real ``exp`` and
square roots), for the float witness that compares refimpl's layer — the class, fast path
included — with SymPy's numbers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping

import numpy as np
import sympy as sp

from refimpl.layers import activations

POINT_DENOMINATOR = 2**24


class Exp(sp.Function):
    """``exp`` kept as a named function: SymPy differentiates it to itself, as ``exp``, but
    never merges ``Exp(a)·Exp(b)`` into ``Exp(a + b)`` (which ``sympy.exp`` does), so each
    exponential stays one atom on both sides of a comparison.

    >>> z = sp.Symbol("z")
    >>> Exp(z).diff(z), Exp(z) * Exp(z)
    (Exp(z), Exp(z)**2)
    """

    def fdiff(self, argindex=1):
        return self


class _SymPyWithNamedExp:
    """SymPy, as refimpl's activations reach it, with :class:`Exp` for ``exp``."""

    exp = Exp

    def __getattr__(self, name):
        return getattr(sp, name)


@contextlib.contextmanager
def named_exponentials():
    """Within: refimpl's textbook code builds :class:`Exp` where it would build ``exp``."""
    original = activations._sympy
    activations._sympy = _SymPyWithNamedExp
    try:
        yield
    finally:
        activations._sympy = original


def symbols(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """An object array of symbols ``name_{i,j,…}``.

    >>> symbols("x", (1, 2))
    array([[x_{0,0}, x_{0,1}]], dtype=object)
    """
    out = np.empty(shape, dtype=object)
    for index in np.ndindex(*shape):
        out[index] = sp.Symbol(f"{name}_{{{','.join(map(str, index))}}}")
    return out


def random_rational(rng: np.random.Generator, positive: bool = False) -> sp.Rational:
    """``n / 2²⁴`` with n uniform in ±[1, 2²⁵] (a number of size about 1; never 0)."""
    n = int(rng.integers(1, 2 * POINT_DENOMINATOR + 1))
    sign = 1 if positive or rng.random() < 0.5 else -1
    return sp.Rational(sign * n, POINT_DENOMINATOR)


def _entries(arrays: Mapping[str, np.ndarray]):
    for name, array in arrays.items():
        for index in np.ndindex(*array.shape):
            yield name, index, array[index]


def _loss(leaves, forward, upstream_name: str = "g"):
    out, cache = forward(leaves)
    upstream = symbols(upstream_name, out.shape)
    return (
        sp.Add(*(u * y for u, y in zip(upstream.ravel(), out.ravel(), strict=True))),
        upstream,
        out,
        cache,
    )


def prove_vjp(
    label: str,
    forward: Callable,
    backward: Callable,
    leaves: Mapping[str, np.ndarray],
    *,
    at_point: bool,
    seed: int = 0,
) -> str:
    """Prove ``backward`` equal to SymPy's gradient of ``L = Σ G ⊙ forward(leaves)``.

    Parameters
    ----------
    label : str
        What is proven, for the message.
    forward : callable
        ``forward(leaves) -> (out, cache)``, refimpl's textbook forward on object arrays.
    backward : callable
        ``backward(leaves, d_out, cache) -> {name: gradient}``, refimpl's textbook backward;
        one gradient per leaf array, shaped like it.
    leaves : dict of str to object ndarray of symbols
        The inputs and parameters.
    at_point : bool
        False: an identity (polynomial layers). True: exactly, at a random rational point,
        every ``exp`` a free positive rational (see the module's docstring).
    seed : int
        Draws the point.

    Returns
    -------
    str
        A one-line statement of what was proven. An AssertionError names the first entry
        whose gradient differs.

    >>> leaves = {"x": symbols("x", (1, 2)), "w": symbols("w", (2,))}
    >>> def forward(v):
    ...     return v["x"] * v["w"], None
    >>> def backward(v, g, cache):
    ...     return {"x": g * v["w"], "w": (g * v["x"]).sum(axis=0)}
    >>> prove_vjp("x ⊙ w", forward, backward, leaves, at_point=False)
    'x ⊙ w: the backward equals the symbolic gradient (an identity)'
    >>> def wrong(v, g, cache):
    ...     return {"x": g, "w": (g * v["x"]).sum(axis=0)}
    >>> prove_vjp("x ⊙ w", forward, wrong, leaves, at_point=False)
    Traceback (most recent call last):
    ...
    AssertionError: x ⊙ w: d/dx[(0, 0)] differs from SymPy's derivative by g_{0,0}*w_{0} - g_{0,0}
    """
    with named_exponentials():
        loss, upstream, _, cache = _loss(leaves, forward)
        claimed = backward(leaves, upstream, cache)
    point, atoms = {}, {}
    if at_point:
        rng = np.random.default_rng(seed)
        for _, _, symbol in _entries({**leaves, "g": upstream}):
            point[symbol] = random_rational(rng)
    for name, index, symbol in _entries(leaves):
        difference = sp.diff(loss, symbol) - claimed[name][index]
        if at_point:
            difference = _at_point(difference, point, atoms, rng)
        else:
            difference = _identity(difference, atoms)
        if difference != 0:
            raise AssertionError(
                f"{label}: d/d{name}[{index}] differs from SymPy's derivative by {difference}"
            )
    how = "exactly at a random rational point" if at_point else "an identity"
    return f"{label}: the backward equals the symbolic gradient ({how})"


def _identity(expression, atoms):
    """``expression`` as a rational function of its symbols, each ``exp`` atom a free symbol
    ``e_k`` (the same for every entry): zero exactly when the two sides agree identically."""
    for atom in sorted(expression.atoms(Exp), key=sp.default_sort_key):
        if atom not in atoms:
            atoms[atom] = sp.Symbol(f"e_{len(atoms)}", positive=True)
    return sp.cancel(expression.xreplace(atoms))


def _at_point(expression, point, atoms, rng):
    """``expression`` at the point, each ``exp`` atom a free positive rational (kept in
    ``atoms`` so that every entry sees the same values); exactly, as a SymPy number."""
    for atom in sorted(expression.atoms(Exp), key=sp.default_sort_key):
        if atom not in atoms:
            atoms[atom] = random_rational(rng, positive=True)
    value = sp.expand(expression.xreplace(atoms).xreplace(point))
    if value != 0 and not value.is_Rational:  # square roots left over: combine them exactly
        value = sp.simplify(value)
    return value


def gradient_at(
    forward: Callable, leaves: Mapping[str, np.ndarray], values: Mapping[str, np.ndarray], upstream
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """SymPy's output and gradient of ``L = Σ G ⊙ Y`` at ``values`` (floats), in float64.

    ``values`` has one float array per leaf; ``upstream`` is G. Real ``exp`` and square roots:
    this is what a lambdified gradient computes, to compare with refimpl's layer.
    """
    with named_exponentials():
        loss, upstream_symbols, out, _ = _loss(leaves, forward)
    loss, out = (
        loss.replace(Exp, sp.exp),
        np.vectorize(lambda y: y.replace(Exp, sp.exp), otypes=[object])(out),
    )
    point = {
        s: sp.Float(float(v), 30)
        for name in leaves
        for s, v in zip(leaves[name].ravel(), np.ravel(values[name]), strict=True)
    }
    point.update(
        {
            s: sp.Float(float(v), 30)
            for s, v in zip(upstream_symbols.ravel(), np.ravel(upstream), strict=True)
        }
    )
    output = np.array([float(y.xreplace(point)) for y in out.ravel()]).reshape(out.shape)
    gradient = {}
    for name, array in leaves.items():
        gradient[name] = np.array(
            [float(sp.diff(loss, s).xreplace(point)) for s in array.ravel()]
        ).reshape(array.shape)
    return output, gradient
