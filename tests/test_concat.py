"""The no-interaction baseline: InteractionConcatArch and DLRM_Baseline."""

import numpy as np
import pytest

from refimpl import DLRM_Baseline, InteractionConcatArch, gradcheck
from refimpl.layers import concat
from refimpl.tools.check.cases.models import build_model, draw_model_inputs
from refimpl.tools.loops import dlrm_loop


def test_forward_lays_the_vectors_end_to_end_and_backward_puts_them_back(rng):
    arch = InteractionConcatArch(3)
    dense, sparse = rng.standard_normal((2, 4)), rng.standard_normal((2, 3, 4))  # B=2, F=3, D=4
    out, cache = arch.forward(dense, sparse)
    assert out.shape == (2, 16)
    np.testing.assert_array_equal(out[1, :4], dense[1])
    np.testing.assert_array_equal(out[1, 8:12], sparse[1, 1])
    d_out = rng.standard_normal(out.shape)
    d_dense, d_sparse, d_params = arch.backward(d_out, cache)
    np.testing.assert_array_equal(d_dense, d_out[:, :4])
    np.testing.assert_array_equal(d_sparse[:, 2], d_out[:, 12:])
    assert d_params == {} and not np.shares_memory(d_sparse, d_out)
    assert gradcheck(arch, (dense, sparse)).ok


def test_an_empty_batch_and_float32(rng):
    arch = InteractionConcatArch(2, dtype=np.float32)
    out, cache = arch.forward(np.zeros((0, 3), np.float32), np.zeros((0, 2, 3), np.float32))
    d_dense, d_sparse, _ = arch.backward(out, cache)
    assert out.shape == (0, 9) and out.dtype == np.float32
    assert d_dense.shape == (0, 3) and d_sparse.shape == (0, 2, 3)


def test_bad_inputs_name_what_was_expected():
    arch = InteractionConcatArch(2)
    with pytest.raises(ValueError, match=r"sparse: expected shape \(B, F, D\) = \(3, 2, 4\)"):
        arch.forward(np.zeros((3, 4)), np.zeros((3, 3, 4)))
    with pytest.raises(TypeError, match="float32 or float64"):
        arch.forward(np.zeros((3, 4), int), np.zeros((3, 2, 4)))
    _, cache = arch.forward(np.zeros((3, 4)), np.zeros((3, 2, 4)))
    with pytest.raises(ValueError, match=r"d_out: expected shape \(B, N\) = \(3, 12\)"):
        arch.backward(np.zeros((3, 11)), cache)
    with pytest.raises(ValueError, match="num_sparse_features"):
        InteractionConcatArch(0)


def test_the_baseline_model_is_proven_like_the_others(rng):
    model = build_model("DLRM_Baseline", "mean t1, sum t2", seed=rng)
    assert isinstance(model, DLRM_Baseline) and model.over_arch.in_features == 4 * 4  # (F+1)·D
    assert not [k for k in model.params if k.startswith("inter_arch")]
    inputs = draw_model_inputs(rng, model, 3)
    assert gradcheck(model, inputs).ok
    np.testing.assert_allclose(model(*inputs), dlrm_loop(model, *inputs), rtol=1e-12)


def test_mutant_a_shifted_split_fails_the_check(rng, monkeypatch):
    model = build_model("DLRM_Baseline", "sum, t1 shared by f1 f3", seed=rng)
    inputs = draw_model_inputs(rng, model, 2)

    def shifted(d_out, shape):  # the last block taken for the dense one: off by one feature
        d_combined = d_out.reshape(shape)
        return d_combined[:, -1], d_combined[:, :-1]

    monkeypatch.setattr(concat, "concat_interaction_backward", shifted)
    assert not gradcheck(model, inputs).ok
