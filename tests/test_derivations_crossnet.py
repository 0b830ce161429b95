"""The symbolic derivation of the cross networks' backward (derivations/crossnet.py).

Every proof must hold exactly, and the same machinery must reject a deliberately wrong
recurrence: a check that cannot fail proves nothing.
"""

import numpy as np
import pytest

sp = pytest.importorskip("sympy")

import derivations.crossnet as cx  # noqa: E402
import refimpl  # noqa: E402

MIX = cx.MIXTURE

# (kind, config) proven exactly; N = 12 is the seed's (F+1)·D at F = 2, D = 4.
PROOFS = [
    ("CrossNet", {}),
    ("CrossNet", {"in_features": 12}),
    ("LowRankCrossNet", {}),
    ("LowRankCrossNet", {"in_features": 12}),
    ("LowRankCrossNet", {"low_rank": 1, "num_layers": 3}),
    ("VectorCrossNet", {}),
    ("VectorCrossNet", {"in_features": 12}),
    ("VectorCrossNet", {"num_layers": 4}),
    (MIX, {"num_experts": 1, "activation": "identity"}),
    (MIX, {"num_experts": 1, "activation": "tanh"}),
    (MIX, {}),  # K=2, r=2, tanh
    (MIX, {"in_features": 12}),
    (MIX, {"num_experts": 3, "num_layers": 3}),
    (MIX, {"activation": "relu"}),
    (MIX, {"activation": "relu", "low_rank": 1}),
    (MIX, {"activation": "relu", "in_features": 12}),
    (MIX, {"activation": "identity", "in_features": 3}),
]

GATED = [(MIX, {}), (MIX, {"activation": "relu"}), (MIX, {"num_experts": 3, "num_layers": 3})]

WITNESSES = [
    ("CrossNet", {}),
    ("CrossNet", {"in_features": 12}),
    ("LowRankCrossNet", {"low_rank": 2}),
    ("LowRankCrossNet", {"low_rank": 3, "in_features": 6, "batch": 3}),
    ("VectorCrossNet", {}),
    ("VectorCrossNet", {"in_features": 12}),
    (MIX, {"num_experts": 1, "activation": "identity"}),
    (MIX, {"num_experts": 2, "activation": "tanh"}),
    (MIX, {"num_experts": 2, "low_rank": 1, "activation": "relu"}),
    (MIX, {"num_experts": 3, "activation": "relu", "in_features": 6}),
    (MIX, {"num_experts": 2, "activation": "identity", "in_features": 3}),
]


def _id(value):
    return "-".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else value


@pytest.mark.parametrize(("kind", "config"), PROOFS, ids=_id)
def test_recurrence_proven(kind, config):
    statement = cx.prove_closed_form(kind, **config)
    assert "equals the symbolic gradient" in statement
    net = cx.network(kind, **config)
    assert ("fully symbolic" in statement) == net.symbolic


X0_PATH = [("CrossNet", {}), ("LowRankCrossNet", {}), ("VectorCrossNet", {})]
X0_PATH += [(MIX, {"num_experts": 1, "activation": "identity"}), *GATED[:2]]


@pytest.mark.parametrize(("kind", "config"), X0_PATH, ids=_id)
def test_forgetting_the_x0_path_is_caught(kind, config):
    problem = cx.compare(kind, mistake="forget_x0_path", **config)
    assert problem is not None and problem.startswith("x[")


@pytest.mark.parametrize(("kind", "config"), GATED, ids=_id)
def test_gate_gradient_from_one_layer_is_caught(kind, config):
    problem = cx.compare(kind, mistake="gate_grad_one_layer", **config)
    assert problem is not None and problem.startswith("gates.")


@pytest.mark.parametrize(("kind", "config"), GATED, ids=_id)
def test_softmax_vjp_without_shift_is_caught(kind, config):
    assert cx.compare(kind, mistake="softmax_vjp_without_shift", **config) is not None


def test_gate_mistakes_change_nothing_without_gates():
    # With one expert there is no gate: the two gate mistakes are then no mistakes at all.
    config = {"num_experts": 1, "activation": "tanh"}
    assert cx.compare(MIX, mistake="gate_grad_one_layer", **config) is None
    assert cx.compare(MIX, mistake="softmax_vjp_without_shift", **config) is None


def test_unknown_mistake_is_refused():
    with pytest.raises(ValueError, match="mistake"):
        cx.compare("CrossNet", mistake="off_by_one")


def test_mixture_proof_holds_at_another_point():
    net = cx.network(MIX, num_experts=3, activation="tanh")
    point = cx.rational_point(net, seed=7)
    truth = cx.gradient_at_point(net, point)
    closed = cx.closed_form_at_point(net, point)
    found = {"x": closed.d_x, **closed.d_params}
    for key, expected in truth.items():
        assert all(a - b == 0 for a, b in zip(found[key].ravel(), expected.ravel(), strict=True))
    # G stays symbolic: each gradient entry is a linear form in the g_{b,n}.
    entry = truth["gates.0.weight"][0, 0]
    assert entry.ring.ngens == net.upstream.size
    assert {sum(monom) for monom in entry.monoms()} == {1}


def test_softmax_vjp_proven():
    assert cx.prove_softmax_vjp(3) == [
        "J = diag(s) − s sᵀ",
        "vᵀ J = s ⊙ (v − v·s)",
        "softmax(z − c) = softmax(z)",
        "s ⊙ v ≠ vᵀ J (the shift term matters)",
    ]


def test_derivative_rules_proven():
    rules = cx.prove_derivative_rules()
    assert rules[0] == "tanh'(u) = 1 − tanh(u)²" and "Heaviside(0, 0) = 0" in rules[-1]


@pytest.mark.parametrize(("kind", "config"), WITNESSES, ids=_id)
def test_symbolic_witness(kind, config):
    errors = cx.witness_errors(kind, **config)
    layer = getattr(refimpl, kind)(**cx.make_config(kind, **config).layer_kwargs())
    assert set(errors) == {"output", "x", *layer.params}
    assert max(errors.values()) < 1e-12, errors
    assert cx.symbolic_witness(kind, **config) == max(errors.values())


@pytest.mark.parametrize(
    ("kind", "config"),
    [
        ("CrossNet", {}),
        ("LowRankCrossNet", {"low_rank": 3}),
        ("LowRankCrossNet", {"low_rank": 1}),
        ("VectorCrossNet", {}),
        (MIX, {"num_experts": 1}),
        (MIX, {"num_experts": 3, "low_rank": 1}),
    ],
    ids=_id,
)
def test_symbols_keyed_and_shaped_like_refimpl(kind, config):
    net = cx.network(kind, **config)
    layer = getattr(refimpl, kind)(**cx.make_config(kind, **config).layer_kwargs())
    assert list(net.params) == list(layer.params)  # TorchRec's key order too
    assert {k: v.shape for k, v in net.params.items()} == {
        k: v.shape for k, v in layer.params.items()
    }
    assert type(net.cache) is type(layer.forward(np.ones((2, 4)))[1])


@pytest.mark.parametrize("kind", ["CrossNet", "LowRankCrossNet", "VectorCrossNet", MIX])
def test_degree_in_x0_grows_by_one_per_layer(kind):
    config = {"in_features": 2, "num_layers": 3, "batch": 1}
    if kind == MIX:
        config.update(num_experts=1, activation="identity", low_rank=1)
    net = cx.network(kind, **config)
    layers = [*net.cache.xs, net.output]
    assert [cx.degree_in_input(net, x[0, 0]) for x in layers] == [1, 2, 3, 4]


def test_lowrank_bias_is_a_vector_and_vector_bias_outside_the_product():
    low = cx.network("LowRankCrossNet", in_features=2, num_layers=1, batch=1)
    assert low.params["bias.0"].shape == (2,)  # TorchRec's (N,), not the seed's [N, 1]
    # LowRankCrossNet's bias sits inside the product with x̂ ...
    assert low.output[0, 0].diff(low.params["bias.0"][0]) == low.x[0, 0]
    # ... VectorCrossNet's outside it (TorchRec's code; its docstring puts it inside).
    vec = cx.network("VectorCrossNet", in_features=2, num_layers=1, batch=1)
    assert vec.output[0, 0].diff(vec.params["bias.0"][0, 0]) == 1


def test_closed_form_on_floats_is_refimpls_backward_and_shares_add_up(rng):
    net = refimpl.LowRankMixtureCrossNet(6, 3, num_experts=3, low_rank=2, activation="tanh", seed=1)
    x = rng.standard_normal((4, 6))
    d_out = rng.standard_normal((4, 6))
    _, cache = net.forward(x)
    d_x, d_params = net.backward(d_out, cache)
    act = refimpl.get_activation("tanh")
    ours = cx.closed_form_backward(MIX, net.params, cache, d_out, derivative=act.derivative)
    assert refimpl.rel_error(ours.d_x, d_x) < 1e-15
    for key, value in d_params.items():
        assert refimpl.rel_error(ours.d_params[key], value) < 1e-15
    # The shared gates: one share per layer, adding up to the gradient refimpl returns.
    assert len(ours.gate_shares) == 3
    total = np.concatenate([d_params[f"gates.{k}.weight"] for k in range(3)])
    assert refimpl.rel_error(sum(ours.gate_shares), total) < 1e-14
    assert all(refimpl.rel_error(s, total) > 1e-3 for s in ours.gate_shares)
    # The x̂ path: one share per layer; with the identity path they make d_x.
    broken = cx.closed_form_backward(
        MIX, net.params, cache, d_out, derivative=act.derivative, mistake="forget_x0_path"
    )
    assert refimpl.rel_error(broken.d_x + sum(ours.x0_shares), d_x) < 1e-14


def test_relu_slope_at_zero_is_zero_as_pytorch():
    zero = np.array([cx.QQ(0), cx.QQ(1, 3), cx.QQ(-1, 3)], dtype=object)
    slopes = cx._EXACT_DERIVATIVES["relu"](zero, zero)
    assert list(slopes) == [0, 1, 0]
    relu = refimpl.get_activation("relu")
    assert relu.derivative(np.zeros(1), np.zeros(1))[0] == 0.0


def test_config_validation():
    with pytest.raises(ValueError, match="kind"):
        cx.make_config("DeepCrossNet")
    with pytest.raises(ValueError, match="activation"):
        cx.make_config(MIX, activation="gelu")
    with pytest.raises(ValueError, match="in_features"):
        cx.make_config("CrossNet", in_features=0)
    with pytest.raises(ValueError, match="low_rank"):
        cx.make_config("LowRankCrossNet", low_rank=0)
    # Unused options do not split the caches: LowRankCrossNet ignores K and the activation.
    assert cx.make_config("LowRankCrossNet", num_experts=5) == cx.make_config("LowRankCrossNet")
