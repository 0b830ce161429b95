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


def _agree_to_round_off(a, b):
    # refimpl runs the mixture's recurrence in a rearranged form that never forms the experts'
    # crosses c_k (see LowRankMixtureCrossNet's Notes); derivations runs the plain one. The
    # two agree to round-off, not bit for bit: norm-wise within 1e-14 (~50 ulps). Elementwise,
    # an entry that cancels to ~1e-5 of its terms carries ~1e-11 of relative round-off.
    return np.linalg.norm(a - b) <= 1e-14 * np.linalg.norm(b)


@pytest.mark.parametrize("activation", ["tanh", "relu", "identity"])
@pytest.mark.parametrize("num_experts", [1, 3])
def test_refimpls_fast_mixture_backward_is_the_plain_recurrence(activation, num_experts):
    for seed in range(5):
        rng = np.random.default_rng(seed)
        net = refimpl.LowRankMixtureCrossNet(6, 3, num_experts, 2, activation, seed=seed)
        for key, value in net.params.items():
            if key.startswith("bias."):
                value[...] = 0.1 * rng.standard_normal(value.shape)
        x, d_out = rng.standard_normal((4, 6)), rng.standard_normal((4, 6))
        _, cache = net.forward(x)
        assert cache._fields == ("xs", "act1", "act2", "mixes", "probs")  # no (K, B, N) crosses
        d_x, d_params = net.backward(d_out, cache)
        derivative = refimpl.get_activation(activation).derivative
        plain = cx.closed_form_backward(MIX, net.params, cache, d_out, derivative=derivative)
        assert _agree_to_round_off(plain.d_x, d_x)
        for key, value in d_params.items():
            assert _agree_to_round_off(plain.d_params[key], value), key
        # A dropped term is far outside round-off: the plain form without its x̂ path.
        broken = cx.closed_form_backward(
            MIX, net.params, cache, d_out, derivative=derivative, mistake="forget_x0_path"
        )
        assert not _agree_to_round_off(broken.d_x, d_x)


def test_closed_form_on_floats_is_refimpls_backward_and_shares_add_up(rng):
    net = refimpl.LowRankMixtureCrossNet(6, 3, num_experts=3, low_rank=2, activation="tanh", seed=1)
    x = rng.standard_normal((4, 6))
    d_out = rng.standard_normal((4, 6))
    _, cache = net.forward(x)
    d_x, d_params = net.backward(d_out, cache)
    act = refimpl.get_activation("tanh")
    ours = cx.closed_form_backward(MIX, net.params, cache, d_out, derivative=act.derivative)
    assert _agree_to_round_off(ours.d_x, d_x)
    for key, value in d_params.items():
        assert _agree_to_round_off(ours.d_params[key], value)
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


# --------------------------------------------------------------------------------------------
# InteractionDCNArch: the cross network over concat(dense, sparse).reshape(B, N)
# --------------------------------------------------------------------------------------------

DCN = cx.DCN

# (crossnet_kind, config) inside InteractionDCNArch; the default size is B=2, F=2, D=2 (N=6).
DCN_CONFIGS = [
    ("CrossNet", {}),
    ("CrossNet", {"num_sparse_features": 1, "embedding_dim": 3, "batch": 3}),
    ("LowRankCrossNet", {"low_rank": 2}),
    ("VectorCrossNet", {}),
    ("VectorCrossNet", {"num_sparse_features": 3, "embedding_dim": 1}),
    (MIX, {"num_experts": 2, "low_rank": 2, "activation": "tanh"}),
    (MIX, {"num_experts": 2, "low_rank": 1, "activation": "relu"}),
    (MIX, {"num_experts": 1, "activation": "identity", "num_sparse_features": 1}),
]
DCN_IDS = [f"{kind}-{_id(config)}" for kind, config in DCN_CONFIGS]


def _dcn_layer(kind, config):
    cfg = cx.make_config(DCN, crossnet_kind=kind, **config)
    net = getattr(refimpl, kind)(**cfg.layer_kwargs())
    return refimpl.InteractionDCNArch(cfg.num_sparse_features, net)


@pytest.mark.parametrize(("kind", "config"), DCN_CONFIGS, ids=DCN_IDS)
def test_dcn_closed_form_proven(kind, config):
    statement = cx.prove_closed_form(DCN, crossnet_kind=kind, **config)
    assert statement.startswith(f"{DCN} ") and f"over {kind}" in statement
    assert "split into dense and sparse, equals the symbolic gradient" in statement
    net = cx.network(DCN, crossnet_kind=kind, **config)
    assert ("fully symbolic" in statement) == net.symbolic


@pytest.mark.parametrize(("kind", "config"), DCN_CONFIGS, ids=DCN_IDS)
def test_dcn_symbolic_witness(kind, config):
    errors = cx.witness_errors(DCN, crossnet_kind=kind, **config)
    layer = _dcn_layer(kind, config)
    assert list(errors) == ["output", "dense", "sparse", *layer.params]
    assert max(errors.values()) < 1e-12, errors
    assert cx.symbolic_witness(DCN, crossnet_kind=kind, **config) == max(errors.values())


@pytest.mark.parametrize(("kind", "config"), DCN_CONFIGS[:6], ids=DCN_IDS[:6])
def test_dcn_symbols_keyed_and_shaped_like_refimpl(kind, config):
    net = cx.network(DCN, crossnet_kind=kind, **config)
    layer = _dcn_layer(kind, config)
    leaves = net.leaves()
    assert list(leaves) == [*layer.input_names, *layer.params]  # "crossnet." keys, in order
    assert {k: v.shape for k, v in leaves.items() if k in layer.params} == {
        k: v.shape for k, v in layer.params.items()
    }
    b, f, d = net.inputs["sparse"].shape
    assert net.inputs["dense"].shape == (b, d) and net.x.shape == (b, (f + 1) * d)


def test_dcn_input_is_dense_then_sparse_row_major():
    # x̂[b, f·D + j] is combined[b, f, j]: dense's D entries first, then sparse feature by feature.
    net = cx.network(DCN, crossnet_kind="CrossNet", num_sparse_features=2, embedding_dim=3)
    dense, sparse = net.inputs["dense"], net.inputs["sparse"]
    for b in range(2):
        assert list(net.x[b, :3]) == list(dense[b])
        for f in range(2):
            assert list(net.x[b, 3 * (f + 1) : 3 * (f + 2)]) == list(sparse[b, f])
    # The same symbols, so the gradient with respect to them is taken directly, not by a split.
    assert set(net.x.ravel()) == {*dense.ravel(), *sparse.ravel()}
    assert "x" not in net.leaves()


@pytest.mark.parametrize("mistake", cx.DCN_MISTAKES)
@pytest.mark.parametrize(
    ("kind", "config"),
    [
        ("CrossNet", {}),
        ("LowRankCrossNet", {"num_sparse_features": 1}),
        ("VectorCrossNet", {}),
        (MIX, {"num_experts": 2, "activation": "tanh"}),
        (MIX, {"num_experts": 2, "low_rank": 1, "activation": "relu"}),
    ],
    ids=_id,
)
def test_dcn_wrong_split_is_caught(kind, config, mistake):
    problem = cx.compare(DCN, mistake, crossnet_kind=kind, **config)
    assert problem is not None and problem.startswith("dense[")
    assert cx.compare(DCN, None, crossnet_kind=kind, **config) is None


def test_dcn_wrong_split_moves_the_sparse_gradient_too():
    # The parameters do not see the split: only dense and sparse differ.
    config = {"crossnet_kind": "VectorCrossNet", "num_sparse_features": 2, "embedding_dim": 2}
    net = cx.network(DCN, **config)
    truth = cx.symbolic_gradient(net)
    closed = cx.closed_form_backward("VectorCrossNet", net.params, net.cache, net.upstream)
    for mistake in cx.DCN_MISTAKES:
        found = cx._closed_leaves(net.config, closed, mistake)
        wrong = {k for k in truth if not np.array_equal(found[k], truth[k])}
        assert wrong == {"dense", "sparse"}, mistake


def test_dcn_network_mistakes_are_still_caught():
    problem = cx.compare(DCN, "forget_x0_path", crossnet_kind="CrossNet")
    assert problem is not None and problem.startswith("dense[")
    problem = cx.compare(DCN, "gate_grad_one_layer", crossnet_kind=MIX, num_experts=2)
    assert problem is not None and problem.startswith("crossnet.gates.")


def test_dcn_mistakes_only_for_the_dcn():
    with pytest.raises(ValueError, match="split"):
        cx.compare("CrossNet", mistake="dense_row_last")
    with pytest.raises(ValueError, match="mistake"):
        cx.compare(DCN, mistake="off_by_one", crossnet_kind="CrossNet")
    with pytest.raises(ValueError, match="mistake"):
        cx.split_combined_gradient(np.zeros((1, 4)), 1, mistake="off_by_one")


def test_split_combined_gradient_is_refimpls_backward(rng):
    net = refimpl.LowRankMixtureCrossNet(
        12, 2, num_experts=2, low_rank=2, activation="tanh", seed=3
    )
    dcn = refimpl.InteractionDCNArch(2, net)
    dense, sparse = rng.standard_normal((3, 4)), rng.standard_normal((3, 2, 4))
    d_out = rng.standard_normal((3, 12))
    _, cache = dcn.forward(dense, sparse)
    d_dense, d_sparse, _ = dcn.backward(d_out, cache)
    d_x, _ = net.backward(d_out, cache.crossnet)
    ours_dense, ours_sparse = cx.split_combined_gradient(d_x, 2)
    assert np.array_equal(ours_dense, d_dense) and np.array_equal(ours_sparse, d_sparse)
    for mistake in cx.DCN_MISTAKES:
        wrong_dense, wrong_sparse = cx.split_combined_gradient(d_x, 2, mistake)
        assert wrong_dense.shape == (3, 4) and wrong_sparse.shape == (3, 2, 4)
        assert not np.allclose(wrong_dense, d_dense)


def test_dcn_witness_catches_a_wrong_refimpl_split(monkeypatch):
    # refimpl's own backward with dense's rows taken from the end: the numeric witness fails.
    right = refimpl.InteractionDCNArch.backward

    def dense_last(self, d_out, cache):
        d_dense, d_sparse, d_params = right(self, d_out, cache)
        d_combined = np.concatenate([d_dense[:, None], d_sparse], axis=1)  # (B, F+1, D)
        return d_combined[:, -1], d_combined[:, :-1], d_params

    monkeypatch.setattr(refimpl.InteractionDCNArch, "backward", dense_last)
    errors = cx.witness_errors(DCN, crossnet_kind="LowRankCrossNet")
    assert errors["output"] < 1e-12  # the forward is untouched
    assert errors["dense"] > 1e-3 and errors["sparse"] > 1e-3
    assert max(v for k, v in errors.items() if k.startswith("crossnet.")) < 1e-12


def test_dcn_config():
    cfg = cx.make_config(DCN, crossnet_kind=MIX, num_sparse_features=1, embedding_dim=3)
    assert (cfg.kind, cfg.layer, cfg.in_features, cfg.dcn) == (MIX, DCN, 6, True)
    assert (
        cfg.label()
        == "InteractionDCNArch B=2 F=1 D=3 over LowRankMixtureCrossNet N=6 L=2 K=2 r=2 tanh"
    )
    assert cx.make_config(DCN, crossnet_kind="CrossNet", in_features=6).in_features == 6
    with pytest.raises(ValueError, match="crossnet_kind"):
        cx.make_config(DCN)
    with pytest.raises(ValueError, match="crossnet_kind"):
        cx.make_config("CrossNet", crossnet_kind="CrossNet")
    with pytest.raises(ValueError, match="in_features"):
        cx.make_config(DCN, crossnet_kind="CrossNet", in_features=4)  # (2+1)·2 = 6
    with pytest.raises(ValueError, match="num_sparse_features"):
        cx.make_config(DCN, crossnet_kind="CrossNet", num_sparse_features=0)
    with pytest.raises(ValueError, match="embedding_dim"):
        cx.make_config(DCN, crossnet_kind="CrossNet", embedding_dim=0)
    # The witness's cache key turns back into the same configuration.
    configs = [cx.make_config(kind, **config) for kind, config in WITNESSES]
    configs += [cx.make_config(DCN, crossnet_kind=k, **config) for k, config in DCN_CONFIGS]
    for cfg in configs:
        assert cx.make_config(cfg.layer, **cx._config_kwargs(cfg)) == cfg
