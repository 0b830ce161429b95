"""How every backward in refimpl is proven: one helper, used by every derivation.

A layer's textbook forward and backward (``refimpl.layers``) run unchanged on NumPy object
arrays of SymPy expressions. :class:`Proof` runs them on such arrays and checks that what the
backward returns for an upstream gradient ``G`` is SymPy's derivative of ``L = Σ G ⊙ Y``, for
every input and every parameter, exactly.

One derivative for the whole gradient
-------------------------------------
SymPy differentiates ``L`` once, not once per input: every leaf ``s`` (an input or parameter
entry) is moved to ``s + ε·δ_s`` with a symbolic direction ``δ_s``, the textbook forward runs
on the moved leaves, and ::

    dL/dε at ε = 0  =  Σ_s (∂L/∂s) δ_s

is the whole gradient, each ``∂L/∂s`` the coefficient of its own ``δ_s`` (``sympy.diff`` does
the differentiating, through every product, sum, ``exp`` and ``max`` the forward wrote). The
backward's claim is ``Σ_s backward(G)[s] δ_s``; the two are equal exactly when their difference
is zero, and the first ``δ_s`` whose coefficient is not zero names the wrong entry.

Exactly equal, two ways
-----------------------
* **As an identity** (``at_point=False``): inputs, parameters and ``G`` are symbols and the
  difference is expanded; zero means equal for every value. For small polynomial layers.
* **At a random rational point** (``at_point=True``): inputs, parameters and ``G`` are random
  rationals ``n / 2³²`` with ``|n| ≤ 2³³``, every value of ``exp`` the forward creates (tanh
  and sigmoid are written through ``exp``, the softmax is ``exp`` over its sum) is replaced on
  both sides by a random rational of its own, and ReLU's ``max`` and step are evaluated
  exactly. The difference is then a rational number, computed without rounding. A wrong
  backward would make it a nonzero rational function ``P / Q`` of those values, and a nonzero
  polynomial ``P`` of total degree ``d`` vanishes at a point drawn this way with probability
  at most ``d / 2³⁴`` (the Schwartz–Zippel lemma; each coordinate comes from a set of at least
  2³³ values). ``d`` is a few dozen here, so a wrong backward passes with probability below
  1e-8 — and every deliberate mistake in the tests is caught. Giving ``exp`` free values makes
  the statement stronger, not weaker: the backward is right whatever those values are, as
  long as each slope follows its rule (``d e^u = e^u du``), which SymPy applies on one side
  and :mod:`refimpl.layers.activations` writes from the outputs on the other. Used for the
  layers with nonlinearities and wherever expanding would take minutes.

The float witness
-----------------
:meth:`Proof.float_errors` runs refimpl's *layer* — the class, with its fast path where it has
one — in float64 at the same point (every ``n / 2³²`` is a float64 exactly), and compares it
with SymPy's output and derivative there, lambdified with the true ``exp`` values: the worst
relative error, round-off (~1e-15) when all is well.

>>> x, w = symbols("x", (1, 2)), symbols("w", (2,))
>>> def forward(leaves):
...     return leaves["x"] * leaves["w"], None
>>> def backward(leaves, d_out, cache):
...     return {"x": d_out * leaves["w"], "w": (d_out * leaves["x"]).sum(axis=0)}
>>> Proof("x ⊙ w", forward, backward, {"x": x, "w": w}).statement()
'x ⊙ w: the backward equals the symbolic gradient (identity)'
>>> def wrong(leaves, d_out, cache):
...     return {"x": d_out, "w": (d_out * leaves["x"]).sum(axis=0)}
>>> Proof("x ⊙ w", forward, wrong, {"x": x, "w": w}).gap
'x[0, 0]'
"""

from __future__ import annotations
import __future__

import contextlib
import functools
import inspect
import sys
import textwrap
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import sympy as sp

from refimpl.tools.gradcheck import rel_error

POINT_SCALE = 2**32  # a point's coordinates are n / 2³², |n| ≤ 2³³: float64 exactly
EPSILON = sp.Symbol("epsilon", real=True)

Leaves = Mapping[str, np.ndarray]
Forward = Callable[[Leaves], tuple[np.ndarray, Any]]
Backward = Callable[[Leaves, np.ndarray, Any], Mapping[str, np.ndarray]]


def symbols(letter: str, shape: tuple[int, ...]) -> np.ndarray:
    """An object array of real SymPy symbols ``letter_{i,j,…}``, one per entry (real: every
    number here is, and SymPy simplifies faster when it knows).

    >>> symbols("x", (1, 2))
    array([[x_{0,0}, x_{0,1}]], dtype=object)
    """
    out = np.empty(shape, dtype=object)
    for index in np.ndindex(*shape):
        out[index] = sp.Symbol(f"{letter}_{{{','.join(map(str, index))}}}", real=True)
    return out


def random_rationals(rng: np.random.Generator, shape: tuple[int, ...], low=None) -> np.ndarray:
    """An object array of exact rationals ``n / 2³²``, ``n`` uniform in ``[−2³³, 2³³]``
    (in ``[low, 2³³]`` when ``low`` is given).

    >>> random_rationals(np.random.default_rng(0), (2,)).dtype
    dtype('O')
    """
    low = -2 * POINT_SCALE if low is None else low
    numerators = rng.integers(low, 2 * POINT_SCALE, size=shape, endpoint=True)
    out = np.empty(shape, dtype=object)
    for index in np.ndindex(*shape):
        out[index] = sp.Rational(int(numerators[index]), POINT_SCALE)
    return out


def rational_point(leaves: Mapping[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """The random rational point ``Proof(..., at_point=True, seed=seed)`` runs at: the same
    numbers, drawn the same way, for choosing a seed before the proof runs."""
    rng = np.random.default_rng(seed)
    return {key: random_rationals(rng, np.shape(value)) for key, value in leaves.items()}


def map_arrays(function: Callable, tree):
    """``function`` applied to every entry of every object array in a nest of tuples
    (NamedTuple caches included), lists and dicts; float arrays are returned as they are."""
    if isinstance(tree, np.ndarray):
        if tree.dtype != object:
            return tree
        out = np.empty(tree.shape, dtype=object)
        for index, value in np.ndenumerate(tree):
            out[index] = function(value)
        return out
    if isinstance(tree, dict):
        return {key: map_arrays(function, value) for key, value in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(map_arrays(function, value) for value in tree))
    if isinstance(tree, tuple | list):
        return type(tree)(map_arrays(function, value) for value in tree)
    return function(tree)


def substitute(expression, mapping: Mapping, memo: dict):
    """``expression`` with every subexpression found in ``mapping`` replaced, outermost first.

    ``xreplace`` does the same but rebuilds a shared subexpression once per use, and a
    derivative shares many (the product rule repeats its factors); ``memo`` remembers each
    result, so the work follows the number of distinct subexpressions. Anything that is not a
    SymPy object (a plain 0 from ``np.zeros``, a shape) comes back as it is.
    """
    if not isinstance(expression, sp.Basic):
        return expression
    done = memo.get(expression)
    if done is None:
        if expression in mapping:
            done = mapping[expression]
        elif not expression.args:
            done = expression
        else:
            done = expression.func(*(substitute(arg, mapping, memo) for arg in expression.args))
        memo[expression] = done
    return done


def _collect(expression, kinds: tuple, seen: set, found: dict) -> None:
    """Every subexpression of one of ``kinds`` in ``expression``, each distinct one once."""
    if not isinstance(expression, sp.Basic) or expression in seen:
        return
    seen.add(expression)
    if isinstance(expression, kinds):
        found.setdefault(expression, None)
    for arg in expression.args:
        _collect(arg, kinds, seen, found)


def _weighted_sum(arrays: Mapping[str, np.ndarray], weights: Mapping[str, np.ndarray]) -> sp.Expr:
    terms = []
    for key, array in arrays.items():
        terms += [a * w for a, w in zip(np.ravel(array), np.ravel(weights[key]), strict=True)]
    return sp.Add(*terms)


class Proof:
    """One run of a textbook forward and backward on exact arrays, and what it proves.

    Parameters
    ----------
    name : str
        What is proven: a layer and its size, for the statement and the error messages.
    forward : callable
        ``forward(leaves) -> (out, cache)``: refimpl's textbook forward on object arrays.
    backward : callable
        ``backward(leaves, d_out, cache) -> {key: gradient}``, one gradient per leaf, keyed and
        shaped like ``leaves``.
    leaves : dict of str to ndarray
        Every input and parameter, as object arrays of SymPy symbols (:func:`symbols`); at a
        point they name the entries and give the shapes.
    at_point : bool
        Prove at a random rational point instead of as an identity (see the module's
        docstring for why that is exact and sound).
    seed : int
        The point's random numbers.

    Attributes
    ----------
    values : dict
        The leaves the forward and backward ran on: the symbols, or the point's rationals.
    upstream : ndarray
        ``G``, shaped like the output: symbols, or rationals at a point.
    output : ndarray
        The forward's output at ``values``.
    gradients : dict
        What the backward returned, keyed like ``leaves``.
    directional : Expr
        SymPy's ``Σ_s (∂L/∂s) δ_s``.
    """

    def __init__(
        self,
        name: str,
        forward: Forward,
        backward: Backward,
        leaves: Leaves,
        *,
        at_point: bool = False,
        seed: int = 0,
    ):
        self.name, self.at_point = name, at_point
        self.rng = np.random.default_rng(seed)
        if at_point:
            leaves = {key: random_rationals(self.rng, np.shape(v)) for key, v in leaves.items()}
        self.values = dict(leaves)
        self.directions = {
            key: symbols(f"delta[{key}]", np.shape(value)) for key, value in leaves.items()
        }
        moved = {key: leaves[key] + EPSILON * self.directions[key] for key in leaves}
        out_moved, cache_moved = forward(moved)
        if at_point:
            self.upstream = random_rationals(self.rng, out_moved.shape)
        else:
            self.upstream = symbols("g", out_moved.shape)
        loss = sp.Add(*(self.upstream * out_moved).ravel())  # L = Σ G ⊙ Y
        # ε = 0 in the output and the cache too, with one memo: every nonlinear value is then
        # the same SymPy object in the derivative and in what the backward reads.
        memo: dict = {}
        at_zero = {EPSILON: sp.Integer(0)}
        self.directional = substitute(sp.diff(loss, EPSILON), at_zero, memo)
        self.output = map_arrays(lambda e: substitute(e, at_zero, memo), out_moved)
        cache = map_arrays(lambda e: substitute(e, at_zero, memo), cache_moved)
        self.gradients = dict(backward(self.values, self.upstream, cache))
        if set(self.gradients) != set(leaves):
            raise ValueError(
                f"{name}: the backward returns gradients for {sorted(self.gradients)}, "
                f"expected exactly {sorted(leaves)}"
            )
        for key, value in leaves.items():
            if np.shape(self.gradients[key]) != np.shape(value):
                raise ValueError(
                    f"{name}: {key}'s gradient has shape {np.shape(self.gradients[key])}, "
                    f"the leaf {np.shape(value)}"
                )
        self.claimed = _weighted_sum(self.gradients, self.directions)

    @functools.cached_property
    def gap(self) -> str | None:
        """The first leaf entry where the backward differs from SymPy's derivative (e.g.
        ``"x[0, 1]"``), or None where there is none."""
        difference = self.directional - self.claimed
        if self.at_point:
            found: dict = {}
            _collect(difference, (sp.exp,), set(), found)
            free = {}
            for atom in found:  # exp's values: positive, like the real ones
                free[atom] = sp.Rational(int(self.rng.integers(1, 4 * POINT_SCALE)), POINT_SCALE)
            difference = substitute(difference, free, {})
        expanded = sp.expand(difference)
        if expanded == 0:
            return None
        for key, deltas in self.directions.items():
            for index, delta in np.ndenumerate(deltas):
                if expanded.coeff(delta) != 0:
                    return f"{key}[{', '.join(map(str, index))}]"
        raise AssertionError(f"{self.name}: a difference without a direction: {expanded}")

    def statement(self) -> str:
        """The statement proven, saying how; AssertionError naming the entry if not proven."""
        if self.gap is not None:
            raise AssertionError(f"not proven: {self.name}; the backward differs at {self.gap}")
        how = "exact at a random rational point" if self.at_point else "identity"
        return f"{self.name}: the backward equals the symbolic gradient ({how})"

    def float_errors(self, layer, input_names: tuple[str, ...]) -> dict[str, float]:
        """refimpl's ``layer`` in float64 at this point against SymPy's output and derivative.

        ``layer`` loads the point's parameters (every leaf not in ``input_names``) with
        ``load_state_dict``, runs ``forward`` on the point's inputs and ``backward`` on
        ``G``. SymPy's output and ``Σ_s (∂L/∂s) δ_s`` are lambdified (true ``exp`` values)
        and evaluated with ``δ`` running over the unit vectors: every ``∂L/∂s`` in one call.

        Returns
        -------
        dict
            ``"output"``, then every leaf: the worst
            :func:`refimpl.tools.gradcheck.rel_error` of the layer against SymPy.
        """
        if not self.at_point:
            raise ValueError(f"{self.name}: the float witness runs at a point (at_point=True)")
        floats = {key: value.astype(np.float64) for key, value in self.values.items()}
        deltas = [s for key in self.values for s in np.ravel(self.directions[key])]
        derivative = sp.lambdify(deltas, self.directional, "numpy", cse=True)
        flat = np.broadcast_to(derivative(*np.eye(len(deltas))), (len(deltas),))  # δ = e_s
        exact_output = self.output.astype(np.float64)
        layer.load_state_dict({k: v for k, v in floats.items() if k not in input_names})
        out, cache = layer.forward(*(floats[name] for name in input_names))
        *d_inputs, d_params = layer.backward(self.upstream.astype(np.float64), cache)
        ours = {**dict(zip(input_names, d_inputs, strict=True)), **d_params}
        errors = {"output": rel_error(out, exact_output)}
        start = 0
        for key, value in self.values.items():
            exact = flat[start : start + value.size].reshape(value.shape)
            ours_key = ours[key].to_dense() if hasattr(ours[key], "to_dense") else ours[key]
            errors[key] = rel_error(ours_key, exact)
            start += value.size
        return errors


def prove_with(
    name: str,
    forward: Forward,
    backward: Backward,
    leaves: Leaves,
    *,
    at_point: bool,
    seed: int = 0,
    mutant: tuple[Callable, str, str] | None = None,
) -> Proof:
    """A :class:`Proof`, run with ``mutant`` — ``(function, old, new)``, see :func:`mutated` —
    in place when one is given (its gap is decided while the mutant is there)."""
    if mutant is None:
        return Proof(name, forward, backward, leaves, at_point=at_point, seed=seed)
    with mutated(*mutant):
        proof = Proof(name, forward, backward, leaves, at_point=at_point, seed=seed)
        proof.gap  # noqa: B018 - decided while the mutant is in place
    return proof


def mutant(function: Callable, old: str, new: str) -> Callable:
    """A copy of ``function`` with its source text ``old`` replaced by ``new``: a deliberately
    broken textbook function, for showing that a witness rejects it.

    ``old`` must occur exactly once in the source, so a mutant can never silently be the
    original function. The copy runs in the original's module namespace.

    >>> def double(x):
    ...     return 2 * x
    >>> mutant(double, "2 * x", "3 * x")(1)
    3
    """
    source = textwrap.dedent(inspect.getsource(function))
    if source.count(old) != 1:
        raise ValueError(
            f"mutant: {old!r} occurs {source.count(old)} times in {function.__qualname__}, "
            "expected exactly once"
        )
    namespace = dict(function.__globals__)
    code = compile(
        source.replace(old, new),
        f"<mutant of {function.__qualname__}>",
        "exec",
        flags=__future__.annotations.compiler_flag,
        dont_inherit=True,
    )
    exec(code, namespace)
    return namespace[function.__name__]


@contextlib.contextmanager
def mutated(function: Callable, old: str, new: str):
    """For the ``with`` block, :func:`mutant` stands wherever ``function`` stood: in its module
    and in every module that imported it by name. Every caller that looks it up there (a layer
    class, another textbook function, a derivation) runs the broken copy. Restored afterwards.
    """
    broken = mutant(function, old, new)
    homes = [
        module
        for module in list(sys.modules.values())
        if getattr(module, function.__name__, None) is function
    ]
    for module in homes:
        setattr(module, function.__name__, broken)
    try:
        yield broken
    finally:
        for module in homes:
            setattr(module, function.__name__, function)
