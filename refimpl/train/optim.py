"""Optimizers that update a model's parameter arrays in place, step for step as PyTorch's.

Each optimizer is bound to a dict of parameter arrays (a model's ``params``, or the part of it
it owns) and ``step(d_params)`` applies one update from a dict of gradients with the same keys.
The update rules, defaults and the order of floating-point operations are those of
``torch.optim.SGD``, ``torch.optim.Adagrad``, ``torch.optim.Adam`` and
``torchrec.optim.RowWiseAdagrad``, so a float64 run agrees with PyTorch's to the last few bits.
:class:`CombinedOptimizer` pairs optimizers with parameter groups (say Adam for the dense
layers, row-wise Adagrad for the embedding tables), as TorchRec's ``CombinedOptimizer`` does.

Row-sparse gradients
--------------------
An embedding table's gradient is a :class:`~refimpl.layers.rowsparse.RowSparse`: only the rows
of the ids in the batch. For such a gradient every optimizer applies its dense rule to those
rows alone, parameters and state alike, and leaves every other row exactly as it was; time and
memory follow the rows in the batch, never the table size. Where the dense rule would change a
row whose gradient is zero, the two differ:

- weight decay: the dense rule shrinks every row each step; here only the rows in the batch;
- SGD momentum: the dense rule keeps moving a row along its momentum buffer (and decays the
  buffer) on steps that do not touch it; here the row and its buffer wait;
- Adam: the dense rule decays both moments of absent rows and still moves them; here they wait.

Without weight decay, SGD without momentum, Adagrad and row-wise Adagrad give identical results
either way (a zero gradient row changes neither the row nor its accumulator). We follow the
touched-rows rule because it is what makes a sparse update cheap and what production embedding
optimizers do: TorchRec's fused (FBGEMM) embedding optimizers update a row and its state only
when the batch has a gradient for it (TorchRec's own ``RowWiseAdagrad`` warns that its dense
weight decay differs from FBGEMM's for exactly this reason), and ``torch.optim.SparseAdam``
decays Adam's moments of the rows present only. PyTorch's dense optimizers given a
``torch.sparse`` gradient are not one rule: Adagrad updates only the rows present (and refuses
weight decay), SGD refuses weight decay and keeps a momentum buffer that moves every row it has
ever seen, Adam refuses sparse gradients. The step counter (Adam's bias correction, Adagrad's
``lr_decay``) counts the steps in which the parameter had a gradient, touched rows or not, as
in ``torch.optim.SparseAdam`` and PyTorch's sparse Adagrad.

State
-----
``state_dict()`` is flat, ``"<param key>.<state name>"`` → array, with PyTorch's state names
(``step``, ``momentum_buffer``, ``sum``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``);
:class:`CombinedOptimizer` prefixes the group name. State is allocated when the optimizer is
built, so the keys never depend on how many steps were taken.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from refimpl.layers.base import FLOAT_DTYPES
from refimpl.layers.rowsparse import RowSparse


def _check_hyper(name: str, value, low: float = 0.0, below: float | None = None) -> float:
    """A real number in [low, below) (or >= low), else a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name}: expected a real number, got {value!r}")
    value = float(value)
    if not np.isfinite(value) or value < low or (below is not None and value >= below):
        bound = f"in [{low}, {below})" if below is not None else f">= {low}"
        raise ValueError(f"{name}: expected a number {bound}, got {value}")
    return value


def _shape(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


class Optimizer:
    """Base class: binds parameter arrays, validates gradients, routes dense and sparse updates.

    A subclass lists its per-parameter state in ``state_names``, allocates it in
    :meth:`_init_state` and writes its rule once in :meth:`_update`, on arrays that are either
    the whole parameter or the rows of a :class:`RowSparse` gradient.

    Parameters
    ----------
    params : mapping of str to ndarray
        The arrays to optimise, updated in place (a model's ``params`` or a subset of it).
    """

    state_names: tuple[str, ...] = ()

    def __init__(self, params: Mapping[str, np.ndarray]):
        if not isinstance(params, Mapping) or not params:
            raise ValueError(
                f"params: expected a non-empty dict of parameter arrays, got {params!r:.80}"
            )
        seen: dict[int, str] = {}
        for key, value in params.items():
            if not isinstance(value, np.ndarray) or value.dtype not in FLOAT_DTYPES:
                raise TypeError(
                    f"params[{key!r}]: expected a float32 or float64 NumPy array, got "
                    f"{getattr(value, 'dtype', type(value).__name__)}"
                )
            if id(value) in seen:
                raise ValueError(
                    f"params: {seen[id(value)]!r} and {key!r} are the same array; pass a shared "
                    f"parameter once, with its summed gradient"
                )
            seen[id(value)] = key
        self.params = dict(params)
        self.state = {key: self._init_state(p) for key, p in self.params.items()}

    # -- what a subclass writes -------------------------------------------------------------

    def _init_state(self, param: np.ndarray) -> dict:
        """The state of one parameter before any step: ``{"step": 0, ...arrays}``."""
        return {"step": 0}

    def _update(self, param, grad, state: dict, step: int) -> tuple[np.ndarray, dict]:
        """One step on ``param`` (the whole array or some of its rows): new param and state."""
        raise NotImplementedError

    # -- the public interface ---------------------------------------------------------------

    def step(self, d_params: Mapping[str, np.ndarray | RowSparse]) -> None:
        """Update the parameters in place from their gradients.

        ``d_params`` maps parameter keys to dense gradients (same shape and dtype as the
        parameter) or :class:`RowSparse` gradients (2-D parameters). A parameter missing from
        ``d_params`` is skipped, state and step count included, as PyTorch skips a parameter
        whose ``.grad`` is None. Every gradient is checked before anything changes.
        """
        self._check_gradients(d_params)
        self._apply(d_params)

    def state_dict(self) -> dict[str, np.ndarray]:
        """A copy of the state: ``{"<param key>.<state name>": array}``, steps as int64."""
        out = {}
        for key, state in self.state.items():
            for name, value in state.items():
                out[f"{key}.{name}"] = np.array(value, dtype=np.int64 if name == "step" else None)
        return out

    def load_state_dict(self, state_dict: Mapping[str, np.ndarray]) -> None:
        """Replace the state with a copy of ``state_dict`` (as :meth:`state_dict` returns it).

        Raises ``ValueError``/``TypeError`` naming every missing, unexpected or malformed entry;
        on error nothing is changed.
        """
        self.state = self._checked_state(state_dict)

    # -- machinery --------------------------------------------------------------------------

    def _check_gradients(self, d_params: Mapping) -> None:
        if not isinstance(d_params, Mapping):
            raise TypeError(f"d_params: expected a dict of gradients, got {type(d_params)}")
        unknown = sorted(set(d_params) - set(self.params))
        if unknown:
            raise ValueError(
                f"d_params: unexpected keys {unknown} (this optimizer owns {sorted(self.params)})"
            )
        for key, grad in d_params.items():
            param = self.params[key]
            if isinstance(grad, RowSparse):
                if param.ndim != 2 or grad.shape != param.shape:
                    raise ValueError(
                        f"d_params[{key!r}]: a RowSparse gradient of shape {_shape(grad.shape)} "
                        f"does not fit the parameter's shape {_shape(param.shape)}"
                    )
            elif not isinstance(grad, np.ndarray):
                raise TypeError(
                    f"d_params[{key!r}]: expected a NumPy array or RowSparse, got "
                    f"{type(grad).__name__}"
                )
            elif grad.shape != param.shape:
                raise ValueError(
                    f"d_params[{key!r}]: expected shape {_shape(param.shape)}, got "
                    f"{_shape(grad.shape)}"
                )
            if grad.dtype != param.dtype:
                raise TypeError(
                    f"d_params[{key!r}]: gradient dtype {grad.dtype} does not match the "
                    f"parameter's {param.dtype}"
                )

    def _apply(self, d_params: Mapping) -> None:
        for key, grad in d_params.items():
            param, state = self.params[key], self.state[key]
            state["step"] += 1
            arrays = {name: state[name] for name in self.state_names}
            if isinstance(grad, RowSparse):
                rows = grad.indices  # only these rows of the parameter and its state change
                new_rows, new_state = self._update(
                    param[rows], grad.values, {n: a[rows] for n, a in arrays.items()}, state["step"]
                )
                param[rows] = new_rows
                for name, value in new_state.items():
                    state[name][rows] = value
            else:
                new_param, new_state = self._update(param, grad, arrays, state["step"])
                param[...] = new_param
                for name, value in new_state.items():
                    state[name][...] = value

    def _checked_state(self, state_dict: Mapping) -> dict:
        """Validated copies of ``state_dict``'s arrays, keyed like ``self.state``."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict: expected a dict of arrays, got {type(state_dict)}")
        expected = {}
        for key, param in self.params.items():
            expected[f"{key}.step"] = (key, "step", (), None)
            for name in self.state_names:
                shape = self.state[key][name].shape
                expected[f"{key}.{name}"] = (key, name, shape, param.dtype)
        problems = []
        missing = sorted(set(expected) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(expected))
        if missing:
            problems.append(f"missing keys {missing}")
        if unexpected:
            problems.append(f"unexpected keys {unexpected}")
        new_state: dict = {key: {} for key in self.params}
        for full_key, (key, name, shape, dtype) in expected.items():
            if full_key not in state_dict:
                continue
            value = np.asarray(state_dict[full_key])
            if name == "step":
                integral = value.shape == () and (
                    value.dtype.kind in "iu" or (value.dtype.kind == "f" and np.isfinite(value))
                )
                if not integral or value < 0 or value != np.floor(value):
                    problems.append(f"{full_key!r}: expected an integer step >= 0, got {value!r}")
                    continue
                new_state[key][name] = int(value)
            elif value.shape != shape:
                problems.append(
                    f"{full_key!r}: expected shape {_shape(shape)}, got {_shape(value.shape)}"
                )
            elif value.dtype != dtype:
                problems.append(
                    f"{full_key!r}: expected dtype {dtype} (the parameter's), got {value.dtype}"
                )
            else:
                new_state[key][name] = value.copy()
        if problems:
            raise ValueError(f"state_dict: {'; '.join(problems)}")
        return new_state


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, as ``torch.optim.SGD``.

    Parameters
    ----------
    params : mapping of str to ndarray
        The arrays to optimise, updated in place.
    lr : float, default 1e-3
    momentum : float, default 0
    dampening : float, default 0
    weight_decay : float, default 0
        L2 penalty, added to the gradient.
    nesterov : bool, default False
        Needs ``momentum > 0`` and ``dampening == 0``.

    Notes
    -----
    With ``g = dθ + λ θ`` (λ = weight_decay)::

        b ← g                                   on the first step
        b ← μ b + (1 − dampening) g             afterwards
        θ ← θ − lr · (g + μ b  if nesterov  else  b)      (θ − lr · g when μ = 0)

    Examples
    --------
    >>> w = np.array([1.0, -2.0])
    >>> opt = SGD({"w": w}, lr=0.5, momentum=0.9)
    >>> opt.step({"w": np.array([1.0, 1.0])}); w
    array([ 0.5, -2.5])
    >>> opt.step({"w": np.array([1.0, 1.0])}); w     # buffer 0.9·1 + 1 = 1.9
    array([-0.45, -3.45])
    """

    def __init__(
        self,
        params: Mapping[str, np.ndarray],
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ):
        self.lr = _check_hyper("lr", lr)
        self.momentum = _check_hyper("momentum", momentum)
        self.dampening = _check_hyper("dampening", dampening, low=-np.inf)
        self.weight_decay = _check_hyper("weight_decay", weight_decay)
        if nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov: Nesterov momentum needs momentum > 0 and dampening = 0")
        self.nesterov = bool(nesterov)
        self.state_names = ("momentum_buffer",) if self.momentum != 0 else ()
        super().__init__(params)

    def _init_state(self, param):
        state = {"step": 0}
        if self.momentum != 0:
            state["momentum_buffer"] = np.zeros_like(param)
        return state

    def _update(self, param, grad, state, step):
        if self.weight_decay != 0:
            grad = grad + self.weight_decay * param
        new_state = {}
        if self.momentum != 0:
            if step == 1:
                # PyTorch starts the buffer at the first gradient; rows a RowSparse gradient
                # first touches later start from the zero buffer allocated here.
                buf = grad.copy()
            else:
                buf = state["momentum_buffer"] * self.momentum + (1 - self.dampening) * grad
            new_state["momentum_buffer"] = buf
            grad = grad + self.momentum * buf if self.nesterov else buf
        return param + -self.lr * grad, new_state


class Adagrad(Optimizer):
    """Adagrad, as ``torch.optim.Adagrad``: one accumulated squared gradient per element.

    Parameters
    ----------
    params : mapping of str to ndarray
        The arrays to optimise, updated in place.
    lr : float, default 1e-2
    lr_decay : float, default 0
    weight_decay : float, default 0
        L2 penalty, added to the gradient.
    initial_accumulator_value : float, default 0
    eps : float, default 1e-10
        Added to the square root of the accumulator (outside it).

    Notes
    -----
    At step t (counted from 1), with ``g = dθ + λ θ``::

        s ← s + g ⊙ g
        θ ← θ − lr / (1 + (t − 1) · lr_decay) · g / (√s + eps)

    Examples
    --------
    >>> w = np.array([1.0, 1.0])
    >>> Adagrad({"w": w}, lr=0.1).step({"w": np.array([2.0, -0.5])}); w   # ±lr on step 1
    array([0.9, 1.1])
    """

    state_names = ("sum",)

    def __init__(
        self,
        params: Mapping[str, np.ndarray],
        lr: float = 1e-2,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
    ):
        self.lr = _check_hyper("lr", lr)
        self.lr_decay = _check_hyper("lr_decay", lr_decay)
        self.weight_decay = _check_hyper("weight_decay", weight_decay)
        self.initial_accumulator_value = _check_hyper(
            "initial_accumulator_value", initial_accumulator_value
        )
        self.eps = _check_hyper("eps", eps)
        super().__init__(params)

    def _init_state(self, param):
        return {"step": 0, "sum": np.full_like(param, self.initial_accumulator_value)}

    def _update(self, param, grad, state, step):
        if self.weight_decay != 0:
            grad = grad + self.weight_decay * param
        clr = self.lr / (1 + (step - 1) * self.lr_decay)
        total = state["sum"] + grad * grad
        std = np.sqrt(total) + self.eps
        return param + -clr * grad / std, {"sum": total}  # PyTorch's order: (−clr·g) / std


class RowWiseAdagrad(Adagrad):
    """Row-wise Adagrad for embedding tables, as ``torchrec.optim.RowWiseAdagrad``.

    One accumulator per row — the running sum of the row's *mean* squared gradient — so the
    state is (N, 1) instead of (N, D) and every element of a row moves with the same step size.
    Same arguments and defaults as :class:`Adagrad`; parameters must be 2-D (N, D).

    Notes
    -----
    At step t, with ``g = dθ + λ θ`` and rows n::

        s_n ← s_n + (1/D) Σ_d g_nd²
        θ_n ← θ_n − lr / (1 + (t − 1) · lr_decay) · g_n / (√s_n + eps)

    Examples
    --------
    >>> table = np.ones((3, 2))
    >>> opt = RowWiseAdagrad({"t": table}, lr=0.1)
    >>> opt.step({"t": RowSparse(np.array([1]), np.array([[3.0, 4.0]]), num_rows=3)})
    >>> table        # row 1: g / √((9 + 16)/2)
    array([[1.        , 1.        ],
           [0.91514719, 0.88686292],
           [1.        , 1.        ]])
    >>> opt.state["t"]["sum"].ravel()
    array([ 0. , 12.5,  0. ])
    """

    def _init_state(self, param):
        if param.ndim != 2:
            raise ValueError(
                f"params: RowWiseAdagrad needs 2-D (N, D) embedding tables, got shape "
                f"{_shape(param.shape)}"
            )
        return {
            "step": 0,
            "sum": np.full((param.shape[0], 1), self.initial_accumulator_value, param.dtype),
        }

    def _update(self, param, grad, state, step):
        if self.weight_decay != 0:
            grad = grad + self.weight_decay * param
        total = state["sum"] + (grad**2).mean(axis=1, keepdims=True)  # (rows, 1)
        std = np.sqrt(total) + self.eps  # (rows, 1)
        clr = self.lr / (1 + (step - 1) * self.lr_decay)
        return param + -clr * grad / std, {"sum": total}


class Adam(Optimizer):
    """Adam with bias correction, as ``torch.optim.Adam`` (L2 weight decay, optional AMSGrad).

    Parameters
    ----------
    params : mapping of str to ndarray
        The arrays to optimise, updated in place.
    lr : float, default 1e-3
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8
        Added after the bias correction of the second moment, as PyTorch does.
    weight_decay : float, default 0
        L2 penalty, added to the gradient (Adam's, not AdamW's decoupled decay).
    amsgrad : bool, default False
        Normalise by the largest second moment seen so far.

    Notes
    -----
    At step t, with ``g = dθ + λ θ``::

        m ← β₁ m + (1 − β₁) g,      v ← β₂ v + (1 − β₂) g ⊙ g     (v̂ ← max(v̂, v) with AMSGrad)
        θ ← θ − lr / (1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + eps)

    ``torch.optim.SparseAdam`` puts eps before the bias correction (``√v + eps``), so it is
    not this rule when eps matters.

    Examples
    --------
    >>> w = np.array([1.0, 1.0])
    >>> Adam({"w": w}, lr=0.1).step({"w": np.array([3.0, -1e-3])}); w   # ≈ ±lr on step 1
    array([0.9     , 1.099999])
    """

    def __init__(
        self,
        params: Mapping[str, np.ndarray],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
    ):
        self.lr = _check_hyper("lr", lr)
        if not isinstance(betas, tuple | list) or len(betas) != 2:
            raise ValueError(f"betas: expected a pair (beta1, beta2), got {betas!r}")
        self.betas = (
            _check_hyper("betas[0]", betas[0], below=1.0),
            _check_hyper("betas[1]", betas[1], below=1.0),
        )
        self.eps = _check_hyper("eps", eps)
        self.weight_decay = _check_hyper("weight_decay", weight_decay)
        self.amsgrad = bool(amsgrad)
        self.state_names = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ())
        super().__init__(params)

    def _init_state(self, param):
        state = {"step": 0, "exp_avg": np.zeros_like(param), "exp_avg_sq": np.zeros_like(param)}
        if self.amsgrad:
            state["max_exp_avg_sq"] = np.zeros_like(param)
        return state

    def _update(self, param, grad, state, step):
        beta1, beta2 = self.betas
        if self.weight_decay != 0:
            grad = grad + self.weight_decay * param
        exp_avg = _lerp(state["exp_avg"], grad, 1 - beta1)
        exp_avg_sq = state["exp_avg_sq"] * beta2 + (1 - beta2) * grad * grad
        new_state = {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
        bias_correction1 = 1 - beta1 ** float(step)
        bias_correction2_sqrt = (1 - beta2 ** float(step)) ** 0.5
        step_size = self.lr / bias_correction1
        if self.amsgrad:
            exp_avg_sq = np.maximum(state["max_exp_avg_sq"], exp_avg_sq)
            new_state["max_exp_avg_sq"] = exp_avg_sq
        denom = np.sqrt(exp_avg_sq) / bias_correction2_sqrt + self.eps
        return param + -step_size * exp_avg / denom, new_state


def _lerp(start, end, weight: float):
    """``start + weight · (end − start)``, computed from the nearer end as ``torch.lerp`` does."""
    if abs(weight) < 0.5:
        return start + weight * (end - start)
    return end - (end - start) * (1 - weight)


class CombinedOptimizer:
    """Several optimizers, each owning a group of parameters, stepped as one.

    As TorchRec's ``CombinedOptimizer``: typically one for the dense layers and one for the
    embedding tables. ``step(d_params)`` takes the model's whole gradient dict and hands each
    optimizer its keys; a gradient for a key no group owns is an error (a parameter that would
    silently never train). The state dict prefixes each group's keys with its name.

    Parameters
    ----------
    optimizers : mapping of str to Optimizer
        Group name (no dots) → optimizer; no parameter may belong to two groups.

    Examples
    --------
    >>> params = {"table": np.zeros((4, 2)), "weight": np.ones(3)}
    >>> opt = CombinedOptimizer({
    ...     "dense": Adam({"weight": params["weight"]}, lr=0.1),
    ...     "sparse": RowWiseAdagrad({"table": params["table"]}, lr=0.1),
    ... })
    >>> opt.step({"weight": np.ones(3), "table": RowSparse(np.array([2]), np.ones((1, 2)), 4)})
    >>> params["table"][2], params["weight"]
    (array([-0.1, -0.1]), array([0.9, 0.9, 0.9]))
    >>> sorted(opt.state_dict())[:3]
    ['dense.weight.exp_avg', 'dense.weight.exp_avg_sq', 'dense.weight.step']
    """

    def __init__(self, optimizers: Mapping[str, Optimizer]):
        if not isinstance(optimizers, Mapping) or not optimizers:
            raise ValueError("optimizers: expected a non-empty dict of group name → optimizer")
        owner: dict[str, str] = {}
        arrays: dict[int, str] = {}
        for group, opt in optimizers.items():
            if not isinstance(group, str) or not group or "." in group:
                raise ValueError(
                    f"optimizers: group names must be non-empty without '.', {group!r}"
                )
            if not isinstance(opt, Optimizer):
                raise TypeError(f"optimizers[{group!r}]: expected an Optimizer, got {type(opt)}")
            for key, value in opt.params.items():
                if key in owner or id(value) in arrays:
                    other = owner.get(key) or arrays[id(value)]
                    raise ValueError(
                        f"optimizers: parameter {key!r} of group {group!r} is also optimised "
                        f"by {other!r}"
                    )
                owner[key] = group
                arrays[id(value)] = group
        self.optimizers = dict(optimizers)
        self._owner = owner

    @property
    def params(self) -> dict[str, np.ndarray]:
        """Every parameter of every group."""
        return {k: v for opt in self.optimizers.values() for k, v in opt.params.items()}

    def step(self, d_params: Mapping[str, np.ndarray | RowSparse]) -> None:
        """Hand each group its gradients and step them all (every gradient checked first)."""
        if not isinstance(d_params, Mapping):
            raise TypeError(f"d_params: expected a dict of gradients, got {type(d_params)}")
        unknown = sorted(set(d_params) - set(self._owner))
        if unknown:
            raise ValueError(f"d_params: no optimizer group owns {unknown}")
        routed = {
            group: {k: g for k, g in d_params.items() if self._owner[k] == group}
            for group in self.optimizers
        }
        for group, opt in self.optimizers.items():
            opt._check_gradients(routed[group])
        for group, opt in self.optimizers.items():
            opt._apply(routed[group])

    def state_dict(self) -> dict[str, np.ndarray]:
        """``{"<group>.<param key>.<state name>": array}`` over every group."""
        return {
            f"{group}.{key}": value
            for group, opt in self.optimizers.items()
            for key, value in opt.state_dict().items()
        }

    def load_state_dict(self, state_dict: Mapping[str, np.ndarray]) -> None:
        """Load every group's state; on any error (reported for all groups) nothing changes."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict: expected a dict of arrays, got {type(state_dict)}")
        problems, loaded = [], {}
        unexpected = sorted(k for k in state_dict if k.split(".", 1)[0] not in self.optimizers)
        if unexpected:
            problems.append(f"keys of no group {unexpected}")
        for group, opt in self.optimizers.items():
            prefix = f"{group}."
            part = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
            try:
                loaded[group] = opt._checked_state(part)
            except (ValueError, TypeError) as err:
                problems.append(f"group {group!r}: {err}")
        if problems:
            raise ValueError("state_dict: " + "; ".join(problems))
        for group, opt in self.optimizers.items():
            opt.state = loaded[group]
