"""InteractionProjectionArch: TorchRec semantics (Z is a reshape, not a transpose), validation,
dtypes, the contract, finite differences, and broken backwards that must be caught."""

import numpy as np
import pytest

import refimpl
from derivations.proof import mutated
from refimpl.layers import projection
from refimpl.tools.check.cases.projection import PROJECTION_SHAPES, build_projection
from refimpl.tools.loops import mlp_layers, mlp_loop, projection_loop


def _draw(batch, features, dim, dtype=np.float64):
    def draw(rng):
        dense = rng.standard_normal((batch, dim)).astype(dtype)  # (B, D)
        sparse = rng.standard_normal((batch, features, dim)).astype(dtype)  # (B, F, D)
        return dense, sparse

    return draw


def _loop(arch, dense, sparse):
    layers1 = mlp_layers(arch.params, "interaction_branch1.model.")
    layers2 = mlp_layers(arch.params, "interaction_branch2.model.")
    return projection_loop(
        dense,
        sparse,
        lambda c: list(mlp_loop(np.array([c]), layers1)[0]),
        lambda c: list(mlp_loop(np.array([c]), layers2)[0]),
    )


# --- semantics -------------------------------------------------------------------------------


def test_seed_sizes_at_production_scale(rng):
    # The seed: D = 128, F = 26, branch outputs [B, 256] -> (B, 2, 128) and [B, 512] ->
    # (B, 128, 4), so the output is [B, 128 + 2·4] = [B, 136].
    n = 27 * 128
    arch = refimpl.InteractionProjectionArch(
        26, refimpl.DenseArch(n, [256], seed=0), refimpl.DenseArch(n, [512], seed=1)
    )
    assert (arch.embedding_dim, arch.projected_dims) == (128, (2, 4))
    dense, sparse = _draw(2, 26, 128)(rng)
    out = arch(dense, sparse)
    assert out.shape == (2, 136) == (2, arch.output_size(128))
    np.testing.assert_array_equal(out[:, :128], dense)


def test_keys_are_torchrecs():
    arch = build_projection(2, 2, 4, (6, 8), (12,), seed=0)
    assert {k: v.shape for k, v in arch.params.items()} == {
        "interaction_branch1.model._mlp.0._linear.weight": (6, 12),
        "interaction_branch1.model._mlp.0._linear.bias": (6,),
        "interaction_branch1.model._mlp.1._linear.weight": (8, 6),
        "interaction_branch1.model._mlp.1._linear.bias": (8,),
        "interaction_branch2.model._mlp.0._linear.weight": (12, 12),
        "interaction_branch2.model._mlp.0._linear.bias": (12,),
    }


def _selecting_branches():
    # D = 2, F = 1, N = 4. Branch 1 keeps c[0:2] (the dense row); branch 2 keeps all of c.
    # With positive inputs the ReLUs pass everything, so Y = dense and Z = c.reshape(2, 2).
    b1, b2 = refimpl.DenseArch(4, [2]), refimpl.DenseArch(4, [4])
    b1.load_state_dict(
        {"model._mlp.0._linear.weight": np.eye(2, 4), "model._mlp.0._linear.bias": np.zeros(2)}
    )
    b2.load_state_dict(
        {"model._mlp.0._linear.weight": np.eye(4), "model._mlp.0._linear.bias": np.zeros(4)}
    )
    return refimpl.InteractionProjectionArch(1, b1, b2)


def test_z_is_a_reshape_not_a_transpose_by_hand():
    arch = _selecting_branches()
    d0, d1, s0, s1 = 1.0, 2.0, 3.0, 5.0
    out = arch(np.array([[d0, d1]]), np.array([[[s0, s1]]]))
    # Y = [[d0, d1]] (1, 2); Z = [[d0, d1], [s0, s1]] (2, 2), filled row by row.
    y_z = [d0 * d0 + d1 * s0, d0 * d1 + d1 * s1]  # [7, 12]
    np.testing.assert_array_equal(out, [[d0, d1, *y_z]])
    # A transpose would have given Zᵀ = [[d0, s0], [d1, s1]]: [d0² + d1², d0·s0 + d1·s1].
    assert not np.allclose(out[0, 2:], [d0 * d0 + d1 * d1, d0 * s0 + d1 * s1])


@pytest.mark.parametrize("shape", PROJECTION_SHAPES)
def test_matches_loop_version(rng, shape):
    batch, features, dim, _, _ = shape
    arch = build_projection(*shape, seed=rng)
    dense, sparse = _draw(batch, features, dim)(rng)
    np.testing.assert_allclose(
        arch(dense, sparse), _loop(arch, dense, sparse), rtol=1e-13, atol=1e-15
    )


def test_no_sparse_features_passes_dense_through(rng):
    arch = build_projection(2, 0, 4, (4,), (4,), seed=0)
    dense, sparse = _draw(2, 0, 4)(rng)
    out, cache = arch.forward(dense, sparse)
    np.testing.assert_array_equal(out, dense)
    assert out is not dense
    d_out = rng.standard_normal(out.shape)
    d_dense, d_sparse, d_params = arch.backward(d_out, cache)
    np.testing.assert_array_equal(d_dense, d_out)
    assert d_sparse.shape == (2, 0, 4)
    assert list(d_params) == list(arch.params)
    assert all(not np.any(g) for g in d_params.values())


def test_both_branches_read_the_same_flattened_input(rng):
    arch = build_projection(3, 2, 4, (8,), (12,), seed=0)
    dense, sparse = _draw(3, 2, 4)(rng)
    _, cache = arch.forward(dense, sparse)
    flat = np.concatenate([dense[:, None], sparse], axis=1).reshape(3, 12)
    np.testing.assert_array_equal(cache.branch1.inputs[0], flat)
    np.testing.assert_array_equal(cache.branch2.inputs[0], flat)


# --- validation ----------------------------------------------------------------------------


def test_branch_output_not_a_multiple_of_d():
    with pytest.raises(ValueError) as info:
        refimpl.InteractionProjectionArch(
            2, refimpl.DenseArch(12, [6]), refimpl.DenseArch(12, [12])
        )
    message = str(info.value)
    assert message.startswith("interaction_branch1: out_features 6 is not a multiple of D = 4")
    with pytest.raises(ValueError, match=r"interaction_branch2: out_features 10 .* D = 4"):
        refimpl.InteractionProjectionArch(
            2, refimpl.DenseArch(12, [8]), refimpl.DenseArch(12, [10])
        )


def test_branch_input_not_f_plus_one_times_d():
    with pytest.raises(ValueError, match=r"interaction_branch1: in_features 10 .* F\+1 = 3"):
        refimpl.InteractionProjectionArch(2, refimpl.DenseArch(10, [5]), refimpl.DenseArch(10, [5]))
    with pytest.raises(ValueError, match=r"interaction_branch2: in_features 9 differs .* 12"):
        refimpl.InteractionProjectionArch(2, refimpl.DenseArch(12, [8]), refimpl.DenseArch(9, [3]))


def test_constructor_type_errors():
    with pytest.raises(TypeError, match="interaction_branch2: expected a refimpl Layer"):
        refimpl.InteractionProjectionArch(2, refimpl.DenseArch(12, [8]), lambda x: x)
    with pytest.raises(TypeError, match="interaction_branch2: dtype float32 differs"):
        refimpl.InteractionProjectionArch(
            2, refimpl.DenseArch(12, [8]), refimpl.DenseArch(12, [8], dtype=np.float32)
        )
    with pytest.raises(ValueError, match="num_sparse_features: expected an integer >= 0"):
        refimpl.InteractionProjectionArch(
            -1, refimpl.DenseArch(12, [8]), refimpl.DenseArch(12, [8])
        )


def test_input_errors_name_the_argument_and_letters(rng):
    arch = build_projection(2, 2, 4, (8,), (12,), seed=0)
    dense, sparse = _draw(2, 2, 4)(rng)
    with pytest.raises(
        ValueError, match=r"dense: expected shape \(B, D\) = \(2, 4\), got \(2, 5\)"
    ):
        arch(rng.standard_normal((2, 5)), sparse)
    with pytest.raises(
        ValueError, match=r"sparse: expected shape \(B, F, D\) = \(2, 2, 4\), got \(2, 3, 4\)"
    ):
        arch(dense, rng.standard_normal((2, 3, 4)))
    with pytest.raises(ValueError, match=r"sparse: expected shape \(B, F, D\) = \(2, 2, 4\)"):
        arch(dense, rng.standard_normal((3, 2, 4)))  # B disagrees with dense
    with pytest.raises(ValueError, match=r"sparse: expected a 3-D array"):
        arch(dense, sparse.reshape(2, 8))
    with pytest.raises(TypeError, match="sparse: dtype float32 does not match"):
        arch(dense, sparse.astype(np.float32))
    _, cache = arch.forward(dense, sparse)
    with pytest.raises(ValueError, match=r"d_out: expected shape \(B, P\) = \(2, 10\)"):
        arch.backward(np.ones((2, 9)), cache)


def test_float32_stays_float32(rng):
    arch = build_projection(2, 2, 4, (6, 8), (12,), seed=0, dtype=np.float32)
    dense, sparse = _draw(2, 2, 4, np.float32)(rng)
    out, cache = arch.forward(dense, sparse)
    d_dense, d_sparse, d_params = arch.backward(np.ones_like(out), cache)
    assert out.dtype == d_dense.dtype == d_sparse.dtype == np.float32
    assert all(v.dtype == np.float32 for v in d_params.values())
    # and agrees with float64 to float32 precision
    arch64 = build_projection(2, 2, 4, (6, 8), (12,), seed=0)
    arch64.load_state_dict(arch.state_dict())
    np.testing.assert_allclose(out, arch64(dense.astype(float), sparse.astype(float)), rtol=1e-5)


def test_backward_mutates_neither_params_nor_cache_nor_inputs(rng, cache_arrays):
    arch = build_projection(2, 2, 4, (6, 8), (12,), seed=0)
    dense, sparse = _draw(2, 2, 4)(rng)
    inputs_before = (dense.copy(), sparse.copy())
    params_before = arch.state_dict()
    out, cache = arch.forward(dense, sparse)
    cache_before = [a.copy() for a in cache_arrays(cache)]
    d_dense, d_sparse, d_params = arch.backward(rng.standard_normal(out.shape), cache)
    np.testing.assert_array_equal(dense, inputs_before[0])
    np.testing.assert_array_equal(sparse, inputs_before[1])
    for key, value in params_before.items():
        np.testing.assert_array_equal(arch.params[key], value)
    for before, after in zip(cache_before, cache_arrays(cache), strict=True):
        np.testing.assert_array_equal(before, after)
    assert list(d_params) == list(arch.params)
    assert not np.shares_memory(d_sparse, d_dense)


def test_kink_distance_is_the_nearer_branch(rng):
    arch = build_projection(2, 2, 4, (8,), (6, 12), seed=0)
    dense, sparse = _draw(2, 2, 4)(rng)
    flat = np.concatenate([dense[:, None], sparse], axis=1).reshape(2, 12)
    expected = min(
        arch.interaction_branch1.kink_distance(flat), arch.interaction_branch2.kink_distance(flat)
    )
    assert arch.kink_distance(dense, sparse) == expected < np.inf


# --- gradients -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", PROJECTION_SHAPES)
def test_gradcheck(rng, away_from_kinks, shape):
    batch, features, dim, _, _ = shape
    arch = build_projection(*shape, seed=rng)
    result = refimpl.gradcheck(
        arch, away_from_kinks(arch, rng, (batch, dim), (batch, features, dim))
    )
    assert result.ok, result


def test_gradcheck_refuses_a_kink_point(rng):
    arch = _selecting_branches()
    dense, sparse = np.array([[1.0, 0.0]]), np.array([[[3.0, 5.0]]])  # c[1] = 0: a ReLU at 0
    assert arch.kink_distance(dense, sparse) == 0.0
    with pytest.raises(ValueError, match="ReLU kink"):
        refimpl.gradcheck(arch, (dense, sparse))


# One-line mistakes in the projection's textbook backward (which the layer runs).
BROKEN = {
    "transpose for reshape": (
        "d_z.reshape(batch, dim * f2)",
        "d_z.transpose(0, 2, 1).reshape(batch, dim * f2)",
    ),
    "dZ transposed": (
        "d_z = y.transpose(0, 2, 1) @ d_interactions",
        "d_z = d_interactions.transpose(0, 2, 1) @ y",
    ),
    "branch 2 dropped": ("d_flat1 + d_flat2", "d_flat1"),
    "passthrough dropped": (
        "d_dense = d_out[:, :dim] + d_combined[:, 0]",
        "d_dense = d_combined[:, 0]",
    ),
}


@pytest.mark.parametrize("name", BROKEN)
@pytest.mark.parametrize("shape", [(2, 2, 4, (8,), (12,)), (1, 3, 3, (9,), (6, 9))])
def test_broken_backwards_fail_gradcheck(rng, away_from_kinks, name, shape):
    batch, features, dim, _, _ = shape
    arch = build_projection(*shape, seed=rng)
    inputs = away_from_kinks(arch, rng, (batch, dim), (batch, features, dim))
    assert refimpl.gradcheck(arch, inputs).ok
    with mutated(projection.projection_backward, *BROKEN[name]):
        result = refimpl.gradcheck(arch, inputs)
    assert not result.ok
    assert result.worst.rel_error > 1e-3


def test_a_consistently_transposed_z_passes_gradcheck_but_not_the_loop(rng, away_from_kinks):
    # Transposing Z in forward *and* backward is a correct gradient of the wrong function:
    # finite differences cannot see it; comparing the forward (loop, TorchRec) does.
    shape = (2, 2, 4, (8,), (12,))
    arch = build_projection(*shape, seed=rng)
    dense, sparse = away_from_kinks(arch, rng, (2, 4), (2, 2, 4))
    expected = _loop(arch, dense, sparse)
    np.testing.assert_allclose(arch(dense, sparse), expected, rtol=1e-13)
    transposed_z = (
        "z = z_flat.reshape(batch, dim, z_flat.shape[1] // dim)",
        "z = z_flat.reshape(batch, z_flat.shape[1] // dim, dim).transpose(0, 2, 1)",
    )
    with (
        mutated(projection.projection_forward, *transposed_z),
        mutated(projection.projection_backward, *BROKEN["transpose for reshape"]),
    ):
        assert refimpl.gradcheck(arch, (dense, sparse)).ok
        assert refimpl.rel_error(arch(dense, sparse), expected) > 1e-2


def test_one_branch_used_twice_gets_the_summed_gradient(rng, away_from_kinks):
    # TorchRec accepts the same module for both branches (tied weights); both keys then name
    # one tensor whose gradient is the sum of its two uses.
    branch = refimpl.DenseArch(12, [12], seed=rng)
    arch = refimpl.InteractionProjectionArch(2, branch, branch)
    inputs = away_from_kinks(arch, rng, (2, 4), (2, 2, 4))
    result = refimpl.gradcheck(arch, inputs)
    assert result.ok, result
    out, cache = arch.forward(*inputs)
    _, _, d_params = arch.backward(np.ones_like(out), cache)
    for key in branch.params:
        k1, k2 = f"interaction_branch1.{key}", f"interaction_branch2.{key}"
        np.testing.assert_array_equal(d_params[k1], d_params[k2])
