"""SymPy proof about a whole tiny DLRM: refimpl's textbook backward, from the logits to the
dense features and to every parameter (the embedding rows included), is the exact derivative.

:func:`refimpl.models.dlrm.dlrm_forward` and :func:`~refimpl.models.dlrm.dlrm_backward`
(compositions of every layer's textbook form) run unchanged on object arrays of SymPy
symbols: the dense features, every table, every weight and bias, and the upstream gradient
``G`` of the logits. With ``L = Σ G ⊙ logits``, ``∂L/∂s`` is taken by ``sp.diff`` for every
symbol ``s`` and compared, exactly, with the backward's entry for ``s``, both evaluated at one
random rational point: the model has ReLUs, whose derivative is a step, and a rational point
away from the steps turns both sides into rational numbers with no rounding. The table rows
no id names must get exactly zero.

Sizes: B = 2, F = 2 features with D = 2 (table t1 sums a bag holding one id twice; table t2
takes the mean, with an empty bag), I = 2 dense features, DenseArch [2], OverArch [2, 1];
the DCN model has one low-rank cross layer (r = 1), the projection model branches [2] and [2];
the baseline's concatenation has no parameters of its own.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import sympy as sp

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
from refimpl.tools.gradcheck import rel_error

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


EPSILON = sp.Symbol("epsilon", positive=True)  # positive: SymPy decides Max(z, 0) sooner


def random_point(shape, rng) -> np.ndarray:
    """An object array of exact rationals n / 2¹⁸, |n| < 2²⁰."""
    out = np.empty(shape, dtype=object)
    for index in np.ndindex(*shape):
        out[index] = sp.Rational(int(rng.integers(-(2**20), 2**20)), 2**18)
    return out


@cache
def prove(kind: str = "DLRM", seed: int = 0):
    """Prove the model's backward exact at a random rational point; AssertionError if not.

    The point gives every input, parameter and upstream entry a random rational. refimpl's
    textbook backward runs there on exact rationals. For each entry ``s`` in turn, the textbook
    forward runs with ``s`` moved to ``s + ε`` (ε a SymPy symbol, everything else at the
    point), and ``∂L/∂s = dL/dε at ε = 0`` by ``sp.diff``: ReLU's ``Max(z, 0)`` is
    differentiated symbolically into a step of ``z``, exact at the point since no ``z`` there
    is 0. The two must be the same rational number, entry by entry.

    Returns ``(values, logits, d_dense, d_params)``: the point (key → rational array, the
    upstream under ``"G"``) and the exact logits and gradients there.

    >>> values, logits, d_dense, d_params = prove("DLRM")
    >>> all(isinstance(v, sp.Rational) for v in logits.ravel())
    True
    >>> d_params["sparse_arch.embedding_bag_collection.embedding_bags.t1.weight"][1].tolist()
    [0, 0]
    """
    model, features = tiny_model(kind)
    spec = DLRMSpec.of(model)
    bags = model_bags(model, features)
    rng = np.random.default_rng(seed)
    values = {"dense_features": random_point((BATCH, DENSE_IN), rng)}
    values.update({key: random_point(value.shape, rng) for key, value in model.params.items()})
    upstream = random_point((BATCH, 1), rng)  # G

    def loss(leaves):
        params = {k: v for k, v in leaves.items() if k != "dense_features"}
        logits, _ = dlrm_forward(params, leaves["dense_features"], bags, spec)
        return sp.Add(*(upstream * logits).ravel()), logits  # L = Σ G ⊙ logits

    params = {k: v for k, v in values.items() if k != "dense_features"}
    logits, cache_ = dlrm_forward(params, values["dense_features"], bags, spec)
    d_dense, _, d_params = dlrm_backward(params, upstream, cache_, spec)
    claimed = {"dense_features": d_dense}
    claimed.update({k: v.to_dense() if hasattr(v, "to_dense") else v for k, v in d_params.items()})
    for key, array in values.items():
        for index in np.ndindex(*array.shape):
            moved = dict(values)
            moved[key] = array.copy()
            moved[key][index] = array[index] + EPSILON  # s + ε, everything else at the point
            exact = sp.diff(loss(moved)[0], EPSILON).subs(EPSILON, 0)
            ours = sp.sympify(claimed[key][index])
            assert exact.is_Rational and exact == ours, (
                f"{kind}: dL/d {key}{list(index)}: sp.diff gives {exact}, the backward {ours}"
            )
    values["G"] = upstream
    return values, logits, d_dense, {k: claimed[k] for k in d_params}


def symbolic_witness(kind: str = "DLRM", seed: int = 0) -> float:
    """Prove (see :func:`prove`), then run the model class (its fast paths) in float64 at the
    same rational point; the worst relative error of its logits and gradients against the
    exact values.

    >>> symbolic_witness("DLRM") < 1e-12
    True
    """
    values, logits, d_dense, d_params = prove(kind, seed)
    model, features = tiny_model(kind)
    model.load_state_dict({key: values[key].astype(float) for key in model.params})
    out, cache_ = model.forward(values["dense_features"].astype(float), features)
    d_dense_float, _, d_params_float = model.backward(values["G"].astype(float), cache_)
    errors = [
        rel_error(out, logits.astype(float)),
        rel_error(d_dense_float, d_dense.astype(float)),
    ]
    for key, value in d_params_float.items():
        value = value.to_dense() if hasattr(value, "to_dense") else value
        errors.append(rel_error(value, d_params[key].astype(float)))
    return max(errors)
