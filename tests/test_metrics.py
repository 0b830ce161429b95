"""Metrics: AUC against brute-force pair counting, the others against hand values; bad input."""

import numpy as np
import pytest

from refimpl.train import (
    accuracy,
    auc,
    calibration,
    evaluate,
    expected_auc,
    log_loss,
    normalized_entropy,
)


def pairs_auc(pos, neg, scores):
    """Σ_{i≠j} pos_i neg_j ([s_i > s_j] + ½[s_i = s_j]) / Σ_{i≠j} pos_i neg_j, pair by pair."""
    weight = np.outer(pos, neg)  # (B, B): i as the positive, j as the negative
    np.fill_diagonal(weight, 0)
    above = (scores[:, None] > scores[None, :]) + 0.5 * (scores[:, None] == scores[None, :])
    return np.sum(weight * above) / np.sum(weight)


@pytest.mark.parametrize("levels", [None, 3, 10])  # continuous scores, or heavy ties
@pytest.mark.parametrize("size", [2, 7, 300])
def test_auc_equals_brute_force_pair_counting(rng, levels, size):
    for _ in range(5):
        labels = rng.integers(0, 2, size)
        labels[:2] = [0, 1]
        scores = rng.standard_normal(size)
        if levels:
            scores = rng.integers(0, levels, size).astype(float)
        assert auc(labels, scores) == pytest.approx(
            pairs_auc(labels, 1 - labels, scores), abs=1e-15
        )


def test_auc_hand_values_and_invariances(rng):
    assert auc([0, 1], [0.3, 0.7]) == 1.0
    assert auc([1, 0], [0.3, 0.7]) == 0.0
    assert auc([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5]) == 0.5
    labels, scores = rng.integers(0, 2, 200), rng.standard_normal(200)
    order = rng.permutation(200)
    assert auc(labels[order], scores[order]) == auc(labels, scores)
    assert auc(labels, 1 / (1 + np.exp(-scores))) == pytest.approx(auc(labels, scores))
    assert auc(labels, -scores) == pytest.approx(1 - auc(labels, scores))
    assert auc(labels.astype(bool), scores) == auc(labels, scores)


def test_expected_auc_equals_brute_force_and_ranking_by_probability_is_best(rng):
    p = rng.uniform(size=60)
    p[:10] = p[10:20]  # ties in the probabilities
    scores = p + rng.normal(0, 0.2, 60)
    assert expected_auc(p, scores) == pytest.approx(pairs_auc(p, 1 - p, scores), abs=1e-14)
    assert expected_auc(p, p) == pytest.approx(pairs_auc(p, 1 - p, p), abs=1e-14)
    for _ in range(20):
        assert expected_auc(p, p + rng.normal(0, 0.1, 60)) <= expected_auc(p, p)
    labels = rng.integers(0, 2, 60)
    assert expected_auc(labels, scores) == pytest.approx(auc(labels, scores), abs=1e-15)


def test_expected_auc_is_what_redrawn_labels_pool_to(rng):
    p = rng.uniform(size=40)
    scores = p + rng.normal(0, 0.3, 40)
    above = (scores[:, None] > scores[None, :]).astype(float)  # no ties in continuous scores
    labels = rng.uniform(size=(20000, 40)) < p  # (draws, B)
    pos, neg = labels.astype(float), 1.0 - labels
    ranked = np.einsum("di,ij,dj->", pos, above, neg)  # every draw's pairs, pooled
    total = np.sum(pos.sum(1) * neg.sum(1))
    assert ranked / total == pytest.approx(expected_auc(p, scores), abs=3e-3)


def test_log_loss_ne_calibration_accuracy_hand_values():
    labels = np.array([1, 0, 1, 1])
    pred = np.array([0.9, 0.2, 0.6, 0.5])
    loss = -(np.log(0.9) + np.log(0.8) + np.log(0.6) + np.log(0.5)) / 4
    assert log_loss(labels, pred) == pytest.approx(loss, rel=1e-15)
    base = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
    assert normalized_entropy(labels, pred) == pytest.approx(loss / base, rel=1e-15)
    assert normalized_entropy(labels, np.full(4, 0.75)) == pytest.approx(1.0, rel=1e-15)
    assert calibration(labels, pred) == pytest.approx(2.2 / 3, rel=1e-15)
    assert accuracy(labels, pred) == 1.0  # 0.5 counts as a positive
    assert accuracy(labels, pred, threshold=0.55) == 0.75
    assert evaluate(labels, pred) == {
        "auc": 1.0,
        "log_loss": log_loss(labels, pred),
        "ne": normalized_entropy(labels, pred),
        "calibration": calibration(labels, pred),
        "accuracy": 1.0,
    }


def test_log_loss_clamps_certain_mistakes():
    assert log_loss([1, 0], [0.0, 1.0]) == pytest.approx(-np.log(1e-12), rel=1e-6)
    assert log_loss([1, 0], [1.0, 0.0]) == pytest.approx(1e-12, rel=1e-3)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: auc([0, 1, 1], [0.1, 0.2]), ValueError, "same length B, got 3 and 2"),
        (lambda: auc([], []), ValueError, "at least one sample"),
        (lambda: auc([0, 2], [0.1, 0.2]), ValueError, "labels: expected 0 or 1"),
        (lambda: auc([0, np.nan], [0.1, 0.2]), ValueError, "labels: expected finite"),
        (lambda: auc([0, 1], [0.1, np.nan]), ValueError, "predictions: expected finite"),
        (lambda: auc([1, 1], [0.1, 0.2]), ValueError, "both classes"),
        (lambda: auc([[0, 1]], [[0.1, 0.2]]), ValueError, "expected shape \\(B,\\)"),
        (lambda: auc(["a", "b"], [0.1, 0.2]), TypeError, "numeric"),
        (lambda: log_loss([0, 1], [0.1, 1.2]), ValueError, "probabilities in \\[0, 1\\]"),
        (lambda: normalized_entropy([0, 0], [0.1, 0.2]), ValueError, "both classes"),
        (lambda: calibration([0, 0], [0.1, 0.2]), ValueError, "at least one positive"),
        (lambda: accuracy([0, 1], [-1.0, 2.0]), ValueError, "sigmoid"),
        (lambda: expected_auc([0.5, 1.5], [1.0, 2.0]), ValueError, "probabilities: expected"),
        (lambda: expected_auc([1.0, 1.0], [1.0, 2.0]), ValueError, "no positive–negative"),
    ],
)
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()
