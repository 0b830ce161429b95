"""Checks for SimpleDeepFMNN, TorchRec's DeepFM model, end to end.

Parity compares with TorchRec's ``SimpleDeepFMNN``: as it ships for ``output="probabilities"``
(its over arch ends in ``nn.Sigmoid``), and with that sigmoid replaced by ``nn.Identity`` for
the default ``output="logits"`` (:func:`refimpl.tools.parity.torch_model_like`). The papers'
FM (``fm_pairs="features"``) has no TorchRec counterpart: finite differences and hand values
check it. Training trains refimpl's logits model with :class:`~refimpl.layers.loss.
BCEWithLogitsLoss` and its TorchRec twin with ``binary_cross_entropy_with_logits``, for every
pair of optimizers, 50 steps.
"""

from __future__ import annotations

import numpy as np

from refimpl.layers.base import as_rng
from refimpl.models.deepfm import SimpleDeepFMNN
from refimpl.tools.check import Check, hand_check, needs_torchrec
from refimpl.tools.check.cases.embedding import (
    build_collection,
    draw_features,
    sparse_parity_check,
)
from refimpl.tools.check.cases.models import DENSE_IN, draw_model_inputs
from refimpl.tools.check.cases.training import (
    LEARNING_RATES,
    STEPS,
    TRAINING_TOL,
    training_batches,
)
from refimpl.tools.gradcheck import DEFAULT_STEP, DEFAULT_TOL, draw_away_from_kinks, gradcheck
from refimpl.tools.loops import deepfm_loop
from refimpl.tools.parity import (
    TORCH_DENSE_OPTIMIZERS,
    TORCH_EMBEDDING_OPTIMIZERS,
)

NAME = "SimpleDeepFMNN"
COLLECTIONS = ("sum, t1 shared by f1 f3", "mean t1, sum t2", "weighted sum")
HIDDEN, DEEP = 6, 3  # hidden_layer_size, deep_fm_dimension (D = 4 from the collections)


def build_deepfm_model(
    collection: str, *, fm_pairs="scalars", output="logits", seed=None, dtype=np.float64
) -> SimpleDeepFMNN:
    """A small SimpleDeepFMNN (I = 5, F = 3, D = 4, hidden 6, DI = 3) over the named
    collection of :data:`refimpl.tools.check.cases.embedding.COLLECTIONS`."""
    rng = as_rng(seed)
    ebc = build_collection(collection, seed=rng, dtype=dtype)
    return SimpleDeepFMNN(
        DENSE_IN, ebc, HIDDEN, DEEP, fm_pairs=fm_pairs, output=output, seed=rng, dtype=dtype
    )


def builder(collection, batch, away_from_kinks=True, **options):
    """``build(rng) -> (model, (dense, features))`` for :func:`build_deepfm_model`."""

    def build(rng):
        model = build_deepfm_model(collection, seed=rng, **options)
        if model.output == "logits":
            return model, draw_model_inputs(rng, model, batch, away_from_kinks)
        # The sigmoid needs logits of order one: the FM of inputs N(0, 3²) gives logits of
        # ±20, where σ' ≈ 1e-9 flattens every gradient to the size of the differences'
        # round-off. So: dense features N(0, 1) and the over arch scaled down.
        for key in ("over_arch.model.0.weight", "over_arch.model.0.bias"):
            model.params[key][...] *= 0.1
        ebc = model.sparse_arch.embedding_bag_collection

        def draw(r):
            return r.standard_normal((batch, model.dense_in_features)), draw_features(r, ebc, batch)

        return model, draw_away_from_kinks(model, draw, rng) if away_from_kinks else draw(rng)

    return build


def _fd_check(config, build, step) -> Check:
    """:func:`refimpl.tools.check.finite_difference_check` with the step ``step``."""

    def run() -> float:
        net, inputs = build(np.random.default_rng(0))
        return gradcheck(net, inputs, seed=1, step=step).worst.rel_error

    return Check(NAME, config, "finite-diff", run, DEFAULT_TOL)


def _torch_model(model):
    from refimpl.tools.parity import torch_model_like

    return torch_model_like(model)


def training_errors(dense, embedding, steps=STEPS, seed=0) -> dict[str, float]:
    """:func:`refimpl.tools.parity.compare_training_with_torch` on a fixed draw."""
    from refimpl.tools.parity import compare_training_with_torch

    rng = np.random.default_rng(seed)
    model = build_deepfm_model("sum, t1 shared by f1 f3", seed=rng)
    batches = training_batches(rng, model, steps)
    return compare_training_with_torch(
        model, batches, dense, LEARNING_RATES[dense], embedding, LEARNING_RATES[embedding]
    )


def _training_check(dense, embedding) -> Check:
    def run() -> float:
        needs_torchrec()
        return max(training_errors(dense, embedding).values())

    config = f"{STEPS} steps: dense {dense}, tables {embedding}"
    return Check(f"{NAME} training", config, "parity", run, TRAINING_TOL)


def _hand(collection, **options):
    def compute():
        model = build_deepfm_model(collection, seed=0, **options)
        dense = np.linspace(-2.0, 2.0, 4 * DENSE_IN).reshape(4, DENSE_IN)  # (B, I)
        _, features = draw_model_inputs(np.random.default_rng(5), model, 4, False)
        return model(dense, features), deepfm_loop(model, dense, features)

    return compute


def _label(options) -> str:
    return "".join(f", {value}" for value in options.values())


def checks():
    variants = ({}, {"fm_pairs": "features"}, {"output": "probabilities"})
    for collection in COLLECTIONS:
        for options in variants:
            label = _label(options)
            # With the sigmoid, a step h of the FM's weight in the over arch moves the logit by
            # h·fm, with fm up to ~50 here: into the sigmoid's curvature, where the stencil's
            # h⁴ error shows (9e-8 at h = 1e-3 in one row). Half the step makes it 16 times
            # smaller, and leaves the round-off on the smallest entries near 1e-8.
            step = DEFAULT_STEP / 2 if options.get("output") == "probabilities" else DEFAULT_STEP
            for batch in (1, 3):
                build = builder(collection, batch, **options)
                yield _fd_check(f"B={batch} {collection}{label}", build, step)
            yield hand_check(
                NAME, f"B=4 {collection}{label} linspace", _hand(collection, **options)
            )
            if options.get("fm_pairs") != "features":
                build = builder(collection, 5, away_from_kinks=False, **options)
                yield sparse_parity_check(NAME, f"B=5 {collection}{label}", build, _torch_model)
    for dense in TORCH_DENSE_OPTIMIZERS:
        for embedding in TORCH_EMBEDDING_OPTIMIZERS:
            yield _training_check(dense, embedding)
