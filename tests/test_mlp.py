"""Linear, MLP, DenseArch, OverArch: TorchRec's structure and keys, init, validation, dtypes,
the contract, and finite differences (including a dropped ReLU mask that must be caught)."""

import numpy as np
import pytest

import refimpl
from derivations.proof import mutated
from refimpl.layers import mlp as textbook
from refimpl.tools.loops import mlp_layers, mlp_loop

# --- structure, keys, initialisation ------------------------------------------------------


def test_linear_keys_shapes_and_forward(rng):
    lin = refimpl.Linear(5, 3, seed=0)
    assert {k: v.shape for k, v in lin.params.items()} == {"weight": (3, 5), "bias": (3,)}
    assert list(refimpl.Linear(5, 3, bias=False).params) == ["weight"]
    x = rng.standard_normal((4, 5))
    out, cache = lin.forward(x)
    np.testing.assert_allclose(out, x @ lin.params["weight"].T + lin.params["bias"], rtol=1e-15)
    assert cache.input is x


def test_mlp_keys_are_torchrecs_with_and_without_bias():
    mlp = refimpl.MLP(5, [4, 3, 2])
    assert {k: v.shape for k, v in mlp.params.items()} == {
        "_mlp.0._linear.weight": (4, 5),
        "_mlp.0._linear.bias": (4,),
        "_mlp.1._linear.weight": (3, 4),
        "_mlp.1._linear.bias": (3,),
        "_mlp.2._linear.weight": (2, 3),
        "_mlp.2._linear.bias": (2,),
    }
    no_bias = refimpl.MLP(5, [4, 3], bias=False)
    assert list(no_bias.params) == ["_mlp.0._linear.weight", "_mlp.1._linear.weight"]


def test_dense_arch_and_over_arch_keys():
    dense = refimpl.DenseArch(6, [5, 4])
    assert list(dense.params) == [
        "model._mlp.0._linear.weight",
        "model._mlp.0._linear.bias",
        "model._mlp.1._linear.weight",
        "model._mlp.1._linear.bias",
    ]
    over = refimpl.OverArch(6, [5, 4, 2])
    assert {k: v.shape for k, v in over.params.items()} == {
        "model.0._mlp.0._linear.weight": (5, 6),
        "model.0._mlp.0._linear.bias": (5,),
        "model.0._mlp.1._linear.weight": (4, 5),
        "model.0._mlp.1._linear.bias": (4,),
        "model.1.weight": (2, 4),
        "model.1.bias": (2,),
    }
    assert (over.in_features, over.out_features, over.layer_sizes) == (6, 2, (5, 4, 2))


def test_init_is_nn_linear_uniform_within_one_over_sqrt_fan_in():
    mlp = refimpl.MLP(400, [300, 50], seed=0)
    for fan_in, (weight, bias) in zip((400, 300), mlp_layers(mlp.params), strict=True):
        bound = 1 / np.sqrt(fan_in)
        for array in (weight, bias):
            assert np.max(np.abs(array)) <= bound
            assert np.max(np.abs(array)) > 0.9 * bound  # filled out to the bound, not narrower
        # U(-a, a) has variance a²/3
        assert abs(weight.var() / (bound**2 / 3) - 1) < 0.05
        assert abs(weight.mean()) < 0.05 * bound


def test_seed_makes_init_reproducible():
    a, b = refimpl.OverArch(6, [5, 2], seed=3), refimpl.OverArch(6, [5, 2], seed=3)
    c = refimpl.OverArch(6, [5, 2], seed=4)
    for key in a.params:
        np.testing.assert_array_equal(a.params[key], b.params[key])
    assert not np.array_equal(a.params["model.1.weight"], c.params["model.1.weight"])


def test_load_state_dict_round_trip():
    src, dst = refimpl.DenseArch(6, [5, 4], seed=0), refimpl.DenseArch(6, [5, 4], seed=1)
    dst.load_state_dict(src.state_dict())
    for key, value in src.params.items():
        np.testing.assert_array_equal(dst.params[key], value)


# --- forward semantics -------------------------------------------------------------------


def test_mlp_by_hand_relu_on_every_layer_including_the_last():
    mlp = refimpl.MLP(2, [2, 1])
    mlp.load_state_dict(
        {
            "_mlp.0._linear.weight": np.array([[1.0, -1.0], [0.5, 0.5]]),
            "_mlp.0._linear.bias": np.array([0.0, -3.0]),
            "_mlp.1._linear.weight": np.array([[-2.0, 1.0]]),
            "_mlp.1._linear.bias": np.array([0.5]),
        }
    )
    # x = [3, 1]: z0 = [2, -1] -> [2, 0]; z1 = -4 + 0 + 0.5 = -3.5 -> ReLU on the last layer: 0
    # x = [0, -2]: z0 = [2, -4] -> [2, 0]; same. x = [-1, 0]: z0 = [-1, -3.5] -> 0; z1 = 0.5
    out = mlp(np.array([[3.0, 1.0], [0.0, -2.0], [-1.0, 0.0]]))
    np.testing.assert_array_equal(out, [[0.0], [0.0], [0.5]])


@pytest.mark.parametrize("activation", ["relu", "tanh", "identity"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("sizes", [(4,), (4, 3), (6, 4, 2)])
def test_mlp_matches_loop_version(activation, bias, sizes):
    mlp = refimpl.MLP(5, sizes, bias, activation, seed=0)
    x = np.linspace(-2.0, 2.5, 20).reshape(4, 5)
    np.testing.assert_allclose(
        mlp(x), mlp_loop(x, mlp_layers(mlp.params), activation), rtol=1e-13, atol=1e-15
    )


def test_over_arch_is_an_mlp_without_activation_on_the_logits(rng):
    over = refimpl.OverArch(6, [5, 4, 3], seed=0)
    mlp = refimpl.MLP(6, [5, 4, 3], activation_on_last=False)
    params = over.params
    mlp.load_state_dict(
        {
            **{k.removeprefix("model.0."): v for k, v in params.items() if "model.0" in k},
            "_mlp.2._linear.weight": params["model.1.weight"],
            "_mlp.2._linear.bias": params["model.1.bias"],
        }
    )
    x = rng.standard_normal((4, 6))
    logits = over(x)
    np.testing.assert_allclose(logits, mlp(x), rtol=1e-14)
    assert np.any(logits < 0)  # no ReLU on the logits


def test_dense_arch_is_a_relu_mlp(rng):
    arch = refimpl.DenseArch(6, [5, 4], seed=0)
    x = rng.standard_normal((4, 6))
    np.testing.assert_allclose(arch(x), mlp_loop(x, mlp_layers(arch.params, "model.")))
    assert np.all(arch(x) >= 0)


# --- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"layer_sizes": []}, ValueError, "layer_sizes: expected at least one layer size, got []"),
        ({"layer_sizes": [4, 0]}, ValueError, "layer_sizes[1]: expected an integer >= 1, got 0"),
        ({"layer_sizes": [-3]}, ValueError, "layer_sizes[0]: expected an integer >= 1, got -3"),
        ({"layer_sizes": 4}, TypeError, "layer_sizes: expected a list of positive integers"),
        ({"layer_sizes": "44"}, TypeError, "layer_sizes: expected a list of positive integers"),
        ({"layer_sizes": [2.5]}, TypeError, "layer_sizes[0]: expected an integer"),
        ({"in_size": 0}, ValueError, "in_size: expected an integer >= 1, got 0"),
        ({"activation": "gelu"}, ValueError, "activation: expected one of"),
        (
            {"activation": np.tanh},
            TypeError,
            "refimpl takes a name where TorchRec takes a callable",
        ),
        ({"dtype": np.int64}, TypeError, "dtype: expected float32 or float64"),
    ],
)
def test_mlp_constructor_errors_name_the_argument(kwargs, error, message):
    args = {"in_size": 5, "layer_sizes": [4], **kwargs}
    with pytest.raises(error) as info:
        refimpl.MLP(**args)
    assert message in str(info.value)


def test_over_arch_needs_two_sizes():
    with pytest.raises(ValueError, match=r"layer_sizes: OverArch needs at least two .* got \[4\]"):
        refimpl.OverArch(6, [4])
    with pytest.raises(ValueError, match="at least one layer size"):
        refimpl.OverArch(6, [])


def test_input_errors_name_the_argument_and_letters(rng):
    mlp = refimpl.MLP(5, [4])
    with pytest.raises(
        ValueError, match=r"input: expected shape \(B, I\) = \(3, 5\), got \(3, 4\)"
    ):
        mlp(rng.standard_normal((3, 4)))
    with pytest.raises(ValueError, match=r"input: expected a 2-D array of shape \(B, I\)"):
        mlp(rng.standard_normal(5))
    with pytest.raises(TypeError, match="input: expected a float32 or float64 array"):
        mlp(np.ones((3, 5), dtype=np.int64))
    with pytest.raises(TypeError, match="input: expected a NumPy array"):
        mlp([[0.0] * 5])
    arch = refimpl.OverArch(6, [4, 2])
    with pytest.raises(ValueError, match=r"features: expected shape \(B, I\) = \(2, 6\)"):
        arch(rng.standard_normal((2, 7)))
    _, cache = mlp.forward(rng.standard_normal((3, 5)))
    with pytest.raises(
        ValueError, match=r"d_out: expected shape \(B, O\) = \(3, 4\), got \(2, 4\)"
    ):
        mlp.backward(np.ones((2, 4)), cache)


def test_dtype_mismatch_is_a_type_error(rng):
    mlp = refimpl.MLP(5, [4], dtype=np.float32)
    with pytest.raises(TypeError, match=r"input: dtype float64 does not match .* float32"):
        mlp(rng.standard_normal((3, 5)))
    out, cache = refimpl.MLP(5, [4]).forward(rng.standard_normal((3, 5)))
    with pytest.raises(TypeError, match="d_out: dtype float32"):
        refimpl.MLP(5, [4]).backward(out.astype(np.float32), cache)


@pytest.mark.parametrize(
    "make",
    [
        lambda: refimpl.Linear(5, 3, dtype=np.float32),
        lambda: refimpl.MLP(5, [4, 3], activation="tanh", dtype=np.float32),
        lambda: refimpl.DenseArch(5, [4, 3], dtype=np.float32),
        lambda: refimpl.OverArch(5, [4, 3], dtype=np.float32),
    ],
)
def test_float32_stays_float32(rng, make):
    layer = make()
    assert all(v.dtype == np.float32 for v in layer.params.values())
    x = rng.standard_normal((3, 5)).astype(np.float32)
    out, cache = layer.forward(x)
    d_input, d_params = layer.backward(np.ones_like(out), cache)
    assert out.dtype == d_input.dtype == np.float32
    assert all(v.dtype == np.float32 for v in d_params.values())


# --- the contract ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: refimpl.MLP(5, [4, 3], seed=0),
        lambda: refimpl.DenseArch(5, [4, 3], seed=0),
        lambda: refimpl.OverArch(5, [4, 3], seed=0),
    ],
)
def test_backward_mutates_neither_params_nor_cache_nor_inputs(rng, make, cache_arrays):
    layer = make()
    x = rng.standard_normal((3, 5))
    x_before = x.copy()
    params_before = layer.state_dict()
    out, cache = layer.forward(x)
    cache_before = [np.copy(a) for a in cache_arrays(cache)]
    d_out = rng.standard_normal(out.shape)
    d_out_before = d_out.copy()
    d_input, d_params = layer.backward(d_out, cache)
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(d_out, d_out_before)  # backward works in place on its own arrays
    for key, value in params_before.items():
        np.testing.assert_array_equal(layer.params[key], value)
    for before, after in zip(cache_before, cache_arrays(cache), strict=True):
        np.testing.assert_array_equal(before, after)
    assert list(d_params) == list(layer.params)
    assert d_input.shape == x.shape


def test_mlp_cache_holds_each_layers_input_and_the_output_only(rng, cache_arrays):
    mlp = refimpl.MLP(5, [4, 3, 2], seed=0)
    x = rng.standard_normal((3, 5))
    out, cache = mlp.forward(x)
    assert len(cache_arrays(cache)) == 4  # x_0, x_1, x_2 and the output: no pre-activations
    assert cache.inputs[0] is x and cache.output is out
    z = mlp.pre_activations(x)  # recomputed
    activated = [*cache.inputs[1:], cache.output]
    for z_i, a_i in zip(z, activated, strict=True):
        np.testing.assert_array_equal(a_i, np.maximum(z_i, 0))  # g(z_i) is in the cache


def test_forward_stores_nothing_on_the_layer(rng):
    mlp = refimpl.MLP(5, [4, 3], seed=0)
    before = dict(vars(mlp))
    mlp.forward(rng.standard_normal((3, 5)))
    assert vars(mlp).keys() == before.keys()


# --- gradients ---------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["relu", "tanh", "identity"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("batch", "sizes"), [(1, (4,)), (3, (4, 3)), (2, (6, 5, 3))])
def test_mlp_gradcheck(rng, activation, bias, batch, sizes, away_from_kinks):
    mlp = refimpl.MLP(5, sizes, bias, activation, seed=rng)
    result = refimpl.gradcheck(mlp, away_from_kinks(mlp, rng, (batch, 5)))
    assert result.ok, result


def test_mlp_without_activation_on_last_gradcheck(rng, away_from_kinks):
    mlp = refimpl.MLP(5, [4, 3], activation="tanh", activation_on_last=False, seed=rng)
    assert refimpl.gradcheck(mlp, away_from_kinks(mlp, rng, (3, 5))).ok


@pytest.mark.parametrize(
    "make",
    [
        lambda rng: refimpl.Linear(5, 3, seed=rng),
        lambda rng: refimpl.Linear(5, 3, bias=False, seed=rng),
        lambda rng: refimpl.DenseArch(5, [6, 4], seed=rng),
        lambda rng: refimpl.OverArch(5, [6, 4, 1], seed=rng),
        lambda rng: refimpl.OverArch(5, [3, 2], seed=rng),
    ],
)
@pytest.mark.parametrize("batch", [1, 4])
def test_layer_gradcheck(rng, make, batch, away_from_kinks):
    layer = make(rng)
    result = refimpl.gradcheck(layer, away_from_kinks(layer, rng, (batch, 5)))
    assert result.ok, result


def _unit_at_its_kink():
    # One unit whose pre-activation is exactly 0: z = 2 - 2.
    mlp = refimpl.MLP(2, [1])
    mlp.load_state_dict(
        {"_mlp.0._linear.weight": np.array([[1.0, -1.0]]), "_mlp.0._linear.bias": np.array([0.0])}
    )
    return mlp, np.array([[2.0, 2.0]])


def test_relu_derivative_is_zero_at_exactly_zero():
    mlp, x = _unit_at_its_kink()
    out, cache = mlp.forward(x)
    assert mlp.pre_activations(x)[0][0, 0] == 0.0 and out[0, 0] == 0.0
    d_input, d_params = mlp.backward(np.ones_like(out), cache)
    # torch.relu's derivative at 0 is 0, so nothing flows back through the unit.
    np.testing.assert_array_equal(d_input, [[0.0, 0.0]])
    np.testing.assert_array_equal(d_params["_mlp.0._linear.weight"], [[0.0, 0.0]])
    np.testing.assert_array_equal(d_params["_mlp.0._linear.bias"], [0.0])


def test_gradcheck_refuses_a_kink_point():
    mlp, x = _unit_at_its_kink()
    assert mlp.kink_distance(x) == 0.0
    with pytest.raises(ValueError, match="ReLU kink"):
        refimpl.gradcheck(mlp, (x,))
    # What it protects against: the central difference there is the mean of the one-sided
    # slopes (0 and 1), which is neither ReLU's left nor its right derivative.
    result = refimpl.gradcheck(mlp, (x,), seed=0, kink_margin=0.0)
    assert not result.ok
    upstream = np.random.default_rng(0).standard_normal((1, 1))[0, 0]  # gradcheck's G
    d_input = result.arrays[0]
    assert d_input.analytic == 0.0
    # a symmetric difference across 0 sees half of ReLU's slope: e.g. (relu(h) − relu(−h)) / 2h
    assert abs(d_input.numeric) == pytest.approx(0.5 * abs(upstream), rel=1e-6)


def test_kink_distance_is_the_smallest_relu_pre_activation(rng):
    mlp = refimpl.MLP(5, [4, 3], seed=0)
    x = rng.standard_normal((3, 5))
    expected = min(np.min(np.abs(z)) for z in mlp.pre_activations(x))
    assert mlp.kink_distance(x) == expected
    assert refimpl.MLP(5, [4], activation="tanh").kink_distance(x) == np.inf
    assert refimpl.MLP(5, [4], activation="identity").kink_distance(x) == np.inf
    # OverArch: only model.0's pre-activations count; the logits have no ReLU.
    over = refimpl.OverArch(5, [4, 2], seed=0)
    assert over.kink_distance(x) == np.min(np.abs(over.mlp.pre_activations(x)[0]))
    assert refimpl.DenseArch(5, [4], seed=0).kink_distance(x) == (
        refimpl.MLP(5, [4], seed=0).kink_distance(x)
    )


def test_a_dropped_relu_mask_is_caught(rng, away_from_kinks):
    mlp = refimpl.MLP(5, [6, 4], seed=rng)
    (x,) = away_from_kinks(mlp, rng, (4, 5))
    assert all(np.any(z < 0) for z in mlp.pre_activations(x))  # some units are off
    assert refimpl.gradcheck(mlp, (x,)).ok
    # The bug: backward passes the gradient through every unit, as if ReLU were the identity.
    dropped = ("d_z = d_x * get_activation(names[i]).derivative(activated[i])", "d_z = d_x")
    with mutated(textbook.mlp_backward, *dropped):
        result = refimpl.gradcheck(mlp, (x,))
    assert not result.ok
    assert result.worst.rel_error > 1e-2


def test_a_bias_gradient_of_one_sample_is_caught(rng, away_from_kinks):
    layer = refimpl.Linear(5, 3, seed=rng)
    (x,) = away_from_kinks(layer, rng, (4, 5))
    with mutated(textbook.linear_backward, "d_out.sum(axis=0)", "d_out[0]"):
        result = refimpl.gradcheck(layer, (x,))
    assert not result.ok and result.worst.name == "bias"
