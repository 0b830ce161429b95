"""Finite-difference gradient checking for any layer that keeps the refimpl contract.

The loss is ``ℒ = sum(G * out)`` for a random upstream gradient ``G``, so ``∂ℒ/∂out = G`` and
the layer's ``backward(G, cache)`` must equal the numerical derivative of ``ℒ`` with respect to
every input element and every parameter element. Derivatives are central differences in
float64 (in float32 round-off alone is larger than the tolerance: lesson 01 measures it). The
textbook two-point rule

    ∂ℒ/∂θ ≈ (ℒ(θ + h) − ℒ(θ − h)) / 2h

errs by O(h²) truncation plus O(ε/h) round-off (lesson 01 plots the V this makes); its best
error, about 1e-10 of the loss's scale, is not enough for an elementwise relative error of 1e-7
on gradient entries that are small because their terms nearly cancel. So ``gradcheck`` uses the
fourth-order rule, ``(ℒ(θ−2h) − 8ℒ(θ−h) + 8ℒ(θ+h) − ℒ(θ+2h)) / 12h``, with h = 1e-3: truncation
O(h⁴) (zero for polynomials of degree ≤ 4) and round-off ~1e-13; and it differences the
layer's outputs before weighting them by G, so outputs the perturbed element does not touch
add no round-off. Agreement is measured per element by :func:`rel_error`.

>>> import refimpl
>>> arch = refimpl.InteractionArch(num_sparse_features=2)
>>> rng = np.random.default_rng(0)
>>> result = gradcheck(arch, (rng.standard_normal((2, 4)), rng.standard_normal((2, 2, 4))))
>>> result.ok, [a.name for a in result.arrays]
(True, ['dense', 'sparse'])
>>> result.worst.rel_error < 1e-7
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refimpl.layers.base import Layer, as_rng
from refimpl.layers.embedding import KeyedJaggedArray
from refimpl.layers.rowsparse import RowSparse

DEFAULT_STEP = 1e-3
DEFAULT_TOL = 1e-7


def rel_error(a, b) -> float:
    """Worst elementwise relative error, ``max |a − b| / max(1e-8, |a| + |b|)``.

    The floor of 1e-8 keeps elements that are both (near) zero from dividing by zero: there
    the measure becomes an absolute error scaled by 1e8.

    >>> rel_error(np.array([1.0, 2.0]), np.array([1.0, 2.0 + 4e-9]))  # doctest: +ELLIPSIS
    1.0e-09
    >>> rel_error(np.zeros(3), np.zeros(3))
    0.0
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_error: shapes differ, {a.shape} and {b.shape}")
    if a.size == 0:
        return 0.0
    return float(np.max(_elementwise_rel_error(a, b)))


def _elementwise_rel_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b))


@dataclass(frozen=True)
class ArrayCheck:
    """How one array's analytic gradient compares with its finite-difference estimate."""

    name: str
    rel_error: float
    index: tuple[int, ...]  # where the worst element sits
    analytic: float  # backward's value there
    numeric: float  # the central difference there

    def __str__(self) -> str:
        return (
            f"{self.name:<28} rel_error {self.rel_error:9.2e} at {self.index}: "
            f"analytic {self.analytic:+.10e}, numeric {self.numeric:+.10e}"
        )


@dataclass(frozen=True)
class GradCheckResult:
    """One :class:`ArrayCheck` per input, then one per parameter (in ``params`` order)."""

    arrays: tuple[ArrayCheck, ...]
    tol: float
    step: float

    @property
    def worst(self) -> ArrayCheck:
        return max(self.arrays, key=lambda a: a.rel_error)

    @property
    def ok(self) -> bool:
        return all(a.rel_error < self.tol for a in self.arrays)

    def __str__(self) -> str:
        verdict = "pass" if self.ok else "FAIL"
        lines = [f"gradcheck ({verdict}: tol {self.tol:.0e}, step {self.step:.0e})"]
        lines += [f"  {a}" for a in self.arrays]
        return "\n".join(lines)


def numerical_gradient(
    func, array: np.ndarray, step: float = DEFAULT_STEP, points: int = 4, upstream=None
) -> np.ndarray:
    """Central-difference gradient of ``sum(upstream * func())`` with respect to ``array``.

    ``func()`` returns an array (or a scalar, with ``upstream`` left as None). ``points`` picks
    the rule: 2 for ``(f(θ+h) − f(θ−h)) / 2h``, whose error is h² f‴/6; 4 (default) for
    ``((f(θ−2h) − f(θ+2h)) + 8 (f(θ+h) − f(θ−h))) / 12h``, whose error is h⁴ f⁽⁵⁾/30, so it is
    exact for polynomials up to degree 4. The outputs are differenced *before* they are
    weighted by ``upstream`` and summed: outputs that do not depend on the perturbed element
    then cancel exactly instead of adding their round-off to the estimate.

    ``array`` is perturbed in place one element at a time and restored exactly (the original
    value is saved, not recomputed), so ``func`` should read it by reference.

    >>> x = np.array([1.0, -2.0])
    >>> np.round(numerical_gradient(lambda: float(np.sum(x**3)), x), 9)
    array([ 3., 12.])
    >>> np.round(numerical_gradient(lambda: x**3, x, upstream=np.array([1.0, 0.5])), 9)
    array([3., 6.])
    """
    grad = np.zeros_like(array, dtype=np.float64)
    grad.reshape(-1)[:] = numerical_gradient_at(
        func, array, np.arange(array.size), step, points, upstream
    )
    return grad


def numerical_gradient_at(
    func, array: np.ndarray, elements, step: float = DEFAULT_STEP, points: int = 4, upstream=None
) -> np.ndarray:
    """:func:`numerical_gradient` at the flat indices ``elements`` of ``array`` only, shape
    (len(elements),): how an embedding table of millions of rows is checked on a few rows.

    >>> x = np.array([1.0, -2.0, 3.0])
    >>> np.round(numerical_gradient_at(lambda: float(np.sum(x**3)), x, [2]), 9)
    array([27.])
    """
    if points not in (2, 4):
        raise ValueError(f"points: expected 2 or 4, got {points!r}")
    weights = 1.0 if upstream is None else upstream
    elements = np.asarray(elements, dtype=np.int64)
    grad = np.zeros(len(elements), dtype=np.float64)
    if len(elements) == 0:
        return grad
    flat = array.reshape(-1)  # a view: writes reach `array`
    if not np.shares_memory(flat, array):
        raise ValueError("numerical_gradient: the array must be contiguous to perturb in place")

    def at(offset: int):
        flat[i] = saved + offset * step
        return np.array(func(), dtype=np.float64)  # a copy: an output may alias the input

    for k, i in enumerate(elements.tolist()):
        saved = flat[i]
        if points == 2:
            change = (at(1) - at(-1)) / (2 * step)
        else:
            change = ((at(-2) - at(2)) + 8 * (at(1) - at(-1))) / (12 * step)
        flat[i] = saved
        grad[k] = np.sum(weights * change)
    return grad


def gradcheck(
    layer: Layer,
    inputs: tuple[np.ndarray, ...],
    *,
    seed: int | np.random.Generator | None = 0,
    step: float = DEFAULT_STEP,
    tol: float = DEFAULT_TOL,
    points: int = 4,
    kink_margin: float | None = None,
    untouched_rows: int = 8,
) -> GradCheckResult:
    """Compare ``layer.backward`` with central differences for every input and parameter.

    Parameters
    ----------
    layer : Layer
        Any layer keeping the contract (``forward``/``backward``/``params``), in float64.
    inputs : tuple of float64 ndarray or KeyedJaggedArray
        The forward inputs. They are copied; the layer's parameters are perturbed in place and
        restored exactly. An input whose gradient ``backward`` returns as None is data (ids,
        labels) and is not differentiated; a KeyedJaggedArray's gradient, when there is one,
        is its per-id weights', checked like an array.
    seed : int or Generator
        Draws the upstream gradient ``G`` (standard normal, shaped like the output).
    step : float
        The finite-difference step ``h``.
    tol : float
        An array passes when its worst :func:`rel_error` is below ``tol``.
    points : {2, 4}
        The stencil (see :func:`numerical_gradient`).
    kink_margin : float, optional
        Refuse inputs whose pre-activations lie within this distance of a ReLU kink: a
        difference that straddles a kink averages two one-sided slopes, which is not the
        derivative, and would fail a correct backward. The default, ``10 * step``, is the
        stencil's reach of 2h times an *assumed* sensitivity of at most 5: it keeps the whole
        stencil on one side of every kink only if no pre-activation z moves faster than
        5 times the element being nudged, |∂z/∂θ| ≤ 5. Nothing checks that assumption; with
        larger weights or inputs a correct backward can fail (lesson 01 builds such a case), and
        then a larger margin or a smaller step is the remedy. A straddled kink corrupts the
        estimate, so it shows as a failure of a correct backward (a false alarm).
    untouched_rows : int
        For a parameter whose gradient is a :class:`~refimpl.layers.rowsparse.RowSparse` (an
        embedding table), every element of the rows it holds is checked, plus every element
        of up to this many rows drawn from the others, where both the gradient and the
        finite difference must be exactly zero (a row no id names is never read). The rest
        of the table is never visited, so a table of 10⁷ rows costs no more than a small one.

    Returns
    -------
    GradCheckResult
    """
    inputs = tuple(_copy_input(x) for x in inputs)
    params = layer.params
    for name, value in params.items():
        if value.dtype != np.float64:
            raise TypeError(
                f"gradcheck: parameter {name} is {value.dtype}; finite differences need "
                "float64 (build the layer with dtype=np.float64)"
            )
    margin = 10 * step if kink_margin is None else kink_margin
    distance = layer.kink_distance(*inputs)
    if distance < margin:
        raise ValueError(
            f"gradcheck: a pre-activation lies {distance:.1e} from a ReLU kink (margin "
            f"{margin:.1e}); finite differences are not derivatives there: draw other inputs "
            "(from refimpl.tools.gradcheck import draw_away_from_kinks)"
        )

    rng = as_rng(seed)
    out, cache = layer.forward(*inputs)
    upstream = rng.standard_normal(out.shape)  # G = dL/d out
    *d_inputs, d_params = layer.backward(upstream, cache)
    if len(d_inputs) != len(inputs):
        raise ValueError(
            f"gradcheck: backward returned {len(d_inputs)} input gradients for {len(inputs)} inputs"
        )
    if set(d_params) != set(params):
        raise ValueError(
            f"gradcheck: backward's parameter gradients have keys {sorted(d_params)}, "
            f"params has {sorted(params)}"
        )

    def output() -> np.ndarray:
        return layer.forward(*inputs)[0]

    names = getattr(layer, "input_names", None) or [f"input {i}" for i in range(len(inputs))]
    checks = []
    targets = []
    for name, x, d in zip(names, inputs, d_inputs, strict=True):
        if d is None:  # data, not differentiated: ids, labels
            continue
        if isinstance(x, KeyedJaggedArray):
            name, x = f"{name}.weights", x.weights
        targets.append((name, x, d))
    targets += [(k, params[k], d_params[k]) for k in params]
    for name, array, analytic in targets:
        if analytic is None or analytic.shape != array.shape:
            raise ValueError(
                f"gradcheck: gradient of {name} has shape "
                f"{None if analytic is None else analytic.shape}, expected {array.shape}"
            )
        if isinstance(analytic, RowSparse):
            checks.append(
                _check_row_sparse(
                    name, array, analytic, output, rng, untouched_rows, step, points, upstream
                )
            )
            continue
        numeric = numerical_gradient(output, array, step, points, upstream)
        checks.append(_compare(name, np.asarray(analytic, dtype=np.float64), numeric))
    return GradCheckResult(tuple(checks), tol=tol, step=step)


def _copy_input(x):
    if isinstance(x, KeyedJaggedArray):
        weights = None if x.weights is None else np.array(x.weights, dtype=np.float64)
        return KeyedJaggedArray(x.keys, x.values.copy(), x.lengths.copy(), weights)
    return np.array(x, dtype=np.float64, copy=True)


def _check_row_sparse(name, table, analytic, output, rng, untouched_rows, step, points, upstream):
    """Check a row-sparse gradient on its rows and on a sample of the rows it leaves zero."""
    num_rows, dim = table.shape
    touched = analytic.indices
    candidates = rng.integers(0, num_rows, size=4 * untouched_rows + 16)  # rejection sample
    untouched = np.unique(candidates[~np.isin(candidates, touched)])
    untouched = rng.permutation(untouched)[:untouched_rows]
    if len(untouched) < untouched_rows and num_rows - len(touched) <= 4 * untouched_rows:
        untouched = np.setdiff1d(np.arange(num_rows), touched)[:untouched_rows]  # small table
    rows = np.concatenate([touched, np.sort(untouched)])
    elements = (rows[:, None] * dim + np.arange(dim)).reshape(-1)
    numeric = numerical_gradient_at(output, table, elements, step, points, upstream)
    numeric = numeric.reshape(len(rows), dim)
    expected = np.concatenate([analytic.values, np.zeros((len(untouched), dim))])
    check = _compare(f"{name} ({len(touched)}+{len(untouched)} rows)", expected, numeric)
    if np.any(numeric[len(touched) :] != 0):  # a row no id names must not move the output
        at = np.argwhere(numeric[len(touched) :] != 0)[0]
        row = int(untouched[at[0]])
        return ArrayCheck(
            check.name,
            float("inf"),
            (row, int(at[1])),
            0.0,
            float(numeric[len(touched) + at[0], at[1]]),
        )
    if check.index:  # report the table's row, not the position in the checked rows
        check = ArrayCheck(
            check.name,
            check.rel_error,
            (int(rows[check.index[0]]), check.index[1]),
            check.analytic,
            check.numeric,
        )
    return check


def _compare(name: str, analytic: np.ndarray, numeric: np.ndarray) -> ArrayCheck:
    if analytic.size == 0:
        return ArrayCheck(name, 0.0, (), 0.0, 0.0)
    errors = _elementwise_rel_error(analytic, numeric)
    index = np.unravel_index(int(np.argmax(errors)), errors.shape)
    return ArrayCheck(
        name,
        float(errors[index]),
        tuple(int(i) for i in index),
        float(analytic[index]),
        float(numeric[index]),
    )


def draw_away_from_kinks(
    layer: Layer, draw, rng, margin: float | None = None, attempts: int = 1000
):
    """Call ``draw(rng)`` for inputs until none of the layer's pre-activations is near a kink.

    Returns the first input tuple whose :meth:`Layer.kink_distance` is at least ``margin``
    (default: the margin :func:`gradcheck` asks for at its default step).
    """
    rng = as_rng(rng)
    margin = 10 * DEFAULT_STEP if margin is None else margin
    for _ in range(attempts):
        inputs = draw(rng)
        if layer.kink_distance(*inputs) >= margin:
            return inputs
    raise RuntimeError(f"no inputs at least {margin} from a kink in {attempts} draws")
