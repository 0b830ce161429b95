"""Training: optimizers that match PyTorch's step for step, the metrics of TorchRec, the
training loop and its checkpoints (``python -m refimpl train``)."""

from refimpl.train.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from refimpl.train.loop import (
    NonFiniteLossError,
    StepResult,
    TrainConfig,
    Trainer,
    TrainResult,
    build_model,
    build_optimizer,
    train,
    train_step,
)
from refimpl.train.metrics import (
    accuracy,
    auc,
    calibration,
    evaluate,
    expected_auc,
    log_loss,
    normalized_entropy,
)
from refimpl.train.optim import (
    SGD,
    Adagrad,
    Adam,
    CombinedOptimizer,
    Optimizer,
    RowWiseAdagrad,
)

__all__ = [
    "SGD",
    "Adagrad",
    "Adam",
    "Checkpoint",
    "CombinedOptimizer",
    "NonFiniteLossError",
    "Optimizer",
    "RowWiseAdagrad",
    "StepResult",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "accuracy",
    "auc",
    "build_model",
    "build_optimizer",
    "calibration",
    "evaluate",
    "expected_auc",
    "load_checkpoint",
    "log_loss",
    "normalized_entropy",
    "save_checkpoint",
    "train",
    "train_step",
]
