"""Evaluation metrics of click models, as TorchRec's ``torchrec.metrics`` define them.

All take ``labels`` (B,) of 0/1 and ``predictions`` (B,): probabilities for the log loss, NE,
calibration and accuracy; any real scores (logits too) for the AUC. Empty inputs, lengths that
differ, labels other than 0/1 and NaN raise a ``ValueError``.

- :func:`auc`: the probability that a random positive scores above a random negative, ties
  counting one half (the Mann–Whitney statistic with average ranks); O(B log B).
- :func:`log_loss`: mean binary cross-entropy in nats, predictions clamped to [eta, 1 − eta].
- :func:`normalized_entropy`: log loss ÷ the entropy of the base rate (the log loss of always
  predicting the mean label); below 1 means better than knowing only the click rate.
- :func:`calibration`: Σ predictions ÷ Σ labels; 1 is calibrated.
- :func:`accuracy`: the fraction with ``(prediction >= threshold) == label`` (TorchRec's
  ``>=``; torchmetrics counts a prediction equal to the threshold as negative).
- :func:`expected_auc`: the AUC a scorer earns on average when labels are drawn from known
  probabilities (used to state the best AUC synthetic data allows).

TorchRec's ``LOG_LOSS`` is the same cross-entropy in bits (log base 2); NE is a ratio, the same
in either unit. TorchRec's AUC sorts by prediction and integrates the curve sample by sample,
so tied predictions are not averaged: its value then depends on the order the sort leaves them
in; ours (and torchmetrics') counts each tied positive–negative pair as one half.
"""

from __future__ import annotations

import numpy as np

ETA = 1e-12  # TorchRec's clamp of probabilities in NE and log loss


def _vectors(first: str, a, second: str, b) -> tuple[np.ndarray, np.ndarray]:
    """Two finite float64 (B,) arrays of one length B >= 1, or a ValueError/TypeError."""
    a, b = np.asarray(a), np.asarray(b)
    for name, value in ((first, a), (second, b)):
        if value.ndim != 1:
            raise ValueError(
                f"{name}: expected shape (B,), got {value.shape} (ravel (B, 1) logits first)"
            )
        if value.dtype.kind not in "biuf":
            raise TypeError(f"{name}: expected a numeric array, got dtype {value.dtype}")
    if len(a) != len(b):
        raise ValueError(
            f"{first} and {second}: expected the same length B, got {len(a)} and {len(b)}"
        )
    if len(a) == 0:
        raise ValueError(f"{first}: expected at least one sample, got B = 0")
    a, b = a.astype(np.float64), b.astype(np.float64)
    for name, value in ((first, a), (second, b)):
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{name}: expected finite numbers, got NaN or inf")
    return a, b


def _check_unit(name: str, value: np.ndarray) -> None:
    if value.min() < 0 or value.max() > 1:
        raise ValueError(
            f"{name}: expected probabilities in [0, 1], got values in "
            f"[{value.min()}, {value.max()}]"
            + (" (apply the sigmoid to logits)" if name == "predictions" else "")
        )


def _check(labels, predictions, probabilities: bool) -> tuple[np.ndarray, np.ndarray]:
    """labels (0/1) and predictions (probabilities if asked) as float64 (B,) arrays."""
    labels, predictions = _vectors("labels", labels, "predictions", predictions)
    if not np.all((labels == 0) | (labels == 1)):
        bad = labels[(labels != 0) & (labels != 1)][:3]
        raise ValueError(f"labels: expected 0 or 1, got values such as {bad}")
    if probabilities:
        _check_unit("predictions", predictions)
    return labels, predictions


def _ordered_pairs(pos: np.ndarray, neg: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Pair sums over i ≠ j of pos_i·neg_j: ranked right (ties ½), and in total.

    Sorts the scores once and works on groups of equal scores: a group's positives outrank
    every negative of the groups below it and tie with its own negatives. O(B log B).
    """
    order = np.argsort(scores, kind="stable")
    scores, pos, neg = scores[order], pos[order], neg[order]
    starts = np.flatnonzero(np.r_[True, scores[1:] != scores[:-1]])  # tie groups
    pos_g = np.add.reduceat(pos, starts)  # (G,)
    neg_g = np.add.reduceat(neg, starts)  # (G,)
    self_g = np.add.reduceat(pos * neg, starts)  # (G,) the i = j terms, excluded
    neg_below = np.cumsum(neg_g) - neg_g  # (G,)
    ranked = np.sum(pos_g * neg_below) + 0.5 * np.sum(pos_g * neg_g - self_g)
    total = pos.sum() * neg.sum() - np.sum(pos * neg)
    return float(ranked), float(total)


def auc(labels, predictions) -> float:
    """Area under the ROC curve, tied predictions counting one half.

    Parameters
    ----------
    labels : ndarray, shape (B,)
        0 or 1; both must occur.
    predictions : ndarray, shape (B,)
        Scores: probabilities or logits (only their order matters).

    Returns
    -------
    float
        The fraction of (positive, negative) pairs the scores order correctly, ties ½.

    Examples
    --------
    >>> auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    >>> auc([0, 1, 0, 1], [0.2, 0.2, 0.7, 0.9])    # the tied pair counts one half
    0.625
    """
    labels, predictions = _check(labels, predictions, probabilities=False)
    if labels.min() == labels.max():
        raise ValueError(f"labels: AUC needs both classes, got only {labels[0]:g}")
    ranked, total = _ordered_pairs(labels, 1 - labels, predictions)
    return ranked / total


def expected_auc(probabilities, scores) -> float:
    """The AUC of ``scores`` when each label is drawn from its own known probability.

    For samples with P(yᵢ = 1) = pᵢ, independent, the expected number of positive–negative
    pairs that ``scores`` orders correctly, divided by the expected number of such pairs::

        Σ_{i≠j} pᵢ (1 − pⱼ) ([sᵢ > sⱼ] + ½ [sᵢ = sⱼ])  /  Σ_{i≠j} pᵢ (1 − pⱼ)

    It is what the AUC of the same samples tends to when their labels are redrawn again and
    again and all pairs pooled. Scoring by the probabilities themselves maximises it pair by
    pair (pᵢ (1 − pⱼ) > pⱼ (1 − pᵢ) exactly when pᵢ > pⱼ), so ``expected_auc(p, p)`` is the
    Bayes-optimal AUC of the samples. With 0/1 probabilities it is :func:`auc`. O(B log B).

    Parameters
    ----------
    probabilities : ndarray, shape (B,)
        Each sample's probability of a positive label, in [0, 1].
    scores : ndarray, shape (B,)
        Any real scores.

    Examples
    --------
    >>> p = np.array([0.1, 0.5, 0.9])
    >>> expected_auc(p, p)     # (.5·.9 + .9·.9 + .9·.5) / (1.5 · 1.5 − (.09 + .25 + .09))
    0.9395604395604396
    >>> expected_auc(p, -p) + expected_auc(p, p)      # every pair counts once either way
    1.0
    """
    probabilities, scores = _vectors("probabilities", probabilities, "scores", scores)
    _check_unit("probabilities", probabilities)
    ranked, total = _ordered_pairs(probabilities, 1 - probabilities, scores)
    if total <= 0:
        raise ValueError("probabilities: no positive–negative pair is possible")
    return ranked / total


def log_loss(labels, predictions, eta: float = ETA) -> float:
    """Mean binary cross-entropy in nats, predictions clamped to [eta, 1 − eta].

    >>> round(log_loss([1, 0], [0.8, 0.4]), 6)     # −(ln 0.8 + ln 0.6) / 2
    0.366985
    """
    labels, predictions = _check(labels, predictions, probabilities=True)
    p = np.clip(predictions, eta, 1 - eta)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log1p(-p)))


def normalized_entropy(labels, predictions, eta: float = ETA) -> float:
    """Normalized entropy: log loss ÷ the entropy of the base rate (TorchRec's NE).

    The base rate ȳ (the mean label, clamped to [eta, 1 − eta]) has entropy
    −ȳ ln ȳ − (1 − ȳ) ln(1 − ȳ): the log loss of predicting ȳ for everyone. Both classes must
    occur (otherwise that entropy is 0).

    >>> round(normalized_entropy([1, 0], [0.5, 0.5]), 12)    # predicting the base rate
    1.0
    """
    labels, predictions = _check(labels, predictions, probabilities=True)
    if labels.min() == labels.max():
        raise ValueError(f"labels: NE needs both classes, got only {labels[0]:g}")
    rate = np.clip(labels.mean(), eta, 1 - eta)
    base_entropy = -(rate * np.log(rate) + (1 - rate) * np.log1p(-rate))
    return log_loss(labels, predictions, eta) / float(base_entropy)


def calibration(labels, predictions) -> float:
    """Σ predictions ÷ Σ labels: predicted clicks over actual clicks (1 is calibrated).

    >>> calibration([1, 0, 0, 1], [0.5, 0.25, 0.25, 0.5])
    0.75
    """
    labels, predictions = _check(labels, predictions, probabilities=True)
    if labels.sum() == 0:
        raise ValueError("labels: calibration needs at least one positive label")
    return float(predictions.sum() / labels.sum())


def accuracy(labels, predictions, threshold: float = 0.5) -> float:
    """The fraction of samples with ``(prediction >= threshold) == label``.

    >>> accuracy([1, 0, 0, 1], [0.5, 0.49, 0.7, 0.2])
    0.5
    """
    labels, predictions = _check(labels, predictions, probabilities=True)
    return float(np.mean((predictions >= threshold) == (labels == 1)))


def evaluate(labels, predictions) -> dict[str, float]:
    """Every metric above on one set of labels and predicted probabilities."""
    return {
        "auc": auc(labels, predictions),
        "log_loss": log_loss(labels, predictions),
        "ne": normalized_entropy(labels, predictions),
        "calibration": calibration(labels, predictions),
        "accuracy": accuracy(labels, predictions),
    }
