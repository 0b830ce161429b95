"""InteractionDCNArch: the cross network over [dense; sparse], its keys, F = 0, validation."""

import numpy as np
import pytest

import refimpl
from refimpl.tools.check.cases import crossnet as cases
from refimpl.tools.loops import crossnet_loop

NETWORKS = [
    ("CrossNet", {}),
    ("LowRankCrossNet", {"low_rank": 2}),
    ("VectorCrossNet", {}),
    ("LowRankMixtureCrossNet", {"num_experts": 1, "low_rank": 2, "activation": "relu"}),
    ("LowRankMixtureCrossNet", {"num_experts": 3, "low_rank": 2, "activation": "tanh"}),
]
IDS = [f"{kind} {cases.label(kind, options)}".strip() for kind, options in NETWORKS]


def test_params_are_the_crossnets_prefixed_like_torchrec():
    net = refimpl.LowRankMixtureCrossNet(9, 1, num_experts=2, low_rank=1)
    arch = refimpl.InteractionDCNArch(2, net)
    assert list(arch.params) == [
        "crossnet.U_kernels.0",
        "crossnet.V_kernels.0",
        "crossnet.bias.0",
        "crossnet.gates.0.weight",
        "crossnet.gates.1.weight",
        "crossnet.C_kernels.0",
    ]
    assert arch.params["crossnet.U_kernels.0"] is net.params["U_kernels.0"]  # shared arrays
    assert arch.dtype == net.dtype


@pytest.mark.parametrize(("kind", "options"), NETWORKS, ids=IDS)
@pytest.mark.parametrize(("batch", "features", "dim"), [(2, 2, 4), (1, 3, 2), (3, 1, 5)])
def test_forward_is_the_crossnet_of_the_flattened_rows(
    rng, kind, options, batch, features, dim, dcn_arch, interaction_inputs
):
    arch = dcn_arch(kind, options, features, dim)
    dense, sparse = interaction_inputs(rng, batch, features, dim)
    out, cache = arch.forward(dense, sparse)
    flat = np.concatenate([dense, sparse.reshape(batch, -1)], axis=1)  # dense first, then s_0…
    assert out.shape == (batch, (features + 1) * dim)
    np.testing.assert_array_equal(out, arch.crossnet(flat))
    loop = crossnet_loop(flat, arch.crossnet.params, kind, options.get("activation", "relu"))
    np.testing.assert_allclose(out, loop, rtol=1e-12, atol=1e-12)
    # Backward hands the cross network's input gradient back in the same layout.
    d_out = rng.standard_normal(out.shape)
    d_dense, d_sparse, d_params = arch.backward(d_out, cache)
    d_flat, d_crossnet = arch.crossnet.backward(d_out, arch.crossnet.forward(flat)[1])
    np.testing.assert_array_equal(d_dense, d_flat[:, :dim])
    np.testing.assert_array_equal(d_sparse, d_flat[:, dim:].reshape(batch, features, dim))
    assert list(d_params) == list(arch.params)
    for key, value in d_crossnet.items():
        np.testing.assert_array_equal(d_params[f"crossnet.{key}"], value)


@pytest.mark.parametrize(("kind", "options"), NETWORKS, ids=IDS)
def test_gradcheck(kind, options):
    for batch, features, dim in [(2, 2, 2), (1, 1, 4), (3, 3, 1)]:
        build = cases.dcn_builder(kind, options, batch, features, dim, num_layers=2)
        arch, inputs = build(np.random.default_rng(batch + features + dim))
        result = refimpl.gradcheck(arch, inputs)
        assert result.ok, str(result)
        assert [a.name for a in result.arrays][:2] == ["dense", "sparse"]


def test_f_zero_returns_dense_and_leaves_the_crossnet_unused(rng, dcn_arch, interaction_inputs):
    # TorchRec: `if self.F <= 0: return dense_features`.
    arch = dcn_arch("CrossNet", {}, 0, 4)
    dense, sparse = interaction_inputs(rng, 3, 0, 4)
    out, cache = arch.forward(dense, sparse)
    np.testing.assert_array_equal(out, dense)
    assert not np.shares_memory(out, dense)
    d_out = rng.standard_normal(out.shape)
    d_dense, d_sparse, d_params = arch.backward(d_out, cache)
    np.testing.assert_array_equal(d_dense, d_out)
    assert d_sparse.shape == (3, 0, 4)
    assert list(d_params) == list(arch.params)
    assert all(not v.any() for v in d_params.values())
    assert arch.kink_distance(dense, sparse) == np.inf


def test_the_seeds_production_shape(interaction_inputs):
    # The seed: dense [B, 128], sparse [B, 26, 128], so N = 27·128 = 3456.
    rng = np.random.default_rng(0)
    net = refimpl.LowRankCrossNet(in_features=27 * 128, num_layers=2, low_rank=16, seed=rng)
    arch = refimpl.InteractionDCNArch(26, net)
    dense, sparse = interaction_inputs(rng, 2, 26, 128)
    out, cache = arch.forward(dense, sparse)
    assert out.shape == (2, 3456)
    d_dense, d_sparse, _ = arch.backward(np.ones_like(out), cache)
    assert d_dense.shape == (2, 128) and d_sparse.shape == (2, 26, 128)


def test_kink_distance_is_the_crossnets(rng, dcn_arch, interaction_inputs):
    arch = dcn_arch("LowRankMixtureCrossNet", {"num_experts": 2, "low_rank": 2}, 2, 3)
    dense, sparse = interaction_inputs(rng, 2, 2, 3)
    flat = np.concatenate([dense, sparse.reshape(2, -1)], axis=1)
    assert arch.kink_distance(dense, sparse) == arch.crossnet.kink_distance(flat) < np.inf


def test_load_state_dict_takes_torchrec_keys(rng, dcn_arch):
    arch = dcn_arch("VectorCrossNet", {}, 1, 2)
    state = {k: rng.standard_normal(v.shape) for k, v in arch.params.items()}
    arch.load_state_dict(state)
    np.testing.assert_array_equal(arch.crossnet.params["kernels.1"], state["crossnet.kernels.1"])
    with pytest.raises(ValueError, match=r"missing keys \['crossnet.bias.1'\]"):
        arch.load_state_dict({k: v for k, v in state.items() if k != "crossnet.bias.1"})


def test_float32_stays_float32(rng, dcn_arch, interaction_inputs):
    arch = dcn_arch(
        "LowRankMixtureCrossNet", {"num_experts": 2, "low_rank": 2}, 2, 3, dtype="float32"
    )
    dense, sparse = interaction_inputs(rng, 4, 2, 3, np.float32)
    out, cache = arch.forward(dense, sparse)
    d_dense, d_sparse, d_params = arch.backward(np.ones_like(out), cache)
    assert out.dtype == d_dense.dtype == d_sparse.dtype == np.float32
    assert all(v.dtype == np.float32 for v in d_params.values())


def test_backward_mutates_nothing(rng, dcn_arch, interaction_inputs):
    arch = dcn_arch("LowRankMixtureCrossNet", {"num_experts": 2, "low_rank": 2}, 2, 3)
    attributes = dict(vars(arch))
    params = arch.state_dict()
    out, cache = arch.forward(*interaction_inputs(rng, 2, 2, 3))
    assert vars(arch) == attributes
    kept = [a.copy() for a in cache.crossnet]
    arch.backward(rng.standard_normal(out.shape), cache)
    for before, after in zip(kept, cache.crossnet, strict=True):
        np.testing.assert_array_equal(before, after)
    for key, value in arch.params.items():
        np.testing.assert_array_equal(value, params[key])


def test_in_features_must_be_f_plus_one_times_d(rng, interaction_inputs):
    arch = refimpl.InteractionDCNArch(2, refimpl.CrossNet(10, 1))
    with pytest.raises(
        ValueError, match=r"crossnet: in_features is 10, .* N = \(F\+1\)·D = \(2\+1\)·4 = 12"
    ):
        arch.forward(*interaction_inputs(rng, 2, 2, 4))
    with pytest.raises(ValueError, match="in_features is 10"):
        arch.kink_distance(*interaction_inputs(rng, 2, 2, 4))


@pytest.mark.parametrize(
    ("dense_shape", "sparse_shape", "error", "message"),
    [
        ((2, 4, 1), (2, 2, 4), ValueError, r"dense: expected a 2-D array of shape \(B, D\)"),
        ((2, 4), (2, 8), ValueError, r"sparse: expected a 3-D array of shape \(B, F, D\)"),
        ((2, 4), (2, 3, 4), ValueError, r"sparse: expected shape \(B, F, D\) = \(2, 2, 4\)"),
        ((2, 4), (2, 2, 5), ValueError, r"sparse: expected shape \(B, F, D\) = \(2, 2, 4\)"),
        ((2, 4), (3, 2, 4), ValueError, r"got \(3, 2, 4\)"),
    ],
)
def test_bad_shapes_name_the_argument(dense_shape, sparse_shape, error, message):
    arch = refimpl.InteractionDCNArch(2, refimpl.CrossNet(12, 1))
    with pytest.raises(error, match=message):
        arch.forward(np.zeros(dense_shape), np.zeros(sparse_shape))


def test_bad_dtypes_d_out_and_constructor(rng, interaction_inputs):
    arch = refimpl.InteractionDCNArch(2, refimpl.CrossNet(12, 1))
    dense, sparse = interaction_inputs(rng, 2, 2, 4)
    with pytest.raises(TypeError, match=r"dense: expected a float32 or float64 array.*int64"):
        arch.forward(dense.astype(np.int64), sparse)
    with pytest.raises(TypeError, match="sparse: dtype float32 does not match the layer's float64"):
        arch.forward(dense, sparse.astype(np.float32))
    _, cache = arch.forward(dense, sparse)
    with pytest.raises(
        ValueError, match=r"d_out: expected shape \(B, N\) = \(2, 12\), got \(2, 4\)"
    ):
        arch.backward(np.zeros((2, 4)), cache)
    with pytest.raises(ValueError, match="num_sparse_features"):
        refimpl.InteractionDCNArch(-1, refimpl.CrossNet(4, 1))
    with pytest.raises(TypeError, match="crossnet: expected a refimpl CrossNet"):
        refimpl.InteractionDCNArch(2, refimpl.InteractionArch(2))
