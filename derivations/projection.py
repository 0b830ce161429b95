"""The projection interaction and the MLPs it is built from: refimpl's backward, proven.

``Linear``, ``MLP`` (every activation of the registry, with and without bias), ``DenseArch``,
``OverArch`` and ``InteractionProjectionArch`` (TorchRec's, at the seed's B = 2, D = 4, F = 2,
so N = (F+1)·D = 12, branch 1 ending in F1·D = 8 and branch 2 in D·F2 = 12, each a DenseArch
with one or two layers). For each, this module builds every input and parameter as SymPy
symbols keyed like TorchRec's ``state_dict()``, runs refimpl's textbook forward and backward
(:func:`refimpl.layers.mlp.mlp_forward`, :func:`~refimpl.layers.projection.projection_forward`
and the rest) and proves, with :class:`derivations.proof.Proof`, that the backward is SymPy's
derivative of ``L = Σ G ⊙ out``. Layers without a ReLU or tanh are proven as identities; the
others exactly at a random rational point, where each ReLU is on or off (the draw is checked
to switch some units off and keep others on, so the mask is exercised).

Deliberate mistakes (:data:`MUTANTS`) must fail: ``dZ`` transposed, a transpose undone where
TorchRec reshapes, the ReLU mask dropped, the bias gradient of one sample only, branch 2 or
the dense passthrough left out.

>>> prove("Linear", bias=False)
'Linear B=2 I=3 O=2 no-bias: the backward equals the symbolic gradient (identity)'
>>> prove_transpose_differs()
True
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import sympy as sp

import refimpl
from derivations.proof import Proof, prove_with, rational_point, symbols
from refimpl.layers import mlp, projection
from refimpl.layers.base import prefixed, sub_params

KINDS = ("Linear", "MLP", "DenseArch", "OverArch", "InteractionProjectionArch")

MUTANTS = {
    "ReLU mask dropped": (
        mlp.mlp_backward,
        "d_z = d_x * get_activation(names[i]).derivative(activated[i])",
        "d_z = d_x",
    ),
    "bias not summed": (
        mlp.linear_backward,
        'd_params["bias"] = d_out.sum(axis=0)',
        'd_params["bias"] = d_out[0]',
    ),
    "dZ transposed": (
        projection.projection_backward,
        "d_z = y.transpose(0, 2, 1) @ d_interactions",
        "d_z = d_interactions.transpose(0, 2, 1) @ y",
    ),
    "transpose for reshape": (
        projection.projection_backward,
        "d_z.reshape(batch, dim * f2)",
        "d_z.transpose(0, 2, 1).reshape(batch, dim * f2)",
    ),
    "branch 2 dropped": (projection.projection_backward, "d_flat1 + d_flat2", "d_flat1"),
    "passthrough dropped": (
        projection.projection_backward,
        "d_dense = d_out[:, :dim] + d_combined[:, 0]",
        "d_dense = d_combined[:, 0]",
    ),
}


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


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

    def label(self) -> str:
        if self.kind == "InteractionProjectionArch":
            b1, b2 = (list(s) for s in self.sizes)
            return (
                f"{self.kind} B={self.batch} F={self.num_sparse_features} "
                f"D={self.embedding_dim} b1={b1} b2={b2}"
            )
        (sizes,) = self.sizes
        if self.kind == "Linear":
            return f"Linear B={self.batch} I={self.in_features} O={sizes[0]}" + (
                "" if self.bias else " no-bias"
            )
        extra = f" {self.activation}" if self.kind == "MLP" else ""
        extra += "" if self.bias else " no-bias"
        return f"{self.kind} B={self.batch} I={self.in_features} {list(sizes)}{extra}"

    def layer(self) -> refimpl.Layer:
        """The refimpl layer this configuration proves."""
        if self.kind == "Linear":
            ((size,),) = self.sizes
            return refimpl.Linear(self.in_features, size, bias=self.bias)
        if self.kind == "MLP":
            (sizes,) = self.sizes
            return refimpl.MLP(self.in_features, sizes, self.bias, self.activation)
        if self.kind in ("DenseArch", "OverArch"):
            return getattr(refimpl, self.kind)(self.in_features, self.sizes[0])
        branch1, branch2 = (refimpl.DenseArch(self.in_features, sizes) for sizes in self.sizes)
        return refimpl.InteractionProjectionArch(self.num_sparse_features, branch1, branch2)

    @property
    def smooth(self) -> bool:
        """No ReLU and no exp: the layer is a polynomial, proven as an identity."""
        return self.kind == "Linear" or (self.kind == "MLP" and self.activation == "identity")


def spec(kind: str, **config) -> Spec:
    """Normalise a configuration. All keys optional; ``batch`` (2) for every kind.

    Linear: ``in_features`` (3), ``out_features`` (2), ``bias`` (True). MLP: ``in_features``
    (3), ``layer_sizes`` ((4, 2)), ``activation`` (any in the registry, "relu"), ``bias``.
    DenseArch, OverArch: ``in_features`` (3), ``layer_sizes`` ((4, 2)).
    InteractionProjectionArch: ``num_sparse_features`` (2), ``embedding_dim`` (4),
    ``branch_layers`` (1: branch sizes [8] and [12]; 2: [3, 8] and [3, 12]), or explicit
    ``branch1_layer_sizes`` / ``branch2_layer_sizes``.

    >>> spec("InteractionProjectionArch", branch_layers=2).sizes
    ((3, 8), (3, 12))
    >>> spec("Linear", bias=False).label()
    'Linear B=2 I=3 O=2 no-bias'
    """
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    config = dict(config)
    batch = int(config.pop("batch", 2))
    if kind == "Linear":
        in_features = int(config.pop("in_features", 3))
        out_features = int(config.pop("out_features", 2))
        bias = bool(config.pop("bias", True))
        _no_more(kind, config)
        return Spec(kind, batch, in_features, ((out_features,),), "identity", bias)
    if kind == "InteractionProjectionArch":
        features = int(config.pop("num_sparse_features", 2))
        dim = int(config.pop("embedding_dim", 4))
        layers = int(config.pop("branch_layers", 1))
        if layers not in (1, 2):
            raise ValueError(f"branch_layers: expected 1 or 2, got {layers}")
        hidden = (3,) if layers == 2 else ()
        sizes1 = tuple(config.pop("branch1_layer_sizes", None) or (*hidden, 2 * dim))
        sizes2 = tuple(config.pop("branch2_layer_sizes", None) or (*hidden, 3 * dim))
        _no_more(kind, config)
        for name, sizes in (("branch1", sizes1), ("branch2", sizes2)):
            if sizes[-1] % dim:
                raise ValueError(f"{name}_layer_sizes: the last size must be a multiple of D={dim}")
        width = (features + 1) * dim
        return Spec(kind, batch, width, (sizes1, sizes2), "relu", True, features, dim)
    in_features = int(config.pop("in_features", 3))
    sizes = tuple(config.pop("layer_sizes", (4, 2)))
    activation, bias = "relu", True
    if kind == "MLP":
        activation = refimpl.get_activation(config.pop("activation", "relu")).name
        bias = bool(config.pop("bias", True))
    if kind == "OverArch" and len(sizes) < 2:
        raise ValueError(f"layer_sizes: OverArch needs at least two sizes, got {list(sizes)}")
    _no_more(kind, config)
    return Spec(kind, batch, in_features, (sizes,), activation, bias)


def _no_more(kind: str, config: dict) -> None:
    if config:
        raise TypeError(f"{kind}: unexpected configuration keys {sorted(config)}")


# --------------------------------------------------------------------------------------------
# Symbols, and refimpl's textbook functions on them
# --------------------------------------------------------------------------------------------


def _letter(key: str) -> str:
    """``W^{(1,0)}`` for ``interaction_branch1.model._mlp.0._linear.weight``, ``b^{(0)}`` for
    ``_mlp.0._linear.bias``, ``W^{(out)}`` for OverArch's ``model.1.weight``."""
    parts = key.split(".")
    letter = "W" if parts[-1] == "weight" else "b"
    path = [
        p.removeprefix("interaction_branch") for p in parts[:-1] if p.isdigit() or "branch" in p
    ]
    if key.startswith("model.1."):
        path = ["out"]
    elif key.startswith("model.0."):
        path = path[1:]
    return f"{letter}^{{({','.join(path)})}}" if path else letter


def leaves(s: Spec) -> dict[str, np.ndarray]:
    """Every input and parameter of ``s`` as SymPy symbols, keyed like the refimpl layer's
    inputs and ``params``."""
    layer = s.layer()
    if s.kind == "InteractionProjectionArch":
        b, f, d = s.batch, s.num_sparse_features, s.embedding_dim
        inputs = {"dense": symbols("d", (b, d)), "sparse": symbols("s", (b, f, d))}
    else:
        inputs = {layer.input_names[0]: symbols("x", (s.batch, s.in_features))}
    params = {key: symbols(_letter(key), value.shape) for key, value in layer.params.items()}
    return {**inputs, **params}


def textbook(s: Spec):
    """``(forward, backward)`` over :func:`leaves`: refimpl's textbook functions for ``s``,
    looked up in their modules at each call (so a mutant put in their place runs instead)."""
    input_name = s.layer().input_names[0]

    def split(values):
        return values[input_name], {k: v for k, v in values.items() if k != input_name}

    if s.kind != "InteractionProjectionArch":
        stem = {"Linear": "linear", "MLP": "mlp", "DenseArch": "dense_arch"}
        stem = stem.get(s.kind, "over_arch")
        extra = (s.activation,) if s.kind == "MLP" else ()

        def forward(values):
            x, params = split(values)
            return getattr(mlp, f"{stem}_forward")(params, x, *extra)

        def backward(values, d_out, cache):
            d_x, d_params = getattr(mlp, f"{stem}_backward")(split(values)[1], d_out, cache)
            return {input_name: d_x, **d_params}

        return forward, backward

    def branches(values):
        return [sub_params(values, f"interaction_branch{i}.") for i in (1, 2)]

    def projection_forward(values):
        p1, p2 = branches(values)
        return projection.projection_forward(
            values["dense"],
            values["sparse"],
            lambda c: mlp.dense_arch_forward(p1, c),
            lambda c: mlp.dense_arch_forward(p2, c),
        )

    def projection_backward(values, d_out, cache):
        p1, p2 = branches(values)
        d_dense, d_sparse, d1, d2 = projection.projection_backward(
            d_out,
            cache,
            lambda d, c: mlp.dense_arch_backward(p1, d, c),
            lambda d, c: mlp.dense_arch_backward(p2, d, c),
        )
        return {
            "dense": d_dense,
            "sparse": d_sparse,
            **prefixed("interaction_branch1", d1),
            **prefixed("interaction_branch2", d2),
        }

    return projection_forward, projection_backward


def derivative(kind: str, key: str, index: tuple[int, ...], **config) -> sp.Expr:
    """SymPy's ``∂L/∂s`` of ``L = Σ G ⊙ out`` for one entry ``s = leaves[key][index]``, on
    symbols (ReLU's slope appears as SymPy's ``Heaviside``): for display.

    >>> derivative("Linear", "bias", (0,), batch=2)
    g_{0,0} + g_{1,0}
    """
    s = spec(kind, **config)
    values = leaves(s)
    out, _ = textbook(s)[0](values)
    loss = sp.Add(*(symbols("g", out.shape) * out).ravel())
    return sp.diff(loss, values[key][index])


def relu_patterns(s: Spec, values: dict) -> list[np.ndarray]:
    """Which ReLU units are on when the forward runs at ``values``: one (B, O) bool array per
    ReLU layer."""
    _, cache = textbook(s)[0](values)
    patterns = []

    def collect(part):
        if isinstance(part, mlp.MLPCache):
            activated = (*part.inputs[1:], part.output)
            for a, name in zip(activated, part.activations, strict=True):
                if name == "relu":
                    patterns.append(np.vectorize(lambda v: bool(v > 0))(a))
        elif isinstance(part, tuple):
            for inner in part:
                collect(inner)

    collect(cache)
    return patterns


@lru_cache(maxsize=64)
def point_seed(s: Spec) -> int:
    """The first seed whose rational point switches between a third and two thirds of the
    units of every ReLU layer on: a proof there exercises each mask both ways, in many
    places (where a mask is all off, a wrong backward can hide behind it)."""
    for seed in range(100):
        patterns = relu_patterns(s, rational_point(leaves(s), seed))
        if all(1 / 3 <= pattern.mean() <= 2 / 3 for pattern in patterns):
            return seed
    raise RuntimeError(f"{s.label()}: no seed in 100 mixes the ReLU masks")  # pragma: no cover


def _proof(s: Spec, mutant_name: str | None = None, at_point: bool | None = None) -> Proof:
    """The proof of ``s`` (with a mutant in place, if named), cached: the float witness reuses
    a proof at a point rather than differentiating again."""
    return _cached_proof(s, mutant_name, not s.smooth if at_point is None else at_point)


@lru_cache(maxsize=64)
def _cached_proof(s: Spec, mutant_name: str | None, at_point: bool) -> Proof:
    seed = point_seed(s) if at_point else 0
    name = s.label() + (f" with mutant {mutant_name!r}" if mutant_name else "")
    mutant = MUTANTS[mutant_name] if mutant_name else None
    return prove_with(name, *textbook(s), leaves(s), at_point=at_point, seed=seed, mutant=mutant)


def prove(kind: str, **config) -> str:
    """Prove refimpl's backward of ``kind`` at ``config`` (see :func:`spec`) equal to SymPy's
    derivative; the statement, or AssertionError naming the first entry that differs.

    >>> print(prove("MLP", layer_sizes=(2,), activation="tanh"))  # doctest: +NORMALIZE_WHITESPACE
    MLP B=2 I=3 [2] tanh: the backward equals the symbolic gradient (exact at a random rational
    point)
    """
    return _proof(spec(kind, **config)).statement()


def gap(kind: str, mutant: str | None = None, **config) -> str | None:
    """Where refimpl's backward — or its ``mutant`` (a name in :data:`MUTANTS`) — differs
    from SymPy's derivative, e.g. ``"dense[0, 1]"``; None where it does not.

    >>> gap("MLP", "ReLU mask dropped", layer_sizes=(2,))
    'input[0, 0]'
    """
    if mutant is not None and mutant not in MUTANTS:
        raise ValueError(f"mutant: expected one of {sorted(MUTANTS)}, got {mutant!r}")
    return _proof(spec(kind, **config), mutant).gap


def relu_pattern(kind: str, **config) -> list[np.ndarray]:
    """Which ReLU units are on at the point the proof of ``kind`` at ``config`` uses."""
    s = spec(kind, **config)
    return relu_patterns(s, _proof(s).values)


def witness_errors(kind: str, **config) -> dict[str, float]:
    """Prove ``kind`` at ``config`` at a rational point, then run the refimpl layer (its fast
    path) in float64 there: ``"output"`` and every input and parameter -> worst relative
    error against SymPy's values."""
    s = spec(kind, **config)
    proof = _proof(s, None, True)
    proof.statement()
    layer = s.layer()
    return proof.float_errors(layer, layer.input_names)


@lru_cache(maxsize=64)
def _witness(s: Spec) -> float:
    return max(witness_errors(s.kind, **_config(s)).values())


def _config(s: Spec) -> dict:
    """The keyword configuration :func:`spec` turns back into ``s``."""
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
        config |= {"activation": s.activation, "bias": s.bias}
    return config


def symbolic_witness(kind: str, **config) -> float:
    """What ``python -m refimpl check`` runs: :func:`witness_errors`' worst error (cached).

    >>> symbolic_witness("Linear", bias=False) < 1e-12
    True
    """
    return _witness(spec(kind, **config))


# --------------------------------------------------------------------------------------------
# For the lessons: the bmm at one sample, reshape against transpose
# --------------------------------------------------------------------------------------------


class BmmExample(NamedTuple):
    """One sample's projection step with symbolic branch outputs, through refimpl's textbook
    :func:`~refimpl.layers.projection.projection_forward` and ``projection_backward``."""

    y: sp.Matrix  # branch 1 output, (1, F1·D)
    z: sp.Matrix  # branch 2 output, (1, D·F2)
    Y: sp.Matrix  # y reshaped by refimpl, (F1, D)
    Z: sp.Matrix  # z reshaped (not transposed) by refimpl, (D, F2)
    I: sp.Matrix  # Y Z, the interaction part of refimpl's output, (F1, F2)
    dI: sp.Matrix  # the upstream gradient of I, (F1, F2)
    dY: sp.Matrix  # refimpl's backward, reshaped as Y, (F1, D)
    dZ: sp.Matrix  # refimpl's backward, reshaped as Z, (D, F2)
    dy: sp.Matrix  # ∂L/∂y by sympy.diff, (1, F1·D)
    dz: sp.Matrix  # ∂L/∂z by sympy.diff, (1, D·F2)


def bmm_example(F1: int = 2, D: int = 4, F2: int = 3) -> BmmExample:
    """The bmm at one sample: branches that return the symbols ``y`` and ``z`` themselves.

    >>> ex = bmm_example()
    >>> ex.Y.shape, ex.Z.shape, ex.I.shape
    ((2, 4), (4, 3), (2, 3))
    >>> ex.Z[0, :]                     # Z's first row is z_0, z_1, z_2: row-major
    Matrix([[z_0, z_1, z_2]])
    """
    y = np.array([[sp.Symbol(f"y_{i}") for i in range(F1 * D)]], dtype=object)  # (1, F1·D)
    z = np.array([[sp.Symbol(f"z_{j}") for j in range(D * F2)]], dtype=object)  # (1, D·F2)
    dense = np.zeros((1, D), dtype=object)
    sparse = np.zeros((1, 1, D), dtype=object)
    out, cache = projection.projection_forward(
        dense, sparse, lambda c: (y, None), lambda c: (z, None)
    )
    d_interactions = sp.Matrix(F1, F2, lambda i, j: sp.Symbol(f"g_{i}{j}"))
    d_out = np.concatenate(
        [np.zeros((1, D), dtype=object), np.array([list(d_interactions)])], axis=1
    )
    flows = {}

    def keep(name):
        def backward(d, c):
            flows[name] = d
            return np.zeros((1, 2 * D), dtype=object), {}

        return backward

    projection.projection_backward(d_out, cache, keep("y"), keep("z"))
    interactions = sp.Matrix(F1, F2, list(out[0, D:]))
    loss = sum(d_interactions.multiply_elementwise(interactions))
    return BmmExample(
        sp.Matrix(y),
        sp.Matrix(z),
        sp.Matrix(cache.y[0]),
        sp.Matrix(cache.z[0]),
        interactions,
        d_interactions,
        sp.Matrix(flows["y"].reshape(F1, D)),
        sp.Matrix(flows["z"].reshape(D, F2)),
        sp.Matrix(1, F1 * D, lambda _, i: sp.diff(loss, y[0, i])),
        sp.Matrix(1, D * F2, lambda _, j: sp.diff(loss, z[0, j])),
    )


def prove_bmm_backward(F1: int = 2, D: int = 4, F2: int = 3) -> bool:
    """refimpl's ``∂L/∂y = (dI Zᵀ).reshape(F1·D)`` and ``∂L/∂z = (Yᵀ dI).reshape(D·F2)``
    equal SymPy's derivatives exactly (``y``, ``z`` and ``dI`` symbolic).

    >>> prove_bmm_backward(), prove_bmm_backward(3, 2, 5)
    (True, True)
    """
    ex = bmm_example(F1, D, F2)
    undone_y, undone_z = ex.dY.reshape(1, F1 * D), ex.dZ.reshape(1, D * F2)
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
    """True when ``Y·z.reshape(D, F2)`` and ``Y·z.reshape(F2, D)ᵀ`` differ as functions: a
    backward that undoes a transpose where TorchRec reshapes is wrong.

    >>> prove_transpose_differs(), prove_transpose_differs(F2=1)
    (True, False)
    """
    Y = sp.Matrix(F1, D, lambda i, k: sp.Symbol(f"y_{i * D + k}"))
    R, T = reshape_vs_transpose(D, F2)
    return any(sp.expand(e) != 0 for e in Y * R - Y * T)
