"""``torch.nn.Sequential``, ``torch.nn.ReLU`` and ``torch.nn.Sigmoid`` as refimpl layers.

TorchRec builds some blocks as ``nn.Sequential(nn.Linear(...), nn.ReLU())`` (the deep branch
of its ``FMInteractionArch``, the dense and over archs of its DeepFM model); their
``state_dict()`` keys are the children's, prefixed by their position: ``0.weight``,
``0.bias``. :class:`Sequential` keeps the same keys.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from refimpl.layers.activations import get_activation
from refimpl.layers.base import Layer, check_array
from refimpl.layers.mlp import prefixed


class ActivationCache(NamedTuple):
    output: np.ndarray  # φ(x): the registry reads φ' from it, (B, I)


class ElementwiseActivation(Layer):
    """``φ(x)`` elementwise for the registry's activation :attr:`activation`; the derivative is
    read from the output (:mod:`refimpl.layers.activations`). :class:`ReLU` and
    :class:`Sigmoid` name theirs."""

    activation = "identity"
    input_names = ("input",)

    def forward(self, input: np.ndarray) -> tuple[np.ndarray, ActivationCache]:
        """
        Parameters
        ----------
        input : ndarray, shape (B, I)

        Returns
        -------
        out : ndarray, shape (B, I)
        cache : ActivationCache
        """
        check_array("input", input, "B I", {}, self.dtype)
        out = get_activation(self.activation).forward(input)  # (B, I)
        return out, ActivationCache(out)

    def backward(self, d_out: np.ndarray, cache: ActivationCache):
        """
        Returns
        -------
        d_input : ndarray, shape (B, I)
        d_params : dict, empty
        """
        (out,) = cache
        check_array("d_out", d_out, "B I", dict(zip("BI", out.shape, strict=True)), out.dtype)
        return d_out * get_activation(self.activation).derivative(out), {}  # (B, I)


class ReLU(ElementwiseActivation):
    """``max(x, 0)`` elementwise, as ``torch.nn.ReLU`` (derivative 0 at exactly 0, as torch).

    >>> relu = ReLU()
    >>> y, cache = relu.forward(np.array([[-1.0, 0.0, 2.0]]))
    >>> y, relu.backward(np.ones_like(y), cache)[0]
    (array([[0., 0., 2.]]), array([[0., 0., 1.]]))
    """

    activation = "relu"

    def kink_distance(self, input: np.ndarray) -> float:
        """Smallest |input|: ReLU's kink is at 0."""
        return float(np.min(np.abs(input))) if input.size else float("inf")


class Sigmoid(ElementwiseActivation):
    """``σ(x) = 1 / (1 + e^(−x))`` elementwise, as ``torch.nn.Sigmoid`` (stable for both signs);
    ``σ' = σ (1 − σ)``.

    >>> sigmoid = Sigmoid()
    >>> y, cache = sigmoid.forward(np.array([[0.0, np.log(3.0)]]))
    >>> y, sigmoid.backward(np.ones_like(y), cache)[0]
    (array([[0.5 , 0.75]]), array([[0.25  , 0.1875]]))
    """

    activation = "sigmoid"


class SequentialCache(NamedTuple):
    caches: tuple  # each child's cache, in order


class Sequential(Layer):
    """Children applied in order, as ``torch.nn.Sequential``; keys ``<position>.<child key>``.

    Every child takes one (B, ·) array and returns one.

    >>> from refimpl.layers.mlp import Linear
    >>> block = Sequential(Linear(3, 2, seed=0), ReLU())
    >>> list(block.params)
    ['0.weight', '0.bias']
    """

    input_names = ("input",)

    def __init__(self, *layers: Layer):
        if not layers or not all(isinstance(layer, Layer) for layer in layers):
            raise TypeError(f"layers: expected one or more refimpl layers, got {layers!r}")
        super().__init__(layers[0].dtype)
        for i, layer in enumerate(layers):
            self._children[str(i)] = layer

    @property
    def layers(self) -> list[Layer]:
        return list(self._children.values())

    @property
    def in_features(self) -> int:
        return self.layers[0].in_features

    @property
    def out_features(self) -> int:
        sized = [layer for layer in self.layers if hasattr(layer, "out_features")]
        return sized[-1].out_features

    def forward(self, input: np.ndarray) -> tuple[np.ndarray, SequentialCache]:
        x, caches = input, []
        for layer in self.layers:
            x, cache = layer.forward(x)
            caches.append(cache)
        return x, SequentialCache(tuple(caches))

    def backward(self, d_out: np.ndarray, cache: SequentialCache):
        d_x, d_params = d_out, {}
        for i in reversed(range(len(self.layers))):
            d_x, d_child = self.layers[i].backward(d_x, cache.caches[i])
            d_params.update(prefixed(str(i), d_child))
        return d_x, {k: d_params[k] for k in self.params}

    def kink_distance(self, input: np.ndarray) -> float:
        """The smallest distance to a kink over the children, each at its own input."""
        distances, x = [], input
        for layer in self.layers:
            distances.append(layer.kink_distance(x))
            x = layer.forward(x)[0]
        return min(distances)

    def _config(self) -> str:
        return ", ".join(f"{type(layer).__name__}({layer._config()})" for layer in self.layers)
