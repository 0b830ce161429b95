"""refimpl.tools.gradcheck: it measures what it says, and it catches broken backwards."""

import numpy as np
import pytest

import refimpl
from derivations.proof import mutated
from refimpl.layers import dot
from refimpl.tools.gradcheck import draw_away_from_kinks, numerical_gradient, rel_error


def test_rel_error_is_elementwise_worst_with_floor():
    a = np.array([1.0, 1e-3, 0.0])
    b = np.array([1.0, 1.1e-3, 1e-12])
    # element 1: 1e-4 / 2.1e-3; element 2: 1e-12 / max(1e-8, 1e-12) = 1e-4
    assert rel_error(a, b) == pytest.approx(1e-4 / 2.1e-3)
    assert rel_error(np.zeros(4), np.zeros(4)) == 0.0
    assert rel_error(np.zeros(2), np.array([0.0, 1e-12])) == pytest.approx(1e-4)


def test_rel_error_refuses_shapes_that_differ():
    with pytest.raises(ValueError, match="shapes differ"):
        rel_error(np.zeros(3), np.zeros((3, 1)))


def test_numerical_gradient_of_a_cubic_and_restores_the_array():
    x = np.array([[0.5, -1.5], [2.0, 3.0]])
    before = x.copy()
    grad = numerical_gradient(lambda: float(np.sum(x**3)), x)
    np.testing.assert_allclose(grad, 3 * before**2, rtol=1e-9)
    np.testing.assert_array_equal(x, before)


def _seed_inputs(rng, batch=2, features=2, dim=4):
    return rng.standard_normal((batch, dim)), rng.standard_normal((batch, features, dim))


def test_correct_backward_passes_with_margin(rng):
    result = refimpl.gradcheck(refimpl.InteractionArch(2), _seed_inputs(rng))
    assert result.ok
    assert result.worst.rel_error < result.tol
    assert [a.name for a in result.arrays] == ["dense", "sparse"]
    assert "pass" in str(result)


class TextbookArch(refimpl.InteractionArch):
    """InteractionArch running the textbook forms (looked up at each call, so that a mutant put
    in their place runs) instead of its fast path."""

    def forward(self, dense, sparse):
        out, combined = dot.dot_interaction(dense, sparse, self.rows, self.cols)
        return out, dot.DotCache(combined)

    def backward(self, d_out, cache):
        d_dense, d_sparse = dot.dot_interaction_backward(
            d_out, cache.combined, self.rows, self.cols
        )
        return d_dense, d_sparse, {}


# One-line mistakes in the textbook backward, and the input whose gradient shows each.
BROKEN = {
    "transpose missing: dC = G C": (
        ("(d_gram + d_gram.transpose(0, 2, 1)) @ combined", "d_gram @ combined"),
        "sparse",
    ),
    "passthrough dropped": (
        ("d_dense = d_out[:, :dim] + d_combined[:, 0]", "d_dense = d_combined[:, 0]"),
        "dense",
    ),
    "sparse gradient doubled": (
        ("return d_dense, d_combined[:, 1:]", "return d_dense, 2 * d_combined[:, 1:]"),
        "sparse",
    ),
    "the seed's doubled dense-sparse term": (
        (
            "d_dense = d_out[:, :dim] + d_combined[:, 0]",
            "d_dense = d_out[:, :dim] + 2 * d_combined[:, 0]",
        ),
        "dense",
    ),
}


@pytest.mark.parametrize("name", BROKEN)
def test_broken_backwards_are_caught(rng, name):
    (old, new), which = BROKEN[name]
    inputs = _seed_inputs(rng)
    assert refimpl.gradcheck(TextbookArch(2), inputs).ok  # the textbook passes at this point
    with mutated(dot.dot_interaction_backward, old, new):
        result = refimpl.gradcheck(TextbookArch(2), inputs)
    assert not result.ok
    failing = {a.name for a in result.arrays if a.rel_error >= result.tol}
    assert which in failing
    assert result.worst.rel_error > 1e-3
    assert "FAIL" in str(result)


def test_gradcheck_checks_parameters_and_restores_them():
    class Scale(refimpl.Layer):
        input_names = ("x",)

        def __init__(self):
            super().__init__()
            self._params = {"w": np.array([2.0, -3.0])}

        def forward(self, x):
            return x * self._params["w"] ** 2, (x,)

        def backward(self, d_out, cache):
            (x,) = cache
            return d_out * self._params["w"] ** 2, {
                "w": np.sum(d_out * x * 2 * self._params["w"], 0)
            }

    layer = Scale()
    before = layer.state_dict()
    result = refimpl.gradcheck(layer, (np.array([[1.0, 2.0], [0.5, -1.0]]),))
    assert result.ok and [a.name for a in result.arrays] == ["x", "w"]
    np.testing.assert_array_equal(layer.params["w"], before["w"])

    class WrongParamGrad(Scale):
        def backward(self, d_out, cache):
            d_x, d_params = super().backward(d_out, cache)
            return d_x, {"w": d_params["w"] / 2}

    bad = refimpl.gradcheck(WrongParamGrad(), (np.array([[1.0, 2.0]]),))
    assert not bad.ok and bad.worst.name == "w"


def test_gradcheck_refuses_float32_parameters():
    class Half(refimpl.Layer):
        def __init__(self):
            super().__init__(np.float32)
            self._params = {"w": np.ones(2, np.float32)}

    with pytest.raises(TypeError, match="float64"):
        refimpl.gradcheck(Half(), (np.ones((1, 2)),))


class Relu(refimpl.Layer):
    input_names = ("x",)

    def forward(self, x):
        return np.maximum(x, 0), (x,)

    def backward(self, d_out, cache):
        return d_out * (cache[0] > 0), {}

    def kink_distance(self, x):
        return float(np.min(np.abs(x)))


def test_gradcheck_refuses_points_at_a_kink():
    with pytest.raises(ValueError, match="kink"):
        refimpl.gradcheck(Relu(), (np.array([[0.0, 1.0]]),))
    # Forced through anyway, the central difference at 0 sees half a slope: not a derivative.
    result = refimpl.gradcheck(Relu(), (np.array([[0.0, 1.0]]),), kink_margin=0.0, seed=3)
    assert not result.ok
    upstream = np.random.default_rng(3).standard_normal((1, 2))
    assert result.worst.index == (0, 0)
    assert result.worst.analytic == 0.0
    assert result.worst.numeric == pytest.approx(0.5 * upstream[0, 0], rel=1e-6)


def test_draw_away_from_kinks_returns_inputs_past_the_margin():
    def draw(rng):
        return (rng.uniform(-1, 1, size=(4, 3)),)

    (x,) = draw_away_from_kinks(Relu(), draw, 0, margin=0.05)
    assert np.min(np.abs(x)) >= 0.05
    assert refimpl.gradcheck(Relu(), (x,)).ok
