"""BCEWithLogitsLoss: values, stability at ±1e4, gradient, errors."""

import numpy as np
import pytest

from refimpl import BCEWithLogitsLoss, gradcheck
from refimpl.layers.loss import bce_with_logits_backward, bce_with_logits_forward
from refimpl.tools.loops import bce_with_logits_loop


def test_hand_values_and_the_gradient_is_prediction_minus_label_over_b():
    logits = np.array([[0.0], [np.log(3.0)]])  # σ = 1/2, 3/4
    labels = np.array([[1.0], [0.0]])
    loss, cache = BCEWithLogitsLoss().forward(logits, labels)
    np.testing.assert_allclose(loss, (np.log(2) + np.log(4)) / 2, rtol=1e-15)
    d_logits, d_labels, d_params = BCEWithLogitsLoss().backward(1.0, cache)
    np.testing.assert_allclose(d_logits, [[(0.5 - 1) / 2], [0.75 / 2]], rtol=1e-15)
    assert d_labels is None and d_params == {}


@pytest.mark.parametrize("pos_weight", [None, 3.0, [0.5]])
def test_against_the_loop_and_finite_differences(rng, pos_weight):
    logits = rng.standard_normal((6, 1)) * 3  # (B, 1)
    labels = np.array([[1.0], [0.0], [0.25], [1.0], [0.0], [0.5]])
    loss_fn = BCEWithLogitsLoss(pos_weight)
    q = 1.0 if pos_weight is None else float(np.ravel(pos_weight)[0])
    np.testing.assert_allclose(loss_fn(logits, labels), bce_with_logits_loop(logits, labels, q))
    result = gradcheck(loss_fn, (logits, labels))
    assert result.ok and [a.name for a in result.arrays] == ["logits"], result


def test_stable_at_logits_of_ten_thousand():
    logits = np.array([[1e4], [-1e4], [1e4], [-1e4]])
    labels = np.array([[1.0], [0.0], [0.0], [1.0]])
    loss_fn = BCEWithLogitsLoss(pos_weight=2.0)
    with np.errstate(
        over="raise", divide="raise", invalid="raise"
    ):  # e^(−1e4) underflows to 0: fine
        loss, cache = loss_fn.forward(logits, labels)
        d_logits, _, _ = loss_fn.backward(1.0, cache)
    # right and confident: 0; wrong by 1e4: 1e4 (the positive one weighted by 2)
    assert loss == (0 + 0 + 1e4 + 2 * 1e4) / 4
    np.testing.assert_array_equal(d_logits, [[0.0], [0.0], [0.25], [-0.5]])


def test_float32_stays_float32():
    logits, labels = np.array([[0.5], [-2.0]], np.float32), np.array([[1.0], [0.0]], np.float32)
    loss, cache = BCEWithLogitsLoss().forward(logits, labels)
    assert loss.dtype == np.float32
    assert BCEWithLogitsLoss().backward(1.0, cache)[0].dtype == np.float32


@pytest.mark.parametrize(
    ("logits", "labels", "pos_weight", "error", "message"),
    [
        (np.zeros((3, 1)), np.zeros(3), None, ValueError, r"labels: expected the logits' shape"),
        (np.zeros((3, 1)), np.zeros((3, 1), int), None, TypeError, "labels: expected a float32"),
        (np.zeros((3, 1)), np.zeros((3, 1), np.float32), None, TypeError, "differs"),
        (np.zeros((0, 1)), np.zeros((0, 1)), None, ValueError, "mean over no logits"),
        (np.zeros((3, 1)), np.zeros((3, 1)), [1.0, 2.0], ValueError, "does not broadcast"),
    ],
)
def test_bad_input_is_refused(logits, labels, pos_weight, error, message):
    with pytest.raises(error, match=message):
        BCEWithLogitsLoss(pos_weight).forward(logits, labels)


def test_the_textbook_runs_on_exact_rationals():
    from fractions import Fraction

    sp = pytest.importorskip("sympy")
    x = np.array([[sp.Integer(0)], [sp.log(3)]], dtype=object)
    y = np.array([[1], [0]], dtype=object)
    loss, cache = bce_with_logits_forward(x, y)
    assert sp.simplify(loss - (sp.log(2) + sp.log(4)) / 2) == 0
    d_logits = bce_with_logits_backward(Fraction(1), cache)
    assert sp.simplify(d_logits[1, 0] - sp.Rational(3, 8)) == 0


def test_mutant_gradient_without_the_mean_fails_finite_differences(rng, monkeypatch):
    from refimpl.layers import loss as loss_module

    logits, labels = rng.standard_normal((4, 1)), np.array([[1.0], [0.0], [1.0], [0.0]])
    original = loss_module.bce_with_logits_backward
    monkeypatch.setattr(
        loss_module, "bce_with_logits_backward", lambda d, cache: original(d, cache) * 4
    )
    assert not gradcheck(BCEWithLogitsLoss(), (logits, labels)).ok
