"""The layer contract every refimpl layer keeps, and the input checks at its public boundary.

A layer owns a dict of parameters named and shaped like its TorchRec module's ``state_dict()``.
``forward(*inputs)`` returns ``(out, cache)`` and stores nothing on the layer;
``backward(d_out, cache)`` returns one gradient per input, in order, then a dict of parameter
gradients keyed like ``params``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def as_rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    """A NumPy Generator from a seed, or the Generator itself."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def as_dtype(dtype) -> np.dtype:
    """float32 or float64, else a TypeError."""
    dt = np.dtype(dtype)
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"dtype: expected float32 or float64, got {dt}")
    return dt


def check_positive_int(name: str, value, minimum: int = 1) -> int:
    """An int >= minimum (bools refused), else a ValueError/TypeError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    return int(value)


def _fmt(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def check_array(
    name: str, value, letters: str, sizes: dict[str, int], dtype: np.dtype | None = None
) -> np.ndarray:
    """Check that ``value`` is a floating array whose shape matches ``letters``.

    ``letters`` spells the expected shape, one letter (or integer) per axis, e.g. ``"B F D"``.
    A letter already in ``sizes`` must match; a new letter is bound from this array (so later
    arrays must agree with it). ``sizes`` is updated in place. If ``dtype`` is given the array
    must have that dtype (the layer's parameters' dtype).

    >>> sizes = {"F": 2}
    >>> check_array("sparse", np.zeros((3, 2, 4)), "B F D", sizes).shape
    (3, 2, 4)
    >>> sizes
    {'F': 2, 'B': 3, 'D': 4}
    >>> check_array("dense", np.zeros((3, 5)), "B D", sizes)
    Traceback (most recent call last):
    ...
    ValueError: dense: expected shape (B, D) = (3, 4), got (3, 5)
    """
    axes = letters.split()
    if not isinstance(value, np.ndarray):
        raise TypeError(
            f"{name}: expected a NumPy array of shape ({', '.join(axes)}), "
            f"got {type(value).__name__}"
        )
    if value.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name}: expected a float32 or float64 array of shape ({', '.join(axes)}), "
            f"got dtype {value.dtype}"
        )
    if dtype is not None and value.dtype != dtype:
        raise TypeError(
            f"{name}: dtype {value.dtype} does not match the layer's {dtype} parameters; "
            f"cast the input or build the layer with dtype={value.dtype}"
        )
    if value.ndim != len(axes):
        raise ValueError(
            f"{name}: expected a {len(axes)}-D array of shape ({', '.join(axes)}), "
            f"got a {value.ndim}-D array of shape {_fmt(value.shape)}"
        )
    expected = []
    for axis, got in zip(axes, value.shape, strict=True):
        if axis.isdigit():
            expected.append(int(axis))
        elif axis in sizes:
            expected.append(sizes[axis])
        else:
            expected.append(got)
    if tuple(expected) != value.shape:
        raise ValueError(
            f"{name}: expected shape ({', '.join(axes)}) = {_fmt(expected)}, "
            f"got {_fmt(value.shape)}"
        )
    for axis, got in zip(axes, value.shape, strict=True):
        if not axis.isdigit():
            sizes.setdefault(axis, got)
    return value


def combine_features(
    dense: np.ndarray, sparse: np.ndarray, num_sparse_features: int, dtype: np.dtype | None = None
) -> tuple[np.ndarray, dict[str, int]]:
    """Validate an interaction's two inputs and stack them, dense first: ``C = [dense; sparse]``.

    ``dense`` must be (B, D) and ``sparse`` (B, F, D) with F = ``num_sparse_features``, both of
    ``dtype`` (the layer's parameters') or, when it is None, of one floating dtype.

    Returns
    -------
    combined : ndarray, shape (B, F+1, D)
    sizes : dict
        The letters B, F, D bound to their sizes.

    >>> combined, sizes = combine_features(np.zeros((3, 4)), np.ones((3, 2, 4)), 2)
    >>> combined.shape, sizes
    ((3, 3, 4), {'F': 2, 'B': 3, 'D': 4})
    """
    sizes = {"F": num_sparse_features}
    check_array("dense", dense, "B D", sizes, dtype)
    check_array("sparse", sparse, "B F D", sizes, dtype)
    if sparse.dtype != dense.dtype:
        raise TypeError(f"sparse: dtype {sparse.dtype} differs from dense's {dense.dtype}")
    return np.concatenate([dense[:, None, :], sparse], axis=1), sizes  # (B, F+1, D)


def prefixed(prefix: str, grads: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A child's parameter gradients under the child's name, as ``Layer.params`` keys them."""
    return {f"{prefix}.{k}": v for k, v in grads.items()}


def sub_params(params: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The entries of ``params`` under ``prefix``, the prefix removed (a child's own keys).

    >>> sub_params({"model.0.weight": 1, "model.1.weight": 2}, "model.0.")
    {'weight': 1}
    """
    return {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}


class Layer:
    """Base class: parameters as a dict, state-dict loading, and the call convention.

    Subclasses set ``self._params`` (a dict of arrays, TorchRec key order) or ``self._children``
    (an ordered dict of name -> sub-layer, whose keys prefix the children's parameter names),
    and implement ``forward`` and ``backward``.
    """

    _params: dict[str, np.ndarray]
    _children: dict[str, Layer]
    dtype: np.dtype

    def __init__(self, dtype=np.float64):
        self.dtype = as_dtype(dtype)
        self._params = {}
        self._children = {}

    @property
    def params(self) -> dict[str, np.ndarray]:
        """Parameters keyed and shaped like TorchRec's ``state_dict()``.

        A new dict each time, but the arrays are the layer's own: writing into them changes the
        layer.
        """
        out = dict(self._params)
        for prefix, child in self._children.items():
            out.update({f"{prefix}.{k}": v for k, v in child.params.items()})
        return out

    def state_dict(self) -> dict[str, np.ndarray]:
        """A copy of ``params``."""
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, mapping: Mapping[str, object]) -> None:
        """Copy arrays in from ``mapping`` (e.g. a TorchRec ``state_dict()`` as NumPy).

        Every key must be present with exactly the right shape; otherwise a ValueError lists
        every missing key, unexpected key and wrong shape, and nothing is changed.
        """
        params = self.params
        arrays = {k: np.asarray(v) for k, v in mapping.items()}
        problems = []
        missing = [k for k in params if k not in arrays]
        unexpected = [k for k in arrays if k not in params]
        if missing:
            problems.append(f"missing keys {missing}")
        if unexpected:
            problems.append(f"unexpected keys {unexpected}")
        for k, v in arrays.items():
            if k in params and v.shape != params[k].shape:
                problems.append(f"{k}: expected shape {_fmt(params[k].shape)}, got {_fmt(v.shape)}")
            elif k in params and not np.issubdtype(v.dtype, np.number):
                problems.append(f"{k}: expected a numeric array, got dtype {v.dtype}")
        if problems:
            raise ValueError(f"load_state_dict into {type(self).__name__}: " + "; ".join(problems))
        for k, v in arrays.items():
            np.copyto(params[k], v, casting="unsafe")

    def zero_param_grads(self) -> dict[str, np.ndarray]:
        """Zeros shaped like ``params``: the starting point for accumulating gradients."""
        return {k: np.zeros_like(v) for k, v in self.params.items()}

    def kink_distance(self, *inputs: np.ndarray) -> float:
        """Smallest |pre-activation| at a non-differentiable point (ReLU), or inf if none.

        Finite differences are meaningless within a step of a kink; ``gradcheck`` refuses such
        points. Layers without kinks keep this default.
        """
        return float("inf")

    def __call__(self, *inputs: np.ndarray) -> np.ndarray:
        return self.forward(*inputs)[0]

    def forward(self, *inputs: np.ndarray):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, d_out: np.ndarray, cache):  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {_fmt(v.shape)}" for k, v in self.params.items())
        return f"{type(self).__name__}({self._config()}){' {' + shapes + '}' if shapes else ''}"

    def _config(self) -> str:
        return ""


def xavier_normal(rng: np.random.Generator, shape: tuple[int, ...], dtype) -> np.ndarray:
    """torch.nn.init.xavier_normal_: N(0, 2 / (fan_in + fan_out)).

    torch's fan rule: fan_in = size(1) * prod(size(2:)), fan_out = size(0) * prod(size(2:)).
    """
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    fan_in, fan_out = shape[1] * receptive, shape[0] * receptive
    std = np.sqrt(2.0 / (fan_in + fan_out))
    return (rng.standard_normal(shape) * std).astype(dtype)


def linear_uniform(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, dtype):
    """nn.Linear's default initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def xavier_uniform(rng: np.random.Generator, shape: tuple[int, int], dtype) -> np.ndarray:
    """torch.nn.init.xavier_uniform_ on a matrix: U(±√(6 / (fan_in + fan_out))).

    fan_in = size(1), fan_out = size(0) (torch's rule for a 2-D tensor).
    """
    bound = np.sqrt(6.0 / (shape[0] + shape[1]))
    return rng.uniform(-bound, bound, size=shape).astype(dtype)
