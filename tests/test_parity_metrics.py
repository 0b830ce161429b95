"""Metrics against torchmetrics and torchrec.metrics (skipped without the parity extra)."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tm = pytest.importorskip("torchmetrics.functional.classification")
rec_auc = pytest.importorskip("torchrec.metrics.auc")
rec_ne = pytest.importorskip("torchrec.metrics.ne")
rec_cal = pytest.importorskip("torchrec.metrics.calibration")
rec_acc = pytest.importorskip("torchrec.metrics.accuracy")

from refimpl.train import accuracy, auc, calibration, log_loss, normalized_entropy  # noqa: E402

pytestmark = pytest.mark.parity


def sample(rng, size, ties=False):
    labels = (rng.uniform(size=size) < 0.3).astype(float)
    labels[:2] = [0, 1]
    logits = rng.standard_normal(size) + labels
    if ties:
        logits = np.round(logits)
    return labels, 1 / (1 + np.exp(-logits))


@pytest.mark.parametrize("ties", [False, True])
def test_auc_and_accuracy_match_torchmetrics(rng, ties):
    labels, pred = sample(rng, 500, ties)
    p, y = torch.tensor(pred), torch.tensor(labels).long()
    theirs_auc = tm.binary_auroc(p, y)
    # torchmetrics sums its ROC curve in float32: agreement to float32 precision, not beyond
    assert theirs_auc.dtype == torch.float32
    assert auc(labels, pred) == pytest.approx(theirs_auc.item(), rel=1e-6)
    # torchmetrics thresholds with >, TorchRec and ours with >=: equal once no prediction is 0.5
    above_half = np.nextafter(0.5, 1.0)
    theirs_acc = tm.binary_accuracy(p, y).item()
    assert accuracy(labels, pred, threshold=above_half) == pytest.approx(theirs_acc, rel=1e-7)
    assert (accuracy(labels, pred) == pytest.approx(theirs_acc, rel=1e-7)) == (not ties)


def test_metrics_match_torchrec(rng):
    labels, pred = sample(rng, 500)
    y, p, w = torch.tensor(labels), torch.tensor(pred), torch.ones(500, dtype=torch.float64)
    theirs_auc = rec_auc.compute_auc(1, [p[None]], [y[None]], [w[None]]).item()
    assert auc(labels, pred) == pytest.approx(theirs_auc, abs=1e-12)
    states = rec_ne.get_ne_states(y, p, w, eta=1e-12)
    ne = rec_ne.compute_ne(
        states["cross_entropy_sum"],
        states["weighted_num_samples"],
        states["pos_labels"],
        states["neg_labels"],
        eta=1e-12,
    )
    assert normalized_entropy(labels, pred) == pytest.approx(ne.item(), rel=1e-12)
    bits = rec_ne.compute_logloss(
        states["cross_entropy_sum"], states["pos_labels"], states["neg_labels"], eta=1e-12
    )
    assert log_loss(labels, pred) == pytest.approx(bits.item() * math.log(2), rel=1e-12)
    cal = rec_cal.get_calibration_states(y, p, w)
    theirs_cal = rec_cal.compute_calibration(cal["calibration_num"], cal["calibration_denom"])
    assert calibration(labels, pred) == pytest.approx(theirs_cal.item(), rel=1e-12)
    pred[:3] = 0.5  # TorchRec's threshold counts 0.5 as positive, as ours does
    acc = rec_acc.get_accuracy_states(y, torch.tensor(pred), w)
    theirs_acc = rec_acc.compute_accuracy(acc["accuracy_sum"], acc["weighted_num_samples"])
    assert accuracy(labels, pred) == pytest.approx(theirs_acc.item(), abs=1e-15)


def test_torchrec_auc_depends_on_the_order_of_tied_predictions():
    """Why ours counts ties one half: TorchRec's value for the same tie moves with the order."""
    w, p = torch.ones(2, dtype=torch.float64), torch.tensor([0.5, 0.5], dtype=torch.float64)
    values = {
        rec_auc.compute_auc(1, [p[None]], [torch.tensor(order)[None]], [w[None]]).item()
        for order in ([1.0, 0.0], [0.0, 1.0])
    }
    assert len(values) == 2 and 0.5 not in values
    assert auc([1, 0], [0.5, 0.5]) == auc([0, 1], [0.5, 0.5]) == 0.5
