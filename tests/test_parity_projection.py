"""TorchRec parity for Linear, MLP, DenseArch, OverArch and InteractionProjectionArch
(skipped unless requirements-parity.txt is installed)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchrec = pytest.importorskip("torchrec")
dlrm = pytest.importorskip("torchrec.models.dlrm")
torchrec_mlp = pytest.importorskip("torchrec.modules.mlp")

import refimpl  # noqa: E402
from derivations.proof import mutated  # noqa: E402
from refimpl.layers import projection  # noqa: E402
from refimpl.tools.check.cases.projection import (  # noqa: E402
    PROJECTION_SHAPES,
    build_projection,
    torch_module_like,
)
from refimpl.tools.gradcheck import draw_away_from_kinks  # noqa: E402
from refimpl.tools.parity import compare_with_torch  # noqa: E402

pytestmark = pytest.mark.parity


def _one_input(layer, rng, batch):
    return draw_away_from_kinks(
        layer, lambda r: (r.standard_normal((batch, layer.in_features)),), rng
    )


def _assert_parity(layer, module, inputs):
    errors = compare_with_torch(layer, module, inputs, seed=1)
    assert set(errors) == {"out", *layer.input_names, *layer.params}
    assert max(errors.values()) < 1e-10, errors
    return errors


@pytest.mark.parametrize("activation", refimpl.ACTIVATIONS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("batch", "sizes"), [(1, (4,)), (3, (4, 3)), (5, (7, 5, 2))])
def test_mlp_matches_torchrec(rng, activation, bias, batch, sizes):
    mlp = refimpl.MLP(6, sizes, bias, activation, seed=0)
    torch_activation = refimpl.get_activation(activation).torch_function()
    module = torchrec_mlp.MLP(6, list(sizes), bias=bias, activation=torch_activation)
    _assert_parity(mlp, module, _one_input(mlp, rng, batch))


def test_mlp_default_activation_is_torch_relu(rng):
    # TorchRec's default is the callable torch.relu; ours is the name "relu".
    mlp = refimpl.MLP(6, [5, 3])
    _assert_parity(mlp, torchrec_mlp.MLP(6, [5, 3]), _one_input(mlp, rng, 4))


def test_mlp_without_activation_on_last_matches_torchrec(rng):
    mlp = refimpl.MLP(6, [5, 3], activation="tanh", activation_on_last=False)
    _assert_parity(mlp, torch_module_like(mlp), _one_input(mlp, rng, 4))


@pytest.mark.parametrize(
    "layer",
    [
        refimpl.Linear(6, 3),
        refimpl.Linear(6, 3, bias=False),
        refimpl.DenseArch(6, [5, 4]),
        refimpl.DenseArch(6, [2]),
        refimpl.OverArch(6, [5, 4, 1]),
        refimpl.OverArch(6, [3, 2]),
    ],
    ids=repr,
)
@pytest.mark.parametrize("batch", [1, 4])
def test_arches_match_torchrec(rng, layer, batch):
    _assert_parity(layer, torch_module_like(layer), _one_input(layer, rng, batch))


@pytest.mark.parametrize(
    "shape",
    [
        *PROJECTION_SHAPES,
        (4, 26, 8, (16,), (32,)),  # the seed's F = 26 with D = 8: F1 = 2, F2 = 4
        (3, 2, 4, (16, 8), (6, 5, 12)),  # two hidden layers in both branches
    ],
)
def test_projection_matches_torchrec(rng, shape):
    batch, features, dim, _, _ = shape
    arch = build_projection(*shape)
    module = dlrm.InteractionProjectionArch(
        features,
        dlrm.DenseArch(arch.interaction_branch1.in_features, list(shape[3])),
        dlrm.DenseArch(arch.interaction_branch2.in_features, list(shape[4])),
    )

    def draw(r):
        return r.standard_normal((batch, dim)), r.standard_normal((batch, features, dim))

    _assert_parity(arch, module, draw_away_from_kinks(arch, draw, rng))


def test_relu_derivative_at_exactly_zero_is_torchs():
    # One unit at z = 2 - 2 = 0 exactly: torch.relu's derivative there is 0, and so is ours.
    mlp = refimpl.MLP(2, [1, 1])
    module = torchrec_mlp.MLP(2, [1, 1])
    with torch.no_grad():
        module._mlp[0]._linear.weight.copy_(torch.tensor([[1.0, -1.0]]))
        module._mlp[0]._linear.bias.zero_()
        module._mlp[1]._linear.weight.fill_(2.0)
        module._mlp[1]._linear.bias.fill_(0.5)
    x = np.array([[2.0, 2.0], [3.0, 1.0]])  # sample 0 at the kink, sample 1 past it
    errors = _assert_parity(mlp, module, (x,))
    assert errors["input"] == 0.0
    _, cache = mlp.forward(x)
    assert mlp.pre_activations(x)[0][0, 0] == 0.0
    d_input, _ = mlp.backward(np.ones((2, 1)), cache)
    np.testing.assert_array_equal(d_input[0], [0.0, 0.0])
    np.testing.assert_array_equal(d_input[1], [2.0, -2.0])


def test_init_range_is_nn_linears():
    # Both draw U(-1/√fan_in, 1/√fan_in) for weight and bias; compare the spreads.
    torch.manual_seed(0)
    theirs = torch.nn.Linear(300, 200)
    ours = refimpl.Linear(300, 200, seed=0)
    for key in ("weight", "bias"):
        t = theirs.state_dict()[key].double().numpy()
        o = ours.params[key]
        bound = 1 / np.sqrt(300)
        assert np.max(np.abs(t)) <= bound and np.max(np.abs(o)) <= bound
        assert np.max(np.abs(t)) > 0.95 * bound and np.max(np.abs(o)) > 0.95 * bound
    assert (
        abs(ours.params["weight"].std() / theirs.weight.detach().double().std().item() - 1) < 0.02
    )


def test_a_transposed_z_fails_parity(rng):
    # Z = b2(..).reshape(B, F2, D) transposed: the shapes all fit, the numbers do not.
    arch = build_projection(2, 2, 4, (8,), (12,))
    dense, sparse = rng.standard_normal((2, 4)), rng.standard_normal((2, 2, 4))
    transposed_z = (
        "z = z_flat.reshape(batch, dim, z_flat.shape[1] // dim)",
        "z = z_flat.reshape(batch, z_flat.shape[1] // dim, dim).transpose(0, 2, 1)",
    )
    # A fresh module each time: torch accumulates .grad across backward calls.
    with mutated(projection.projection_forward, *transposed_z):
        assert compare_with_torch(arch, torch_module_like(arch), (dense, sparse))["out"] > 1e-2
    errors = compare_with_torch(arch, torch_module_like(arch), (dense, sparse))
    assert max(errors.values()) < 1e-10


def test_one_branch_used_twice_matches_torchrec(rng):
    # Tied weights: state_dict() lists both keys for one tensor. (compare_with_torch reads
    # named_parameters(), which lists a shared tensor once, so this compares by hand.)
    branch = dlrm.DenseArch(12, [12]).double()
    module = dlrm.InteractionProjectionArch(2, branch, branch)
    shared = refimpl.DenseArch(12, [12])
    arch = refimpl.InteractionProjectionArch(2, shared, shared)
    arch.load_state_dict({k: v.numpy() for k, v in module.state_dict().items()})
    assert len(module.state_dict()) == len(arch.params) == 4

    def draw(r):
        return r.standard_normal((3, 4)), r.standard_normal((3, 2, 4))

    dense, sparse = draw_away_from_kinks(arch, draw, rng)
    out, cache = arch.forward(dense, sparse)
    upstream = rng.standard_normal(out.shape)
    torch_out = module(torch.tensor(dense), torch.tensor(sparse))
    torch_out.backward(torch.tensor(upstream))
    _, _, d_params = arch.backward(upstream, cache)
    assert refimpl.rel_error(out, torch_out.detach().numpy()) < 1e-10
    for key, value in branch.named_parameters():
        for prefix in ("interaction_branch1", "interaction_branch2"):
            assert refimpl.rel_error(d_params[f"{prefix}.{key}"], value.grad.numpy()) < 1e-10


def test_torchrecs_projection_arch_cannot_take_an_empty_batch():
    # Why refimpl refuses B = 0 here (tests/test_empty_batch.py): TorchRec fails too.
    module = dlrm.InteractionProjectionArch(2, dlrm.DenseArch(12, [8]), dlrm.DenseArch(12, [12]))
    with pytest.raises(RuntimeError, match="reshape"):
        module(torch.zeros(0, 4), torch.zeros(0, 2, 4))
