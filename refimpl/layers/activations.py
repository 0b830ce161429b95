"""Activations and elementwise functions, defined once, on float arrays and on exact arrays.

Every activation is one :class:`Activation` in :data:`ACTIVATIONS`: its NumPy forward, its
derivative read from the *output* ``a = g(z)`` (so a backward may keep the outputs alone), its
scalar form (for the loop versions), its PyTorch equivalent, its FLOP count and its symbolic
rule. Adding an activation touches this file only.

The textbook forward and backward of every layer run unchanged on object arrays of SymPy
expressions or exact rationals; that is how ``derivations/`` proves them. NumPy's ufuncs do
not know SymPy, so an activation's ``forward`` (and :func:`exp`, :func:`log1p`, :func:`softplus`,
:func:`sqrt`, :func:`softmax` below) applies the symbolic rule entry by entry when it meets an
object array. SymPy is imported only then: the layers need NumPy alone.

ReLU's derivative at exactly 0 is 0, as in PyTorch; on exact arrays it is
``Heaviside(a, 0)``, which is the same rule read from the output.

>>> act = get_activation("relu")
>>> z = np.array([-1.0, 0.0, 2.0])
>>> act.forward(z)
array([0., 0., 2.])
>>> act.derivative(act.forward(z))
array([0., 0., 1.])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


def is_exact(array: np.ndarray) -> bool:
    """True for an object array (SymPy expressions or exact rationals), False for floats."""
    return array.dtype == object


def entrywise(function: Callable, array: np.ndarray) -> np.ndarray:
    """``function`` applied to every entry of an object array, keeping the shape."""
    out = np.empty(array.shape, dtype=object)
    for index, value in np.ndenumerate(array):
        out[index] = function(value)
    return out


def _sympy():
    import sympy  # only exact (object) arrays reach here: derivations/ has SymPy

    return sympy


@dataclass(frozen=True)
class Activation:
    """One elementwise activation ``a = g(z)`` and everything the project needs to know of it.

    Attributes
    ----------
    name : str
        The name layers take (TorchRec takes a callable where refimpl takes this name).
    numpy : callable
        ``g`` on float arrays.
    derivative : callable
        ``g'(z)`` read from the output ``a``; on floats and on exact arrays alike.
    scalar : callable
        ``g`` on one Python float (the naive loop versions use it).
    torch : str
        The PyTorch equivalent, as ``module.attribute`` under ``torch`` (``"relu"`` is
        ``torch.relu``; ``"nn.Identity"`` is ``torch.nn.Identity()``).
    flops : tuple of int
        FLOPs per element of the forward and of the backward's ``d ⊙ g'`` (comparisons and
        selections are free; see :mod:`refimpl.tools.flops`).
    symbolic : callable
        ``g`` on one SymPy expression.
    kinked : bool
        Not differentiable everywhere (ReLU at 0): finite differences must keep away.
    """

    name: str
    numpy: Callable[[np.ndarray], np.ndarray]
    derivative: Callable[[np.ndarray], np.ndarray]
    scalar: Callable[[float], float]
    torch: str
    flops: tuple[int, int]
    symbolic: Callable
    kinked: bool = False

    def forward(self, z: np.ndarray) -> np.ndarray:
        """``g(z)``: NumPy on float arrays, the symbolic rule entry by entry on exact ones."""
        return entrywise(self.symbolic, z) if is_exact(z) else self.numpy(z)

    def torch_function(self):
        """The PyTorch callable (imports torch)."""
        import torch

        target = torch
        for part in self.torch.split("."):
            target = getattr(target, part)
        return target() if isinstance(target, type) else target


def _relu_derivative(a):
    # a > 0 exactly when z > 0, so the output decides; 0 at exactly 0, as torch.
    if is_exact(a):
        return entrywise(lambda v: _sympy().Heaviside(v, 0), a)
    return (a > 0).astype(a.dtype)


def _sigmoid(z):
    # Both signs without overflow: exp of a non-positive number only.
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


def _sigmoid_scalar(z: float) -> float:
    return 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))


ACTIVATIONS: dict[str, Activation] = {
    "relu": Activation(
        "relu",
        numpy=lambda z: np.maximum(z, 0),
        derivative=_relu_derivative,
        scalar=lambda z: z if z > 0 else 0.0,
        torch="relu",
        flops=(0, 0),
        symbolic=lambda z: _sympy().Max(z, 0),
        kinked=True,
    ),
    "tanh": Activation(
        "tanh",
        numpy=np.tanh,
        derivative=lambda a: 1 - a * a,
        scalar=math.tanh,
        torch="tanh",
        flops=(1, 3),  # tanh; d·(1 − a·a)
        # tanh written through exp: the same function (derivations proves it), but SymPy
        # differentiates it in a fraction of the time its own tanh takes on long arguments.
        symbolic=lambda z: 1 - 2 / (1 + _sympy().exp(2 * z)),
    ),
    "sigmoid": Activation(
        "sigmoid",
        numpy=_sigmoid,
        derivative=lambda a: a * (1 - a),
        scalar=_sigmoid_scalar,
        torch="sigmoid",
        flops=(3, 3),  # exp, +, ÷; d·a·(1 − a)
        symbolic=lambda z: 1 / (1 + _sympy().exp(-z)),
    ),
    "identity": Activation(
        "identity",
        numpy=lambda z: z,
        derivative=lambda a: np.ones_like(a),
        scalar=lambda z: z,
        torch="nn.Identity",
        flops=(0, 0),
        symbolic=lambda z: z,
    ),
}


def get_activation(name: str) -> Activation:
    """The activation called ``name``; a ValueError listing the known names otherwise."""
    if not isinstance(name, str):
        raise TypeError(
            f"activation: expected one of {sorted(ACTIVATIONS)} by name, got {name!r} "
            "(refimpl takes a name where TorchRec takes a callable)"
        )
    if name not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


def exp(z: np.ndarray) -> np.ndarray:
    """``e^z`` on float or exact arrays."""
    return entrywise(lambda v: _sympy().exp(v), z) if is_exact(z) else np.exp(z)


def log1p(z: np.ndarray) -> np.ndarray:
    """``log(1 + z)`` on float or exact arrays."""
    return entrywise(lambda v: _sympy().log(1 + v), z) if is_exact(z) else np.log1p(z)


def softplus(z: np.ndarray) -> np.ndarray:
    """``log(1 + e^z)`` on float or exact arrays.

    On floats it is evaluated as ``max(z, 0) + log1p(e^(−|z|))``: the same number, since
    ``log(1 + e^z) = z + log(1 + e^(−z))``, but ``exp`` only ever sees a non-positive
    argument, so nothing overflows at ``z = 10⁴`` and nothing rounds to ``log(0)`` at
    ``z = −10⁴``.

    >>> softplus(np.array([-1e4, 0.0, 1e4]))
    array([0.00000000e+00, 6.93147181e-01, 1.00000000e+04])
    """
    if is_exact(z):
        return entrywise(lambda v: _sympy().log(1 + _sympy().exp(v)), z)
    return np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z)))


def sqrt(z: np.ndarray) -> np.ndarray:
    """``√z`` on float or exact arrays."""
    return entrywise(lambda v: _sympy().sqrt(v), z) if is_exact(z) else np.sqrt(z)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis.

    On floats the row maximum is subtracted first, so ``exp`` never overflows; softmax is
    unchanged by any shift of a row (``derivations`` proves it), so exact arrays skip it.

    >>> softmax(np.array([[1e4, -1e4, 0.0]]))
    array([[1., 0., 0.]])
    """
    shifted = logits if is_exact(logits) else logits - logits.max(axis=-1, keepdims=True)
    exps = exp(shifted)
    return exps / exps.sum(axis=-1, keepdims=True)


def softmax_backward(probs: np.ndarray, d_probs: np.ndarray) -> np.ndarray:
    """The vector–Jacobian product of :func:`softmax` over the last axis, read from its output.

    With ``p = softmax(z)`` the Jacobian is ``diag(p) − p pᵀ``, so
    ``dz = p ⊙ (dp − Σ_k p_k dp_k)``: the upstream gradient, centred on its ``p``-weighted mean,
    times ``p``. The centering term is what makes every row of ``dz`` sum to zero (softmax
    does not change when a constant is added to all its logits).

    >>> p = softmax(np.array([[0.0, 0.0]]))
    >>> softmax_backward(p, np.array([[1.0, 3.0]]))       # ½ ⊙ ([1, 3] − 2)
    array([[-0.5,  0.5]])
    """
    return probs * (d_probs - (probs * d_probs).sum(axis=-1, keepdims=True))
