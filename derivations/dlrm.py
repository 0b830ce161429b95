"""SymPy proof about a whole tiny DLRM: refimpl's textbook backward, from the logits to the
dense features and to every parameter (the embedding rows included), is the exact derivative.

:func:`refimpl.models.dlrm.dlrm_forward` and :func:`~refimpl.models.dlrm.dlrm_backward`
(compositions of every layer's textbook form) run unchanged on object arrays of exact
rationals. A :class:`derivations.proof.Proof` at a random rational point takes ``∂L/∂s`` of
``L = Σ G ⊙ logits`` by ``sympy.diff`` for every entry ``s`` of the dense features, every
table, every weight and bias, and compares it exactly with the backward's entry: the model has
ReLUs, whose derivative is a step, and a rational point away from the steps turns both sides
into rational numbers with no rounding. The table rows no id names must get exactly zero.

Sizes: B = 2, F = 2 features with D = 2 (table t1 sums a bag holding one id twice; table t2
takes the mean, with an empty bag), I = 2 dense features, DenseArch [2], OverArch [2, 1];
the DCN model has one low-rank cross layer (r = 1), the projection model branches [2] and [2];
the baseline's concatenation has no parameters of its own.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from derivations.proof import Proof, symbols
from refimpl.models.dlrm import (
    DLRM,
    DLRM_DCN,
    DLRM_Baseline,
    DLRM_Projection,
    DLRMSpec,
    dlrm_backward,
    dlrm_forward,
    model_bags,
)

KINDS = ("DLRM", "DLRM_DCN", "DLRM_Projection", "DLRM_Baseline")
BATCH, DENSE_IN = 2, 2


def tiny_model(kind: str):
    """The model proven, and its sparse input: B = 2, F = 2, D = 2."""
    from refimpl.layers.embedding import (
        EmbeddingBagCollection,
        EmbeddingBagConfig,
        KeyedJaggedArray,
    )

    tables = [
        EmbeddingBagConfig(3, 2, "t1", ["f1"], "sum"),
        EmbeddingBagConfig(4, 2, "t2", ["f2"], "mean"),
    ]
    ebc = EmbeddingBagCollection(tables, seed=0)
    args = (ebc, DENSE_IN, [2], [2, 1])
    if kind == "DLRM_DCN":
        model = DLRM_DCN(*args, dcn_num_layers=1, dcn_low_rank_dim=1, seed=0)
    elif kind == "DLRM_Projection":
        model = DLRM_Projection(*args, [2], [2], seed=0)
    elif kind == "DLRM_Baseline":
        model = DLRM_Baseline(*args, seed=0)
    else:
        model = DLRM(*args, seed=0)
    # f1: [0, 0] (one id twice), [2]; f2: [] (empty), [1, 2]; rows 1 of t1, 0 and 3 of t2 unused
    features = KeyedJaggedArray(["f1", "f2"], np.array([0, 0, 2, 1, 2]), np.array([2, 1, 0, 2]))
    return model, features


def _functions(kind: str):
    """``(forward, backward)`` over the leaves: the model's textbook functions."""
    model, features = tiny_model(kind)
    spec = DLRMSpec.of(model)
    bags = model_bags(model, features)

    def split(values):
        return values["dense_features"], {k: v for k, v in values.items() if k != "dense_features"}

    def forward(values):
        dense, params = split(values)
        return dlrm_forward(params, dense, bags, spec)

    def backward(values, d_logits, cache_):
        d_dense, _, d_params = dlrm_backward(split(values)[1], d_logits, cache_, spec)
        return {"dense_features": d_dense, **d_params}

    return forward, backward


def leaves(kind: str) -> dict[str, np.ndarray]:
    """The dense features and every parameter, keyed like the model's ``params``."""
    model, _ = tiny_model(kind)
    out = {"dense_features": symbols("x", (BATCH, DENSE_IN))}
    out.update({key: symbols(key, value.shape) for key, value in model.params.items()})
    return out


@cache
def proof(kind: str = "DLRM", seed: int = 0) -> Proof:
    """The proof of ``kind``'s backward at a random rational point (cached); AssertionError
    naming the first entry that differs."""
    result = Proof(
        f"{kind} B={BATCH} F=2 D=2", *_functions(kind), leaves(kind), at_point=True, seed=seed
    )
    result.statement()
    return result


def prove(kind: str = "DLRM", seed: int = 0):
    """Prove the model's backward exact at a random rational point (see :func:`proof`).

    Returns ``(values, logits, d_dense, d_params)``: the point (key → rational array, the
    upstream under ``"G"``) and the exact logits and gradients there (dense arrays).

    >>> values, logits, d_dense, d_params = prove("DLRM")
    >>> all(v.is_Rational for v in logits.ravel())
    True
    >>> d_params["sparse_arch.embedding_bag_collection.embedding_bags.t1.weight"][1].tolist()
    [0, 0]
    """
    result = proof(kind, seed)
    values = {**result.values, "G": result.upstream}
    d_params = {k: v for k, v in result.gradients.items() if k != "dense_features"}
    return values, result.output, result.gradients["dense_features"], d_params


def symbolic_witness(kind: str = "DLRM", seed: int = 0) -> float:
    """Prove (see :func:`proof`), then run the model class (its fast paths) in float64 at the
    same rational point; the worst relative error of its logits and gradients against
    SymPy's.

    >>> symbolic_witness("DLRM") < 1e-12
    True
    """
    result = proof(kind, seed)
    model, features = tiny_model(kind)
    floats = {key: value.astype(np.float64) for key, value in result.values.items()}
    model.load_state_dict({key: floats[key] for key in model.params})
    out, cache_ = model.forward(floats["dense_features"], features)
    d_dense, _, d_params = model.backward(result.upstream.astype(np.float64), cache_)
    return max(result.compare(out, {"dense_features": d_dense, **d_params}).values())
