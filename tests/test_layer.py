"""The Layer base class: params, load_state_dict, initialisers, input checks."""

import numpy as np
import pytest

from refimpl.layers.base import Layer, check_array, linear_uniform, xavier_normal


class Child(Layer):
    def __init__(self):
        super().__init__()
        self._params = {"weight": np.zeros((2, 3)), "bias": np.zeros(2)}


class Parent(Layer):
    def __init__(self):
        super().__init__()
        self._params = {"scale": np.ones(1)}
        self._children = {"inner": Child()}


def test_params_are_prefixed_and_shared():
    layer = Parent()
    assert list(layer.params) == ["scale", "inner.weight", "inner.bias"]
    layer.params["inner.bias"][:] = 5.0  # the arrays are the layer's own
    np.testing.assert_array_equal(layer._children["inner"]._params["bias"], [5.0, 5.0])
    copy = layer.state_dict()
    copy["scale"][:] = 7.0
    assert layer.params["scale"][0] == 1.0


def test_load_state_dict_copies_values_in():
    layer = Parent()
    state = {"scale": np.array([3.0]), "inner.weight": np.arange(6.0).reshape(2, 3)}
    state["inner.bias"] = np.array([1.0, 2.0], dtype=np.float32)
    layer.load_state_dict(state)
    np.testing.assert_array_equal(layer.params["inner.weight"], np.arange(6.0).reshape(2, 3))
    assert layer.params["inner.bias"].dtype == np.float64


def test_load_state_dict_lists_every_problem_and_changes_nothing():
    layer = Parent()
    bad = {
        "scale": np.array([9.0]),
        "inner.weight": np.zeros((3, 2)),
        "extra": np.zeros(1),
    }
    with pytest.raises(ValueError) as info:
        layer.load_state_dict(bad)
    message = str(info.value)
    assert "missing keys ['inner.bias']" in message
    assert "unexpected keys ['extra']" in message
    assert "inner.weight: expected shape (2, 3), got (3, 2)" in message
    assert layer.params["scale"][0] == 1.0  # nothing half-loaded


def test_load_state_dict_refuses_non_numeric():
    layer = Child()
    with pytest.raises(ValueError, match="bias: expected a numeric array"):
        layer.load_state_dict({"weight": np.zeros((2, 3)), "bias": np.array(["a", "b"])})


def test_xavier_normal_uses_torch_fan_rule():
    rng = np.random.default_rng(0)
    w = xavier_normal(rng, (4, 200, 300), np.float64)
    # fan_in = 200·300, fan_out = 4·300 -> std = sqrt(2 / 61200)
    assert w.std() == pytest.approx(np.sqrt(2 / 61200), rel=0.01)
    w2 = xavier_normal(rng, (500, 300), np.float32)
    assert w2.dtype == np.float32 and w2.std() == pytest.approx(np.sqrt(2 / 800), rel=0.01)


def test_linear_uniform_bounds():
    w = linear_uniform(np.random.default_rng(0), (300, 400), 400, np.float64)
    assert np.abs(w).max() <= 1 / 20 and np.abs(w).max() > 0.99 / 20


def test_check_array_binds_letters_across_arguments():
    sizes = {}
    check_array("a", np.zeros((2, 3)), "B N", sizes)
    with pytest.raises(ValueError, match=r"b: expected shape \(B, N\) = \(2, 3\), got \(2, 4\)"):
        check_array("b", np.zeros((2, 4)), "B N", sizes)
    with pytest.raises(ValueError, match=r"c: expected shape \(B, 1\) = \(2, 1\), got \(2, 3\)"):
        check_array("c", np.zeros((2, 3)), "B 1", sizes)
    with pytest.raises(TypeError, match="does not match the layer's float64"):
        check_array("d", np.zeros((2, 3), np.float32), "B N", sizes, np.dtype(np.float64))
    with pytest.raises(TypeError, match="got dtype bool"):
        check_array("e", np.zeros((2, 3), bool), "B N", sizes)
