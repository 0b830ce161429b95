"""The SymPy proofs of the cross networks' backward, alone and inside InteractionDCNArch
(derivations/crossnet.py): every proof holds, every deliberate mistake is caught, and the float
witness agrees with refimpl's layers."""

import pytest

sp = pytest.importorskip("sympy")

import derivations.crossnet as cx  # noqa: E402
from derivations.proof import mutated  # noqa: E402
from refimpl.fast import crossnet as fast  # noqa: E402

pytestmark = pytest.mark.slow

MIX, DCN = cx.MIXTURE, cx.DCN

# (kind, configuration, how): the polynomial networks as identities, the rest at a point.
PROOFS = [
    ("CrossNet", {"in_features": 3}, "identity"),
    ("LowRankCrossNet", {"in_features": 3, "low_rank": 1}, "identity"),
    ("VectorCrossNet", {}, "identity"),
    (
        MIX,
        {"in_features": 2, "low_rank": 1, "num_experts": 2, "activation": "identity", "batch": 1},
        "point",
    ),  # the gates shared by two layers, the softmax
    (MIX, {"in_features": 3, "num_layers": 1, "activation": "tanh"}, "point"),
    (MIX, {"in_features": 3, "num_layers": 1, "activation": "relu", "low_rank": 1}, "point"),
    (MIX, {"in_features": 2, "low_rank": 1, "num_experts": 1, "activation": "tanh"}, "point"),
    (MIX, {"in_features": 2, "low_rank": 1, "num_experts": 1, "activation": "sigmoid"}, "point"),
    (DCN, {"crossnet_kind": "CrossNet"}, "point"),
    (DCN, {"crossnet_kind": "LowRankCrossNet", "low_rank": 1}, "point"),
    (
        DCN,
        {"crossnet_kind": "VectorCrossNet", "num_sparse_features": 2, "embedding_dim": 1},
        "point",
    ),
    (DCN, {"crossnet_kind": MIX, "num_layers": 1, "activation": "tanh", "low_rank": 1}, "point"),
]
IDS = [cx.make_config(kind, **config).label() for kind, config, _ in PROOFS]

GATED = {"in_features": 2, "low_rank": 1, "num_experts": 2, "activation": "identity", "batch": 1}
# mutant -> (kind, configuration, the leaf where the proof must find it)
MUTANT_CASES = {
    "x̂ path dropped": ("CrossNet", {"in_features": 3}, "x"),
    "transpose missing": ("CrossNet", {"in_features": 3}, "x"),
    "low-rank x̂ path dropped": ("LowRankCrossNet", {"in_features": 3, "low_rank": 1}, "x"),
    "vector bias inside x̂": ("VectorCrossNet", {}, "bias.0"),
    "mixture x̂ path dropped": (MIX, GATED, "x"),
    "softmax centering dropped": (MIX, GATED, "x"),
    "gates from one layer": (MIX, GATED, "gates."),
    "C transpose missing": (
        MIX,
        {"in_features": 2, "num_layers": 1, "num_experts": 1, "activation": "identity"},
        "x",
    ),
    "dense from the last row": (DCN, {"crossnet_kind": "VectorCrossNet"}, "dense"),
}


@pytest.mark.parametrize(("kind", "config", "how"), PROOFS, ids=IDS)
def test_the_backward_is_proven(kind, config, how):
    statement = cx.prove(kind, **config)
    assert statement.startswith(cx.make_config(kind, **config).label())
    assert statement.endswith("(identity)" if how == "identity" else "rational point)")


def test_every_mutant_is_tested():
    assert set(MUTANT_CASES) == set(cx.MUTANTS)


@pytest.mark.parametrize("mutant", MUTANT_CASES)
def test_every_mutant_fails_its_proof(mutant):
    kind, config, where = MUTANT_CASES[mutant]
    assert cx.gap(kind, **config) is None
    found = cx.gap(kind, mutant, **config)
    assert found is not None and found.startswith(where), found


def test_the_gate_mutants_are_no_mistakes_without_gates():
    # With one expert there is no gate: the two gate mutants change nothing.
    config = {"in_features": 2, "low_rank": 1, "num_experts": 1, "activation": "tanh"}
    assert cx.gap(MIX, "softmax centering dropped", **config) is None
    assert cx.gap(MIX, "gates from one layer", **config) is None


@pytest.mark.parametrize(
    ("kind", "config"),
    [
        ("LowRankCrossNet", {"low_rank": 2}),
        (MIX, {"in_features": 3, "num_layers": 1, "activation": "relu", "low_rank": 1}),
        (DCN, {"crossnet_kind": MIX, "num_layers": 1, "activation": "tanh", "low_rank": 1}),
    ],
    ids=["LowRankCrossNet", "mixture relu", "DCN over the mixture"],
)
def test_the_float_witness_agrees_with_the_layer(kind, config):
    errors = cx.witness_errors(kind, **config)
    layer = cx.make_config(kind, **config).layer()
    assert list(errors) == ["output", *layer.input_names, *layer.params]
    assert max(errors.values()) < 1e-10, errors


def test_the_float_witness_catches_a_broken_fast_path():
    config = GATED
    with mutated(
        fast.mixture_backward_fast, "d_gates += d_logits.T @ x_l", "d_gates = d_logits.T @ x_l"
    ):
        errors = cx.witness_errors(MIX, **config)
    assert errors["output"] < 1e-12 and errors["x"] < 1e-10  # only the gates are wrong
    assert errors["gates.0.weight"] > 1e-3


@pytest.mark.parametrize(
    ("kind", "config"),
    [
        ("CrossNet", {}),
        ("VectorCrossNet", {}),
        (MIX, {"num_experts": 3}),
        (MIX, {"num_experts": 1}),
        (DCN, {"crossnet_kind": "LowRankCrossNet"}),
    ],
    ids=["CrossNet", "VectorCrossNet", "K=3", "K=1", "DCN"],
)
def test_symbols_are_keyed_and_shaped_like_refimpl(kind, config):
    leaves = cx.leaves(cx.make_config(kind, **config))
    layer = cx.make_config(kind, **config).layer()
    assert list(leaves) == [*layer.input_names, *layer.params]  # TorchRec's key order too
    assert all(leaves[k].shape == v.shape for k, v in layer.params.items())


@pytest.mark.parametrize("kind", cx.KINDS)
def test_degree_in_the_input_grows_by_one_per_layer(kind):
    config = {"in_features": 2, "num_layers": 3, "batch": 1, "low_rank": 1}
    if kind == MIX:
        config |= {"num_experts": 1, "activation": "identity"}
    net = cx.network(kind, **config)
    assert [cx.degree_in_input(net, x[0, 0]) for x in (*net.cache.xs, net.output)] == [1, 2, 3, 4]


def test_where_the_biases_sit():
    low = cx.network("LowRankCrossNet", in_features=2, num_layers=1, batch=1)
    assert low.params["bias.0"].shape == (2,)  # TorchRec's (N,), not the seed's [N, 1]
    # LowRankCrossNet's bias sits inside the product with x̂ ...
    assert sp.diff(low.output[0, 0], low.params["bias.0"][0]) == low.x[0, 0]
    # ... VectorCrossNet's outside it (TorchRec's code; its docstring puts it inside).
    vec = cx.network("VectorCrossNet", in_features=2, num_layers=1, batch=1)
    assert sp.diff(vec.output[0, 0], vec.params["bias.0"][0, 0]) == 1


def test_the_dcn_input_is_dense_then_sparse_row_major():
    net = cx.network(DCN, crossnet_kind="CrossNet", num_sparse_features=2, embedding_dim=3)
    dense, sparse = net.leaves["dense"], net.leaves["sparse"]
    for b in range(2):
        assert list(net.x[b, :3]) == list(dense[b])
        for f in range(2):
            assert list(net.x[b, 3 * (f + 1) : 3 * (f + 2)]) == list(sparse[b, f])


def test_configuration_is_checked():
    with pytest.raises(ValueError, match="kind"):
        cx.make_config("DeepCrossNet")
    with pytest.raises(ValueError, match="activation"):
        cx.make_config(MIX, activation="gelu")
    with pytest.raises(ValueError, match="in_features"):
        cx.make_config("CrossNet", in_features=0)
    with pytest.raises(ValueError, match="crossnet_kind"):
        cx.make_config(DCN)
    with pytest.raises(ValueError, match="mutant"):
        cx.gap("CrossNet", "off by one")
    # Options a kind does not use do not split the caches.
    assert cx.make_config("LowRankCrossNet", num_experts=5) == cx.make_config("LowRankCrossNet")
