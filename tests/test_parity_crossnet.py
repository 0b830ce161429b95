"""TorchRec parity for the cross networks and InteractionDCNArch (needs requirements-parity.txt)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
crossnet = pytest.importorskip("torchrec.modules.crossnet")
dlrm = pytest.importorskip("torchrec.models.dlrm")

import refimpl  # noqa: E402
from derivations.proof import mutated  # noqa: E402
from refimpl.fast import crossnet as fast  # noqa: E402
from refimpl.tools.check.cases import crossnet as cases  # noqa: E402
from refimpl.tools.parity import compare_with_torch  # noqa: E402

pytestmark = pytest.mark.parity

MIX = "LowRankMixtureCrossNet"

# (kind, options, B, N, L): every variant; B = 1, L = 3, K = 3, relu and tanh, DLRM-sized N.
CONFIGS = [
    ("CrossNet", {}, 1, 4, 1),
    ("CrossNet", {}, 3, 12, 3),
    ("CrossNet", {}, 2, 54, 2),
    ("LowRankCrossNet", {"low_rank": 1}, 1, 6, 3),
    ("LowRankCrossNet", {"low_rank": 3}, 4, 20, 2),
    ("LowRankCrossNet", {"low_rank": 16}, 2, 216, 3),
    ("VectorCrossNet", {}, 1, 5, 3),
    ("VectorCrossNet", {}, 3, 16, 1),
    ("VectorCrossNet", {}, 2, 216, 3),
    (MIX, {"num_experts": 1, "low_rank": 2, "activation": "relu"}, 1, 8, 3),
    (MIX, {"num_experts": 1, "low_rank": 3, "activation": "tanh"}, 3, 10, 2),
    (MIX, {"num_experts": 3, "low_rank": 2, "activation": "relu"}, 1, 12, 3),
    (MIX, {"num_experts": 3, "low_rank": 3, "activation": "tanh"}, 4, 9, 3),
    (MIX, {"num_experts": 2, "low_rank": 1, "activation": "identity"}, 2, 6, 2),
    (MIX, {"num_experts": 3, "low_rank": 4, "activation": "relu"}, 2, 216, 3),
    (MIX, {"num_experts": 4, "low_rank": 8, "activation": "tanh"}, 3, 108, 2),
    (MIX, {"num_experts": 2, "low_rank": 2, "activation": "sigmoid"}, 3, 8, 2),
]


def _id(config):
    kind, options, batch, n, num_layers = config
    return f"{kind} {cases.label(kind, options)} B={batch} N={n} L={num_layers}".replace("  ", " ")


def _build(kind, options, n, num_layers, seed=0):
    return cases.build_network(kind, n, num_layers, options, np.random.default_rng(seed))


@pytest.mark.parametrize("config", CONFIGS, ids=[_id(c) for c in CONFIGS])
def test_forward_and_every_gradient_match_torchrec(config):
    kind, options, batch, n, num_layers = config
    net = _build(kind, options, n, num_layers)
    x = np.random.default_rng(1).standard_normal((batch, n))
    errors = compare_with_torch(net, cases.torch_crossnet(net), (x,), seed=2)
    assert set(errors) == {"out", "x", *net.params}
    assert max(errors.values()) < 1e-10, errors


@pytest.mark.parametrize(("kind", "options"), cases.VARIANTS, ids=lambda v: str(v))
@pytest.mark.parametrize(("batch", "features", "dim"), [(2, 2, 4), (1, 26, 8), (3, 0, 4)])
def test_interaction_dcn_arch_matches_torchrec(kind, options, batch, features, dim):
    arch, inputs = cases.dcn_builder(kind, options, batch, features, dim, num_layers=3)(
        np.random.default_rng(0)
    )
    errors = compare_with_torch(arch, cases.torch_dcn(arch), inputs, seed=2)
    assert set(errors) == {"out", "dense", "sparse", *arch.params}
    assert max(errors.values()) < 1e-10, errors


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("CrossNet", {}),
        ("LowRankCrossNet", {"low_rank": 3}),
        ("VectorCrossNet", {}),
        (MIX, {"num_experts": 1, "low_rank": 2}),
        (MIX, {"num_experts": 3, "low_rank": 2}),
    ],
    ids=str,
)
def test_keys_shapes_and_order_equal_torchrecs_state_dict(kind, options):
    ours = getattr(refimpl, kind)(8, 2, **options)
    theirs = getattr(crossnet, kind)(8, 2, **options)
    assert [(k, v.shape) for k, v in ours.params.items()] == [
        (k, tuple(v.shape)) for k, v in theirs.state_dict().items()
    ]
    arch = refimpl.InteractionDCNArch(1, ours)
    assert list(arch.params) == list(dlrm.InteractionDCNArch(1, theirs).state_dict())


def test_initial_distributions_match_torchrecs():
    n, k, r = 48, 4, 6
    torch.manual_seed(0)
    theirs = crossnet.LowRankMixtureCrossNet(n, 3, num_experts=k, low_rank=r).state_dict()
    ours = refimpl.LowRankMixtureCrossNet(n, 3, num_experts=k, low_rank=r, seed=0).params
    for key in ("U_kernels", "V_kernels", "C_kernels"):
        # three layers pooled, so each estimate rests on a few hundred values or more
        a = np.concatenate([ours[f"{key}.{l}"].ravel() for l in range(3)])
        b = np.concatenate([theirs[f"{key}.{l}"].numpy().ravel() for l in range(3)])
        assert abs(a.std() / b.std() - 1) < 0.15, key
    for l in range(3):
        assert not ours[f"bias.{l}"].any() and not theirs[f"bias.{l}"].any()
    gates_ours = np.concatenate([ours[f"gates.{i}.weight"] for i in range(k)])
    gates_theirs = np.concatenate([theirs[f"gates.{i}.weight"].numpy() for i in range(k)])
    bound = 1 / np.sqrt(n)
    assert np.abs(gates_ours).max() <= bound and np.abs(gates_theirs).max() <= bound
    assert abs(gates_ours.std() / gates_theirs.std() - 1) < 0.25


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_gate_logits_of_1e4_match_torchrec(activation):
    net = _build(MIX, {"num_experts": 3, "low_rank": 2, "activation": activation}, 4, 2)
    x = np.array([[1.0, -1.0, 0.5, 2.0], [-0.5, 1.5, 1.0, -1.0]])
    net.params["gates.0.weight"][...] = 1e4 * x[:1] / (x[:1] @ x[:1].T)
    net.params["gates.1.weight"][...] = -1e4 * x[:1] / (x[:1] @ x[:1].T)
    errors = compare_with_torch(net, cases.torch_crossnet(net), (x,), seed=2)
    assert max(errors.values()) < 1e-10, errors


def test_torch_relu_function_and_module_agree_with_relu_by_name():
    net = _build(MIX, {"num_experts": 2, "low_rank": 2, "activation": "relu"}, 6, 2)
    x = np.random.default_rng(3).standard_normal((3, 6))
    module = crossnet.LowRankMixtureCrossNet(6, 2, num_experts=2, low_rank=2)  # torch.relu
    module.double().load_state_dict({k: torch.from_numpy(v.copy()) for k, v in net.params.items()})
    assert max(compare_with_torch(net, module, (x,)).values()) < 1e-10


def test_vector_crossnet_bias_placement_is_torchrecs_code_not_its_docstring():
    net = _build("VectorCrossNet", {}, 5, 2)
    x = np.random.default_rng(4).standard_normal((3, 5))
    module = cases.torch_crossnet(net)
    theirs = module(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(net(x), theirs, rtol=1e-12)
    # The docstring's x̂ ⊙ (w·x_l + b) + x_l is a different function.
    x_l = x
    for l in range(2):
        w, b = net.params[f"kernels.{l}"], net.params[f"bias.{l}"][:, 0]
        x_l = x * (x_l @ w + b) + x_l
    assert np.abs(x_l - theirs).max() > 1e-3


def test_a_broken_backward_fails_parity():
    # The mixture's fast path with the shared gates' gradient from one layer (layer 0's).
    net = refimpl.LowRankMixtureCrossNet(6, 3, num_experts=2, low_rank=2, activation="tanh", seed=0)
    x = np.random.default_rng(5).standard_normal((2, 6))
    with mutated(
        fast.mixture_backward_fast, "d_gates += d_logits.T @ x_l", "d_gates = d_logits.T @ x_l"
    ):
        errors = compare_with_torch(net, cases.torch_crossnet(net), (x,))
    assert errors["gates.0.weight"] > 1e-3 and errors["x"] < 1e-10


def test_torchrecs_dcn_arch_cannot_take_an_empty_batch():
    # Why refimpl refuses B = 0 here (tests/test_empty_batch.py): TorchRec fails too.
    from torchrec.models.dlrm import InteractionDCNArch

    arch = InteractionDCNArch(2, crossnet.CrossNet(12, 1))
    with pytest.raises(RuntimeError, match="reshape"):
        arch(torch.zeros(0, 4), torch.zeros(0, 2, 4))
