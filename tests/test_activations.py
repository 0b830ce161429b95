"""The activation registry: sigmoid, and every tool reading its activations from the one place."""

import dataclasses
import math

import numpy as np
import pytest

import refimpl
from refimpl.layers import activations
from refimpl.tools import flops, loops
from refimpl.tools.check.cases import projection as projection_cases
from refimpl.tools.gradcheck import numerical_gradient


@pytest.mark.parametrize("name", refimpl.ACTIVATIONS)
def test_every_entry_is_complete_and_self_consistent(name):
    act = refimpl.get_activation(name)
    assert act.name == name
    z = np.linspace(-3.0, 3.0, 13)
    a = act.forward(z)
    np.testing.assert_allclose(a, [act.scalar(float(v)) for v in z], rtol=1e-15, atol=0)
    if not act.kinked:  # the derivative read from the output, against finite differences
        numeric = numerical_gradient(lambda: act.forward(z), z, upstream=np.ones_like(z))
        np.testing.assert_allclose(act.derivative(a), numeric, rtol=1e-9, atol=1e-12)
    assert len(act.flops) == 2 and all(isinstance(n, int) for n in act.flops)
    exact = act.forward(np.array([0], dtype=object))  # the symbolic rule at an exact 0
    assert float(exact[0]) == act.numpy(np.zeros(1))[0]


def test_sigmoid_forward_derivative_and_exact_values():
    sigmoid = refimpl.get_activation("sigmoid")
    z = np.array([-1e4, -30.0, -1.0, 0.0, 1.0, 30.0, 1e4])
    with np.errstate(over="raise"):  # no exp of a large positive number anywhere
        a = sigmoid.forward(z)
    expected = [0.0, math.exp(-30) / (1 + math.exp(-30)), 1 / (1 + math.e), 0.5]
    expected += [1 / (1 + math.exp(-1)), 1 / (1 + math.exp(-30)), 1.0]
    np.testing.assert_allclose(a, expected, rtol=1e-15, atol=0)
    np.testing.assert_allclose(sigmoid.derivative(a), a * (1 - a), rtol=0, atol=0)
    assert sigmoid.derivative(np.array([0.5]))[0] == 0.25  # the slope at z = 0
    sp = pytest.importorskip("sympy")
    exact = sigmoid.forward(np.array([sp.Rational(1, 3)], dtype=object))[0]
    assert sp.simplify(exact - 1 / (1 + sp.exp(-sp.Rational(1, 3)))) == 0
    slope = sigmoid.derivative(np.array([exact], dtype=object))[0]
    z_symbol = sp.Symbol("z")
    true_slope = sp.diff(1 / (1 + sp.exp(-z_symbol)), z_symbol).subs(z_symbol, sp.Rational(1, 3))
    assert sp.simplify(slope - true_slope) == 0


def test_sigmoid_in_an_mlp_passes_gradcheck(rng, away_from_kinks):
    mlp = refimpl.MLP(4, [3, 2], activation="sigmoid", seed=rng)
    assert refimpl.gradcheck(mlp, away_from_kinks(mlp, rng, (3, 4))).ok
    mix = refimpl.LowRankMixtureCrossNet(5, 2, num_experts=2, low_rank=2, activation="sigmoid")
    assert refimpl.gradcheck(mix, (rng.standard_normal((3, 5)),)).ok


def test_relu_derivative_at_its_kink_is_zero_on_floats_and_exact_arrays():
    relu = refimpl.get_activation("relu")
    assert relu.derivative(relu.forward(np.zeros(1)))[0] == 0.0
    sp = pytest.importorskip("sympy")
    assert relu.derivative(relu.forward(np.array([sp.Integer(0)], dtype=object)))[0] == 0


def test_unknown_names_and_callables_are_refused():
    with pytest.raises(ValueError, match=r"activation: expected one of \['identity', 'relu'"):
        refimpl.get_activation("gelu")
    with pytest.raises(TypeError, match="refimpl takes a name where TorchRec takes a callable"):
        refimpl.get_activation(np.tanh)


def test_the_tools_read_the_registry(monkeypatch):
    # An activation added to the registry alone reaches the FLOP counts, the loop versions,
    # the layers and the check cases.
    softsign = activations.Activation(
        "softsign",
        numpy=lambda z: z / (1 + np.abs(z)),
        derivative=lambda a: (1 - np.abs(a)) ** 2,
        scalar=lambda z: z / (1 + abs(z)),
        torch="nn.functional.softsign",
        flops=(2, 4),
        symbolic=lambda z: z / (1 + abs(z)),
    )
    monkeypatch.setitem(activations.ACTIVATIONS, "softsign", softsign)
    assert flops.mlp_flops(1, 2, [3], activation="softsign") == flops.mlp_flops(
        1, 2, [3], activation="identity"
    ) + flops.FlopCount(3 * 2, 3 * 4)
    mlp = refimpl.MLP(2, [3], activation="softsign", seed=0)
    x = np.array([[0.5, -2.0]])
    np.testing.assert_allclose(
        mlp(x), loops.mlp_loop(x, loops.mlp_layers(mlp.params), "softsign"), rtol=1e-15
    )
    assert refimpl.gradcheck(mlp, (x,)).ok
    checked = {c.config for c in projection_cases.checks() if c.layer == "MLP"}
    assert any("softsign" in config for config in checked)


def test_the_torch_equivalents_resolve():
    torch = pytest.importorskip("torch")
    assert refimpl.get_activation("relu").torch_function() is torch.relu
    assert refimpl.get_activation("sigmoid").torch_function() is torch.sigmoid
    assert isinstance(refimpl.get_activation("identity").torch_function(), torch.nn.Identity)
    for name in refimpl.ACTIVATIONS:
        act = refimpl.get_activation(name)
        z = np.linspace(-2.0, 2.0, 9)
        theirs = act.torch_function()(torch.tensor(z)).numpy()
        np.testing.assert_allclose(act.forward(z), theirs, rtol=1e-15)


def test_replacing_an_entry_changes_what_the_layers_compute(monkeypatch):
    # The layers look their activation up at each call: one entry, one place.
    doubled = dataclasses.replace(
        activations.ACTIVATIONS["identity"], numpy=lambda z: 2 * z, derivative=lambda a: 2 + 0 * a
    )
    monkeypatch.setitem(activations.ACTIVATIONS, "identity", doubled)
    mlp = refimpl.MLP(1, [1], bias=False, activation="identity")
    mlp.load_state_dict({"_mlp.0._linear.weight": np.ones((1, 1))})
    assert mlp(np.array([[3.0]]))[0, 0] == 6.0
