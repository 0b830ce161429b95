"""Linear layers and TorchRec's MLP, DenseArch and OverArch, with hand-derived backward passes.

``Linear`` is ``torch.nn.Linear``. ``MLP`` is ``torchrec.modules.mlp.MLP``: a stack of
perceptrons, each a Linear followed by the activation, the last layer included.
``DenseArch`` (``torchrec.models.dlrm.DenseArch``) wraps a ReLU MLP as ``model``; ``OverArch``
(``torchrec.models.dlrm.OverArch``) is a ReLU MLP over all sizes but the last, then a plain
Linear that outputs logits. Parameter keys are TorchRec's, e.g. ``_mlp.0._linear.weight``.

Letters: B batch, I input features, O output features.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np

from refimpl.layers.activations import get_activation
from refimpl.layers.base import (
    Layer,
    as_rng,
    check_array,
    check_positive_int,
    linear_uniform,
    prefixed,
    sub_params,
)


def check_layer_sizes(name: str, layer_sizes) -> tuple[int, ...]:
    """A non-empty tuple of positive ints, else a ValueError/TypeError naming the argument.

    >>> check_layer_sizes("layer_sizes", [8, 4])
    (8, 4)
    >>> check_layer_sizes("layer_sizes", [])
    Traceback (most recent call last):
    ...
    ValueError: layer_sizes: expected at least one layer size, got []
    """
    if isinstance(layer_sizes, str | bytes) or not isinstance(layer_sizes, Iterable):
        raise TypeError(f"{name}: expected a list of positive integers, got {layer_sizes!r}")
    sizes = list(layer_sizes)
    if not sizes:
        raise ValueError(f"{name}: expected at least one layer size, got {sizes}")
    return tuple(check_positive_int(f"{name}[{i}]", s) for i, s in enumerate(sizes))


class LinearCache(NamedTuple):
    input: np.ndarray  # x, (B, I)


def linear_forward(params, x):
    """``y = x Wᵀ + b`` over ``{"weight": (O, I), "bias": (O,)}`` (no ``"bias"``: no bias).

    The textbook form of :class:`Linear`; returns ``(y, x)``: the input is all the backward
    needs.

    >>> linear_forward({"weight": np.array([[2.0, -1.0]]), "bias": np.array([0.5])},
    ...                np.array([[1.0, 3.0]]))[0]
    array([[-0.5]])
    """
    out = x @ params["weight"].T  # (B, O)
    if "bias" in params:
        out = out + params["bias"]  # b added to every row, (B, O)
    return out, x


def linear_backward(params, d_out, x):
    """``(d_input, d_params)`` of :func:`linear_forward` (``x`` its input): ``dx = G W``,
    ``dW = Gᵀ x``, ``db = Σ_batch G``."""
    d_params = {"weight": d_out.T @ x}  # (O, I)
    if "bias" in params:
        d_params["bias"] = d_out.sum(axis=0)  # (O,)
    return d_out @ params["weight"], d_params  # (B, I)


class Linear(Layer):
    """``y = x Wᵀ + b``, as ``torch.nn.Linear``.

    Parameters
    ----------
    in_features : int
        I, the input size.
    out_features : int
        O, the output size.
    bias : bool
        Learn an additive bias ``b`` (key ``bias``); default True.
    seed : int or Generator, optional
        Draws the initial weights: ``weight`` (O, I) and ``bias`` (O,) both from
        U(−1/√I, 1/√I), ``nn.Linear``'s default.
    dtype : float32 or float64

    Notes
    -----
    Forward and backward, with ``G = dL/dy`` of shape (B, O)::

        y  = x Wᵀ + b          (B, O)
        dx = G W               (B, I)
        dW = Gᵀ x              (O, I)   summed over the batch by the matrix product
        db = Σ_b G[b]          (O,)     b is added to every row

    Examples
    --------
    >>> lin = Linear(2, 1)
    >>> lin.load_state_dict({"weight": np.array([[2.0, -1.0]]), "bias": np.array([0.5])})
    >>> y, cache = lin.forward(np.array([[1.0, 3.0]]))
    >>> y
    array([[-0.5]])
    >>> d_input, d_params = lin.backward(np.ones_like(y), cache)
    >>> d_input, d_params["weight"]
    (array([[ 2., -1.]]), array([[1., 3.]]))
    """

    input_names = ("input",)

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, *, seed=None, dtype=np.float64
    ):
        super().__init__(dtype)
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        self.bias = bool(bias)
        rng = as_rng(seed)
        shape = (self.out_features, self.in_features)
        self._params["weight"] = linear_uniform(rng, shape, self.in_features, self.dtype)
        if self.bias:
            self._params["bias"] = linear_uniform(
                rng, (self.out_features,), self.in_features, self.dtype
            )

    def _config(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}" + (
            "" if self.bias else ", bias=False"
        )

    def forward(self, input: np.ndarray) -> tuple[np.ndarray, LinearCache]:
        """
        Parameters
        ----------
        input : ndarray, shape (B, I)

        Returns
        -------
        out : ndarray, shape (B, O)
        cache : LinearCache
        """
        check_array("input", input, "B I", {"I": self.in_features}, self.dtype)
        out, _ = linear_forward(self._params, input)
        return out, LinearCache(input)

    def backward(self, d_out: np.ndarray, cache: LinearCache):
        """
        Parameters
        ----------
        d_out : ndarray, shape (B, O)
        cache : LinearCache from ``forward``

        Returns
        -------
        d_input : ndarray, shape (B, I)
        d_params : dict
            ``weight`` (O, I), and ``bias`` (O,) when the layer has one.
        """
        sizes = {"B": cache.input.shape[0], "O": self.out_features}
        check_array("d_out", d_out, "B O", sizes, self.dtype)
        return linear_backward(self._params, d_out, cache.input)


class MLPCache(NamedTuple):
    inputs: tuple  # layer i's input x_i, (B, I_i); x_i = g(z_{i-1}) for i ≥ 1
    output: np.ndarray  # x_L = g(z_{L-1}), (B, O); with the inputs, every layer's g(z_i)
    activations: tuple  # each layer's activation, by name (the last may be "identity")


def mlp_forward(params, x, activation: str = "relu", activation_on_last: bool = True):
    """``x_{i+1} = g(x_i W_iᵀ + b_i)`` over ``params`` keyed ``_mlp.i._linear.*``.

    The textbook form of :class:`MLP`; returns ``(x_L, MLPCache)``: every layer's input and
    the output (``g'`` is read from the outputs), and each layer's activation by name.

    >>> params = {"_mlp.0._linear.weight": np.array([[1.0, -1.0]]),
    ...           "_mlp.0._linear.bias": np.array([0.0])}
    >>> mlp_forward(params, np.array([[3.0, 1.0], [1.0, 3.0]]))[0]
    array([[2.],
           [0.]])
    """
    num_layers = sum(k.endswith("._linear.weight") for k in params)
    names = [get_activation(activation).name] * num_layers
    if not activation_on_last:
        names[-1] = "identity"
    inputs = []
    for i, name in enumerate(names):
        inputs.append(x)
        z, _ = linear_forward(sub_params(params, f"_mlp.{i}._linear."), x)  # z_i, (B, O_i)
        x = get_activation(name).forward(z)  # x_{i+1} = g(z_i), (B, O_i); z_i is not kept
    return x, MLPCache(tuple(inputs), x, tuple(names))


def mlp_backward(params, d_out, cache: MLPCache):
    """``(d_input, d_params)`` of :func:`mlp_forward`, layer by layer from the last:
    ``dz_i = dx_{i+1} ⊙ g'(z_i)``, then the Linear's backward."""
    inputs, output, names = cache
    activated = (*inputs[1:], output)  # g(z_i) of each layer: the next input, or the output
    d_params = {}
    d_x = d_out  # dx_L, (B, O)
    for i in reversed(range(len(inputs))):
        d_z = d_x * get_activation(names[i]).derivative(activated[i])  # dz_i, (B, O_i)
        linear = sub_params(params, f"_mlp.{i}._linear.")
        d_x, d_linear = linear_backward(linear, d_z, inputs[i])  # dx_i, (B, I_i)
        d_params.update(prefixed(f"_mlp.{i}._linear", d_linear))
    return d_x, {k: d_params[k] for k in params}


def mlp_pre_activations(params, cache: MLPCache) -> list[np.ndarray]:
    """Every layer's ``z_i = x_i W_iᵀ + b_i`` (B, O_i), recomputed from the inputs the cache
    keeps (ReLU's kinks are where some ``z`` is 0)."""
    return [
        linear_forward(sub_params(params, f"_mlp.{i}._linear."), x)[0]
        for i, x in enumerate(cache.inputs)
    ]


class MLP(Layer):
    """A stack of perceptrons, Linear then activation on every layer, as TorchRec's ``MLP``.

    Parameters
    ----------
    in_size : int
        I, the input size (TorchRec's name; ``in_features`` is an alias attribute, as on the
        other layers).
    layer_sizes : list of int
        The output size of each layer; O = ``layer_sizes[-1]``.
    bias : bool
        Each Linear learns a bias; default True.
    activation : str
        A name in :data:`refimpl.layers.activations.ACTIVATIONS` (``"relu"``, ``"tanh"``,
        ``"sigmoid"``, ``"identity"``), where TorchRec takes a callable or the names
        ``"relu"``, ``"sigmoid"`` and ``"swish_layernorm"`` (the last is not offered here).
    activation_on_last : bool
        Apply the activation after the last Linear too (TorchRec's default, True).
    seed : int or Generator, optional
        Initialises every Linear as ``nn.Linear`` does, layer by layer.
    dtype : float32 or float64

    Notes
    -----
    Keys ``_mlp.i._linear.weight`` (O_i, I_i) and ``_mlp.i._linear.bias`` (O_i,), the latter
    absent when ``bias=False``. With ``x_0 = input``, for i = 0 … L−1::

        z_i     = x_i W_iᵀ + b_i          (B, O_i)
        x_{i+1} = g(z_i)                  (B, O_i)

    and ``out = x_L``. Backward runs the layers in reverse, from ``dx_L = d_out``::

        dz_i = dx_{i+1} ⊙ g'(z_i)         ReLU: g' = 1 where z > 0, else 0 (0 at z = 0, as torch)
        dW_i = dz_iᵀ x_i,   db_i = Σ_b dz_i,   dx_i = dz_i W_i

    The cache holds what that reads and no more: each layer's input ``x_i`` (for ``dW_i``) and
    the output ``x_L``. The pre-activations ``z_i`` are not kept: ReLU, tanh and the identity
    read ``g'(z_i)`` from ``g(z_i) = x_{i+1}``, which is layer i+1's input (or the output).
    :meth:`MLP.pre_activations` recomputes them when they are wanted (kink checks, lessons).

    Examples
    --------
    >>> mlp = MLP(2, [2, 1])
    >>> mlp.load_state_dict({
    ...     "_mlp.0._linear.weight": np.array([[1.0, -1.0], [0.5, 0.5]]),
    ...     "_mlp.0._linear.bias": np.array([0.0, -3.0]),
    ...     "_mlp.1._linear.weight": np.array([[2.0, 1.0]]),
    ...     "_mlp.1._linear.bias": np.array([0.5]),
    ... })
    >>> x = np.array([[3.0, 1.0]])
    >>> out, cache = mlp.forward(x)
    >>> mlp.pre_activations(x)[0], out       # the second unit is cut by the ReLU
    (array([[ 2., -1.]]), array([[4.5]]))
    >>> d_input, d_params = mlp.backward(np.ones_like(out), cache)
    >>> d_input                              # only the first unit's path: 2 * [1, -1]
    array([[ 2., -2.]])
    """

    input_names = ("input",)

    def __init__(
        self,
        in_size: int,
        layer_sizes: Sequence[int],
        bias: bool = True,
        activation: str = "relu",
        *,
        activation_on_last: bool = True,
        seed=None,
        dtype=np.float64,
    ):
        super().__init__(dtype)
        self.in_size = check_positive_int("in_size", in_size)
        self.layer_sizes = check_layer_sizes("layer_sizes", layer_sizes)
        self.bias = bool(bias)
        act = get_activation(activation)
        self.activation = act.name
        self.activation_on_last = bool(activation_on_last)
        rng = as_rng(seed)
        fan_ins = (self.in_size, *self.layer_sizes[:-1])
        for i, (fan_in, size) in enumerate(zip(fan_ins, self.layer_sizes, strict=True)):
            linear = Linear(fan_in, size, self.bias, seed=rng, dtype=self.dtype)
            self._children[f"_mlp.{i}._linear"] = linear

    @property
    def in_features(self) -> int:
        return self.in_size

    @property
    def out_features(self) -> int:
        return self.layer_sizes[-1]

    def _config(self) -> str:
        extra = "" if self.bias else ", bias=False"
        extra += f", activation={self.activation!r}" if self.activation != "relu" else ""
        extra += "" if self.activation_on_last else ", activation_on_last=False"
        return f"in_size={self.in_size}, layer_sizes={list(self.layer_sizes)}{extra}"

    def forward(self, input: np.ndarray) -> tuple[np.ndarray, MLPCache]:
        """
        Parameters
        ----------
        input : ndarray, shape (B, I)

        Returns
        -------
        out : ndarray, shape (B, O)
        cache : MLPCache
        """
        check_array("input", input, "B I", {"I": self.in_features}, self.dtype)
        return mlp_forward(self.params, input, self.activation, self.activation_on_last)

    def backward(self, d_out: np.ndarray, cache: MLPCache):
        """
        Parameters
        ----------
        d_out : ndarray, shape (B, O)
        cache : MLPCache from ``forward``

        Returns
        -------
        d_input : ndarray, shape (B, I)
        d_params : dict keyed like ``params``
        """
        sizes = {"B": cache.output.shape[0], "O": self.out_features}
        check_array("d_out", d_out, "B O", sizes, self.dtype)
        return mlp_backward(self.params, d_out, cache)

    def pre_activations(self, input: np.ndarray) -> list[np.ndarray]:
        """Every layer's ``z_i = x_i W_iᵀ + b_i`` (B, O_i), recomputed: the cache does not keep
        them, since backward reads ``g'`` from the activations' outputs."""
        _, cache = self.forward(input)
        return mlp_pre_activations(self.params, cache)

    def kink_distance(self, input: np.ndarray) -> float:
        """Smallest |z_i| over the layers whose activation has a kink (ReLU), else inf."""
        _, cache = self.forward(input)
        distances = [
            float(np.min(np.abs(z)))
            for z, name in zip(
                mlp_pre_activations(self.params, cache), cache.activations, strict=True
            )
            if get_activation(name).kinked and z.size
        ]
        return min(distances, default=float("inf"))


def dense_arch_forward(params, x):
    """The textbook form of :class:`DenseArch`: the ReLU MLP under ``model.``."""
    return mlp_forward(sub_params(params, "model."), x)


def dense_arch_backward(params, d_out, cache: MLPCache):
    """``(d_input, d_params)`` of :func:`dense_arch_forward`."""
    d_x, d_model = mlp_backward(sub_params(params, "model."), d_out, cache)
    return d_x, prefixed("model", d_model)


class DenseArch(Layer):
    """TorchRec's ``DenseArch``: a ReLU MLP with biases, held as the child ``model``.

    Parameters
    ----------
    in_features : int
        I, the input size.
    layer_sizes : list of int
        The MLP's layer sizes; O = ``layer_sizes[-1]``.
    seed : int or Generator, optional
    dtype : float32 or float64

    Notes
    -----
    Keys ``model._mlp.i._linear.weight`` and ``model._mlp.i._linear.bias``; forward and
    backward are the MLP's (see :class:`MLP`).

    Examples
    --------
    >>> arch = DenseArch(12, [8, 4], seed=0)
    >>> list(arch.params)[:2]
    ['model._mlp.0._linear.weight', 'model._mlp.0._linear.bias']
    >>> arch(np.zeros((3, 12))).shape
    (3, 4)
    """

    input_names = ("features",)

    def __init__(
        self, in_features: int, layer_sizes: Sequence[int], *, seed=None, dtype=np.float64
    ):
        super().__init__(dtype)
        self._children["model"] = MLP(
            in_features, layer_sizes, bias=True, activation="relu", seed=seed, dtype=self.dtype
        )

    @property
    def model(self) -> MLP:
        return self._children["model"]

    @property
    def in_features(self) -> int:
        return self.model.in_features

    @property
    def out_features(self) -> int:
        return self.model.out_features

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        return self.model.layer_sizes

    def _config(self) -> str:
        return f"in_features={self.in_features}, layer_sizes={list(self.layer_sizes)}"

    def forward(self, features: np.ndarray) -> tuple[np.ndarray, MLPCache]:
        """
        Parameters
        ----------
        features : ndarray, shape (B, I)

        Returns
        -------
        out : ndarray, shape (B, O)
        cache : MLPCache (the model's)
        """
        check_array("features", features, "B I", {"I": self.in_features}, self.dtype)
        return dense_arch_forward(self.params, features)

    def backward(self, d_out: np.ndarray, cache: MLPCache):
        """
        Parameters
        ----------
        d_out : ndarray, shape (B, O)
        cache : MLPCache from ``forward``

        Returns
        -------
        d_features : ndarray, shape (B, I)
        d_params : dict keyed like ``params``
        """
        sizes = {"B": cache.output.shape[0], "O": self.out_features}
        check_array("d_out", d_out, "B O", sizes, self.dtype)
        return dense_arch_backward(self.params, d_out, cache)

    def kink_distance(self, features: np.ndarray) -> float:
        return self.model.kink_distance(features)


class OverArchCache(NamedTuple):
    mlp: MLPCache  # model.0
    linear: LinearCache  # model.1


def over_arch_forward(params, x):
    """The textbook form of :class:`OverArch`: the ReLU MLP ``model.0``, then the Linear
    ``model.1`` with no activation. Returns ``(logits, OverArchCache)``."""
    hidden, mlp_cache = mlp_forward(sub_params(params, "model.0."), x)  # (B, layer_sizes[-2])
    logits, _ = linear_forward(sub_params(params, "model.1."), hidden)  # (B, O)
    return logits, OverArchCache(mlp_cache, LinearCache(hidden))


def over_arch_backward(params, d_out, cache: OverArchCache):
    """``(d_input, d_params)`` of :func:`over_arch_forward`: ``model.1``, then ``model.0``."""
    mlp_cache, linear_cache = cache
    d_hidden, d_linear = linear_backward(sub_params(params, "model.1."), d_out, linear_cache.input)
    d_x, d_mlp = mlp_backward(sub_params(params, "model.0."), d_hidden, mlp_cache)
    d_params = {**prefixed("model.0", d_mlp), **prefixed("model.1", d_linear)}
    return d_x, {k: d_params[k] for k in params}


class OverArch(Layer):
    """TorchRec's ``OverArch``: a ReLU MLP over all sizes but the last, then a plain Linear.

    Parameters
    ----------
    in_features : int
        I, the input size.
    layer_sizes : list of int
        At least two sizes; the last is the number of logits O.
    seed : int or Generator, optional
    dtype : float32 or float64

    Notes
    -----
    ``model.0`` = ``MLP(in_features, layer_sizes[:-1])`` (keys ``model.0._mlp.i._linear.*``)
    and ``model.1`` = ``Linear(layer_sizes[-2], layer_sizes[-1])`` (keys ``model.1.weight``,
    ``model.1.bias``). The logits carry no activation: ``out = model.1(model.0(x))``, i.e. an
    MLP with ``activation_on_last=False``. Backward runs ``model.1`` then ``model.0``. The
    cache is the MLP's and the logits Linear's input, which is the MLP's output: the same
    array, held once.

    Examples
    --------
    >>> arch = OverArch(6, [4, 3, 1], seed=0)
    >>> [k for k in arch.params if k.startswith("model.1")]
    ['model.1.weight', 'model.1.bias']
    >>> arch(np.zeros((2, 6))).shape
    (2, 1)
    """

    input_names = ("features",)

    def __init__(
        self, in_features: int, layer_sizes: Sequence[int], *, seed=None, dtype=np.float64
    ):
        super().__init__(dtype)
        sizes = check_layer_sizes("layer_sizes", layer_sizes)
        if len(sizes) < 2:
            raise ValueError(
                f"layer_sizes: OverArch needs at least two layer sizes (an MLP, then the "
                f"logits Linear), got {list(sizes)}"
            )
        rng = as_rng(seed)
        self._children["model.0"] = MLP(in_features, sizes[:-1], seed=rng, dtype=self.dtype)
        self._children["model.1"] = Linear(sizes[-2], sizes[-1], seed=rng, dtype=self.dtype)

    @property
    def mlp(self) -> MLP:
        return self._children["model.0"]

    @property
    def linear(self) -> Linear:
        return self._children["model.1"]

    @property
    def in_features(self) -> int:
        return self.mlp.in_features

    @property
    def out_features(self) -> int:
        return self.linear.out_features

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        return (*self.mlp.layer_sizes, self.out_features)

    def _config(self) -> str:
        return f"in_features={self.in_features}, layer_sizes={list(self.layer_sizes)}"

    def forward(self, features: np.ndarray) -> tuple[np.ndarray, OverArchCache]:
        """
        Parameters
        ----------
        features : ndarray, shape (B, I)

        Returns
        -------
        logits : ndarray, shape (B, O)
        cache : OverArchCache
        """
        check_array("features", features, "B I", {"I": self.in_features}, self.dtype)
        return over_arch_forward(self.params, features)

    def backward(self, d_out: np.ndarray, cache: OverArchCache):
        """
        Parameters
        ----------
        d_out : ndarray, shape (B, O)
        cache : OverArchCache from ``forward``

        Returns
        -------
        d_features : ndarray, shape (B, I)
        d_params : dict keyed like ``params``
        """
        sizes = {"B": cache.linear.input.shape[0], "O": self.out_features}
        check_array("d_out", d_out, "B O", sizes, self.dtype)
        return over_arch_backward(self.params, d_out, cache)

    def kink_distance(self, features: np.ndarray) -> float:
        return self.mlp.kink_distance(features)  # the logits Linear has no kink
