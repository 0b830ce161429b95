"""InteractionArch: TorchRec semantics, the teaching options, validation, dtypes, contract."""

import numpy as np
import pytest

import refimpl
from refimpl.layers.dot import pair_indices
from refimpl.tools.loops import interaction_loop


def test_seed_shapes_at_production_size(rng, interaction_inputs):
    # The seed's comments: [B, 128] and [B, 26, 128] -> [B, 479] = 128 + 27·26/2.
    dense, sparse = interaction_inputs(rng, 2, 26, 128)
    out = refimpl.InteractionArch(26)(dense, sparse)
    assert out.shape == (2, 479)


def test_seed_example_by_hand():
    # B=1 of the seed's example with small integers, every pair written out.
    dense = np.array([[1.0, 0.0, 2.0, -1.0]])
    sparse = np.array([[[3.0, 1.0, 0.0, 2.0], [-1.0, 2.0, 1.0, 1.0]]])
    out = refimpl.InteractionArch(2)(dense, sparse)
    d_s0 = 1 * 3 + 0 * 1 + 2 * 0 + -1 * 2  # F_{0,0} = 1
    d_s1 = 1 * -1 + 0 * 2 + 2 * 1 + -1 * 1  # F_{0,1} = 0
    s0_s1 = 3 * -1 + 1 * 2 + 0 * 1 + 2 * 1  # F_{0,2} = 1
    np.testing.assert_array_equal(out, [[1.0, 0.0, 2.0, -1.0, d_s0, d_s1, s0_s1]])


@pytest.mark.parametrize("self_interaction", [False, True])
@pytest.mark.parametrize("pair_order", ["triu", "tril"])
@pytest.mark.parametrize(("batch", "features", "dim"), [(2, 2, 4), (3, 1, 3), (1, 6, 5)])
def test_matches_loop_version_and_gradcheck(
    rng, self_interaction, pair_order, batch, features, dim, interaction_inputs
):
    arch = refimpl.InteractionArch(
        features, self_interaction=self_interaction, pair_order=pair_order
    )
    dense, sparse = interaction_inputs(rng, batch, features, dim)
    out = arch(dense, sparse)
    np.testing.assert_allclose(
        out, interaction_loop(dense, sparse, self_interaction, pair_order), rtol=1e-13, atol=1e-13
    )
    pairs = features * (features + 1) // 2 + (features + 1 if self_interaction else 0)
    assert out.shape == (batch, dim + pairs) == (batch, arch.output_size(dim))
    assert refimpl.gradcheck(arch, (dense, sparse)).ok


def test_pair_orders_hold_the_same_values_in_different_places(rng, interaction_inputs):
    dense, sparse = interaction_inputs(rng, 2, 4, 3)
    triu = refimpl.InteractionArch(4)(dense, sparse)
    tril = refimpl.InteractionArch(4, pair_order="tril")(dense, sparse)
    # (i, j) in triu order is (j, i) in tril order: same multiset, different order.
    np.testing.assert_allclose(np.sort(triu, axis=1), np.sort(tril, axis=1))
    assert not np.allclose(triu, tril)
    rows, cols = pair_indices(4, pair_order="tril")
    assert np.all(rows > cols)


def test_self_interaction_keeps_squared_norms(rng, interaction_inputs):
    dense, sparse = interaction_inputs(rng, 3, 2, 4)
    out = refimpl.InteractionArch(2, self_interaction=True)(dense, sparse)
    # triu with the diagonal: (0,0), (0,1), (0,2), (1,1), (1,2), (2,2)
    np.testing.assert_allclose(out[:, 4], np.sum(dense**2, axis=1))
    np.testing.assert_allclose(out[:, 7], np.sum(sparse[:, 0] ** 2, axis=1))
    np.testing.assert_allclose(out[:, 9], np.sum(sparse[:, 1] ** 2, axis=1))


def test_self_interaction_gradient_doubles_the_diagonal():
    # y = c·c for one feature: dy/dc = 2c. Only the (0, 0) pair gets an upstream gradient.
    arch = refimpl.InteractionArch(1, self_interaction=True)
    dense, sparse = np.array([[1.0, 2.0]]), np.array([[[0.0, 0.0]]])
    out, cache = arch.forward(dense, sparse)
    d_out = np.zeros_like(out)
    d_out[0, 2] = 1.0  # the (0, 0) pair comes right after the two dense columns
    d_dense, d_sparse, _ = arch.backward(d_out, cache)
    np.testing.assert_array_equal(d_dense, [[2.0, 4.0]])
    np.testing.assert_array_equal(d_sparse, [[[0.0, 0.0]]])


def test_f_zero_returns_dense_and_passes_gradient_through(rng, interaction_inputs):
    arch = refimpl.InteractionArch(0)
    dense, sparse = interaction_inputs(rng, 3, 0, 4)
    out, cache = arch.forward(dense, sparse)
    np.testing.assert_array_equal(out, dense)
    d_out = rng.standard_normal(out.shape)
    d_dense, d_sparse, d_params = arch.backward(d_out, cache)
    np.testing.assert_array_equal(d_dense, d_out)
    assert d_sparse.shape == (3, 0, 4) and d_params == {}


def test_float32_stays_float32(rng, interaction_inputs):
    dense, sparse = interaction_inputs(rng, 4, 3, 8, np.float32)
    arch = refimpl.InteractionArch(3, dtype=np.float32)
    out, cache = arch.forward(dense, sparse)
    d_dense, d_sparse, _ = arch.backward(np.ones_like(out), cache)
    assert out.dtype == d_dense.dtype == d_sparse.dtype == np.float32
    reference = arch(dense.astype(np.float64), sparse.astype(np.float64))
    np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-5)


def test_backward_mutates_neither_cache_nor_upstream(rng, interaction_inputs):
    arch = refimpl.InteractionArch(3, self_interaction=True)
    dense, sparse = interaction_inputs(rng, 2, 3, 4)
    out, cache = arch.forward(dense, sparse)
    kept = cache.combined.copy()
    d_out = rng.standard_normal(out.shape)
    d_out_before = d_out.copy()
    arch.backward(d_out, cache)
    np.testing.assert_array_equal(cache.combined, kept)
    np.testing.assert_array_equal(d_out, d_out_before)
    assert vars(arch).keys() == vars(refimpl.InteractionArch(3)).keys()  # nothing stored


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
    with pytest.raises(error, match=message):
        refimpl.InteractionArch(2).forward(np.zeros(dense_shape), np.zeros(sparse_shape))


def test_bad_dtypes_and_types():
    arch = refimpl.InteractionArch(2)
    with pytest.raises(TypeError, match=r"dense: expected a float32 or float64 array.*int64"):
        arch.forward(np.zeros((2, 4), np.int64), np.zeros((2, 2, 4)))
    with pytest.raises(TypeError, match="sparse: expected a NumPy array"):
        arch.forward(np.zeros((2, 4)), [[[0.0] * 4] * 2] * 2)
    with pytest.raises(TypeError, match="sparse: dtype float32 differs"):
        arch.forward(np.zeros((2, 4)), np.zeros((2, 2, 4), np.float32))


def test_bad_d_out_is_refused(rng, interaction_inputs):
    arch = refimpl.InteractionArch(2)
    _, cache = arch.forward(*interaction_inputs(rng, 2, 2, 4))
    with pytest.raises(
        ValueError, match=r"d_out: expected shape \(B, P\) = \(2, 7\), got \(2, 6\)"
    ):
        arch.backward(np.zeros((2, 6)), cache)
    with pytest.raises(ValueError, match="d_out: expected a 2-D array"):
        arch.backward(np.zeros(14), cache)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="num_sparse_features"):
        refimpl.InteractionArch(-1)
    with pytest.raises(TypeError, match="num_sparse_features"):
        refimpl.InteractionArch(2.0)
    with pytest.raises(ValueError, match="pair_order"):
        refimpl.InteractionArch(2, pair_order="upper")
    with pytest.raises(TypeError, match="dtype"):
        refimpl.InteractionArch(2, dtype=np.int32)
