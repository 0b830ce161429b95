"""Training: optimizers that match PyTorch's step for step, and the metrics of TorchRec."""

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
    "CombinedOptimizer",
    "Optimizer",
    "RowWiseAdagrad",
    "accuracy",
    "auc",
    "calibration",
    "evaluate",
    "expected_auc",
    "log_loss",
    "normalized_entropy",
]
