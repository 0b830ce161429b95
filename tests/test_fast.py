"""Every fast path in refimpl.fast against the textbook form it claims to compute.

The dot interaction reads its pairs from ``C Sᵀ`` and gathers ``G + Gᵀ`` in one array;
``dot_interaction`` and ``dot_interaction_backward`` are ``Z = C Cᵀ`` and ``dC = (G + Gᵀ) C``
as written in the docstring. The mixture never forms its K crosses; ``mixture_forward`` and
``mixture_backward`` do. VectorCrossNet never forms its x_l; ``vector_crossnet_forward`` and
``vector_crossnet_backward`` do. They must agree in every option and dtype.
"""

import importlib

import numpy as np
import pytest

import refimpl
from refimpl.fast import crossnet as fast_crossnet
from refimpl.fast import dot as fast_dot
from refimpl.fast import embedding as fast_embedding
from refimpl.fast import fm as fast_fm
from refimpl.fast import transformer as fast_transformer
from refimpl.fast import vector_crossnet as fast_vector
from refimpl.fast.threads import SPLIT_MIN_WORK, batch_slices, num_threads, on_batch_slices
from refimpl.layers.crossnet import (
    mixture_backward,
    mixture_forward,
    vector_crossnet_backward,
    vector_crossnet_forward,
)
from refimpl.layers.dot import InteractionArch, dot_interaction, dot_interaction_backward

TOL = {np.float64: 1e-12, np.float32: 1e-5}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("self_interaction", [False, True])
@pytest.mark.parametrize("pair_order", ["triu", "tril"])
@pytest.mark.parametrize(("batch", "features", "dim"), [(3, 1, 4), (2, 5, 3), (4, 26, 8)])
def test_fast_layer_equals_plain_form(
    rng, dtype, self_interaction, pair_order, batch, features, dim
):
    arch = InteractionArch(features, self_interaction=self_interaction, pair_order=pair_order)
    dense = rng.standard_normal((batch, dim)).astype(dtype)  # (B, D)
    sparse = rng.standard_normal((batch, features, dim)).astype(dtype)  # (B, F, D)
    out, cache = arch.forward(dense, sparse)
    plain_out, combined = dot_interaction(dense, sparse, arch.rows, arch.cols)
    tol = TOL[dtype]
    np.testing.assert_allclose(out, plain_out, rtol=tol, atol=tol)
    np.testing.assert_array_equal(cache.combined, combined)

    d_out = rng.standard_normal(out.shape).astype(dtype)
    d_dense, d_sparse, d_params = arch.backward(d_out, cache)
    plain_dense, plain_sparse = dot_interaction_backward(d_out, combined, arch.rows, arch.cols)
    np.testing.assert_allclose(d_dense, plain_dense, rtol=tol, atol=tol)
    np.testing.assert_allclose(d_sparse, plain_sparse, rtol=tol, atol=tol)
    assert out.dtype == d_dense.dtype == d_sparse.dtype == dtype
    assert d_sparse.shape == sparse.shape and d_params == {}


def test_diagonal_pair_of_the_dense_vector_is_filled_in(rng):
    # (0, 0) is the one pair C Sᵀ does not hold; the layer computes it separately.
    arch = InteractionArch(2, self_interaction=True)
    dense, sparse = rng.standard_normal((3, 4)), rng.standard_normal((3, 2, 4))
    out = arch(dense, sparse)
    np.testing.assert_allclose(out[:, 4], np.sum(dense * dense, axis=1), rtol=1e-14)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_batch_slices_cover_the_batch_once(threads):
    for batch in (0, 1, 2, 7, 64):
        covered = np.concatenate([np.arange(batch)[s] for s in batch_slices(batch, threads)])
        np.testing.assert_array_equal(covered, np.arange(batch))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_work_on_batch_slices_runs_on_threads_only_when_it_pays(threads):
    seen = []

    def record(rows):
        seen.append(rows)

    on_batch_slices(record, 61, SPLIT_MIN_WORK, threads)
    assert seen == batch_slices(61, threads)
    seen.clear()
    on_batch_slices(record, 61, 1, threads)  # too little work: one call
    assert seen == [slice(0, 61)]


def test_an_error_in_a_thread_is_raised():
    def fail(rows):
        raise ValueError(f"rows {rows.start}")

    with pytest.raises(ValueError, match="rows"):
        on_batch_slices(fail, 8, SPLIT_MIN_WORK, threads=2)


def test_threads_follow_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert num_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert num_threads() >= 1


@pytest.mark.parametrize("self_interaction", [False, True])
def test_fast_layer_equals_plain_form_when_the_batch_is_split(rng, monkeypatch, self_interaction):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # 48 samples at F=26, D=128: enough to split
    arch = InteractionArch(26, self_interaction=self_interaction)
    dense, sparse = rng.standard_normal((48, 128)), rng.standard_normal((48, 26, 128))
    out, cache = arch.forward(dense, sparse)
    plain_out, combined = dot_interaction(dense, sparse, arch.rows, arch.cols)
    np.testing.assert_allclose(out, plain_out, rtol=1e-12, atol=1e-12)
    d_out = rng.standard_normal(out.shape)
    d_dense, d_sparse, _ = arch.backward(d_out, cache)
    plain_dense, plain_sparse = dot_interaction_backward(d_out, combined, arch.rows, arch.cols)
    np.testing.assert_allclose(d_dense, plain_dense, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(d_sparse, plain_sparse, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    ("num_experts", "low_rank", "activation"),
    [(1, 2, "relu"), (3, 2, "relu"), (2, 3, "tanh"), (4, 1, "identity"), (2, 2, "sigmoid")],
)
def test_fast_mixture_equals_textbook_form(
    rng, randomize_biases, dtype, num_experts, low_rank, activation
):
    net = refimpl.LowRankMixtureCrossNet(
        9,
        3,
        num_experts=num_experts,
        low_rank=low_rank,
        activation=activation,
        seed=rng,
        dtype=dtype,
    )
    randomize_biases(net, rng)  # TorchRec's zero biases would leave their path untested
    x = rng.standard_normal((5, 9)).astype(dtype)  # (B, N)
    out, cache = net.forward(x)
    plain_out, plain_cache = mixture_forward(net.params, x, activation)
    tol = TOL[dtype]
    np.testing.assert_allclose(out, plain_out, rtol=tol, atol=tol)
    d_out = rng.standard_normal(out.shape).astype(dtype)
    d_x, d_params = net.backward(d_out, cache)
    plain_d_x, plain_d_params = mixture_backward(net.params, d_out, plain_cache, activation)
    np.testing.assert_allclose(d_x, plain_d_x, rtol=tol, atol=tol)
    assert list(d_params) == list(plain_d_params) == list(net.params)
    for key, value in d_params.items():
        np.testing.assert_allclose(value, plain_d_params[key], rtol=tol, atol=tol, err_msg=key)
        assert value.dtype == dtype and value.shape == net.params[key].shape


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    ("batch", "width", "num_layers"), [(5, 7, 1), (4, 9, 3), (3, 6, 5), (0, 4, 2)]
)
def test_fast_vector_crossnet_equals_textbook_form(rng, dtype, batch, width, num_layers):
    # The fast form never builds x_l = a_l x̂ + β_l: nonzero biases make β_l matter.
    net = refimpl.VectorCrossNet(width, num_layers, seed=rng, dtype=dtype)
    for key, value in net.params.items():
        if key.startswith("bias."):
            value[...] = 0.5 * rng.standard_normal(value.shape)
    x = rng.standard_normal((batch, width)).astype(dtype)  # (B, N)
    out, cache = net.forward(x)
    plain_out, plain_cache = vector_crossnet_forward(net.params, x)
    tol = TOL[dtype]
    np.testing.assert_allclose(out, plain_out, rtol=tol, atol=tol)
    d_out = rng.standard_normal(out.shape).astype(dtype)
    d_x, d_params = net.backward(d_out, cache)
    plain_d_x, plain_d_params = vector_crossnet_backward(net.params, d_out, plain_cache)
    np.testing.assert_allclose(d_x, plain_d_x, rtol=tol, atol=tol)
    assert list(d_params) == list(plain_d_params) == list(net.params)
    for key, value in d_params.items():
        np.testing.assert_allclose(value, plain_d_params[key], rtol=tol, atol=tol, err_msg=key)
        assert value.dtype == dtype and value.shape == net.params[key].shape
    assert out.dtype == d_x.dtype == dtype


def test_fast_vector_crossnet_keeps_no_layer_state(rng):
    # The cache is x̂ itself and two (B, L) arrays, never an (L, B, N) stack.
    net = refimpl.VectorCrossNet(6, 4, seed=rng)
    x = rng.standard_normal((3, 6))
    _, cache = net.forward(x)
    assert cache.x_hat is x
    assert cache.scores.shape == cache.projections.shape == (3, 4)


FAST_PATHS = [
    (fast_dot.dot_forward, "refimpl.layers.dot.dot_interaction"),
    (fast_dot.dot_backward, "refimpl.layers.dot.dot_interaction_backward"),
    (fast_crossnet.mixture_forward_fast, "refimpl.layers.crossnet.mixture_forward"),
    (fast_crossnet.mixture_backward_fast, "refimpl.layers.crossnet.mixture_backward"),
    (fast_vector.vector_forward_fast, "refimpl.layers.crossnet.vector_crossnet_forward"),
    (fast_vector.vector_backward_fast, "refimpl.layers.crossnet.vector_crossnet_backward"),
    (fast_embedding.bag_sums, "refimpl.layers.embedding.segment_sum"),
    (fast_fm.fm_scalar_pairs_forward_fast, "refimpl.layers.fm.fm_scalar_pairs_forward"),
    (fast_fm.fm_scalar_pairs_backward_fast, "refimpl.layers.fm.fm_scalar_pairs_backward"),
    (
        fast_transformer.encoder_layer_forward_fast,
        "refimpl.layers.transformer.encoder_layer_forward",
    ),
    (
        fast_transformer.encoder_layer_backward_fast,
        "refimpl.layers.transformer.encoder_layer_backward",
    ),
]


@pytest.mark.parametrize(
    ("function", "textbook"), FAST_PATHS, ids=lambda f: getattr(f, "__name__", f)
)
def test_each_fast_path_names_the_textbook_function_it_equals(function, textbook):
    # In its docstring's first sentence; the tests above check that the numbers agree.
    assert textbook in function.__doc__.split("\n\n")[0]
    module, name = textbook.rsplit(".", 1)
    assert callable(getattr(importlib.import_module(module), name))
