"""Checks for the whole models: DLRM, DLRM_DCN, DLRM_Projection and DLRM_Baseline, end to end."""

from __future__ import annotations

import numpy as np

from refimpl.models.dlrm import DLRM, DLRM_DCN, DLRM_Baseline, DLRM_Projection
from refimpl.tools.check import finite_difference_check, hand_check, symbolic_check
from refimpl.tools.check.cases.embedding import build_collection, draw_features, sparse_parity_check
from refimpl.tools.gradcheck import draw_away_from_kinks
from refimpl.tools.loops import dlrm_loop

LESSON = 10  # the whole models come after every layer's lesson

DENSE_IN = 5  # I
DENSE_SIZES = (6, 4)  # the last is D = 4
OVER_SIZES = (7, 1)


def build_model(kind: str, collection: str, *, seed=None, dtype=np.float64):
    """A small model of ``kind`` over the named collection of
    :data:`refimpl.tools.check.cases.embedding.COLLECTIONS` (F = 3, D = 4)."""
    from refimpl.layers.base import as_rng

    rng = as_rng(seed)
    ebc = build_collection(collection, seed=rng, dtype=dtype)
    args = (ebc, DENSE_IN, DENSE_SIZES, OVER_SIZES)
    if kind == "DLRM_DCN":
        return DLRM_DCN(*args, dcn_num_layers=2, dcn_low_rank_dim=3, seed=rng, dtype=dtype)
    if kind == "DLRM_Projection":
        return DLRM_Projection(*args, [8], [5, 12], seed=rng, dtype=dtype)  # F1 = 2, F2 = 3
    if kind == "DLRM_Baseline":
        return DLRM_Baseline(*args, seed=rng, dtype=dtype)
    return DLRM(*args, seed=rng, dtype=dtype)


MODELS = ("DLRM", "DLRM_DCN", "DLRM_Projection", "DLRM_Baseline")
COLLECTIONS = ("sum, t1 shared by f1 f3", "mean t1, sum t2", "weighted sum")


def draw_model_inputs(rng, model, batch: int, away_from_kinks: bool = True):
    """Dense features and bags for ``model``; away from its ReLU kinks for finite differences.

    The dense features are N(0, 3²): a gradient entry scales with the activations it passes
    through, and a hidden unit barely above its kink (0.01 at the margin) can shrink entries
    of the cross layers' gradients to ~1e-8, where the finite differences' round-off
    (~1e-15) is 1e-7 of them. Wider inputs keep the activations, and the entries, of order one.
    """
    ebc = model.sparse_arch.embedding_bag_collection

    def draw(r):
        dense = 3.0 * r.standard_normal((batch, model.dense_in_features))  # (B, I)
        return dense, draw_features(r, ebc, batch)

    return draw_away_from_kinks(model, draw, rng) if away_from_kinks else draw(rng)


def _builder(kind, collection, batch, away_from_kinks=True):
    def build(rng):
        model = build_model(kind, collection, seed=rng)
        return model, draw_model_inputs(rng, model, batch, away_from_kinks)

    return build


def _torch_model(model):
    from refimpl.tools.parity import torch_model_like

    return torch_model_like(model)


def _hand(kind, collection):
    def compute():
        model = build_model(kind, collection, seed=0)
        dense = np.linspace(-1.0, 1.0, 4 * DENSE_IN).reshape(4, DENSE_IN)  # (B, I)
        features = draw_features(
            np.random.default_rng(5), model.sparse_arch.embedding_bag_collection, 4
        )
        return model(dense, features), dlrm_loop(model, dense, features)

    return compute


def _symbolic(kind):
    def witness():
        from derivations.dlrm import symbolic_witness

        return symbolic_witness(kind)

    return witness


def checks():
    for kind in MODELS:
        yield symbolic_check(kind, "B=2 F=2 D=2 end to end", _symbolic(kind))
        for collection in COLLECTIONS:
            for batch in (1, 3):
                config = f"B={batch} {collection}"
                yield finite_difference_check(kind, config, _builder(kind, collection, batch))
            yield hand_check(kind, f"B=4 {collection} linspace", _hand(kind, collection))
            build = _builder(kind, collection, 5, away_from_kinks=False)  # no differences
            yield sparse_parity_check(kind, f"B=5 {collection}", build, _torch_model)
