"""Training a DLRM with NumPy alone: one step, the epochs, evaluation, checkpoints, resumption.

One training step is the whole of backprop in four calls::

    logits, cache = model.forward(dense, sparse)            # (B, 1)
    loss, loss_cache = loss_fn.forward(logits, labels)      # mean binary cross-entropy
    d_logits, _, _ = loss_fn.backward(1.0, loss_cache)      # (σ(logits) − labels) / B
    _, _, d_params = model.backward(d_logits, cache)        # tables as RowSparse
    optimizer.step(d_params)

(:func:`train_step`). Around it, :class:`Trainer` runs epochs over a data source
(:mod:`refimpl.data.source`), evaluates on the validation split after each, writes
``metrics.csv``, ``history.json``, ``curves.png`` and ``checkpoint.npz`` into its output
directory, and reports the test split's metrics at the end.

Resuming is exact. Nothing random happens during training except the order of the training
samples, and epoch e's order is drawn from a shuffle seed that is a fixed function of (seed,
e); so the position (epoch, batch) is the whole random state, and a run resumed from a
checkpoint takes the very steps the uninterrupted run would have taken, bit for bit.

Stopping is safe. Ctrl-C (SIGINT, and SIGTERM) only sets a flag; the loop stops between two
steps, saves a checkpoint and returns. A loss that is NaN or inf stops the run before that step
changes anything, and the last checkpoint is left as it was.

>>> from refimpl.data.synthetic import SyntheticCriteo
>>> data = SyntheticCriteo([20] * 4, num_train=512, seed=0)
>>> config = TrainConfig(model="dlrm", data="synthetic", embedding_dim=4,
...                      dense_arch_layer_sizes=[8, 4], over_arch_layer_sizes=[8, 1])
>>> model = build_model(config, data)
>>> optimizer = build_optimizer(model, "adam", 0.01, "rowwise-adagrad", 0.1)
>>> batch = next(data.batches("train", 64))
>>> losses = [train_step(model, BCEWithLogitsLoss(), optimizer, batch).loss for _ in range(20)]
>>> losses[-1] < losses[0]
True
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from refimpl.data.batch import Batch
from refimpl.data.source import DataSource, check_start, num_batches
from refimpl.layers.activations import get_activation
from refimpl.layers.embedding import EmbeddingBagCollection, EmbeddingBagConfig
from refimpl.layers.loss import BCEWithLogitsLoss
from refimpl.layers.transformer import ATTEND_ACROSS
from refimpl.models.deepfm import SimpleDeepFMNN
from refimpl.models.dlrm import DLRM, DLRM_DCN, DLRM_Baseline, DLRM_Projection
from refimpl.models.transformer_dlrm import DLRM_Transformer
from refimpl.train import metrics
from refimpl.train.checkpoint import (
    FILENAME,
    atomic_write,
    atomic_write_text,
    load_checkpoint,
    restore,
    save_checkpoint,
)
from refimpl.train.optim import SGD, Adagrad, Adam, CombinedOptimizer, RowWiseAdagrad

MODELS = {
    "dlrm": DLRM,
    "dcn": DLRM_DCN,
    "projection": DLRM_Projection,
    "transformer": DLRM_Transformer,
    "deepfm": SimpleDeepFMNN,
    "baseline": DLRM_Baseline,
}
DENSE_OPTIMIZERS = {"sgd": SGD, "adagrad": Adagrad, "adam": Adam}
EMBEDDING_OPTIMIZERS = {"sgd": SGD, "rowwise-adagrad": RowWiseAdagrad}
TABLE_PREFIX = "sparse_arch.embedding_bag_collection.embedding_bags."
METRICS = ("auc", "log_loss", "ne", "calibration", "accuracy")


# ----------------------------------------------------------------------------- one step


class NonFiniteLossError(FloatingPointError):
    """The loss of a step was NaN or inf; the step was not taken."""


class StepResult(NamedTuple):
    loss: float
    logits: np.ndarray  # (B, 1), before the update


def train_step(model, loss_fn, optimizer, batch: Batch) -> StepResult:
    """One step of training: forward, loss, backward, update (in place).

    Parameters
    ----------
    model : any model of :data:`MODELS`
    loss_fn : BCEWithLogitsLoss
    optimizer : Optimizer or CombinedOptimizer over ``model.params``
    batch : Batch
        B samples; dense features and labels are cast to the model's dtype.

    Returns
    -------
    StepResult
        The batch's mean loss and its logits (B, 1), both from before the update.

    Raises
    ------
    NonFiniteLossError
        The loss is NaN or inf; the parameters and the optimizer state are left unchanged.
    """
    dense = batch.dense.astype(model.dtype, copy=False)  # (B, I)
    labels = batch.labels.astype(model.dtype, copy=False)[:, None]  # (B, 1)
    logits, cache = model.forward(dense, batch.sparse())  # (B, 1)
    loss, loss_cache = loss_fn.forward(logits, labels)
    if not np.isfinite(loss):
        raise NonFiniteLossError(f"the loss is {float(loss)}")
    d_logits, _, _ = loss_fn.backward(1.0, loss_cache)  # (B, 1)
    _, _, d_params = model.backward(d_logits, cache)
    optimizer.step(d_params)
    return StepResult(float(loss), logits)


def build_optimizer(
    model,
    dense: str = "adam",
    dense_lr: float = 1e-3,
    embedding: str = "rowwise-adagrad",
    embedding_lr: float = 0.01,
) -> CombinedOptimizer:
    """One optimizer for the embedding tables and one for every other parameter.

    Parameters
    ----------
    model : any model of :data:`MODELS`
    dense : {"sgd", "adagrad", "adam"}
        For the dense layers (bottom and top MLPs, interaction), with PyTorch's defaults
        besides the learning rate.
    embedding : {"sgd", "rowwise-adagrad"}
        For the tables; their row-sparse gradients update only the rows of the batch.

    Returns
    -------
    CombinedOptimizer
        Groups ``"dense"`` and ``"embedding"``.
    """
    if dense not in DENSE_OPTIMIZERS:
        raise ValueError(
            f"dense optimizer: expected one of {list(DENSE_OPTIMIZERS)}, got {dense!r}"
        )
    if embedding not in EMBEDDING_OPTIMIZERS:
        raise ValueError(
            f"embedding optimizer: expected one of {list(EMBEDDING_OPTIMIZERS)}, got {embedding!r}"
        )
    _check_lr("dense_lr", dense_lr)
    _check_lr("embedding_lr", embedding_lr)
    params = model.params
    tables = {k: v for k, v in params.items() if k.startswith(TABLE_PREFIX)}
    others = {k: v for k, v in params.items() if k not in tables}
    return CombinedOptimizer(
        {
            "dense": DENSE_OPTIMIZERS[dense](others, lr=dense_lr),
            "embedding": EMBEDDING_OPTIMIZERS[embedding](tables, lr=embedding_lr),
        }
    )


def _check_lr(name: str, lr) -> float:
    if isinstance(lr, bool) or not isinstance(lr, int | float | np.integer | np.floating):
        raise TypeError(f"{name}: expected a learning rate (a number > 0), got {lr!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"{name}: expected a learning rate > 0, got {lr}")
    return float(lr)


# ------------------------------------------------------------------------- configuration


@dataclass
class TrainConfig:
    """Everything that defines a run (saved in its checkpoint, so a resumed run is the same).

    ``None`` sizes and hyper-parameters take the defaults of the data set
    (:data:`DATA_DEFAULTS`) when the run starts.

    Attributes
    ----------
    model : {"dlrm", "dcn", "projection", "transformer", "deepfm", "baseline"}
        DLRM, DLRM_DCN, DLRM_Projection, DLRM_Transformer, SimpleDeepFMNN or DLRM_Baseline
        (no interaction).
    data : str
        ``"synthetic"``, ``"movielens-100k"`` or ``"criteo:TRAIN[,VALIDATION[,TEST]]"``
        (Criteo-format TSV files, plain or .gz, one per split).
    epochs, batch_size, eval_batch_size : int
    dense_optimizer, dense_lr, embedding_optimizer, embedding_lr
        See :func:`build_optimizer`.
    dtype : {"float32", "float64"}
    seed : int
        Initialises the model and shuffles the training split.
    embedding_dim : int
        D, the width of every table.
    dense_arch_layer_sizes, over_arch_layer_sizes : list of int
        The bottom MLP (last size D) and the top MLP (last size 1).
    dcn_num_layers, dcn_low_rank_dim : int
        The cross network of ``"dcn"``.
    interaction_branch1_layer_sizes, interaction_branch2_layer_sizes : list of int
        The projection branches of ``"projection"`` (last sizes multiples of D).
    nhead, ntransformer_layers, dim_feedforward : int
        The encoder of ``"transformer"``: heads (D a multiple), layers, feed-forward width.
    attend_across : {"features", "batch"}
        ``"transformer"``: per-sample attention, or TorchRec's attention across the batch.
    hidden_layer_size, deep_fm_dimension : int
        ``"deepfm"``: the dense arch's hidden width (its layers are I → hidden → D, not
        ``dense_arch_layer_sizes``), the deep branch's width DI. Its over arch is one Linear
        (``over_arch_layer_sizes`` is not read).
    synthetic_tables, synthetic_rows, synthetic_train, synthetic_eval, data_seed : int
        ``"synthetic"``: F tables of this many rows, the training samples, the samples of the
        validation split and of the test split (each), the planted model's seed.
    criteo_rows : int
        ``"criteo:…"``: the rows of each of the 26 tables (ids are hashed modulo this).
    criteo_holdout : int
        ``"criteo:TRAIN"`` with one file: validation and test are its last this many lines
        (validation the first ⌈half⌉), training the lines before; 0 or None: no hold-out
        (:class:`refimpl.data.criteo.CriteoTSV` says why the last lines and not a hash).
    """

    model: str = "dlrm"
    data: str = "synthetic"
    epochs: int | None = None
    batch_size: int | None = None
    eval_batch_size: int = 8192
    dense_optimizer: str = "adam"
    dense_lr: float | None = None
    embedding_optimizer: str = "rowwise-adagrad"
    embedding_lr: float | None = None
    dtype: str = "float32"
    seed: int = 0
    embedding_dim: int | None = None
    dense_arch_layer_sizes: list[int] | None = None
    over_arch_layer_sizes: list[int] | None = None
    dcn_num_layers: int | None = None
    dcn_low_rank_dim: int | None = None
    interaction_branch1_layer_sizes: list[int] | None = None
    interaction_branch2_layer_sizes: list[int] | None = None
    nhead: int | None = None
    ntransformer_layers: int | None = None
    dim_feedforward: int | None = None
    attend_across: str = "features"
    hidden_layer_size: int | None = None
    deep_fm_dimension: int | None = None
    synthetic_tables: int | None = None
    synthetic_rows: int | None = None
    synthetic_train: int | None = None
    synthetic_eval: int | None = None
    data_seed: int = 0
    criteo_rows: int | None = None
    criteo_holdout: int | None = None

    def resolved(self) -> TrainConfig:
        """A copy with every None replaced by the data set's default, and checked."""
        kind = data_kind(self.data)
        defaults = DATA_DEFAULTS[kind]
        values = dataclasses.asdict(self)
        dim = values["embedding_dim"] or defaults["embedding_dim"]
        derived = {
            "embedding_dim": dim,
            "dense_arch_layer_sizes": [*defaults["dense_hidden"], dim],
            "interaction_branch1_layer_sizes": [*defaults["branch_hidden"], 4 * dim],
            "interaction_branch2_layer_sizes": [*defaults["branch_hidden"], 4 * dim],
        }
        for key, value in values.items():
            if value is None:
                values[key] = derived.get(key, defaults.get(key))
        config = TrainConfig(**values)
        config.check()
        return config

    def check(self) -> None:
        """ValueError/TypeError naming the first field that is wrong."""
        if self.model not in MODELS:
            raise ValueError(f"model: expected one of {list(MODELS)}, got {self.model!r}")
        data_kind(self.data)
        if self.dense_optimizer not in DENSE_OPTIMIZERS:
            raise ValueError(
                f"dense_optimizer: expected one of {list(DENSE_OPTIMIZERS)}, got "
                f"{self.dense_optimizer!r}"
            )
        if self.embedding_optimizer not in EMBEDDING_OPTIMIZERS:
            raise ValueError(
                f"embedding_optimizer: expected one of {list(EMBEDDING_OPTIMIZERS)}, got "
                f"{self.embedding_optimizer!r}"
            )
        _check_lr("dense_lr", self.dense_lr)
        _check_lr("embedding_lr", self.embedding_lr)
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype: expected 'float32' or 'float64', got {self.dtype!r}")
        for name in ("epochs", "batch_size", "eval_batch_size", "embedding_dim"):
            _positive(name, getattr(self, name))
        for name in ("seed", "data_seed"):
            _positive(name, getattr(self, name), minimum=0)
        if self.attend_across not in ATTEND_ACROSS:
            raise ValueError(
                f"attend_across: expected one of {ATTEND_ACROSS}, got {self.attend_across!r}"
            )
        for name in (
            "dcn_num_layers",
            "dcn_low_rank_dim",
            "nhead",
            "ntransformer_layers",
            "dim_feedforward",
            "hidden_layer_size",
            "deep_fm_dimension",
        ):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        for name in (
            "synthetic_tables",
            "synthetic_rows",
            "synthetic_train",
            "synthetic_eval",
            "criteo_rows",
        ):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        if self.criteo_holdout is not None:
            _positive("criteo_holdout", self.criteo_holdout, minimum=0)


def _positive(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    return int(value)


# Per data set: what a run takes unless told otherwise. The synthetic defaults are a
# configuration that reaches the planted Bayes-optimal AUC within 0.01 in a few minutes on two
# cores. Its tables have 100 rows: with SyntheticCriteo's 1,000, one or two epochs end at a
# validation AUC of 0.67, what the dense features alone give (0.668), with the planted pairs
# not found. MovieLens-100k's are 4 epochs: with these learning rates (a grid of embedding lr
# 0.01-0.1, dense lr 3e-4-3e-3, D 8 or 16, batch 256 or 1024 did no better than 0.005 of
# validation AUC, its noise), DLRM, DLRM_DCN and DLRM_Projection reach their lowest validation
# log loss at epoch 2-4 and then overfit (DLRM, seed 0: AUC 0.790 at epoch 4, 0.766 at 10); the
# baseline is still improving slowly at 8. About 4 s on two idle cores.
_COMMON = {
    "dense_optimizer": "adam",
    "dense_lr": 1e-3,
    "embedding_optimizer": "rowwise-adagrad",
    "embedding_lr": 0.05,
    "embedding_dim": 16,
    "dcn_num_layers": 3,
    "dcn_low_rank_dim": 64,
    "branch_hidden": [128],
    # smaller than TorchRec's 8 heads, 4 layers and 2048 (a transformer over 27 tokens of
    # width 16 needs no more to find pairs; 2048 would make each step ~30 times longer)
    "nhead": 2,
    "ntransformer_layers": 2,
    "dim_feedforward": 64,
    "hidden_layer_size": 64,
    "deep_fm_dimension": 32,
}
DATA_DEFAULTS = {
    "synthetic": _COMMON
    | {
        "epochs": 2,
        "batch_size": 512,
        "dense_hidden": [64],
        "over_arch_layer_sizes": [128, 64, 1],
        "synthetic_tables": 26,
        "synthetic_rows": 100,
        "synthetic_train": 1_000_000,
        "synthetic_eval": 100_000,
    },
    "movielens-100k": _COMMON
    | {
        "epochs": 4,
        "batch_size": 256,
        "dense_hidden": [32],
        "over_arch_layer_sizes": [64, 32, 1],
    },
    "criteo": _COMMON
    | {
        "epochs": 1,
        "batch_size": 2048,
        "dense_hidden": [512, 256],
        "over_arch_layer_sizes": [512, 256, 1],
        "criteo_rows": 100_000,
    },
}


def data_kind(data: str) -> str:
    """``"synthetic"``, ``"movielens-100k"`` or ``"criteo"`` (from ``"criteo:PATHS"``)."""
    if not isinstance(data, str):
        raise TypeError(f"data: expected a string, got {data!r}")
    if data in ("synthetic", "movielens-100k"):
        return data
    if data.startswith("criteo:") and data[len("criteo:") :]:
        return "criteo"
    raise ValueError(
        f"data: expected 'synthetic', 'movielens-100k' or 'criteo:TRAIN[,VALIDATION[,TEST]]' "
        f"(Criteo TSV files), got {data!r}"
    )


def build_source(config: TrainConfig, data_dir: str | os.PathLike | None = None) -> DataSource:
    """The data source ``config.data`` names, in the run's dtype.

    Raises ``FileNotFoundError`` for a Criteo file or a MovieLens cache that does not exist.
    """
    kind = data_kind(config.data)
    if kind == "synthetic":
        from refimpl.data.synthetic import SyntheticCriteo

        return SyntheticCriteo(
            num_embeddings=[config.synthetic_rows] * config.synthetic_tables,
            num_train=config.synthetic_train,
            num_validation=config.synthetic_eval,
            num_test=config.synthetic_eval,
            seed=config.data_seed,
            dtype=config.dtype,
        )
    if kind == "movielens-100k":
        from refimpl.data.movielens import MovieLens100k

        return MovieLens100k.load(data_dir, dtype=config.dtype)
    from refimpl.data.criteo import CriteoTSV

    paths = [Path(p) for p in config.data[len("criteo:") :].split(",")]
    if len(paths) > 3:
        raise ValueError(
            f"data: criteo: takes at most three files (train, validation, test), got {len(paths)}"
        )
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"data: no Criteo file {path}")
    holdout = config.criteo_holdout or 0
    if holdout and len(paths) > 1:
        raise ValueError(
            f"criteo_holdout: holds out lines of a single file; {config.data} names "
            f"{len(paths)}, so validation and test come from those files already"
        )
    splits = dict(zip(("train", "validation", "test"), paths, strict=False))
    return CriteoTSV(splits, config.criteo_rows, holdout=holdout, dtype=config.dtype)


def build_model(config: TrainConfig, source: DataSource):
    """The model ``config`` describes, sized by ``source``: one table ``t_<key>`` per key.

    ``config`` must be resolved (:meth:`TrainConfig.resolved`) where it has None sizes.
    """
    dtype = np.dtype(config.dtype)
    rng = np.random.default_rng(config.seed)
    tables = [
        EmbeddingBagConfig(rows, config.embedding_dim, f"t_{key}", [key])
        for key, rows in zip(source.keys, source.num_embeddings, strict=True)
    ]
    ebc = EmbeddingBagCollection(tables, seed=rng, dtype=dtype)
    args = (
        ebc,
        source.dense_in_features,
        config.dense_arch_layer_sizes,
        config.over_arch_layer_sizes,
    )
    if config.model == "dcn":
        return DLRM_DCN(
            *args, config.dcn_num_layers, config.dcn_low_rank_dim, seed=rng, dtype=dtype
        )
    if config.model == "projection":
        return DLRM_Projection(
            *args,
            config.interaction_branch1_layer_sizes,
            config.interaction_branch2_layer_sizes,
            seed=rng,
            dtype=dtype,
        )
    if config.model == "transformer":
        return DLRM_Transformer(
            *args, config.nhead, config.ntransformer_layers, attend_across=config.attend_across,
            dim_feedforward=config.dim_feedforward, seed=rng, dtype=dtype,
        )  # fmt: skip
    if config.model == "deepfm":
        return SimpleDeepFMNN(
            source.dense_in_features, ebc, config.hidden_layer_size, config.deep_fm_dimension,
            seed=rng, dtype=dtype,
        )  # fmt: skip
    return MODELS[config.model](*args, seed=rng, dtype=dtype)


def shuffle_seed(seed: int, epoch: int) -> int:
    """The training split's shuffle seed in epoch ``epoch``: a fixed function of both."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


# ---------------------------------------------------------------------------- evaluation


def predict(model, source: DataSource, split: str, batch_size: int = 8192, stop=None):
    """``(labels (n,), probabilities (n,))`` of the model on a whole split.

    ``stop()`` is asked between batches; when it returns True, None is returned instead.
    """
    sigmoid = get_activation("sigmoid").forward
    labels, probabilities = [], []
    for batch in source.batches(split, batch_size):
        if stop is not None and stop():
            return None
        dense = batch.dense.astype(model.dtype, copy=False)
        logits = model(dense, batch.sparse())  # (B, 1)
        labels.append(batch.labels)
        probabilities.append(sigmoid(logits[:, 0].astype(np.float64)))
    if not labels:
        raise ValueError(f"split: {split!r} has no samples to evaluate on")
    return np.concatenate(labels), np.concatenate(probabilities)


def split_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """:func:`refimpl.train.metrics.evaluate`, with NaN for a metric the split cannot define
    (AUC with one class only, calibration without positives)."""
    functions = {
        "auc": metrics.auc,
        "log_loss": metrics.log_loss,
        "ne": metrics.normalized_entropy,
        "calibration": metrics.calibration,
        "accuracy": metrics.accuracy,
    }
    out = {}
    for name, function in functions.items():
        try:
            out[name] = function(labels, probabilities)
        except ValueError:
            out[name] = float("nan")
    return out


def finite_or_null(value):
    """``value`` with every NaN or infinite float replaced by None (JSON's null), recursively.

    ``json.dumps`` writes NaN as the bare word ``NaN``, which is not JSON: strict parsers
    (JavaScript's, jq) refuse the whole file. A metric a split cannot define is null instead.

    >>> finite_or_null({"auc": float("nan"), "curve": [1.0, float("inf")], "epoch": 2})
    {'auc': None, 'curve': [1.0, None], 'epoch': 2}
    """
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_null(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ------------------------------------------------------------------------------ the loop


@dataclass
class Position:
    """Where a run is: what a checkpoint needs, besides the weights, to continue it exactly."""

    epoch: int = 0  # the epoch in progress (0-based); == epochs once all are done
    batch: int = 0  # batches of that epoch already taken
    step: int = 0  # optimizer steps over the whole run
    samples: int = 0  # training samples over the whole run
    epoch_loss_sum: float = 0.0  # Σ loss·B over this epoch's batches so far
    epoch_samples: int = 0
    epoch_seconds: float = 0.0  # time spent on this epoch's training so far
    window_loss_sum: float = 0.0  # Σ loss over the steps since the last point of the curve
    window_steps: int = 0


@dataclass
class History:
    """What ``history.json`` holds: per-epoch records, the training-loss curve, test metrics."""

    epochs: list = field(default_factory=list)
    curve: list = field(default_factory=list)  # {"step", "samples", "loss"} every few steps
    test: dict | None = None
    bayes_auc: dict | None = None  # synthetic data: the planted model's AUC per split


class TrainResult(NamedTuple):
    status: str  # "done", "interrupted" (Ctrl-C or SIGTERM) or "paused" (stop_after)
    out_dir: Path
    position: Position
    history: History


class _StopFlag:
    """SIGINT/SIGTERM set a flag that the loop reads between steps (installed only in the main
    thread). A second Ctrl-C raises KeyboardInterrupt at once; the checkpoint on disk is still
    whole, since it is only ever replaced by a rename."""

    def __init__(self):
        self.requested = False
        self.signal_name = ""
        self._previous = {}

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


class Trainer:
    """A training run: model, optimizer, data, position and history, and its output directory.

    Start one with ``Trainer(config, out_dir)``, continue one with ``Trainer.resume(out_dir)``;
    then :meth:`run`.

    Parameters
    ----------
    config : TrainConfig
    out_dir : path
        Created if needed; must not hold a run already (resume that one instead).
    source : DataSource, optional
        Train on this source instead of the one ``config.data`` names.
    data_dir : path, optional
        The data cache (MovieLens-100k).
    log : callable
        Receives each line of the report (default ``print``).
    plot : bool
        Draw ``curves.png`` after each epoch (needs matplotlib; skipped without it).
    """

    def __init__(
        self,
        config: TrainConfig,
        out_dir: str | os.PathLike,
        *,
        source: DataSource | None = None,
        data_dir: str | os.PathLike | None = None,
        log: Callable[[str], None] = print,
        plot: bool = True,
        _restoring: bool = False,
    ):
        self.config = config.resolved()
        self.out_dir = Path(out_dir)
        self.checkpoint_path = self.out_dir / FILENAME
        if not _restoring and self.checkpoint_path.exists():
            raise ValueError(
                f"out_dir: {self.out_dir} already holds a run ({FILENAME}); resume it or choose "
                "another output directory"
            )
        self.source = build_source(self.config, data_dir) if source is None else source
        self.model = build_model(self.config, self.source)
        self.optimizer = build_optimizer(
            self.model,
            self.config.dense_optimizer,
            self.config.dense_lr,
            self.config.embedding_optimizer,
            self.config.embedding_lr,
        )
        self.loss_fn = BCEWithLogitsLoss()
        self.position = Position()
        self.history = History()
        self.log = log
        self.plot = plot
        count = num_batches(self.source, "train", self.config.batch_size)
        self.curve_every = max(1, count // 25) if count else 200  # steps per point of the curve
        if not _restoring:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.save()  # a run always has a last good checkpoint, from its first moment

    @classmethod
    def resume(
        cls,
        out_dir: str | os.PathLike,
        *,
        epochs: int | None = None,
        expect: dict | None = None,
        source: DataSource | None = None,
        data_dir: str | os.PathLike | None = None,
        log: Callable[[str], None] = print,
        plot: bool = True,
    ) -> Trainer:
        """Continue the run saved in ``out_dir``, optionally for more (or fewer) ``epochs``.

        ``expect`` maps config fields to the values the caller means to resume with (say the
        command line's ``--model``); any that differs from the saved run is a ValueError, as
        is a checkpoint whose parameters do not fit the model its configuration builds.
        Nothing is changed on error.
        """
        checkpoint = load_checkpoint(Path(out_dir) / FILENAME)
        meta = checkpoint.meta
        try:
            config = TrainConfig(**meta["config"])
            position = Position(**meta["position"])
            history = History(**meta["history"])
        except (KeyError, TypeError) as error:
            raise ValueError(
                f"checkpoint: {out_dir}/{FILENAME} has a malformed meta.json: {error}"
            ) from None
        for key, value in (expect or {}).items():
            saved = getattr(config, key)
            if value is not None and value != saved:
                raise ValueError(
                    f"{key}: the run in {out_dir} was trained with {key} = {saved!r}, not "
                    f"{value!r}; a checkpoint continues its own run only"
                )
        if epochs is not None and epochs != config.epochs:
            config = dataclasses.replace(config, epochs=epochs)
            history.test = None  # the test metrics belong to the end of the run, now later
        trainer = cls(
            config, out_dir, source=source, data_dir=data_dir, log=log, plot=plot,
            _restoring=True,
        )  # fmt: skip
        restore(checkpoint, trainer.model, trainer.optimizer)
        trainer.position, trainer.history = position, history
        return trainer

    # -- saving --------------------------------------------------------------------------------

    def save(self) -> None:
        """Write the checkpoint (atomically) at the current position."""
        meta = {
            "config": dataclasses.asdict(self.config),
            "position": dataclasses.asdict(self.position),
            "history": dataclasses.asdict(self.history),
        }
        save_checkpoint(self.checkpoint_path, self.model.params, self.optimizer.state_dict(), meta)

    def write_reports(self, plot: bool = True) -> None:
        """``history.json``, ``metrics.csv`` and (if ``plot``) ``curves.png`` so far."""
        history = {"config": dataclasses.asdict(self.config), **dataclasses.asdict(self.history)}
        text = json.dumps(finite_or_null(history), indent=1, allow_nan=False)
        atomic_write_text(self.out_dir / "history.json", text + "\n")
        text = io.StringIO()
        columns = ["epoch", "step", "samples", "train_loss"]
        columns += [f"validation_{m}" for m in METRICS] + ["seconds", "samples_per_second"]
        writer = csv.DictWriter(text, columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for record in self.history.epochs:
            row = dict(record)
            row.update({f"validation_{k}": v for k, v in (record["validation"] or {}).items()})
            writer.writerow(row)
        atomic_write_text(self.out_dir / "metrics.csv", text.getvalue())
        if plot and self.plot:
            plot_history(self.history, self.out_dir / "curves.png")

    # -- running -------------------------------------------------------------------------------

    def run(
        self, *, progress: bool | None = None, stop_after: int | None = None,
        checkpoint_every: int = 0,
    ) -> TrainResult:  # fmt: skip
        """Train to the last epoch, evaluating after each; then the test split.

        Parameters
        ----------
        progress : bool or None
            A tqdm progress bar (running loss, samples/s); None shows it on a terminal only.
        stop_after : int, optional
            Take at most this many steps in this call, then save and return ("paused").
        checkpoint_every : int
            Also save every this many steps (0: at the end of each epoch only).

        Raises
        ------
        NonFiniteLossError
            A step's loss was NaN or inf; the last checkpoint is left as it was.
        """
        config, pos = self.config, self.position
        taken = 0
        with _StopFlag() as stop:
            if self.history.bayes_auc is None and hasattr(self.source, "bayes_auc"):
                self.history.bayes_auc = {
                    split: self.source.bayes_auc(split)
                    for split in ("validation", "test")
                    if split in self.source.splits and self.source.num_samples(split)
                }
            while pos.epoch < config.epochs:
                taken, finished = self._train_epoch(
                    stop, progress, stop_after, taken, checkpoint_every
                )
                if stop():
                    return self._stopped("interrupted", stop.signal_name)
                if not finished:
                    return self._stopped("paused", f"after {taken} steps")
                validation = None
                if "validation" in self.source.splits:
                    predicted = predict(
                        self.model, self.source, "validation", config.eval_batch_size, stop
                    )
                    if predicted is None:
                        return self._stopped("interrupted", stop.signal_name)
                    validation = split_metrics(*predicted)
                self._end_epoch(validation)
                if stop_after is not None and taken >= stop_after and pos.epoch < config.epochs:
                    return self._stopped("paused", f"after {taken} steps")
            if self.history.test is None and "test" in self.source.splits:
                predicted = predict(self.model, self.source, "test", config.eval_batch_size, stop)
                if predicted is None:
                    return self._stopped("interrupted", stop.signal_name)
                self.history.test = split_metrics(*predicted)
                self.save()
            self.write_reports(plot=False)  # the test metrics are not on the curves
        self._report_test()
        return TrainResult("done", self.out_dir, pos, self.history)

    def _train_epoch(self, stop, progress, stop_after, taken, checkpoint_every):
        """Steps of the current epoch from its current batch.

        Returns ``(steps taken in this call so far, whether the epoch's batches ran out)``.
        """
        config, pos = self.config, self.position
        seed = shuffle_seed(config.seed, pos.epoch)
        check_start(self.source, "train", config.batch_size, pos.batch)
        bar = _progress_bar(self, progress)
        recent = deque(maxlen=100)
        clock = time.perf_counter()
        finished = False
        try:
            for batch in self.source.batches("train", config.batch_size, seed, start=pos.batch):
                if stop() or (stop_after is not None and taken >= stop_after):
                    break
                try:
                    result = train_step(self.model, self.loss_fn, self.optimizer, batch)
                except NonFiniteLossError as error:
                    raise NonFiniteLossError(
                        f"{error} at epoch {pos.epoch + 1}, batch {pos.batch + 1} (step "
                        f"{pos.step + 1}): training stopped before that step changed anything. "
                        f"The last checkpoint, {self.checkpoint_path}, is kept as it was; a "
                        "lower learning rate (--dense-lr, --embedding-lr) may help."
                    ) from None
                taken += 1
                pos.batch += 1
                pos.step += 1
                pos.samples += batch.size
                pos.epoch_samples += batch.size
                pos.epoch_loss_sum += result.loss * batch.size
                pos.window_loss_sum += result.loss
                pos.window_steps += 1
                if pos.window_steps == self.curve_every:
                    self.history.curve.append(
                        {
                            "step": pos.step,
                            "samples": pos.samples,
                            "loss": pos.window_loss_sum / pos.window_steps,
                        }
                    )
                    pos.window_loss_sum, pos.window_steps = 0.0, 0
                recent.append(result.loss)
                if bar is not None:
                    bar.set_postfix(loss=f"{np.mean(recent):.4f}", refresh=False)
                    bar.update(batch.size)
                if checkpoint_every and pos.step % checkpoint_every == 0:
                    pos.epoch_seconds += time.perf_counter() - clock
                    clock = time.perf_counter()
                    self.save()
            else:
                finished = True
        finally:
            pos.epoch_seconds += time.perf_counter() - clock
            if bar is not None:
                bar.close()
        return taken, finished

    def _end_epoch(self, validation: dict | None) -> None:
        pos = self.position
        seconds = pos.epoch_seconds
        record = {
            "epoch": pos.epoch + 1,
            "step": pos.step,
            "samples": pos.samples,
            "train_loss": pos.epoch_loss_sum / max(pos.epoch_samples, 1),
            "validation": validation,
            "seconds": seconds,
            "samples_per_second": pos.epoch_samples / seconds if seconds > 0 else float("nan"),
        }
        self.history.epochs.append(record)
        pos.epoch += 1
        pos.batch = 0
        pos.epoch_loss_sum, pos.epoch_samples, pos.epoch_seconds = 0.0, 0, 0.0
        self.save()
        self.write_reports()
        self.log(_epoch_line(record, self.config.epochs, self.history.bayes_auc))

    def _stopped(self, status: str, why: str) -> TrainResult:
        self.save()
        self.write_reports()
        pos = self.position
        self.log(
            f"{status} ({why}) at epoch {pos.epoch + 1}, batch {pos.batch} (step {pos.step}); "
            f"checkpoint saved: continue with python -m refimpl train --resume {self.out_dir}"
        )
        return TrainResult(status, self.out_dir, pos, self.history)

    def _report_test(self) -> None:
        if self.history.test is None:
            self.log("no test split: no test metrics")
            return
        bayes = (self.history.bayes_auc or {}).get("test")
        lines = ["test metrics:"]
        for name in METRICS:
            value = self.history.test[name]
            extra = f"   (planted Bayes-optimal AUC {bayes:.4f})" if name == "auc" and bayes else ""
            lines.append(f"  {name:<12} {value:.4f}{extra}")
        self.log("\n".join(lines))


def _progress_bar(trainer: Trainer, progress: bool | None):
    """A tqdm bar over the epoch's samples, or None (no tqdm, or not asked for)."""
    if progress is False:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    pos, config = trainer.position, trainer.config
    total = trainer.source.num_samples("train")
    return tqdm(
        total=total,
        initial=pos.epoch_samples,
        unit="sample",
        unit_scale=True,
        desc=f"epoch {pos.epoch + 1}/{config.epochs}",
        disable=None if progress is None else False,
        dynamic_ncols=True,
    )


def _epoch_line(record: dict, epochs: int, bayes: dict | None) -> str:
    line = (
        f"epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f}, "
        f"{record['samples_per_second']:,.0f} samples/s"
    )
    validation = record["validation"]
    if validation:
        line += "; validation " + ", ".join(f"{k} {validation[k]:.4f}" for k in METRICS)
        if bayes and "validation" in bayes:
            line += f" (planted Bayes-optimal AUC {bayes['validation']:.4f})"
    return line


def plot_history(history: History, path: str | os.PathLike) -> bool:
    """Training and validation curves as a PNG: loss on the left, AUC on the right.

    Needs matplotlib (imported here, not before); returns False without it.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    figure = Figure(figsize=(10, 4))
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    figure.subplots_adjust(left=0.08, right=0.98, bottom=0.13, top=0.92, wspace=0.25)
    if history.curve:
        left.plot(
            [p["samples"] for p in history.curve],
            [p["loss"] for p in history.curve],
            label="train (mean over a few steps)",
            lw=1,
        )
    rows = [r for r in history.epochs if r["validation"]]
    samples = [r["samples"] for r in rows]
    if rows:
        left.plot(samples, [r["validation"]["log_loss"] for r in rows], "o-", label="validation")
        right.plot(samples, [r["validation"]["auc"] for r in rows], "o-", label="validation")
    if history.bayes_auc and "validation" in history.bayes_auc:
        right.axhline(
            history.bayes_auc["validation"], ls="--", c="gray", label="planted Bayes-optimal AUC"
        )
    left.set(xlabel="training samples", ylabel="log loss", title="loss")
    right.set(xlabel="training samples", ylabel="AUC", title="validation AUC")
    for axes in (left, right):
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend()
    atomic_write(path, lambda f: figure.savefig(f, format="png", dpi=100))
    return True


def train(config: TrainConfig, out_dir: str | os.PathLike, **options) -> TrainResult:
    """``Trainer(config, out_dir).run(**options)``: a whole run in one call."""
    names = ("source", "data_dir", "log", "plot")
    trainer_options = {k: options.pop(k) for k in names if k in options}
    return Trainer(config, out_dir, **trainer_options).run(**options)


__all__ = [
    "DATA_DEFAULTS",
    "NonFiniteLossError",
    "Position",
    "StepResult",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "build_model",
    "build_optimizer",
    "build_source",
    "predict",
    "shuffle_seed",
    "split_metrics",
    "train",
    "train_step",
]
