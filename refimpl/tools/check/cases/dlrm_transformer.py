"""Checks for DLRM_Transformer, end to end: per-sample attention and TorchRec's batch reading.

Parity compares with TorchRec's ``DLRM_Transformer`` in eval mode (dropout off), its
feed-forward width 2048; for ``attend_across="features"`` TorchRec's attention layers are
switched to ``batch_first=True`` (:func:`refimpl.tools.parity.torch_model_like`). Finite
differences and hand values use a feed-forward width of 4. The key third of every
``in_proj_bias`` has exactly zero gradient (softmax ignores a shift shared by all keys); it is
compared as :func:`refimpl.tools.check.cases.transformer.split_key_bias` compares it.

Finite differences of the whole model need well-conditioned points
(:func:`draw_transformer_inputs`). Layer norm divides by its token's spread, so a token of
small spread multiplies a step by up to 1/√eps ≈ 316 before it reaches the feed-forward
block's ReLUs and the next softmax: a difference then straddles a kink, or meets fifth
derivatives large enough that the stencil's h⁴ error shows. Such tokens are common at small
sizes: TorchRec's dense arch ends in a ReLU, and with 4 outputs its vector is often all
zeros or one small entry; an empty bag pools to zeros, and a batch whose bags are all empty
(sample 0 of :func:`~refimpl.tools.check.cases.embedding.draw_features`) gives F equal
tokens. So the checks shift the dense arch's last layer to active outputs of order one, draw
bags that are never empty, keep every token's spread at least 0.2 and every ReLU input 0.03
from its kink, take dense features N(0, 1) (a weight's step moves a pre-activation by the
step times its input), and difference with h = 5e-4. Empty bags are in the parity and hand
rows. Parity and training shift the dense arch too: with a near-constant token the two
implementations' roundings are magnified alike, and a few small gradient entries then differ
by ~1e-9 of their size (3e-11 with the shift, over 18 draws).

Training: TorchRec's twin and refimpl's model trained on the same batches for 20 steps, with
SGD, and with Adam and row-wise Adagrad. Two things shape the rows. The gap between the two
trajectories grows with the steps faster than the DLRMs' (attention across the batch, Adam:
3e-11 after 20 steps, 1.3e-9 after 50), so the rows take 20. And Adagrad is left out for the
dense parameters: where a gradient is zero in exact arithmetic (that key third), both
implementations return rounding noise g of ~1e-17, which Adagrad, dividing by √Σg² + eps with
eps = 1e-10, turns into steps of lr·g/eps, each implementation its own; after 50 steps the two
key biases differ by 1e-8 to 3e-8 of their size while every other parameter agrees to 1e-11.
(Adam's eps = 1e-8 keeps that noise a hundred times smaller.)
"""

from __future__ import annotations

import numpy as np

from refimpl.layers.base import as_rng
from refimpl.layers.embedding import KeyedJaggedArray
from refimpl.models.transformer_dlrm import DLRM_Transformer
from refimpl.tools.check import PARITY_TOL, Check, hand_check, needs_torchrec
from refimpl.tools.check.cases.embedding import build_collection, draw_features
from refimpl.tools.check.cases.models import DENSE_IN, DENSE_SIZES, OVER_SIZES, draw_model_inputs
from refimpl.tools.check.cases.training import TRAINING_TOL, training_batches
from refimpl.tools.check.cases.transformer import split_key_bias
from refimpl.tools.gradcheck import DEFAULT_TOL, gradcheck, numerical_gradient
from refimpl.tools.loops import dlrm_loop

NAME = "DLRM_Transformer"
MODES = ("features", "batch")
COLLECTIONS = ("sum, t1 shared by f1 f3", "mean t1, sum t2", "weighted sum")
HEADS, LAYERS, SMALL_FEEDFORWARD = 2, 2, 4  # D = 4 (DENSE_SIZES[-1]): heads of width 2
STEP = 5e-4  # the finite differences' h (see above)
MIN_SPREAD, KINK_MARGIN = 0.2, 0.03
TRAINING_OPTIMIZERS = (("sgd", "sgd"), ("adam", "rowwise-adagrad"))
TRAINING_STEPS = 20
LEARNING_RATES = {"sgd": 0.05, "adam": 0.01, "rowwise-adagrad": 0.1}


def build_transformer_model(
    collection: str, attend_across: str, *, dim_feedforward=SMALL_FEEDFORWARD, layers=LAYERS,
    seed=None, dtype=np.float64,
):  # fmt: skip
    """A small DLRM_Transformer (F = 3, D = 4, H = 2, L = 2) over the named collection of
    :data:`refimpl.tools.check.cases.embedding.COLLECTIONS`.

    Its encoder layers start as copies of one layer with layer norms at γ = 1, β = 0 and zero
    attention biases (torch's initialisation); they are moved apart by a fixed random amount,
    so that a backward mixing up layers, or dropping a bias's gradient, cannot pass.
    """
    rng = as_rng(seed)
    ebc = build_collection(collection, seed=rng, dtype=dtype)
    model = DLRM_Transformer(
        ebc, DENSE_IN, DENSE_SIZES, OVER_SIZES, HEADS, layers, attend_across=attend_across,
        dim_feedforward=dim_feedforward, seed=rng, dtype=dtype,
    )  # fmt: skip
    for key, value in model.params.items():
        if key.startswith("inter_arch."):
            value += 0.1 * rng.standard_normal(value.shape).astype(dtype)
    return model


def condition_dense_arch(model) -> None:
    """Shift the dense arch's last layer so its D outputs are active and of order one (see
    the module's docstring); in place."""
    params = model.params
    last = len(model.dense_arch.layer_sizes) - 1
    params[f"dense_arch.model._mlp.{last}._linear.weight"][...] *= 2
    params[f"dense_arch.model._mlp.{last}._linear.bias"][...] += 1


def draw_transformer_inputs(rng, model, batch: int, attempts: int = 3000):
    """Dense features N(0, 1) and bags that are never empty (one id twice in bag 0), drawn
    until every token of ``[dense; sparse]`` has a spread (std over D) of at least
    :data:`MIN_SPREAD` and every ReLU input lies :data:`KINK_MARGIN` from its kink."""
    ebc = model.sparse_arch.embedding_bag_collection
    for _ in range(attempts):
        # draw_features leaves bag 0 of every key empty: draw B + 1 bags, drop bag 0 of each
        # key (its lengths; it has no ids), and bag 1, with its repeated id, comes first.
        drawn = draw_features(rng, ebc, batch + 1)
        lengths = drawn.lengths.reshape(len(drawn.keys), batch + 1)[:, 1:].reshape(-1)
        features = KeyedJaggedArray(drawn.keys, drawn.values, lengths, drawn.weights)
        dense = rng.standard_normal((batch, model.dense_in_features))  # (B, I)
        tokens = np.concatenate(
            [model.dense_arch(dense)[:, None, :], model.sparse_arch(features)], axis=1
        )  # (B, F+1, D)
        if (
            tokens.std(axis=-1).min() >= MIN_SPREAD
            and model.kink_distance(dense, features) >= KINK_MARGIN
        ):
            return dense, features
    raise RuntimeError(f"no well-conditioned inputs in {attempts} draws")


def _builder(collection, mode, batch):
    def build(rng):
        model = build_transformer_model(collection, mode, seed=rng)
        condition_dense_arch(model)
        return model, draw_transformer_inputs(rng, model, batch)

    return build


def parity_builder(collection, mode, batch):
    def build(rng):
        model = build_transformer_model(collection, mode, dim_feedforward=2048, seed=rng)
        condition_dense_arch(model)
        return model, draw_model_inputs(rng, model, batch, away_from_kinks=False)

    return build


def finite_difference_errors(model, inputs, seed=1, step=STEP) -> dict[str, float]:
    """:func:`refimpl.tools.gradcheck.gradcheck` per array (tables on their touched rows and a
    sample of the others), every ``in_proj_bias`` split by
    :func:`~refimpl.tools.check.cases.transformer.split_key_bias`."""
    result = gradcheck(model, inputs, seed=seed, step=step)
    errors = {a.name: a.rel_error for a in result.arrays if not a.name.endswith("in_proj_bias")}
    out, cache = model.forward(*inputs)
    upstream = as_rng(seed).standard_normal(out.shape)  # gradcheck's G
    *_, d_params = model.backward(upstream, cache)
    params = model.params
    for key in (k for k in params if k.endswith("in_proj_bias")):
        numeric = numerical_gradient(
            lambda: model.forward(*inputs)[0], params[key], step, upstream=upstream
        )
        errors.update(split_key_bias(key, d_params[key], numeric))
    return errors


def parity_errors(model, inputs, seed=1) -> dict[str, float]:
    """refimpl against TorchRec's model, every ``in_proj_bias`` split by ``split_key_bias``."""
    from refimpl.tools.gradcheck import rel_error
    from refimpl.tools.parity import paired_sparse_results, require_torchrec, torch_model_like

    torch, _ = require_torchrec()
    torch.manual_seed(seed)  # TorchRec's initial draw, loaded into model: the same every run
    ours, theirs = paired_sparse_results(model, torch_model_like(model), inputs, seed)
    errors = {}
    for name in ours:
        if name.endswith("in_proj_bias"):
            errors.update(split_key_bias(name, ours[name], theirs[name]))
        else:
            errors[name] = rel_error(ours[name], theirs[name])
    return errors


def training_errors(mode, dense, embedding, steps=TRAINING_STEPS, seed=0) -> dict[str, float]:
    """:func:`refimpl.tools.parity.compare_training_with_torch` on a fixed draw."""
    from refimpl.tools.parity import compare_training_with_torch

    rng = np.random.default_rng(seed)
    model = build_transformer_model("sum, t1 shared by f1 f3", mode, dim_feedforward=2048, seed=rng)
    condition_dense_arch(model)
    batches = training_batches(rng, model, steps)
    return compare_training_with_torch(
        model, batches, dense, LEARNING_RATES[dense], embedding, LEARNING_RATES[embedding]
    )


def _fd_check(config, build) -> Check:
    def run() -> float:
        model, inputs = build(np.random.default_rng(0))
        return max(finite_difference_errors(model, inputs).values())

    return Check(NAME, config, "finite-diff", run, DEFAULT_TOL)


def _parity_check(config, build) -> Check:
    def run() -> float:
        needs_torchrec()
        model, inputs = build(np.random.default_rng(0))
        return max(parity_errors(model, inputs).values())

    return Check(NAME, config, "parity", run, PARITY_TOL)


def _training_check(mode, dense, embedding) -> Check:
    def run() -> float:
        needs_torchrec()
        return max(training_errors(mode, dense, embedding).values())

    config = f"{mode}: {TRAINING_STEPS} steps, dense {dense}, tables {embedding}"
    return Check(f"{NAME} training", config, "parity", run, TRAINING_TOL)


def _hand(collection, mode):
    def compute():
        model = build_transformer_model(collection, mode, seed=0)
        dense = np.linspace(-2.0, 2.0, 4 * DENSE_IN).reshape(4, DENSE_IN)  # (B, I)
        _, features = draw_model_inputs(np.random.default_rng(5), model, 4, False)
        return model(dense, features), dlrm_loop(model, dense, features)

    return compute


def checks():
    for mode in MODES:
        for collection in COLLECTIONS:
            batches = (1, 2) if collection == COLLECTIONS[0] else (2,)
            for batch in batches:
                config = f"B={batch} {collection}, {mode} M={SMALL_FEEDFORWARD}"
                yield _fd_check(config, _builder(collection, mode, batch))
            config = f"B=4 {collection}, {mode} M={SMALL_FEEDFORWARD} linspace"
            yield hand_check(NAME, config, _hand(collection, mode))
            build = parity_builder(collection, mode, 5)
            yield _parity_check(f"B=5 {collection}, {mode} M=2048", build)
        for dense, embedding in TRAINING_OPTIMIZERS:
            yield _training_check(mode, dense, embedding)
