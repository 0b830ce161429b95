"""InteractionProjectionArch: TorchRec semantics (Z is a reshape, not a transpose), validation,
dtypes, the contract, finite differences, and broken backwards that must be caught."""

import numpy as np
import pytest

import refimpl
from refimpl.layers.projection import ProjectionCache
from refimpl.tools.check.cases.projection import PROJECTION_SHAPES, build_projection
from refimpl.tools.gradcheck import draw_away_from_kinks
from refimpl.tools.loops import mlp_layers, mlp_loop, projection_loop


def _draw(batch, features, dim, dtype=np.float64):
    def draw(rng):
        dense = rng.standard_normal((batch, dim)).astype(dtype)  # (B, D)
        sparse = rng.standard_normal((batch, features, dim)).astype(dtype)  # (B, F, D)
        return dense, sparse

    return draw


def _away_from_kinks(arch, rng, batch, features, dim):
    return draw_away_from_kinks(arch, _draw(batch, features, dim), rng)


def _gradcheck(arch, inputs):
    return refimpl.gradcheck(arch, inputs)


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
    np.testing.assert_array_equal(cache.branch1.linears[0].input, flat)
    np.testing.assert_array_equal(cache.branch2.linears[0].input, flat)


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


def test_backward_mutates_neither_params_nor_cache_nor_inputs(rng):
    arch = build_projection(2, 2, 4, (6, 8), (12,), seed=0)
    dense, sparse = _draw(2, 2, 4)(rng)
    inputs_before = (dense.copy(), sparse.copy())
    params_before = arch.state_dict()
    out, cache = arch.forward(dense, sparse)
    cache_before = [a.copy() for a in _arrays(cache)]
    d_dense, d_sparse, d_params = arch.backward(rng.standard_normal(out.shape), cache)
    np.testing.assert_array_equal(dense, inputs_before[0])
    np.testing.assert_array_equal(sparse, inputs_before[1])
    for key, value in params_before.items():
        np.testing.assert_array_equal(arch.params[key], value)
    for before, after in zip(cache_before, _arrays(cache), strict=True):
        np.testing.assert_array_equal(before, after)
    assert list(d_params) == list(arch.params)
    assert not np.shares_memory(d_sparse, d_dense)


def _arrays(tree):
    if isinstance(tree, np.ndarray):
        return [tree]
    if isinstance(tree, tuple):
        return [a for item in tree for a in _arrays(item)]
    return []


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
def test_gradcheck(rng, shape):
    batch, features, dim, _, _ = shape
    arch = build_projection(*shape, seed=rng)
    result = _gradcheck(arch, _away_from_kinks(arch, rng, batch, features, dim))
    assert result.ok, result


def test_gradcheck_refuses_a_kink_point(rng):
    arch = _selecting_branches()
    dense, sparse = np.array([[1.0, 0.0]]), np.array([[[3.0, 5.0]]])  # c[1] = 0: a ReLU at 0
    assert arch.kink_distance(dense, sparse) == 0.0
    with pytest.raises(ValueError, match="ReLU kink"):
        refimpl.gradcheck(arch, (dense, sparse))


def _backward_with(arch, d_out, cache, *, undo_z, drop_branch2=False, drop_passthrough=False):
    """The projection's backward, with one step swapped out (each a plausible mistake)."""
    y, z, cache1, cache2 = cache
    batch, f1, dim = y.shape
    f2 = z.shape[2]
    d_interactions = d_out[:, dim:].reshape(batch, f1, f2)
    dy = d_interactions @ z.transpose(0, 2, 1)
    dz = y.transpose(0, 2, 1) @ d_interactions
    d_flat1, d_params1 = arch.interaction_branch1.backward(dy.reshape(batch, -1), cache1)
    d_flat2, d_params2 = arch.interaction_branch2.backward(undo_z(dz), cache2)
    d_flat = d_flat1 if drop_branch2 else d_flat1 + d_flat2
    d_combined = d_flat.reshape(batch, -1, dim)
    d_dense = d_combined[:, 0] if drop_passthrough else d_out[:, :dim] + d_combined[:, 0]
    d_params = {
        **{f"interaction_branch1.{k}": v for k, v in d_params1.items()},
        **{f"interaction_branch2.{k}": v for k, v in d_params2.items()},
    }
    return d_dense, d_combined[:, 1:].copy(), d_params


def _reshape_back(dz):  # right: (B, D, F2) -> (B, D·F2) in the order forward read it
    return dz.reshape(dz.shape[0], -1)


def _transpose_back(dz):  # wrong: as if Z had been b2(..).reshape(B, F2, D).transpose
    return dz.transpose(0, 2, 1).reshape(dz.shape[0], -1)


class _Broken(refimpl.InteractionProjectionArch):
    def __init__(self, arch, **bug):
        super().__init__(
            arch.num_sparse_features, arch.interaction_branch1, arch.interaction_branch2
        )
        self.bug = {"undo_z": _reshape_back, **bug}

    def backward(self, d_out, cache):
        return _backward_with(self, d_out, cache, **self.bug)


@pytest.mark.parametrize(
    "bug",
    [
        {"undo_z": _transpose_back},
        {"drop_branch2": True},
        {"drop_passthrough": True},
    ],
    ids=["transpose-for-reshape", "dropped-branch2", "dropped-passthrough"],
)
@pytest.mark.parametrize("shape", [(2, 2, 4, (8,), (12,)), (1, 3, 3, (9,), (6, 9))])
def test_broken_backwards_fail_gradcheck(rng, bug, shape):
    batch, features, dim, _, _ = shape
    arch = build_projection(*shape, seed=rng)
    inputs = _away_from_kinks(arch, rng, batch, features, dim)
    assert _gradcheck(_Broken(arch), inputs).ok  # the scaffold itself is right
    result = _gradcheck(_Broken(arch, **bug), inputs)
    assert not result.ok
    assert result.worst.rel_error > 1e-3


class _TransposedZ(refimpl.InteractionProjectionArch):
    """A different layer: Z = b2(..).reshape(B, F2, D).transpose, with its own right backward."""

    def forward(self, dense, sparse):
        batch, dim = dense.shape
        f1, f2 = self.projected_dims
        combined = np.concatenate([dense[:, None, :], sparse], axis=1)
        flat = combined.reshape(batch, -1)
        y_flat, cache1 = self.interaction_branch1.forward(flat)
        z_flat, cache2 = self.interaction_branch2.forward(flat)
        y = y_flat.reshape(batch, f1, dim)
        z = z_flat.reshape(batch, f2, dim).transpose(0, 2, 1)
        out = np.concatenate([dense, (y @ z).reshape(batch, -1)], axis=1)
        return out, ProjectionCache(y, z, cache1, cache2)

    def backward(self, d_out, cache):
        return _backward_with(self, d_out, cache, undo_z=_transpose_back)


def test_a_consistently_transposed_z_passes_gradcheck_but_not_the_loop(rng):
    # Transposing Z in forward *and* backward is a correct gradient of the wrong function:
    # finite differences cannot see it; comparing the forward (loop, TorchRec) does.
    shape = (2, 2, 4, (8,), (12,))
    arch = build_projection(*shape, seed=rng)
    wrong = _TransposedZ(2, arch.interaction_branch1, arch.interaction_branch2)
    dense, sparse = _away_from_kinks(arch, rng, 2, 2, 4)
    assert _gradcheck(wrong, (dense, sparse)).ok
    expected = _loop(arch, dense, sparse)
    np.testing.assert_allclose(arch(dense, sparse), expected, rtol=1e-13)
    assert refimpl.rel_error(wrong(dense, sparse), expected) > 1e-2


def test_one_branch_used_twice_gets_the_summed_gradient(rng):
    # TorchRec accepts the same module for both branches (tied weights); both keys then name
    # one tensor whose gradient is the sum of its two uses.
    branch = refimpl.DenseArch(12, [12], seed=rng)
    arch = refimpl.InteractionProjectionArch(2, branch, branch)
    inputs = _away_from_kinks(arch, rng, 2, 2, 4)
    result = _gradcheck(arch, inputs)
    assert result.ok, result
    out, cache = arch.forward(*inputs)
    _, _, d_params = arch.backward(np.ones_like(out), cache)
    for key in branch.params:
        k1, k2 = f"interaction_branch1.{key}", f"interaction_branch2.{key}"
        np.testing.assert_array_equal(d_params[k1], d_params[k2])
