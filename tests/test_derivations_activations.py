"""The activation registry and the softmax, proven (derivations/activations.py)."""

import dataclasses

import pytest

sp = pytest.importorskip("sympy")

import derivations.activations as acts  # noqa: E402
import refimpl  # noqa: E402
from refimpl.layers import activations  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", refimpl.ACTIVATIONS)
def test_every_activation_is_proven(name):
    assert acts.prove_activation(name).startswith(f"{name}: symbolic form = ")


@pytest.mark.parametrize(
    ("name", "wrong"),
    [("sigmoid", lambda a: a * (1 + a)), ("tanh", lambda a: 1 - a), ("relu", lambda a: a * 0 + 1)],
)
def test_a_wrong_derivative_rule_is_caught(monkeypatch, name, wrong):
    broken = dataclasses.replace(activations.ACTIVATIONS[name], derivative=wrong)
    monkeypatch.setitem(activations.ACTIVATIONS, name, broken)
    with pytest.raises(AssertionError, match=name):
        acts.prove_activation(name)


def test_relu_at_its_kink_is_pytorchs_zero():
    facts = acts.relu_convention()
    assert facts["derivative(0)"] == facts["Heaviside(0, 0)"] == facts["Piecewise'(0)"] == 0
    assert facts["Max'(0)"] == facts["central difference at 0"] == sp.Rational(1, 2)


def test_the_softmax_vjp_is_proven():
    assert acts.prove_softmax_vjp(3) == [
        "J = diag(s) − s sᵀ",
        "vᵀ J = s ⊙ (v − v·s)",
        "softmax(z − c) = softmax(z)",
        "s ⊙ v ≠ vᵀ J (the shift term matters)",
    ]
