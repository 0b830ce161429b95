"""Training, step by step: 50 steps of each model with each optimizer pair against TorchRec.

The strongest witness there is for the whole backward: if one gradient of one parameter were
wrong, the weights would drift apart from TorchRec's within a few steps. Each row trains a
small model (F = 3 features, a table shared by two of them, empty bags, repeated ids) and its
TorchRec twin on the same 50 batches, and reports the worst relative gap of the logits at
every step and of every parameter after the last.
"""

from __future__ import annotations

import numpy as np

from refimpl.data.batch import Batch
from refimpl.tools.check import Check, needs_torchrec
from refimpl.tools.check.cases.embedding import draw_features
from refimpl.tools.check.cases.models import MODELS, build_model
from refimpl.tools.parity import (
    TORCH_DENSE_OPTIMIZERS,
    TORCH_EMBEDDING_OPTIMIZERS,
    compare_training_with_torch,
)

STEPS = 50
TRAINING_TOL = 1e-9
LEARNING_RATES = {"sgd": 0.05, "adagrad": 0.05, "adam": 0.01, "rowwise-adagrad": 0.1}


def training_batches(rng, model, steps: int, batch_size: int | tuple[int, int] = 8) -> list:
    """``steps`` random Batches for ``model``: N(0, 1) dense features, bags with an empty one
    and a repeated id (:func:`~refimpl.tools.check.cases.embedding.draw_features`), 0/1
    labels; ``batch_size`` an int, or (low, high) for sizes drawn in [low, high]."""
    ebc = model.sparse_arch.embedding_bag_collection
    batches = []
    for _ in range(steps):
        size = (
            batch_size
            if isinstance(batch_size, int)
            else int(rng.integers(batch_size[0], batch_size[1] + 1))
        )
        features = draw_features(rng, ebc, size)
        batches.append(
            Batch(
                dense=rng.standard_normal((size, model.dense_in_features)),  # (B, I)
                keys=features.keys,
                values=features.values,
                lengths=features.lengths,
                weights=features.weights,
                labels=rng.integers(0, 2, size).astype(np.float64),  # (B,)
            )
        )
    return batches


def training_parity(kind, dense, embedding, collection="sum, t1 shared by f1 f3", steps=STEPS):
    """The worst gap of :func:`refimpl.tools.parity.compare_training_with_torch` for one model
    and one optimizer pair, on a fixed draw of model and batches."""
    rng = np.random.default_rng(0)
    model = build_model(kind, collection, seed=rng)
    batches = training_batches(rng, model, steps)
    errors = compare_training_with_torch(
        model, batches, dense, LEARNING_RATES[dense], embedding, LEARNING_RATES[embedding]
    )
    return max(errors.values())


def _row(kind, dense, embedding) -> Check:
    def run() -> float:
        needs_torchrec()
        return training_parity(kind, dense, embedding)

    config = f"{STEPS} steps: dense {dense}, tables {embedding}"
    return Check(f"{kind} training", config, "parity", run, TRAINING_TOL)


def checks():
    for kind in MODELS:
        for dense in TORCH_DENSE_OPTIMIZERS:
            for embedding in TORCH_EMBEDDING_OPTIMIZERS:
                yield _row(kind, dense, embedding)
