"""The four cross networks: TorchRec's keys and init, forward values, gradients, validation."""

import numpy as np
import pytest

import refimpl
from derivations.proof import mutated
from refimpl.fast import crossnet as fast
from refimpl.fast import vector_crossnet as fast_vector
from refimpl.layers import crossnet as textbook
from refimpl.layers.activations import softmax
from refimpl.tools.check.cases import crossnet as cases
from refimpl.tools.loops import crossnet_loop

MIX = "LowRankMixtureCrossNet"
VARIANTS = [
    ("CrossNet", {}),
    ("LowRankCrossNet", {"low_rank": 1}),
    ("LowRankCrossNet", {"low_rank": 3}),
    ("VectorCrossNet", {}),
    (MIX, {"num_experts": 1, "low_rank": 2, "activation": "relu"}),
    (MIX, {"num_experts": 1, "low_rank": 2, "activation": "tanh"}),
    (MIX, {"num_experts": 3, "low_rank": 2, "activation": "relu"}),
    (MIX, {"num_experts": 3, "low_rank": 3, "activation": "tanh"}),
    (MIX, {"num_experts": 2, "low_rank": 1, "activation": "identity"}),
]
IDS = [f"{kind} {cases.label(kind, options)}".strip() for kind, options in VARIANTS]


# --- parameters: TorchRec's keys, order, shapes and initialisation -------------------------


def _shapes(net):
    return [(k, v.shape) for k, v in net.params.items()]


def test_keys_shapes_and_order_are_torchrecs():
    # As printed by torchrec.modules.crossnet.*(...).state_dict() in TorchRec 1.8.0.
    assert _shapes(refimpl.CrossNet(8, 2)) == [
        ("kernels.0", (8, 8)),
        ("kernels.1", (8, 8)),
        ("bias.0", (8, 1)),
        ("bias.1", (8, 1)),
    ]
    assert _shapes(refimpl.LowRankCrossNet(8, 2, low_rank=3)) == [
        ("W_kernels.0", (8, 3)),
        ("W_kernels.1", (8, 3)),
        ("V_kernels.0", (3, 8)),
        ("V_kernels.1", (3, 8)),
        ("bias.0", (8,)),
        ("bias.1", (8,)),
    ]
    assert _shapes(refimpl.VectorCrossNet(8, 2)) == [
        ("kernels.0", (8, 1)),
        ("kernels.1", (8, 1)),
        ("bias.0", (8, 1)),
        ("bias.1", (8, 1)),
    ]
    assert _shapes(refimpl.LowRankMixtureCrossNet(8, 2, num_experts=3, low_rank=2)) == [
        ("U_kernels.0", (3, 8, 2)),
        ("U_kernels.1", (3, 8, 2)),
        ("V_kernels.0", (3, 2, 8)),
        ("V_kernels.1", (3, 2, 8)),
        ("bias.0", (8, 1)),
        ("bias.1", (8, 1)),
        ("gates.0.weight", (1, 8)),
        ("gates.1.weight", (1, 8)),
        ("gates.2.weight", (1, 8)),
        ("C_kernels.0", (3, 2, 2)),
        ("C_kernels.1", (3, 2, 2)),
    ]
    # One expert: no gates at all.
    assert [k for k, _ in _shapes(refimpl.LowRankMixtureCrossNet(8, 1))] == [
        "U_kernels.0",
        "V_kernels.0",
        "bias.0",
        "C_kernels.0",
    ]


def test_initialisation_follows_torchrec():
    n, k, r = 64, 4, 8
    mix = refimpl.LowRankMixtureCrossNet(n, 2, num_experts=k, low_rank=r, seed=0)
    # xavier_normal with torch's fan rule for 3-D tensors: fan_in = size(1)·size(2),
    # fan_out = size(0)·size(2).
    expected = {
        "U_kernels.0": np.sqrt(2 / (n * r + k * r)),
        "V_kernels.0": np.sqrt(2 / (r * n + k * n)),
        "C_kernels.0": np.sqrt(2 / (r * r + k * r)),
    }
    for key, std in expected.items():
        values = mix.params[key]
        assert abs(values.std() / std - 1) < 0.1, key
        assert abs(values.mean()) < 4 * std / np.sqrt(values.size), key
    gates = np.concatenate([mix.params[f"gates.{i}.weight"] for i in range(k)])
    bound = 1 / np.sqrt(n)  # nn.Linear's default: U(±1/√fan_in)
    assert np.abs(gates).max() <= bound and np.abs(gates).max() > 0.9 * bound
    assert abs(gates.std() / (bound / np.sqrt(3)) - 1) < 0.15
    for net in (mix, refimpl.CrossNet(n, 2, seed=0), refimpl.LowRankCrossNet(n, 2, 8, seed=0)):
        assert all(not v.any() for key, v in net.params.items() if key.startswith("bias."))
    full = refimpl.CrossNet(n, 1, seed=0).params["kernels.0"]
    assert abs(full.std() / np.sqrt(2 / (2 * n)) - 1) < 0.05
    vector = refimpl.VectorCrossNet(n, 1, seed=0).params["kernels.0"]
    assert abs(vector.std() / np.sqrt(2 / (n + 1)) - 1) < 0.3


def test_seed_reproduces_and_dtype_is_kept():
    a = refimpl.LowRankMixtureCrossNet(6, 2, 2, 2, seed=7).params
    b = refimpl.LowRankMixtureCrossNet(6, 2, 2, 2, seed=np.random.default_rng(7)).params
    c = refimpl.LowRankMixtureCrossNet(6, 2, 2, 2, seed=8).params
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["U_kernels.0"], c["U_kernels.0"])
    net = refimpl.CrossNet(4, 2, dtype=np.float32)
    assert {v.dtype for v in net.params.values()} == {np.dtype(np.float32)}


# --- forward values ----------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "options"), VARIANTS, ids=IDS)
@pytest.mark.parametrize(("batch", "n", "num_layers"), [(1, 4, 1), (3, 7, 3), (2, 12, 2)])
def test_forward_matches_the_loop_version(rng, crossnet, kind, options, batch, n, num_layers):
    net = crossnet(kind, n, num_layers, options, rng)
    x = rng.standard_normal((batch, n))
    expected = crossnet_loop(x, net.params, kind, options.get("activation", "relu"))
    np.testing.assert_allclose(net(x), expected, rtol=1e-12, atol=1e-12)


def test_crossnet_by_hand():
    # W = [[0, 1], [1, 0]] swaps, b = [1, -1]: x₁ = x ⊙ (swap(x) + b) + x.
    net = refimpl.CrossNet(2, 2)
    swap = np.array([[0.0, 1.0], [1.0, 0.0]])
    net.load_state_dict(
        {"kernels.0": swap, "kernels.1": np.eye(2), "bias.0": [[1.0], [-1.0]], "bias.1": [[0], [0]]}
    )
    x = np.array([[2.0, 3.0]])
    x1 = np.array([[2 * (3 + 1) + 2, 3 * (2 - 1) + 3]])  # [[10, 6]]
    x2 = x * x1 + x1  # W = I, b = 0: [[30, 24]]
    np.testing.assert_array_equal(net(x), x2)


def test_vector_crossnet_adds_the_bias_outside_the_x0_product():
    # TorchRec's code: x̂ (x_lᵀ w) + b + x_l. Its docstring's x̂ ⊙ (w·x_l + b) + x_l would give
    # x + x ⊙ b here.
    net = refimpl.VectorCrossNet(3, 1)
    net.load_state_dict({"kernels.0": np.zeros((3, 1)), "bias.0": [[1.0], [2.0], [3.0]]})
    x = np.array([[10.0, 20.0, 30.0]])
    np.testing.assert_array_equal(net(x), [[11.0, 22.0, 33.0]])
    net.load_state_dict({"kernels.0": [[1.0], [0.0], [0.0]], "bias.0": np.zeros((3, 1))})
    np.testing.assert_array_equal(net(x), x * 10 + x)  # the score x·w = 10 scales x̂


def test_low_rank_is_crossnet_with_w_equal_w_v(rng, crossnet):
    low = crossnet("LowRankCrossNet", 5, 2, {"low_rank": 2}, rng)
    full = refimpl.CrossNet(5, 2)
    full.load_state_dict(
        {
            f"kernels.{l}": low.params[f"W_kernels.{l}"] @ low.params[f"V_kernels.{l}"]
            for l in (0, 1)
        }
        | {f"bias.{l}": low.params[f"bias.{l}"][:, None] for l in (0, 1)}
    )
    x = rng.standard_normal((3, 5))
    (y_low, c_low), (y_full, c_full) = low.forward(x), full.forward(x)
    np.testing.assert_allclose(y_low, y_full, rtol=1e-12)
    d_y = rng.standard_normal(y_low.shape)
    np.testing.assert_allclose(low.backward(d_y, c_low)[0], full.backward(d_y, c_full)[0])


def test_identity_mixture_with_one_expert_is_low_rank(rng, crossnet):
    # With g = identity and K = 1 the expert is x̂ ⊙ (U C V x + b): a low-rank net, W = U C.
    mix = crossnet(MIX, 5, 2, {"num_experts": 1, "low_rank": 2, "activation": "identity"}, rng)
    low = refimpl.LowRankCrossNet(5, 2, low_rank=2)
    p = mix.params
    low.load_state_dict(
        {f"W_kernels.{l}": p[f"U_kernels.{l}"][0] @ p[f"C_kernels.{l}"][0] for l in (0, 1)}
        | {f"V_kernels.{l}": p[f"V_kernels.{l}"][0] for l in (0, 1)}
        | {f"bias.{l}": p[f"bias.{l}"][:, 0] for l in (0, 1)}
    )
    x = rng.standard_normal((3, 5))
    (y_mix, c_mix), (y_low, c_low) = mix.forward(x), low.forward(x)
    np.testing.assert_allclose(y_mix, y_low, rtol=1e-12)
    d_y = rng.standard_normal(y_mix.shape)
    np.testing.assert_allclose(mix.backward(d_y, c_mix)[0], low.backward(d_y, c_low)[0])


def test_identical_experts_make_the_gate_irrelevant(rng, crossnet):
    # Softmax weights sum to 1, so K copies of one expert equal that expert alone, and the
    # gate's gradient vanishes.
    one = crossnet(MIX, 6, 2, {"num_experts": 1, "low_rank": 2, "activation": "tanh"}, rng)
    three = refimpl.LowRankMixtureCrossNet(6, 2, num_experts=3, low_rank=2, activation="tanh")
    state = {k: np.repeat(v, 3, axis=0) if "kernels" in k else v for k, v in one.params.items()}
    state |= {f"gates.{i}.weight": rng.standard_normal((1, 6)) for i in range(3)}
    three.load_state_dict(state)
    x = rng.standard_normal((4, 6))
    (y1, c1), (y3, c3) = one.forward(x), three.forward(x)
    np.testing.assert_allclose(y3, y1, rtol=1e-12)
    d_y = rng.standard_normal(y1.shape)
    (d_x1, _), (d_x3, d_p3) = one.backward(d_y, c1), three.backward(d_y, c3)
    np.testing.assert_allclose(d_x3, d_x1, rtol=1e-10)
    for i in range(3):
        np.testing.assert_allclose(d_p3[f"gates.{i}.weight"], 0, atol=1e-12)


def test_softmax_is_stable_and_sums_to_one():
    z = np.array([[1e4, -1e4, 0.0], [710.0, 709.0, -800.0], [0.0, 0.0, 0.0]])
    p = softmax(z)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_array_equal(p[0], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(p[1, :2], [1 / (1 + np.exp(-1)), 1 / (1 + np.exp(1))])
    np.testing.assert_allclose(p[2], 1 / 3)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_gate_logits_of_1e4_give_no_nan_or_inf(activation):
    net = refimpl.LowRankMixtureCrossNet(4, 3, num_experts=3, low_rank=2, activation=activation)
    x = np.array([[1.0, -1.0, 0.5, 2.0], [-0.5, 1.5, 1.0, -1.0]])
    # Gate k's logit on the first layer is w_k · x; scale the gates to make them about ±1e4.
    net.params["gates.0.weight"][...] = 1e4 * x[:1] / (x[:1] @ x[:1].T)
    net.params["gates.1.weight"][...] = -1e4 * x[:1] / (x[:1] @ x[:1].T)
    net.params["gates.2.weight"][...] = 0.0
    out, cache = net.forward(x)
    logits = x @ np.concatenate([net.params[f"gates.{i}.weight"] for i in range(3)]).T
    assert np.abs(logits).max() > 5e3
    d_x, d_params = net.backward(np.ones_like(out), cache)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(cache.probs))
    assert np.all(np.isfinite(d_x))
    assert all(np.all(np.isfinite(v)) for v in d_params.values())
    np.testing.assert_array_equal(cache.probs[0, 0], [1.0, 0.0, 0.0])  # saturated, exactly


# --- gradients ---------------------------------------------------------------------------


FD_CHECKS = [c for c in cases.checks() if c.witness in ("finite-diff", "hand")]


@pytest.mark.parametrize(
    "check", FD_CHECKS, ids=[f"{c.layer} {c.config} {c.witness}" for c in FD_CHECKS]
)
def test_every_finite_difference_and_hand_check_passes(check):
    # The rows `python -m refimpl check` prints: every network alone and in InteractionDCNArch.
    error = check.run()
    assert error < check.tol, f"{check.layer} {check.config}: {error:.2e}"


@pytest.mark.parametrize(("kind", "options"), VARIANTS, ids=IDS)
def test_gradcheck_at_more_shapes(kind, options):
    for batch, n, num_layers in [(1, 4, 3), (3, 5, 1), (2, 9, 2)]:
        net, inputs = cases.network_builder(kind, options, batch, n, num_layers)(
            np.random.default_rng(batch * 100 + n)
        )
        result = refimpl.gradcheck(net, inputs)
        assert result.ok, str(result)


def test_backward_by_hand_for_one_crossnet_layer():
    # y = x ⊙ (W x + b) + x, W = I, b = 0: y = x² + x, dy/dx = 2x + 1; dW = (x ⊙ g) xᵀ.
    net = refimpl.CrossNet(2, 1)
    net.load_state_dict({"kernels.0": np.eye(2), "bias.0": np.zeros((2, 1))})
    x, g = np.array([[1.0, -2.0]]), np.array([[1.0, 3.0]])
    _, cache = net.forward(x)
    d_x, d_params = net.backward(g, cache)
    np.testing.assert_array_equal(d_x, g * (2 * x + 1))
    np.testing.assert_array_equal(d_params["kernels.0"], (x * g).T @ x)
    np.testing.assert_array_equal(d_params["bias.0"], (x * g).T)


# --- broken backwards must fail gradcheck ------------------------------------------------
#
# Each mutant is a one-line edit of the code the layer runs (the textbook functions for CrossNet
# and LowRankCrossNet, the fast paths for VectorCrossNet and the mixture), put in place for the
# test.

MUTANTS = {
    "x̂ path dropped": (
        textbook.crossnet_backward,
        "d_x_hat = d_x_hat + crosses[l] * d_x",
        "d_x_hat = d_x_hat",
    ),
    "transpose missing": (
        textbook.crossnet_backward,
        'd_x = d_x + d_cross @ params[f"kernels.{l}"]',
        'd_x = d_x + d_cross @ params[f"kernels.{l}"].T',
    ),
    "kernel gradient transposed": (
        textbook.crossnet_backward,
        "d_cross.T @ xs[l]",
        "xs[l].T @ d_cross",
    ),
    "low-rank x̂ path dropped": (
        textbook.low_rank_crossnet_backward,
        "d_x_hat = d_x_hat + crosses[l] * d_x",
        "d_x_hat = d_x_hat",
    ),
    "vector x̂ path dropped": (  # the fast form: a_L ⊙ G taken as G
        fast_vector.vector_backward_fast,
        "d_input += scales[:, num_layers, None] * d_out",
        "d_input += d_out",
    ),
    "mixture x̂ path dropped": (
        fast.mixture_backward_fast,
        "d_x_hat += mix * d_x",
        "d_x_hat = d_x_hat",
    ),
    "gates from one layer": (
        fast.mixture_backward_fast,
        "d_gates += d_logits.T @ x_l",
        "d_gates = d_logits.T @ x_l",
    ),
    "softmax centering dropped": (
        fast.mixture_backward_fast,
        "d_prob - np.sum(prob * d_prob, axis=1, keepdims=True)",
        "d_prob",
    ),
    "C transpose missing": (
        fast.mixture_backward_fast,
        "d_a = (d_e @ c) * derivative(h)",
        "d_a = (d_e @ c.transpose(0, 2, 1)) * derivative(h)",
    ),
}

# (mutant, network, its arguments, the arrays whose gradient must be caught)
BROKEN = [
    ("x̂ path dropped", refimpl.CrossNet, (5, 2), {"x"}),
    ("transpose missing", refimpl.CrossNet, (5, 2), {"x", "kernels.0"}),
    ("kernel gradient transposed", refimpl.CrossNet, (5, 2), {"kernels.0", "kernels.1"}),
    ("low-rank x̂ path dropped", refimpl.LowRankCrossNet, (5, 2, 2), {"x"}),
    ("vector x̂ path dropped", refimpl.VectorCrossNet, (5, 2), {"x"}),
    ("mixture x̂ path dropped", refimpl.LowRankMixtureCrossNet, (5, 2, 2, 2, "tanh"), {"x"}),
    (
        "gates from one layer",
        refimpl.LowRankMixtureCrossNet,
        (6, 3, 3, 2, "tanh"),
        {"gates.0.weight", "gates.1.weight"},
    ),
    (
        "softmax centering dropped",
        refimpl.LowRankMixtureCrossNet,
        (6, 2, 3, 2, "tanh"),
        {"gates.0.weight", "x"},
    ),
    ("C transpose missing", refimpl.LowRankMixtureCrossNet, (5, 2, 2, 3, "tanh"), {"x"}),
]


def _gradcheck(net, draw_input, seed=0):
    cases.randomize_biases(net, np.random.default_rng(seed + 1))
    x = draw_input(np.random.default_rng(seed), (3, net.in_features))
    return refimpl.gradcheck(net, (x,))


@pytest.mark.parametrize(("name", "cls", "args", "failing"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_backwards_fail_gradcheck(draw_input, name, cls, args, failing):
    assert _gradcheck(cls(*args, seed=0), draw_input).ok  # the layer passes at this point...
    with mutated(*MUTANTS[name]):  # ...and its mutant does not
        result = _gradcheck(cls(*args, seed=0), draw_input)
    assert not result.ok
    caught = {a.name for a in result.arrays if a.rel_error >= result.tol}
    assert failing <= caught, str(result)
    assert result.worst.rel_error > 1e-3


def test_the_gate_gradient_sums_over_every_layer(rng, crossnet):
    # The gates serve every layer, so their gradient is a sum over the layers; taking one
    # layer's share changes it (the mutant above, caught by gradcheck) but nothing else.
    net = crossnet(MIX, 5, 3, {"num_experts": 2, "low_rank": 2, "activation": "tanh"}, rng)
    x = rng.standard_normal((2, 5))
    out, cache = net.forward(x)
    d_out = rng.standard_normal(out.shape)
    d_x, d_params = net.backward(d_out, cache)
    with mutated(*MUTANTS["gates from one layer"]):
        d_x_one, d_params_one = net.backward(d_out, cache)
    np.testing.assert_array_equal(d_x_one, d_x)
    for key, value in d_params.items():
        if key.startswith("gates."):
            assert refimpl.rel_error(d_params_one[key], value) > 1e-3, key
        else:
            np.testing.assert_array_equal(d_params_one[key], value)


# --- ReLU kinks --------------------------------------------------------------------------


def test_kink_distance_is_the_smallest_pre_activation(rng):
    net = refimpl.LowRankMixtureCrossNet(5, 2, num_experts=2, low_rank=2, seed=0)
    x = rng.standard_normal((3, 5))
    _, cache = net.forward(x)
    pre1, pre2 = net.pre_activations(x)  # recomputed: the cache keeps g of them only
    np.testing.assert_array_equal(cache.h, np.maximum(pre1, 0))
    np.testing.assert_array_equal(cache.h_tilde, np.maximum(pre2, 0))
    live = np.any(cache.h != 0, axis=-1, keepdims=True)
    expected = min(np.abs(pre1).min(), np.abs(pre2[np.broadcast_to(live, pre2.shape)]).min())
    assert net.kink_distance(x) == expected
    smooth = refimpl.LowRankMixtureCrossNet(5, 2, 2, 2, activation="tanh", seed=0)
    assert smooth.kink_distance(x) == np.inf
    assert refimpl.CrossNet(5, 2).kink_distance(x) == np.inf


def test_gradcheck_refuses_a_pre_activation_at_the_kink():
    net = refimpl.LowRankMixtureCrossNet(3, 1, num_experts=1, low_rank=1, seed=0)
    net.params["V_kernels.0"][...] = [[[1.0, 0.0, 0.0]]]
    x = np.array([[0.0, 1.0, 2.0]])  # V x = 0 exactly
    assert net.kink_distance(x) == 0.0
    with pytest.raises(ValueError, match="kink"):
        refimpl.gradcheck(net, (x,))


def test_a_dead_expert_is_not_a_kink():
    # g(a) = 0 for every entry (a < 0), so e = C g(a) = 0 on a whole neighbourhood: no kink.
    net = refimpl.LowRankMixtureCrossNet(3, 1, num_experts=2, low_rank=2, seed=0)
    net.params["V_kernels.0"][0] = -np.abs(net.params["V_kernels.0"][0])  # expert 0 dead on x > 0
    x = np.array([[0.5, 1.0, 1.5], [1.0, 0.7, 0.2]])
    _, cache = net.forward(x)
    _, pre2 = net.pre_activations(x)
    assert not cache.h[0, 0].any() and not pre2[0, 0].any()  # layer 0, expert 0
    assert net.kink_distance(x) > 1e-3
    assert refimpl.gradcheck(net, (x,)).ok


# --- the contract: dtypes, no mutation, nothing stored -----------------------------------


@pytest.mark.parametrize(("kind", "options"), VARIANTS, ids=IDS)
def test_float32_stays_float32(rng, crossnet, cache_arrays, kind, options):
    net64 = crossnet(kind, 6, 3, options, 0)
    net32 = getattr(refimpl, kind)(6, 3, **options, dtype=np.float32)
    net32.load_state_dict(net64.params)
    x = rng.standard_normal((4, 6))
    out, cache = net32.forward(x.astype(np.float32))
    d_x, d_params = net32.backward(np.ones_like(out), cache)
    assert out.dtype == d_x.dtype == np.float32
    assert all(a.dtype == np.float32 for a in cache_arrays(cache))
    assert all(v.dtype == np.float32 for v in d_params.values())
    np.testing.assert_allclose(out, net64(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("kind", "options"), VARIANTS, ids=IDS)
def test_backward_mutates_nothing_and_forward_stores_nothing(
    rng, crossnet, cache_arrays, kind, options
):
    net = crossnet(kind, 5, 3, options, 0)
    attributes = dict(vars(net))
    params = net.state_dict()
    x = rng.standard_normal((3, 5))
    x_before = x.copy()
    out, cache = net.forward(x)
    assert vars(net) == attributes
    kept = [a.copy() for a in cache_arrays(cache)]
    d_out = rng.standard_normal(out.shape)
    d_out_before = d_out.copy()
    d_x, d_params = net.backward(d_out, cache)
    for before, after in zip(kept, cache_arrays(cache), strict=True):
        np.testing.assert_array_equal(before, after)
    for key, value in net.params.items():
        np.testing.assert_array_equal(value, params[key])
    np.testing.assert_array_equal(d_out, d_out_before)
    np.testing.assert_array_equal(x, x_before)
    assert list(d_params) == list(net.params)
    assert all(d_params[k].shape == v.shape for k, v in net.params.items())
    # Gradients are fresh arrays, never views of the cache, the upstream or the parameters.
    for grad in [d_x, *d_params.values()]:
        for other in [d_out, x, *cache_arrays(cache), *net.params.values()]:
            assert not np.shares_memory(grad, other)


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: refimpl.CrossNet(0, 2), ValueError, "in_features: expected an integer >= 1"),
        (lambda: refimpl.CrossNet(4, 0), ValueError, "num_layers: expected an integer >= 1"),
        (lambda: refimpl.VectorCrossNet(4, 2.0), TypeError, "num_layers"),
        (lambda: refimpl.LowRankCrossNet(4, 2, low_rank=0), ValueError, "low_rank"),
        (lambda: refimpl.LowRankCrossNet(True, 2), TypeError, "in_features"),
        (lambda: refimpl.LowRankMixtureCrossNet(4, 2, num_experts=0), ValueError, "num_experts"),
        (lambda: refimpl.LowRankMixtureCrossNet(4, 2, low_rank=0), ValueError, "low_rank"),
        (
            lambda: refimpl.LowRankMixtureCrossNet(4, 2, activation="gelu"),
            ValueError,
            r"activation: expected one of \['identity', 'relu', 'sigmoid', 'tanh'\], got 'gelu'",
        ),
        (
            lambda: refimpl.LowRankMixtureCrossNet(4, 2, activation=np.tanh),
            TypeError,
            "activation: .*by name.*refimpl takes a name where TorchRec takes a callable",
        ),
        (lambda: refimpl.CrossNet(4, 2, dtype=np.int64), TypeError, "dtype"),
    ],
)
def test_bad_constructor_arguments(build, error, message):
    with pytest.raises(error, match=message):
        build()


@pytest.mark.parametrize(("kind", "options"), VARIANTS, ids=IDS)
def test_bad_inputs_name_the_argument_and_shape(kind, options):
    net = getattr(refimpl, kind)(12, 2, **options)
    with pytest.raises(ValueError, match=r"x: expected shape \(B, N\) = \(3, 12\), got \(3, 10\)"):
        net.forward(np.zeros((3, 10)))
    with pytest.raises(ValueError, match=r"x: expected a 2-D array of shape \(B, N\), got a 1-D"):
        net.forward(np.zeros(12))
    with pytest.raises(TypeError, match=r"x: expected a float32 or float64 array.*int64"):
        net.forward(np.zeros((3, 12), np.int64))
    with pytest.raises(TypeError, match="x: dtype float32 does not match the layer's float64"):
        net.forward(np.zeros((3, 12), np.float32))
    with pytest.raises(TypeError, match="x: expected a NumPy array"):
        net.forward([[0.0] * 12])
    _, cache = net.forward(np.ones((3, 12)))
    with pytest.raises(
        ValueError, match=r"d_out: expected shape \(B, N\) = \(3, 12\), got \(3, 11\)"
    ):
        net.backward(np.zeros((3, 11)), cache)
    with pytest.raises(ValueError, match=r"d_out: expected shape \(B, N\) = \(3, 12\)"):
        net.backward(np.zeros((1, 12)), cache)
    with pytest.raises(TypeError, match="d_out: dtype float32 does not match"):
        net.backward(np.zeros((3, 12), np.float32), cache)


def test_loop_version_refuses_unknown_kinds():
    with pytest.raises(ValueError, match="kind"):
        crossnet_loop(np.zeros((1, 2)), {}, "DeepCrossNet")


def test_repr_names_the_configuration():
    net = refimpl.LowRankMixtureCrossNet(4, 1, num_experts=2, low_rank=1, activation="tanh")
    text = repr(net)
    assert (
        "num_experts=2" in text and "activation='tanh'" in text and "U_kernels.0: (2, 4, 1)" in text
    )
