"""Activations by name, each with its forward and its derivative, defined once.

The derivative is read from the activation's *output* ``a = g(z)``, so a backward may keep the
outputs alone. ReLU's derivative at exactly 0 is 0, as in PyTorch.

>>> act = get_activation("relu")
>>> z = np.array([-1.0, 0.0, 2.0])
>>> act.forward(z)
array([0., 0., 2.])
>>> act.derivative(act.forward(z))
array([0., 0., 1.])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Activation:
    """An elementwise activation: ``forward(z)`` and ``derivative(a)`` = g'(z) with ``a = forward(z)``.

    ``kinked`` marks activations that are not differentiable everywhere (ReLU at 0).
    """

    name: str
    forward: Callable[[np.ndarray], np.ndarray]
    derivative: Callable[[np.ndarray], np.ndarray]
    kinked: bool = False


def _relu(z):
    return np.maximum(z, 0)


def _relu_derivative(a):
    # From the output alone (a > 0 exactly when z > 0), so a backward may keep only a; 0 at
    # exactly 0, as torch.
    return (a > 0).astype(a.dtype)


def _tanh_derivative(a):
    return 1 - a * a


ACTIVATIONS: dict[str, Activation] = {
    "relu": Activation("relu", _relu, _relu_derivative, kinked=True),
    "tanh": Activation("tanh", np.tanh, _tanh_derivative),
    "identity": Activation("identity", lambda z: z, lambda a: np.ones_like(a)),
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


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, shifted by the row maximum so ``exp`` never overflows.

    >>> softmax(np.array([[1e4, -1e4, 0.0]]))
    array([[1., 0., 0.]])
    """
    shifted = logits - logits.max(axis=-1, keepdims=True)  # every entry <= 0
    weights = np.exp(shifted)
    return weights / weights.sum(axis=-1, keepdims=True)
