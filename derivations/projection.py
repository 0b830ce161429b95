"""The projection interaction and the MLPs it is built from, derived symbolically at tiny sizes.

``InteractionProjectionArch`` (TorchRec's, DESIGN §4) at the seed's B=2, D=4, F=2, so N =
(F+1)·D = 12, with branch 1 ending in 8 = F1·D (F1 = 2) and branch 2 in 12 = D·F2 (F2 = 3);
each branch is a ``DenseArch`` with one linear layer, or with two (hidden size 3). Also ``MLP``,
``DenseArch`` and ``OverArch`` on their own, and a single ``Linear`` (``torch.nn.Linear``, with
or without bias: ``dW = Gᵀ x``, ``db = Σ_b G``, ``dx = G W``). For each, SymPy builds the
forward, takes the gradient of ``L = Σ G ⊙ out`` for a symbolic upstream gradient ``G``, and
proves that the closed forms refimpl uses equal it exactly:

- per sample ``dY = dI Zᵀ`` and ``dZ = Yᵀ dI`` (``dI`` the interaction part of ``G``), then
  the reshapes undone (row-major both ways: ``dy = dY.reshape(F1·D)``, ``dz = dZ.reshape(D·F2)``);
- through every layer of each branch ``dz = da ⊙ g'(z)``, ``dW = dzᵀ x``, ``db = Σ_b dz``,
  ``dx = dz W``, with ReLU's ``g'(z) = [z > 0]``;
- the two branches' input gradients added (both read the same ``c``), ``c`` reshaped back to
  (B, F+1, D), and row 0 added to the dense passthrough's gradient.

How (and what is symbolic)
--------------------------
Everything is a symbol: inputs, weights, biases and ``G``, so each proof is an identity, not a
check at a point. Three devices keep it to about a second:

1. *Named pre-activations.* Each ReLU's argument is an undefined function ``z_k(ε)`` whose
   definition (an expression in the layer's inputs and weights) is kept aside, so expressions
   stay small; SymPy's chain rule runs through it as through any function.
2. *One derivative for the whole gradient.* Every leaf ``s`` (an input or parameter element)
   enters as ``s + ε·δs``. Then ``dL/dε`` at ε = 0 is ``Σ_s (∂L/∂s) δs``, a single
   ``sympy.diff``, and the coefficient of ``δs`` is ``∂L/∂s``: the whole gradient at once.
3. *Exact comparison as polynomials.* With each ``ReLU(z_k)`` and ``Step(z_k)`` taken as
   a free variable, the gradient and the closed form are polynomials with integer
   coefficients; they are compared exactly, term by term (:class:`Poly`). Equality as free
   polynomials implies equality at the true values of those atoms, for every activation pattern
   at once.

The numeric witness (:func:`symbolic_witness`) lambdifies the symbolic forward and directional
derivative, evaluates it along each basis direction (``δ`` = one-hot), which gives every input
and parameter gradient, and compares with refimpl's ``backward`` on the same numbers.

ReLU's derivative
-----------------
PyTorch takes ReLU'(0) = 0. Here :class:`ReLU` is ``max(z, 0)`` and its derivative is
:class:`Step`, equal to SymPy's ``Heaviside(z, 0)``: 0 at z = 0. The same convention comes out
of differentiating the ``Piecewise((z, z > 0), (0, True))`` form. ``sympy.Max(z, 0)`` would
instead differentiate to ``Heaviside(z)``, whose value at 0 is SymPy's default 1/2 — the
average of the two one-sided slopes, which is also what a central difference across the kink
measures (see :func:`relu_convention`).

>>> relu_convention()["ReLU'(0)"], relu_convention()["Max'(0)"]
(0, 1/2)
>>> prove_bmm_backward()
True
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import sympy as sp

KINDS = ("Linear", "MLP", "DenseArch", "OverArch", "InteractionProjectionArch")
MISTAKES = ("dZ_transposed", "transpose_for_reshape", "no_relu_mask")
LINEAR_MISTAKES = ("bias_not_summed",)  # in a linear layer's own backward, any kind


# ------------------------------------------------------------------------------------- ReLU


class ReLU(sp.Function):
    """``max(z, 0)``; SymPy differentiates it to :class:`Step`, i.e. ReLU'(0) = 0 as PyTorch.

    >>> z = sp.Symbol("z")
    >>> ReLU(z).diff(z), ReLU(-2), ReLU(sp.Rational(3, 2))
    (Step(z), 0, 3/2)
    >>> ReLU(z).rewrite(sp.Piecewise)
    Piecewise((z, z > 0), (0, True))
    """

    @classmethod
    def eval(cls, z):
        if z.is_number:
            return sp.Max(z, 0)
        return None

    def fdiff(self, argindex=1):
        return Step(self.args[0])

    def _eval_rewrite_as_Piecewise(self, z, **kwargs):
        return sp.Piecewise((z, z > 0), (0, True))


class Step(sp.Function):
    """``Heaviside(z, 0)``: 1 for z > 0, else 0 — ReLU's derivative with PyTorch's value at 0.

    A class of its own so that SymPy leaves a symbolic argument alone (``Heaviside`` inspects
    its argument's sign and imaginary part, slow on large expressions).

    >>> Step(0), Step(sp.Rational(1, 3)), Step(-1)
    (0, 1, 0)
    >>> Step(sp.Symbol("z")).rewrite(sp.Heaviside)
    Heaviside(z, 0)
    """

    @classmethod
    def eval(cls, z):
        if z.is_number:
            return sp.Heaviside(z, 0)
        return None

    def _eval_rewrite_as_Heaviside(self, z, **kwargs):
        return sp.Heaviside(z, 0)

    def _eval_rewrite_as_Piecewise(self, z, **kwargs):
        return sp.Piecewise((1, z > 0), (0, True))


_NUMPY_FUNCTIONS = {
    "ReLU": lambda z: np.maximum(z, 0.0),
    "Step": lambda z: np.heaviside(z, 0.0),
}


def relu_convention() -> dict[str, sp.Expr]:
    """ReLU's derivative at the kink, four ways.

    ``"ReLU'(0)"`` (our :class:`ReLU`), ``"Heaviside(0, 0)"`` and ``"Piecewise'(0)"`` (SymPy's
    derivative of ``Piecewise((z, z > 0), (0, True))``) are all 0, PyTorch's convention.
    ``"Max'(0)"`` (SymPy's derivative of ``Max(z, 0)``, i.e. ``Heaviside(0)``) and
    ``"central difference at 0"`` (``(ReLU(h) − ReLU(−h)) / 2h``, any h > 0) are 1/2.

    >>> relu_convention()["Piecewise'(0)"], relu_convention()["central difference at 0"]
    (0, 1/2)
    """
    z = sp.Symbol("z")
    h = sp.Symbol("h", positive=True)
    piecewise = sp.diff(ReLU(z).rewrite(sp.Piecewise), z)
    return {
        "ReLU'(z)": ReLU(z).diff(z),
        "ReLU'(0)": ReLU(z).diff(z).subs(z, 0),
        "Heaviside(0, 0)": sp.Heaviside(0, 0),
        "Piecewise'(0)": piecewise.subs(z, 0),
        "Max'(0)": sp.diff(sp.Max(z, 0), z).subs(z, 0),
        "central difference at 0": sp.simplify(
            ((ReLU(h) - ReLU(-h)) / (2 * h)).rewrite(sp.Piecewise)
        ),
    }


# -------------------------------------------------------- the bmm and the reshapes, one sample


class BmmExample(NamedTuple):
    """One sample's projection step with symbolic branch outputs (all SymPy matrices)."""

    y: sp.Matrix  # branch 1 output, (1, F1·D)
    z: sp.Matrix  # branch 2 output, (1, D·F2)
    Y: sp.Matrix  # y reshaped, (F1, D)
    Z: sp.Matrix  # z reshaped (not transposed), (D, F2)
    I: sp.Matrix  # Y Z, (F1, F2)
    dI: sp.Matrix  # the upstream gradient of I, (F1, F2)
    dY: sp.Matrix  # dI Zᵀ, (F1, D)
    dZ: sp.Matrix  # Yᵀ dI, (D, F2)
    dy: sp.Matrix  # ∂L/∂y by sympy.diff, (1, F1·D)
    dz: sp.Matrix  # ∂L/∂z by sympy.diff, (1, D·F2)


def bmm_example(F1: int = 2, D: int = 4, F2: int = 3) -> BmmExample:
    """The bmm at one sample: ``I = Y Z`` from flat branch outputs, and its backward.

    ``y_i`` and ``z_j`` are symbols; ``Y = y.reshape(F1, D)`` and ``Z = z.reshape(D, F2)``
    row-major, as torch and NumPy reshape. ``dy`` and ``dz`` are differentiated directly from
    ``L = Σ dI ⊙ I``; ``dY`` and ``dZ`` are the closed forms.

    >>> ex = bmm_example()
    >>> ex.Y.shape, ex.Z.shape, ex.I.shape
    ((2, 4), (4, 3), (2, 3))
    >>> ex.Z[0, :]                     # Z's first row is z_0, z_1, z_2: row-major
    Matrix([[z_0, z_1, z_2]])
    """
    y = sp.Matrix(1, F1 * D, lambda _, i: sp.Symbol(f"y_{i}"))
    z = sp.Matrix(1, D * F2, lambda _, j: sp.Symbol(f"z_{j}"))
    Y, Z = y.reshape(F1, D), z.reshape(D, F2)  # sympy's reshape is row-major too
    interactions = Y * Z
    d_interactions = sp.Matrix(F1, F2, lambda i, j: sp.Symbol(f"g_{i}{j}"))
    loss = sum(d_interactions.multiply_elementwise(interactions))
    dy = sp.Matrix(1, F1 * D, lambda _, i: sp.diff(loss, y[i]))
    dz = sp.Matrix(1, D * F2, lambda _, j: sp.diff(loss, z[j]))
    dY = d_interactions * Z.T  # (F1, D)
    dZ = Y.T * d_interactions  # (D, F2)
    return BmmExample(y, z, Y, Z, interactions, d_interactions, dY, dZ, dy, dz)


def prove_bmm_backward(F1: int = 2, D: int = 4, F2: int = 3) -> bool:
    """``∂L/∂y = (dI Zᵀ).reshape(F1·D)`` and ``∂L/∂z = (Yᵀ dI).reshape(D·F2)``, exactly.

    All of ``y``, ``z`` and ``dI`` symbolic; the differences expand to zero.

    >>> prove_bmm_backward(), prove_bmm_backward(3, 2, 5)
    (True, True)
    """
    ex = bmm_example(F1, D, F2)
    undone_y = ex.dY.reshape(1, F1 * D)  # the reshape undone: row-major both ways
    undone_z = ex.dZ.reshape(1, D * F2)
    return all(sp.expand(e) == 0 for e in [*(ex.dy - undone_y), *(ex.dz - undone_z)])


def reshape_vs_transpose(D: int = 4, F2: int = 3) -> tuple[sp.Matrix, sp.Matrix]:
    """Branch 2's flat output ``z`` as TorchRec reads it, and as a transpose would.

    ``z.reshape(D, F2)`` puts ``z[k·F2 + j]`` at (k, j); ``z.reshape(F2, D)ᵀ`` puts
    ``z[j·D + k]`` there. Same shape, different matrices (unless D = 1 or F2 = 1).

    >>> R, T = reshape_vs_transpose()
    >>> R[0, :], T[0, :]
    (Matrix([[z_0, z_1, z_2]]), Matrix([[z_0, z_4, z_8]]))
    """
    z = sp.Matrix(1, D * F2, lambda _, j: sp.Symbol(f"z_{j}"))
    return z.reshape(D, F2), z.reshape(F2, D).T


def prove_transpose_differs(F1: int = 2, D: int = 4, F2: int = 3) -> bool:
    """True when ``Y·z.reshape(D, F2)`` and ``Y·z.reshape(F2, D)ᵀ`` differ as functions.

    The interaction computed with a transpose in place of TorchRec's reshape is a different
    polynomial in the branch outputs, so a backward that "undoes" a transpose is wrong.

    >>> prove_transpose_differs(), prove_transpose_differs(F2=1)
    (True, False)
    """
    Y = sp.Matrix(F1, D, lambda i, k: sp.Symbol(f"y_{i * D + k}"))
    R, T = reshape_vs_transpose(D, F2)
    return any(sp.expand(e) != 0 for e in Y * R - Y * T)


# ---------------------------------------------------------------------- one layer, any σ


def prove_linear_backward(
    activation: str = "generic", batch: int = 2, in_features: int = 3, out_features: int = 2
) -> bool:
    """One layer ``a = g(x Wᵀ + b)``: the closed forms equal SymPy's derivatives exactly.

    ``dz = G ⊙ g'(z)``, ``dW = dzᵀ x``, ``db = Σ_b dz``, ``dx = dz W`` with ``x``, ``W``, ``b``
    and ``G`` all symbolic. ``activation="generic"`` takes ``g`` to be an undefined function,
    so the rule holds for every differentiable activation; "relu", "tanh" and "identity" use
    the concrete one (ReLU's ``g' = Step``; tanh's ``1 − a²`` written with the output ``a``,
    as refimpl does).

    >>> [prove_linear_backward(a) for a in ("generic", "relu", "tanh", "identity")]
    [True, True, True, True]
    """
    x = sp.Matrix(batch, in_features, lambda b, i: sp.Symbol(f"x_{b}{i}"))
    W = sp.Matrix(out_features, in_features, lambda o, i: sp.Symbol(f"W_{o}{i}"))
    bias = sp.Matrix(1, out_features, lambda _, o: sp.Symbol(f"b_{o}"))
    G = sp.Matrix(batch, out_features, lambda b, o: sp.Symbol(f"G_{b}{o}"))
    z = x * W.T + sp.ones(batch, 1) * bias  # (B, O)
    if activation == "generic":
        g = sp.Function("g")
        a = z.applyfunc(g)
        slope = z.applyfunc(lambda t: g(t).fdiff())  # g'(z), as SymPy's chain rule writes it
    elif activation == "relu":
        a, slope = z.applyfunc(ReLU), z.applyfunc(Step)
    elif activation == "tanh":
        a = z.applyfunc(sp.tanh)
        slope = a.applyfunc(lambda t: 1 - t * t)
    elif activation == "identity":
        a, slope = z, sp.ones(batch, out_features)
    else:
        raise ValueError(
            f"activation: expected generic, relu, tanh or identity, got {activation!r}"
        )
    loss = sum(G.multiply_elementwise(a))
    dz = G.multiply_elementwise(slope)  # (B, O)
    closed = {
        "x": (x, dz * W),  # (B, I)
        "W": (W, dz.T * x),  # (O, I)
        "b": (bias, sp.ones(1, batch) * dz),  # (1, O)
    }
    for leaves, formula in closed.values():
        derivative = leaves.applyfunc(lambda s: sp.diff(loss, s))
        if any(sp.expand(e) != 0 for e in derivative - formula):
            return False
    return True


# ------------------------------------------------------------------ whole layers: the tape


@dataclass(frozen=True)
class Spec:
    """A layer at a tiny size. Built by :func:`spec` from the keyword configuration."""

    kind: str
    batch: int
    in_features: int  # N for InteractionProjectionArch
    sizes: tuple[tuple[int, ...], ...]  # layer sizes; one tuple per branch for the projection
    activation: str = "relu"
    bias: bool = True
    num_sparse_features: int = 0
    embedding_dim: int = 0


def spec(kind: str, **config) -> Spec:
    """Normalise a configuration (see :func:`symbolic_witness` for the keys and defaults).

    >>> spec("InteractionProjectionArch", branch_layers=2).sizes
    ((3, 8), (3, 12))
    >>> spec("MLP", activation="tanh").activation, spec("MLP").sizes
    ('tanh', ((4, 2),))
    >>> spec("Linear", bias=False).sizes, spec("Linear").activation
    (((2,),), 'identity')
    """
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    config = dict(config)
    batch = int(config.pop("batch", 2))
    if kind == "Linear":  # one layer with no activation: sizes ((O,),)
        in_features = int(config.pop("in_features", 3))
        out_features = int(config.pop("out_features", 2))
        bias = bool(config.pop("bias", True))
        _no_more(kind, config)
        return Spec(kind, batch, in_features, ((out_features,),), "identity", bias)
    if kind == "InteractionProjectionArch":
        F = int(config.pop("num_sparse_features", 2))
        D = int(config.pop("embedding_dim", 4))
        layers = int(config.pop("branch_layers", 1))
        if layers not in (1, 2):
            raise ValueError(f"branch_layers: expected 1 or 2, got {layers}")
        hidden = (3,) if layers == 2 else ()
        sizes1 = tuple(config.pop("branch1_layer_sizes", None) or (*hidden, 2 * D))
        sizes2 = tuple(config.pop("branch2_layer_sizes", None) or (*hidden, 3 * D))
        _no_more(kind, config)
        for name, sizes in (("branch1", sizes1), ("branch2", sizes2)):
            if sizes[-1] % D:
                raise ValueError(f"{name}_layer_sizes: the last size must be a multiple of D={D}")
        return Spec(kind, batch, (F + 1) * D, (sizes1, sizes2), "relu", True, F, D)
    in_features = int(config.pop("in_features", 3))
    sizes = tuple(config.pop("layer_sizes", (4, 2)))
    activation, bias = "relu", True
    if kind == "MLP":
        activation = config.pop("activation", "relu")
        bias = bool(config.pop("bias", True))
        if activation not in ("relu", "tanh", "identity"):
            raise ValueError(f"activation: expected relu, tanh or identity, got {activation!r}")
    if kind == "OverArch" and len(sizes) < 2:
        raise ValueError(f"layer_sizes: OverArch needs at least two sizes, got {list(sizes)}")
    _no_more(kind, config)
    return Spec(kind, batch, in_features, (sizes,), activation, bias)


def _no_more(kind: str, config: dict) -> None:
    if config:
        raise TypeError(f"{kind}: unexpected configuration keys {sorted(config)}")


def _indexed(prefix: str, shape: tuple[int, ...]) -> np.ndarray:
    """An object array of symbols ``prefix_i_j…``, one per element."""
    out = np.empty(shape, dtype=object)
    for idx in np.ndindex(*shape):
        out[idx] = sp.Symbol("_".join([prefix, *map(str, idx)]))
    return out


class _Layer(NamedTuple):
    """What the closed-form backward of one linear(+activation) layer reads."""

    weight_key: str
    bias_key: str | None
    input: np.ndarray  # x (B, I), SymPy
    weight: np.ndarray  # W (O, I), SymPy leaves
    activation: str
    named: np.ndarray | None  # the z_k(ε) of this layer, (B, O); None for identity


class _Tape:
    """The leaves and named pre-activations of one symbolic forward."""

    def __init__(self):
        self.eps = sp.Symbol("epsilon")
        self.symbols: dict[str, np.ndarray] = {}  # key -> leaf symbols
        self.directions: dict[str, np.ndarray] = {}  # key -> δ symbols
        self.named: list[tuple[sp.Expr, sp.Expr, str]] = []  # (z_k(ε), its definition, act)
        self.groups: list[list[int]] = []  # indices into named, one list per layer

    def leaf(self, key: str, letter: str, shape: tuple[int, ...]) -> np.ndarray:
        """Symbols ``s`` for ``key``, entering the forward as ``s + ε·δs``."""
        self.symbols[key] = _indexed(letter, shape)
        self.directions[key] = _indexed("dir_" + letter, shape)
        return self.symbols[key] + self.eps * self.directions[key]

    def activate(self, z: np.ndarray, activation: str, name: str):
        """``g(z)`` elementwise, each pre-activation named ``name_b_k(ε)``."""
        if activation == "identity":
            return z, None
        named = np.empty(z.shape, dtype=object)
        out = np.empty(z.shape, dtype=object)
        group = []
        for idx in np.ndindex(*z.shape):
            p = sp.Function("_".join([name, *map(str, idx)]))(self.eps)
            group.append(len(self.named))
            self.named.append((p, z[idx], activation))
            named[idx] = p
            out[idx] = ReLU(p) if activation == "relu" else sp.tanh(p)
        self.groups.append(group)
        return out, named


def _mlp_forward(tape, x, prefix, sizes, *, letter="", activation="relu", bias=True, last=None):
    """TorchRec's MLP on SymPy object arrays: ``x ← g(x Wᵀ + b)`` per layer.

    ``last`` is the last layer's activation (default: ``activation``, as TorchRec's MLP).
    """
    layers = []
    fan_in = x.shape[1]
    for i, size in enumerate(sizes):
        key = f"{prefix}_mlp.{i}._linear."
        weight = tape.leaf(key + "weight", f"{letter}W{i}", (size, fan_in))
        z = x @ weight.T  # (B, O)
        if bias:
            z = z + tape.leaf(key + "bias", f"{letter}b{i}", (size,))  # (B, O)
        act = activation if i < len(sizes) - 1 or last is None else last
        a, named = tape.activate(z, act, f"{letter}z{i}")
        layers.append(_Layer(key + "weight", key + "bias" if bias else None, x, weight, act, named))
        x, fan_in = a, size
    return x, layers


class _Forward(NamedTuple):
    tape: _Tape
    inputs: dict[str, np.ndarray]  # input name -> leaf expressions
    out: np.ndarray  # (B, ·), SymPy
    branches: tuple[list[_Layer], ...]  # each branch's (or the MLP's) layers
    interaction: tuple | None  # (Y, Z) for the projection


def _forward(s: Spec) -> _Forward:
    tape = _Tape()
    if s.kind == "InteractionProjectionArch":
        B, F, D = s.batch, s.num_sparse_features, s.embedding_dim
        dense = tape.leaf("dense", "d", (B, D))
        sparse = tape.leaf("sparse", "s", (B, F, D))
        flat = np.concatenate([dense[:, None, :], sparse], axis=1).reshape(B, -1)  # (B, N)
        branches, outs = [], []
        for i, (letter, sizes) in enumerate(zip("uv", s.sizes, strict=True), start=1):
            prefix = f"interaction_branch{i}.model."
            out, layers = _mlp_forward(tape, flat, prefix, sizes, letter=letter)
            branches.append(layers)
            outs.append(out)
        Y = outs[0].reshape(B, -1, D)  # (B, F1, D)
        Z = outs[1].reshape(B, D, -1)  # (B, D, F2): TorchRec's reshape
        interactions = Y @ Z  # (B, F1, F2)
        out = np.concatenate([dense, interactions.reshape(B, -1)], axis=1)  # (B, D + F1·F2)
        return _Forward(tape, {"dense": dense, "sparse": sparse}, out, tuple(branches), (Y, Z))
    name = "input" if s.kind in ("Linear", "MLP") else "features"
    x = tape.leaf(name, "x", (s.batch, s.in_features))
    (sizes,) = s.sizes
    if s.kind == "Linear":  # torch.nn.Linear: x Wᵀ (+ b), no activation
        (size,) = sizes
        weight = tape.leaf("weight", "W", (size, s.in_features))
        out = x @ weight.T  # (B, O)
        if s.bias:
            out = out + tape.leaf("bias", "b", (size,))  # (B, O)
        layers = [_Layer("weight", "bias" if s.bias else None, x, weight, "identity", None)]
    elif s.kind == "MLP":
        out, layers = _mlp_forward(tape, x, "", sizes, activation=s.activation, bias=s.bias)
    elif s.kind == "DenseArch":
        out, layers = _mlp_forward(tape, x, "model.", sizes)
    else:  # OverArch: model.0 a ReLU MLP, model.1 the logits Linear
        hidden, layers = _mlp_forward(tape, x, "model.0.", sizes[:-1])
        weight = tape.leaf("model.1.weight", "Wout", (sizes[-1], sizes[-2]))
        out = hidden @ weight.T + tape.leaf("model.1.bias", "bout", (sizes[-1],))  # (B, O)
        layers.append(_Layer("model.1.weight", "model.1.bias", hidden, weight, "identity", None))
    return _Forward(tape, {name: x}, out, (layers,), None)


# ---------------------------------------------------------- the polynomial ring and the proof


class Poly(dict):
    """A polynomial with integer coefficients, stored sparsely: ``{monomial: coefficient}``.

    A monomial is the sorted tuple of its generators' indices, repeated for powers (x₀²x₃ is
    ``(0, 0, 3)``); ``()`` is the constant term; zero coefficients are never stored, so two
    polynomials are equal exactly when the dicts are. Sparse on purpose: a monomial here has at
    most a handful of factors, while SymPy's ``ring`` would carry an exponent vector over all of
    the ~700 generators through every product.

    >>> x, y = Poly.generator(0), Poly.generator(1)
    >>> (x + y) * (x - y) == x * x - y * y
    True
    >>> Poly.constant(3) * x**2 - 1
    {(0, 0): 3, (): -1}
    """

    __slots__ = ()

    @classmethod
    def constant(cls, value: int) -> Poly:
        return cls({(): value}) if value else cls()

    @classmethod
    def generator(cls, index: int) -> Poly:
        return cls({(index,): 1})

    @staticmethod
    def _lift(value) -> Poly:
        return value if isinstance(value, Poly) else Poly.constant(int(value))

    def __add__(self, other) -> Poly:
        out = Poly(self)
        for monomial, coeff in self._lift(other).items():
            total = out.get(monomial, 0) + coeff
            if total:
                out[monomial] = total
            else:
                out.pop(monomial, None)
        return out

    __radd__ = __add__

    def __neg__(self) -> Poly:
        return Poly({m: -c for m, c in self.items()})

    def __sub__(self, other) -> Poly:
        return self + -self._lift(other)

    def __rsub__(self, other) -> Poly:
        return -self + other

    def __mul__(self, other) -> Poly:
        out: dict[tuple, int] = {}
        for m1, c1 in self.items():
            for m2, c2 in self._lift(other).items():
                monomial = tuple(sorted(m1 + m2))
                out[monomial] = out.get(monomial, 0) + c1 * c2
        return Poly({m: c for m, c in out.items() if c})

    __rmul__ = __mul__

    def __pow__(self, exponent: int) -> Poly:
        out = Poly.constant(1)
        for _ in range(exponent):
            out = out * self
        return out


class _Ring:
    """Polynomials over the leaves, δ, ``G`` and the activation atoms, and the conversion to them.

    ``ReLU(z_k)``, ``Step(z_k)`` and ``tanh(z_k)`` are free generators; ``ε`` is 0; the
    derivative ``dz_k/dε`` is replaced by its definition's derivative (``sympy.diff``),
    converted first (the layers are converted in order, so the lower layers' are known).
    """

    def __init__(self, tape: _Tape, G: np.ndarray):
        leaves = [s for a in tape.symbols.values() for s in a.ravel()]
        directions = [d for a in tape.directions.values() for d in a.ravel()]
        atoms = {}
        for p, _, activation in tape.named:
            name = str(p.func)
            if activation == "relu":
                atoms[ReLU(p)] = sp.Symbol("relu_" + name)
                atoms[Step(p)] = sp.Symbol("step_" + name)
            else:
                atoms[sp.tanh(p)] = sp.Symbol("tanh_" + name)
        self.gens = [*leaves, *directions, *G.ravel(), *atoms.values()]
        self.num_leaves = len(leaves)
        self.map = {s: Poly.generator(i) for i, s in enumerate(self.gens)}
        self.map.update({atom: self.map[symbol] for atom, symbol in atoms.items()})
        self.map[tape.eps] = Poly()
        self.memo: dict[sp.Expr, Poly] = {}
        for p, definition, _ in tape.named:
            self.map[sp.Derivative(p, tape.eps)] = self(definition.diff(tape.eps))

    def __call__(self, expr) -> Poly:
        if expr in self.memo:
            return self.memo[expr]
        if expr in self.map:
            out = self.map[expr]
        elif expr.is_Add:
            out = Poly()
            for term in expr.args:
                out = out + self(term)
        elif expr.is_Mul:
            out = Poly.constant(1)
            for factor in expr.args:
                out = out * self(factor)
        elif expr.is_Pow and expr.exp.is_Integer and expr.exp >= 0:
            out = self(expr.base) ** int(expr.exp)
        elif expr.is_Integer:
            out = Poly.constant(int(expr))
        else:
            raise ValueError(f"cannot convert {expr} to a polynomial")
        self.memo[expr] = out
        return out

    def array(self, values) -> np.ndarray:
        values = np.asarray(values, dtype=object)
        out = np.empty(values.shape, dtype=object)
        for idx in np.ndindex(*values.shape):
            out[idx] = self(values[idx])
        return out

    def as_expr(self, poly: Poly) -> sp.Expr:
        """Back to SymPy, atoms as symbols ``relu_…``, ``step_…``, ``tanh_…``."""
        return sp.Add(*(c * sp.Mul(*(self.gens[i] for i in m)) for m, c in poly.items()))

    def gradient(self, directional: Poly) -> list[Poly]:
        """The coefficient of each δ in ``Σ_s (∂L/∂s) δs``: ``∂L/∂s`` in leaf order."""
        n = self.num_leaves
        terms: list[dict] = [{} for _ in range(n)]
        for monomial, coeff in directional.items():
            (k,) = [k for k, i in enumerate(monomial) if n <= i < 2 * n]  # exactly one δ
            terms[monomial[k] - n][monomial[:k] + monomial[k + 1 :]] = coeff
        return [Poly(t) for t in terms]


def _slope(ring: _Ring, layer: _Layer) -> np.ndarray:
    """g'(z) for the closed form, as refimpl computes it: [z > 0], 1 − a², or 1."""
    if layer.activation == "relu":
        return ring.array(np.vectorize(Step, otypes=[object])(layer.named))
    if layer.activation == "tanh":
        a = ring.array(np.vectorize(sp.tanh, otypes=[object])(layer.named))
        return 1 - a * a
    shape = layer.input.shape[:1] + layer.weight.shape[:1]
    return np.full(shape, Poly.constant(1), dtype=object)


def _mlp_backward(ring: _Ring, d_out: np.ndarray, layers: list[_Layer], mistake=None):
    """refimpl's MLP backward on polynomial arrays: returns (dx, {key: gradient})."""
    grads = {}
    dx = d_out  # (B, O)
    for layer in reversed(layers):
        x, weight = ring.array(layer.input), ring.array(layer.weight)
        masked = mistake != "no_relu_mask" or layer.activation != "relu"
        dz = dx * _slope(ring, layer) if masked else dx  # (B, O)
        grads[layer.weight_key] = dz.T @ x  # (O, I)
        if layer.bias_key:
            # b is added to every row, so its gradient sums the rows (the mistake keeps one).
            grads[layer.bias_key] = dz[0] if mistake == "bias_not_summed" else dz.sum(axis=0)
        dx = dz @ weight  # (B, I)
    return dx, grads


def _closed_form(fwd: _Forward, ring: _Ring, G: np.ndarray, mistake=None) -> dict:
    """Every input and parameter gradient by refimpl's closed forms, as polynomial arrays."""
    d_out = ring.array(G)
    if fwd.interaction is None:
        (layers,) = fwd.branches
        dx, grads = _mlp_backward(ring, d_out, layers, mistake)
        return {**dict.fromkeys(fwd.inputs, dx), **grads}
    Y, Z = ring.array(fwd.interaction[0]), ring.array(fwd.interaction[1])
    B, F1, D = Y.shape
    F2 = Z.shape[2]
    d_interactions = d_out[:, D:].reshape(B, F1, F2)  # dI, (B, F1, F2)
    dY = d_interactions @ Z.transpose(0, 2, 1)  # dI Zᵀ, (B, F1, D)
    dZ = Y.transpose(0, 2, 1) @ d_interactions  # Yᵀ dI, (B, D, F2)
    dz_flat = dZ.reshape(B, -1)  # the reshape undone, (B, D·F2)
    if mistake == "dZ_transposed":  # (dI)ᵀ Y = dZᵀ, (B, F2, D), flattened as if it were dZ
        dz_flat = (d_interactions.transpose(0, 2, 1) @ Y).reshape(B, -1)
    elif mistake == "transpose_for_reshape":  # as if Z were z.reshape(F2, D)ᵀ
        dz_flat = dZ.transpose(0, 2, 1).reshape(B, -1)
    dc1, grads1 = _mlp_backward(ring, dY.reshape(B, -1), fwd.branches[0], mistake)
    dc2, grads2 = _mlp_backward(ring, dz_flat, fwd.branches[1], mistake)
    d_combined = (dc1 + dc2).reshape(B, -1, D)  # both branches read c, (B, F+1, D)
    d_dense = d_out[:, :D] + d_combined[:, 0]  # passthrough + row 0, (B, D)
    return {"dense": d_dense, "sparse": d_combined[:, 1:], **grads1, **grads2}


class Derivation(NamedTuple):
    """The symbolic forward and gradient of one configuration (see :func:`derive`)."""

    spec: Spec
    forward: _Forward
    G: np.ndarray  # upstream gradient symbols, shaped like the output
    loss: sp.Expr  # Σ G ⊙ out
    directional: sp.Expr  # dL/dε = Σ_s (∂L/∂s) δs, before ε is set to 0
    ring: _Ring
    gradient: dict  # key -> polynomial array: the coefficients of δ in dL/dε at ε = 0


@functools.cache
def _derive(s: Spec) -> Derivation:
    fwd = _forward(s)
    G = _indexed("g", fwd.out.shape)
    loss = sp.Add(*(G * fwd.out).ravel())
    directional = loss.diff(fwd.tape.eps)  # one sympy.diff for every gradient at once
    ring = _Ring(fwd.tape, G)
    flat = ring.gradient(ring(directional))
    gradient, start = {}, 0
    for key, symbols in fwd.tape.symbols.items():
        gradient[key] = np.array(flat[start : start + symbols.size], dtype=object).reshape(
            symbols.shape
        )
        start += symbols.size
    return Derivation(s, fwd, G, loss, directional, ring, gradient)


def derive(kind: str, **config) -> Derivation:
    """The symbolic forward of a layer at a tiny size and its gradient, cached.

    >>> d = derive("MLP", layer_sizes=(2,))
    >>> list(d.gradient)
    ['input', '_mlp.0._linear.weight', '_mlp.0._linear.bias']
    >>> d.ring.as_expr(d.gradient["_mlp.0._linear.bias"][0])    # Σ_b G[b, 0] · Step(z[b, 0])
    g_0_0*step_z0_0_0 + g_1_0*step_z0_1_0
    """
    return _derive(spec(kind, **config))


def prove(kind: str, mistake: str | None = None, **config) -> dict[str, bool]:
    """For each input and parameter: does refimpl's closed form equal the symbolic gradient?

    Exact: both are integer polynomials (:class:`Poly`) in the inputs, parameters, ``G`` and
    the activation atoms, compared term by term. ``mistake`` swaps in a deliberately wrong
    closed form, to show the proof can fail: ``"dZ_transposed"`` (``dIᵀ Y`` flattened in place
    of ``Yᵀ dI``), ``"transpose_for_reshape"`` (undoing ``z.reshape(F2, D)ᵀ`` instead of
    TorchRec's ``z.reshape(D, F2)``), ``"no_relu_mask"`` (``dz = da``, the ReLU mask dropped)
    — the :data:`MISTAKES` — or, in :data:`LINEAR_MISTAKES`, ``"bias_not_summed"``
    (``db = dz[0]``, the first sample's share only, in every linear layer).

    >>> prove("MLP", layer_sizes=(2,))
    {'input': True, '_mlp.0._linear.weight': True, '_mlp.0._linear.bias': True}
    >>> prove("MLP", "no_relu_mask", layer_sizes=(2,))["input"]
    False
    >>> prove("Linear", "bias_not_summed")
    {'input': True, 'weight': True, 'bias': False}
    """
    known = (*MISTAKES, *LINEAR_MISTAKES)
    if mistake is not None and mistake not in known:
        raise ValueError(f"mistake: expected one of {known} or None, got {mistake!r}")
    d = derive(kind, **config)
    closed = _closed_form(d.forward, d.ring, d.G, mistake)
    return {
        key: all(a == b for a, b in zip(d.gradient[key].ravel(), closed[key].ravel(), strict=True))
        for key in d.gradient
    }


# ----------------------------------------------------------------------- the numeric witness


class _Compiled(NamedTuple):
    """Lambdified pieces of a derivation, each ``(argument symbols, function)``."""

    at_zero: dict  # z_k(ε) -> p_k, dz_k/dε -> q_k, ε -> 0
    pre: list  # per layer: the pre-activations z_k
    slopes: list  # per layer: dz_k/dε
    out: tuple
    directional: tuple


def _lambdify(exprs: list, at_zero: dict) -> tuple:
    exprs = [sp.sympify(e).xreplace(at_zero) for e in exprs]
    args = sorted(set().union(*(e.free_symbols for e in exprs)), key=str)
    return args, sp.lambdify(args, exprs, modules=[_NUMPY_FUNCTIONS, "numpy"], docstring_limit=0)


@functools.cache
def _compiled(s: Spec) -> _Compiled:
    d = _derive(s)
    tape = d.forward.tape
    at_zero = {tape.eps: 0}
    for p, _, _ in tape.named:
        at_zero[sp.Derivative(p, tape.eps)] = sp.Symbol("q_" + str(p.func))
        at_zero[p] = sp.Symbol("p_" + str(p.func))
    pre, slopes = [], []
    for group in tape.groups:
        definitions = [tape.named[i][1] for i in group]
        pre.append(_lambdify(definitions, at_zero))
        slopes.append(_lambdify([e.diff(tape.eps) for e in definitions], at_zero))
    out = _lambdify(list(d.forward.out.ravel()), at_zero)
    return _Compiled(at_zero, pre, slopes, out, _lambdify([d.directional], at_zero))


def _call(compiled: tuple, num: dict) -> list:
    args, function = compiled
    return function(*(num[a] for a in args))


def _numbers(d: Derivation, values: dict[str, np.ndarray], upstream=None) -> dict:
    num = {}
    for key, symbols in d.forward.tape.symbols.items():
        num.update(zip(symbols.ravel(), np.ravel(values[key]).astype(np.float64), strict=True))
    if upstream is not None:
        num.update(zip(d.G.ravel(), np.ravel(upstream).astype(np.float64), strict=True))
    return num


def pre_activations(d: Derivation, values: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Each activated layer's pre-activations ``z`` (B, O) at float values, lambdified."""
    compiled = _compiled(d.spec)
    tape, num = d.forward.tape, _numbers(d, values)
    layers = []
    for group, pre in zip(tape.groups, compiled.pre, strict=True):
        named = [tape.named[i][0] for i in group]
        z = _call(pre, num)
        num.update({compiled.at_zero[p]: v for p, v in zip(named, z, strict=True)})
        layers.append(np.array(z, dtype=np.float64))
    shapes = [
        layer.named.shape
        for branch in d.forward.branches
        for layer in branch
        if layer.named is not None
    ]
    return [z.reshape(shape) for z, shape in zip(layers, shapes, strict=True)]


def evaluate(d: Derivation, values: dict[str, np.ndarray], upstream: np.ndarray):
    """The lambdified symbolic forward and gradient at float values.

    ``values`` maps every leaf key (inputs and parameters) to an array. The pre-activations and
    their directional derivatives are lambdified and evaluated layer by layer, then ``dL/dε``;
    with each ``δs`` set to a one-hot basis vector over all leaves, ``dL/dε`` is the whole
    gradient at once (the leaf ``s`` picks out ``∂L/∂s``).

    Returns
    -------
    out : ndarray, the forward output
    gradient : dict, key -> ndarray shaped like ``values[key]``
    """
    compiled = _compiled(d.spec)
    tape, num = d.forward.tape, _numbers(d, values, upstream)
    basis = np.eye(sum(a.size for a in tape.symbols.values()))  # δ = e_s, one row per leaf
    directions = [s for a in tape.directions.values() for s in a.ravel()]
    num.update(zip(directions, basis, strict=True))
    for group, pre, slopes in zip(tape.groups, compiled.pre, compiled.slopes, strict=True):
        named = [tape.named[i][0] for i in group]
        num.update({compiled.at_zero[p]: v for p, v in zip(named, _call(pre, num), strict=True)})
        dz = _call(slopes, num)  # each (number of leaves,): dz_k/ds for every leaf s
        q = {
            compiled.at_zero[sp.Derivative(p, tape.eps)]: v for p, v in zip(named, dz, strict=True)
        }
        num.update(q)
    shape = d.forward.out.shape
    out = np.array(_call(compiled.out, num), dtype=np.float64).reshape(shape)
    flat = np.broadcast_to(_call(compiled.directional, num)[0], (len(basis),))
    gradient, start = {}, 0
    for key, symbols in tape.symbols.items():
        gradient[key] = np.array(flat[start : start + symbols.size]).reshape(symbols.shape)
        start += symbols.size
    return out, gradient


def draw_values(d: Derivation, rng, margin: float = 1e-3, attempts: int = 100) -> dict:
    """Standard-normal inputs and parameters where every ReLU layer has units on both sides.

    A draw where a layer is entirely cut (or entirely open) would leave the mask untested (a
    layer with a single pre-activation need only be open), and a pre-activation within
    ``margin`` of 0 could flip between two float evaluations; such draws are redrawn.
    """
    symbols = d.forward.tape.symbols
    relu = [
        layer.activation == "relu"
        for branch in d.forward.branches
        for layer in branch
        if layer.named is not None
    ]
    for _ in range(attempts):
        values = {key: rng.standard_normal(a.shape) for key, a in symbols.items()}
        pre = [z for z, r in zip(pre_activations(d, values), relu, strict=True) if r]
        both_sides = all((z > 0).any() and (z.size < 2 or (z < 0).any()) for z in pre)
        if both_sides and all(np.min(np.abs(z)) >= margin for z in pre):
            return values
    raise RuntimeError(f"no draw with both signs in every ReLU layer in {attempts} attempts")


def _refimpl_layer(s: Spec):
    import refimpl

    if s.kind == "Linear":
        ((size,),) = s.sizes
        return refimpl.Linear(s.in_features, size, bias=s.bias)
    if s.kind == "MLP":
        (sizes,) = s.sizes
        return refimpl.MLP(s.in_features, sizes, bias=s.bias, activation=s.activation)
    if s.kind == "DenseArch":
        return refimpl.DenseArch(s.in_features, s.sizes[0])
    if s.kind == "OverArch":
        return refimpl.OverArch(s.in_features, s.sizes[0])
    branch1, branch2 = (refimpl.DenseArch(s.in_features, sizes) for sizes in s.sizes)
    return refimpl.InteractionProjectionArch(s.num_sparse_features, branch1, branch2)


def compare_with_refimpl(
    d: Derivation, values: dict[str, np.ndarray], upstream: np.ndarray
) -> dict[str, float]:
    """refimpl's forward and backward against the lambdified symbolic ones, at one point.

    Builds the refimpl layer, loads ``values``' parameters with ``load_state_dict`` and runs
    ``forward`` then ``backward(upstream)``.

    Returns
    -------
    dict
        ``"out"``, then each input name, then each parameter key: the
        :func:`refimpl.tools.gradcheck.rel_error` between refimpl and the symbolic value.
    """
    from refimpl.tools.gradcheck import rel_error

    out, symbolic = evaluate(d, values, upstream)
    layer = _refimpl_layer(d.spec)
    layer.load_state_dict({k: values[k] for k in layer.params})
    ours, cache = layer.forward(*(values[name] for name in d.forward.inputs))
    *d_inputs, d_params = layer.backward(upstream, cache)
    errors = {"out": rel_error(ours, out)}
    for name, grad in zip(d.forward.inputs, d_inputs, strict=True):
        errors[name] = rel_error(grad, symbolic[name])
    errors.update({k: rel_error(d_params[k], symbolic[k]) for k in layer.params})
    return errors


def witness_errors(kind: str, seed: int = 0, **config) -> dict[str, float]:
    """:func:`symbolic_witness` in detail, uncached: the proof, then one error per array."""
    s = spec(kind, **config)
    failed = [key for key, ok in prove(s.kind, **_config(s)).items() if not ok]
    assert not failed, f"{s.kind}: closed form differs from the symbolic gradient for {failed}"
    d = _derive(s)
    rng = np.random.default_rng(seed)
    values = draw_values(d, rng)
    upstream = rng.standard_normal(d.forward.out.shape)
    return compare_with_refimpl(d, values, upstream)


@functools.cache
def _witness(s: Spec, seed: int) -> float:
    return max(witness_errors(s.kind, seed, **_config(s)).values())


def _config(s: Spec) -> dict:
    if s.kind == "InteractionProjectionArch":
        return {
            "batch": s.batch,
            "num_sparse_features": s.num_sparse_features,
            "embedding_dim": s.embedding_dim,
            "branch1_layer_sizes": s.sizes[0],
            "branch2_layer_sizes": s.sizes[1],
        }
    if s.kind == "Linear":
        return {
            "batch": s.batch,
            "in_features": s.in_features,
            "out_features": s.sizes[0][0],
            "bias": s.bias,
        }
    config = {"batch": s.batch, "in_features": s.in_features, "layer_sizes": s.sizes[0]}
    if s.kind == "MLP":
        config.update(activation=s.activation, bias=s.bias)
    return config


def symbolic_witness(kind: str, seed: int = 0, **config) -> float:
    """Prove the closed forms exactly, then compare refimpl with the lambdified gradient.

    Runs :func:`prove` (an AssertionError names any gradient whose closed form differs), then
    evaluates the symbolic forward and gradient (:func:`evaluate`) at standard-normal inputs,
    parameters and upstream gradient drawn from ``seed``, loads the same parameters into the
    refimpl layer (``load_state_dict``) and returns the worst :func:`refimpl.tools.gradcheck.rel_error`
    over the output, every input gradient and every parameter gradient. Cached.

    Parameters
    ----------
    kind : {"Linear", "MLP", "DenseArch", "OverArch", "InteractionProjectionArch"}
    seed : int
    **config
        All optional; ``batch`` (2) for every kind. Linear: ``in_features`` (3),
        ``out_features`` (2), ``bias`` (True). MLP: ``in_features`` (3), ``layer_sizes``
        ((4, 2)), ``activation`` ("relu", "tanh" or "identity"), ``bias`` (True). DenseArch:
        ``in_features`` (3), ``layer_sizes`` ((4, 2)). OverArch: ``in_features`` (3),
        ``layer_sizes`` ((4, 2): ``model.0`` = MLP(3, [4]), ``model.1`` = Linear(4, 2)).
        InteractionProjectionArch: ``num_sparse_features`` (2), ``embedding_dim`` (4),
        ``branch_layers`` (1: branch sizes [8] and [12]; 2: [3, 8] and [3, 12]), or explicit
        ``branch1_layer_sizes`` / ``branch2_layer_sizes``. Branches are DenseArch (ReLU).

    Examples
    --------
    >>> symbolic_witness("MLP", layer_sizes=(2,)) < 1e-12
    True
    >>> symbolic_witness("Linear", bias=False) < 1e-12
    True
    """
    s = spec(kind, **config)
    return _witness(s, int(seed))
