"""The four cross networks, alone and inside InteractionDCNArch: refimpl's backward, proven.

For TorchRec's ``CrossNet``, ``LowRankCrossNet``, ``VectorCrossNet`` and
``LowRankMixtureCrossNet``, this module builds every input and parameter as SymPy symbols
(keyed and shaped exactly like TorchRec's ``state_dict()``), runs refimpl's textbook forward
and backward on them (:func:`refimpl.layers.crossnet.crossnet_forward` and its siblings) and
proves, with :class:`derivations.proof.Proof`, that the backward is SymPy's derivative of
``L = Σ G ⊙ Y``. Nothing here computes a gradient: the only backward is refimpl's.

* The three polynomial networks are proven as identities at B = 2, N = 4, L = 2 (each layer
  multiplies the degree in ``x̂`` by one more factor; two layers exercise the ``x̂`` path that
  every layer adds to and the identity path that hands ``dx_{l+1}`` down).
* The mixture (ReLU, tanh, sigmoid, the softmax over its experts) is proven exactly at a
  random rational point, as is every network inside InteractionDCNArch (B = 2, F = 1, D = 2,
  so N = 4): ``dense`` and ``sparse`` are the symbols there, and the proof covers refimpl's
  :func:`~refimpl.layers.dcn.dcn_backward`, which moves ``d_x`` back to them.

Deliberate mistakes (:data:`MUTANTS`, each a one-line edit of refimpl's own source) must make
the proof fail: the ``x̂`` path dropped, a transpose missing, the shared gates' gradient taken
from one layer, the softmax's centering dropped, dense's gradient taken from the wrong row.

>>> prove("VectorCrossNet", in_features=2, num_layers=1, batch=1)
'VectorCrossNet B=1 N=2 L=1: the backward equals the symbolic gradient (identity)'
>>> net = network("CrossNet", in_features=2, num_layers=1, batch=1)
>>> net.output[0, 0].expand()          # x̂ ⊙ (x̂ Wᵀ + b) + x̂, first entry
W^{(0)}_{0,0}*x_{0,0}**2 + W^{(0)}_{0,1}*x_{0,0}*x_{0,1} + b^{(0)}_{0}*x_{0,0} + x_{0,0}
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import sympy as sp

import refimpl
from derivations.proof import Proof, mutated, prove_with, symbols
from refimpl.layers import crossnet, dcn
from refimpl.layers.base import prefixed, sub_params

KINDS = ("CrossNet", "LowRankCrossNet", "VectorCrossNet", "LowRankMixtureCrossNet")
MIXTURE = "LowRankMixtureCrossNet"
DCN = "InteractionDCNArch"

# kind -> the names of its textbook forward and backward in refimpl.layers.crossnet (looked up
# at each call, so a test may put a mutant in their place).
TEXTBOOK = {
    "CrossNet": ("crossnet_forward", "crossnet_backward"),
    "LowRankCrossNet": ("low_rank_crossnet_forward", "low_rank_crossnet_backward"),
    "VectorCrossNet": ("vector_crossnet_forward", "vector_crossnet_backward"),
    MIXTURE: ("mixture_forward", "mixture_backward"),
}

# name -> (the function it edits, the text replaced, its replacement): one-line mistakes in
# refimpl's own textbook code, each of which a proof must reject.
MUTANTS = {
    "x̂ path dropped": (
        crossnet.crossnet_backward,
        "d_x_hat = d_x_hat + crosses[l] * d_x",
        "d_x_hat = d_x_hat",
    ),
    "transpose missing": (
        crossnet.crossnet_backward,
        'd_x = d_x + d_cross @ params[f"kernels.{l}"]',
        'd_x = d_x + d_cross @ params[f"kernels.{l}"].T',
    ),
    "low-rank x̂ path dropped": (
        crossnet.low_rank_crossnet_backward,
        "d_x_hat = d_x_hat + crosses[l] * d_x",
        "d_x_hat = d_x_hat",
    ),
    "vector bias inside x̂": (
        crossnet.vector_crossnet_backward,
        "d_x.sum(axis=0)[:, None]",
        "(x_hat * d_x).sum(axis=0)[:, None]",
    ),
    "mixture x̂ path dropped": (
        crossnet.mixture_backward,
        "d_x_hat = d_x_hat + mix * d_x",
        "d_x_hat = d_x_hat",
    ),
    "softmax centering dropped": (
        crossnet.mixture_backward,
        "d_prob - (prob * d_prob).sum(axis=1, keepdims=True)",
        "d_prob",
    ),
    "gates from one layer": (
        crossnet.mixture_backward,
        "d_gates = d_gates + d_logits.T @ x_l",
        "d_gates = d_logits.T @ x_l",
    ),
    "C transpose missing": (
        crossnet.mixture_backward,
        "d_a = (d_e @ c) * derivative(h)",
        "d_a = (d_e @ c.transpose(0, 2, 1)) * derivative(h)",
    ),
    "dense from the last row": (
        dcn.dcn_backward,
        "return d_combined[:, 0].copy(), d_combined[:, 1:].copy(), d_crossnet",
        "return d_combined[:, -1].copy(), d_combined[:, :-1].copy(), d_crossnet",
    ),
}


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """One network at one size; fields a kind does not use are None.

    ``num_sparse_features`` and ``embedding_dim`` (F and D) are set when the network sits
    inside an ``InteractionDCNArch``, whose inputs are then ``dense`` and ``sparse`` with
    N = (F+1)·D.
    """

    kind: str
    batch: int = 2
    in_features: int = 4
    num_layers: int = 2
    low_rank: int | None = None
    num_experts: int | None = None
    activation: str | None = None
    num_sparse_features: int | None = None
    embedding_dim: int | None = None

    @property
    def dcn(self) -> bool:
        return self.num_sparse_features is not None

    def label(self) -> str:
        parts = [f"B={self.batch}", f"N={self.in_features}", f"L={self.num_layers}"]
        if self.num_experts is not None:
            parts.append(f"K={self.num_experts}")
        if self.low_rank is not None:
            parts.append(f"r={self.low_rank}")
        if self.activation is not None:
            parts.append(self.activation)
        if self.dcn:
            head = [DCN, f"F={self.num_sparse_features}", f"D={self.embedding_dim}"]
            return " ".join([*head, "over", self.kind, *parts])
        return " ".join([self.kind, *parts])

    def layer_kwargs(self) -> dict:
        """The keyword arguments of the refimpl (and TorchRec) cross network."""
        out = {"in_features": self.in_features, "num_layers": self.num_layers}
        for key in ("num_experts", "low_rank", "activation"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    def layer(self) -> refimpl.Layer:
        """The refimpl layer this configuration proves: the network, or the DCN around it."""
        net = getattr(refimpl, self.kind)(**self.layer_kwargs())
        return refimpl.InteractionDCNArch(self.num_sparse_features, net) if self.dcn else net


def make_config(
    kind: str,
    *,
    batch: int = 2,
    in_features: int = 4,
    num_layers: int = 2,
    low_rank: int = 2,
    num_experts: int = 2,
    activation: str = "tanh",
    crossnet_kind: str | None = None,
    num_sparse_features: int = 1,
    embedding_dim: int = 2,
) -> Config:
    """A :class:`Config`; defaults B=2, N=4, L=2, r=2, K=2, tanh.

    ``kind="InteractionDCNArch"`` puts the network ``crossnet_kind`` inside the DCN
    interaction, over ``dense`` (B, D) and ``sparse`` (B, F, D), defaults F=1, D=2 (N=4).

    >>> make_config(MIXTURE, num_experts=1, activation="relu").label()
    'LowRankMixtureCrossNet B=2 N=4 L=2 K=1 r=2 relu'
    >>> make_config(DCN, crossnet_kind="CrossNet").label()
    'InteractionDCNArch F=1 D=2 over CrossNet B=2 N=4 L=2'
    """
    if kind == DCN:
        if crossnet_kind not in KINDS:
            raise ValueError(f"crossnet_kind: expected one of {KINDS}, got {crossnet_kind!r}")
        for name, value in (("num_sparse_features", num_sparse_features), ("dim", embedding_dim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        width = (num_sparse_features + 1) * embedding_dim
        config = make_config(
            crossnet_kind,
            batch=batch,
            in_features=width,
            num_layers=num_layers,
            low_rank=low_rank,
            num_experts=num_experts,
            activation=activation,
        )
        return replace(config, num_sparse_features=num_sparse_features, embedding_dim=embedding_dim)
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {(*KINDS, DCN)}, got {kind!r}")
    if crossnet_kind is not None:
        raise ValueError(f"crossnet_kind: only for kind={DCN!r}, got kind={kind!r}")
    for name, value in (("batch", batch), ("in_features", in_features), ("L", num_layers)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    config = Config(kind, batch, in_features, num_layers)
    if kind in ("LowRankCrossNet", MIXTURE):
        config = replace(config, low_rank=low_rank)
    if kind == MIXTURE:
        refimpl.get_activation(activation)  # a ValueError naming the known ones
        config = replace(config, num_experts=num_experts, activation=activation)
    return config


# --------------------------------------------------------------------------------------------
# Symbols, and refimpl's textbook functions on them
# --------------------------------------------------------------------------------------------

# state_dict key (without the layer index) -> the letter its symbols are written with
LETTERS = {"kernels": "W", "W_kernels": "W", "V_kernels": "V", "U_kernels": "U"}
LETTERS |= {"C_kernels": "C", "bias": "b"}


def _param_symbols(key: str, shape: tuple[int, ...], kind: str) -> np.ndarray:
    """Symbols for one parameter, named like the Notes of its refimpl class: ``W^{(l)}_{i,j}``
    (``w`` for VectorCrossNet's kernels), ``γ^{(k)}_{n}`` for a gate; TorchRec's unit axes are
    left out of the names."""
    name, index = key.rsplit(".", 1) if not key.startswith("gates.") else ("gates", key)
    if name == "gates":
        letter = f"\\gamma^{{({key.split('.')[1]})}}"
    else:
        letter = LETTERS[name] if not (kind == "VectorCrossNet" and name == "kernels") else "w"
        letter = f"{letter}^{{({index})}}"
    out = np.empty(shape, dtype=object)
    for entry in np.ndindex(*shape):
        shown = [i for i, size in zip(entry, shape, strict=True) if size != 1] or list(entry)
        out[entry] = sp.Symbol(f"{letter}_{{{','.join(map(str, shown))}}}")
    return out


def leaves(config: Config) -> dict[str, np.ndarray]:
    """Every input and parameter of ``config`` as SymPy symbols, keyed like the refimpl layer's
    inputs and ``params`` (TorchRec's keys and order; ``crossnet.`` inside the DCN)."""
    b, n = config.batch, config.in_features
    if config.dcn:
        f, d = config.num_sparse_features, config.embedding_dim
        inputs = {"dense": symbols("d", (b, d)), "sparse": symbols("s", (b, f, d))}
    else:
        inputs = {"x": symbols("x", (b, n))}
    layer = config.layer()
    params = {
        key: _param_symbols(key.removeprefix("crossnet."), value.shape, config.kind)
        for key, value in layer.params.items()
    }
    return {**inputs, **params}


def textbook(config: Config):
    """``(forward, backward)`` over :func:`leaves`: refimpl's textbook functions for
    ``config``, looked up in their modules at each call (so a mutant put in their place runs
    instead)."""
    forward_name, backward_name = TEXTBOOK[config.kind]
    extra = (config.activation,) if config.kind == MIXTURE else ()

    def net_forward(params, x):
        return getattr(crossnet, forward_name)(params, x, *extra)

    def net_backward(params, d_out, cache):
        return getattr(crossnet, backward_name)(params, d_out, cache, *extra)

    if not config.dcn:

        def forward(values):
            return net_forward({k: v for k, v in values.items() if k != "x"}, values["x"])

        def backward(values, d_out, cache):
            params = {k: v for k, v in values.items() if k != "x"}
            d_x, d_params = net_backward(params, d_out, cache)
            return {"x": d_x, **d_params}

        return forward, backward

    def dcn_forward(values):
        params = sub_params(values, "crossnet.")
        return dcn.dcn_forward(values["dense"], values["sparse"], lambda x: net_forward(params, x))

    def dcn_backward(values, d_out, cache):
        params = sub_params(values, "crossnet.")
        d_dense, d_sparse, d_crossnet = dcn.dcn_backward(
            d_out, cache, lambda d, c: net_backward(params, d, c)
        )
        return {"dense": d_dense, "sparse": d_sparse, **prefixed("crossnet", d_crossnet)}

    return dcn_forward, dcn_backward


def _at_point(config: Config) -> bool:
    """Polynomial networks alone are proven as identities; the rest at a rational point."""
    return config.kind == MIXTURE or config.dcn


def _proof(
    config: Config, mutant_name: str | None = None, seed: int = 0, at_point: bool | None = None
) -> Proof:
    """The proof of ``config`` (with a mutant in place, if named), cached: the float witness
    reuses a proof at a point rather than differentiating again."""
    at_point = _at_point(config) if at_point is None else at_point
    return _cached_proof(config, mutant_name, seed, at_point)


@lru_cache(maxsize=64)
def _cached_proof(config: Config, mutant_name: str | None, seed: int, at_point: bool) -> Proof:
    name = config.label() + (f" with mutant {mutant_name!r}" if mutant_name else "")
    mutant = MUTANTS[mutant_name] if mutant_name else None
    return prove_with(
        name, *textbook(config), leaves(config), at_point=at_point, seed=seed, mutant=mutant
    )


def prove(kind: str, **config) -> str:
    """Prove refimpl's backward of ``kind`` at ``config`` (see :func:`make_config`) equal to
    SymPy's derivative; returns the statement, AssertionError naming the entry if not.

    >>> print(prove(DCN, crossnet_kind="LowRankCrossNet", num_layers=1, low_rank=1))
    ... # doctest: +NORMALIZE_WHITESPACE
    InteractionDCNArch F=1 D=2 over LowRankCrossNet B=2 N=4 L=1 r=1: the backward equals the
    symbolic gradient (exact at a random rational point)
    """
    return _proof(make_config(kind, **config)).statement()


def gap(kind: str, mutant: str | None = None, **config) -> str | None:
    """Where refimpl's backward — or its ``mutant`` (a name in :data:`MUTANTS`) — differs
    from SymPy's derivative, e.g. ``"x[0, 1]"``; None where it does not."""
    if mutant is not None and mutant not in MUTANTS:
        raise ValueError(f"mutant: expected one of {sorted(MUTANTS)}, got {mutant!r}")
    return _proof(make_config(kind, **config), mutant).gap


def witness_errors(kind: str, seed: int = 0, **config) -> dict[str, float]:
    """Prove ``kind`` at ``config`` at a rational point, then run the refimpl layer (its fast
    path) in float64 there: ``"output"`` and every input and parameter -> worst relative
    error against SymPy's values."""
    config_ = make_config(kind, **config)
    proof = _proof(config_, None, int(seed), True)
    proof.statement()
    layer = config_.layer()
    return proof.float_errors(layer, layer.input_names)


@lru_cache(maxsize=64)
def _witness(config: Config, seed: int) -> float:
    kwargs = {"batch": config.batch, "num_layers": config.num_layers, **config.layer_kwargs()}
    if config.dcn:
        del kwargs["in_features"]
        kwargs |= {
            "crossnet_kind": config.kind,
            "num_sparse_features": config.num_sparse_features,
            "embedding_dim": config.embedding_dim,
        }
        return max(witness_errors(DCN, seed, **kwargs).values())
    return max(witness_errors(config.kind, seed, **kwargs).values())


def symbolic_witness(kind: str, seed: int = 0, **config) -> float:
    """What ``python -m refimpl check`` runs: :func:`witness_errors`' worst error (cached).

    >>> symbolic_witness("VectorCrossNet", num_layers=1) < 1e-12
    True
    """
    return _witness(make_config(kind, **config), int(seed))


# --------------------------------------------------------------------------------------------
# For the lessons: the symbolic forward, and its degree in x̂
# --------------------------------------------------------------------------------------------


class Network(NamedTuple):
    """A network's textbook forward on symbols, with a symbolic upstream gradient ``G``."""

    config: Config
    leaves: dict
    output: np.ndarray
    cache: tuple
    upstream: np.ndarray

    @property
    def x(self) -> np.ndarray:
        """The network's input ``x̂`` (inside the DCN, ``[dense; sparse]`` flattened)."""
        return self.cache.crossnet.xs[0] if self.config.dcn else self.leaves["x"]

    @property
    def params(self) -> dict:
        return {k: v for k, v in self.leaves.items() if k not in ("x", "dense", "sparse")}


def network(kind: str, **config) -> Network:
    """refimpl's textbook forward of ``kind`` on symbols, for display.

    >>> net = network("CrossNet", in_features=2, num_layers=2, batch=1)
    >>> [degree_in_input(net, x[0, 0]) for x in (*net.cache.xs, net.output)]
    [1, 2, 3]
    """
    config_ = make_config(kind, **config)
    values = leaves(config_)
    output, cache = textbook(config_)[0](values)
    return Network(config_, values, output, cache, symbols("g", output.shape))


def textbook_gradients(net: Network) -> dict[str, np.ndarray]:
    """What refimpl's textbook backward returns for ``G = net.upstream``, on the symbols."""
    return textbook(net.config)[1](net.leaves, net.upstream, net.cache)


def symbolic_gradient(net: Network) -> dict[str, np.ndarray]:
    """SymPy's ``∂L/∂s`` of ``L = Σ G ⊙ Y`` for every symbol ``s``, keyed like the leaves."""
    loss = sp.Add(*(net.upstream * net.output).ravel())
    return {
        key: np.vectorize(lambda s: sp.expand(sp.diff(loss, s)), otypes=[object])(value)
        for key, value in net.leaves.items()
    }


def x_hat_path(net: Network) -> np.ndarray:
    """What the ``x̂`` path adds to the input's gradient: refimpl's backward, less the same
    backward with the ``x̂`` path dropped (:data:`MUTANTS`); CrossNet, LowRank, Vector."""
    mutant = {"CrossNet": "x̂ path dropped", "LowRankCrossNet": "low-rank x̂ path dropped"}
    name = mutant.get(net.config.kind)
    if name is None:
        raise ValueError(f"x_hat_path: for CrossNet and LowRankCrossNet, got {net.config.kind}")
    full = textbook_gradients(net)["x"]
    with mutated(*MUTANTS[name]):
        without = textbook_gradients(net)["x"]
    return np.vectorize(sp.expand, otypes=[object])(full - without)


def as_matrix(array: np.ndarray) -> sp.Matrix:
    """A 1-D or 2-D object array as a SymPy Matrix (for display; 1-D becomes one row)."""
    array = np.asarray(array, dtype=object)
    return sp.Matrix(array.reshape(1, -1) if array.ndim == 1 else array)


def monomials_in(variables: np.ndarray, expression: sp.Expr) -> set[tuple[int, ...]]:
    """The distinct exponent vectors of ``variables`` among the terms of ``expression``
    expanded (other symbols are coefficients)."""
    wanted = list(np.ravel(variables))
    found = set()
    for term in sp.Add.make_args(sp.expand(expression)):
        powers = term.as_powers_dict()
        found.add(tuple(int(powers.get(v, 0)) for v in wanted))
    return found


def degree_in_input(net: Network, expression: sp.Expr) -> int:
    """The total degree of ``expression`` in the network's input ``x̂``."""
    return max(sum(m) for m in monomials_in(net.x, expression))
