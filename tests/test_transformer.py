"""LayerNorm, MultiheadAttention, TransformerEncoderLayer and InteractionTransformerArch: values,
gradients, torch's names and initialisation, the batch leak, bad input, broken backwards."""

import numpy as np
import pytest

import refimpl
from refimpl.layers import transformer
from refimpl.tools.check import run_check
from refimpl.tools.check.cases import transformer as cases
from refimpl.tools.loops import attention_loop, layer_norm_loop

FAST_CHECKS = [c for c in cases.checks() if c.witness in ("finite-diff", "hand")]


@pytest.mark.parametrize("check", FAST_CHECKS, ids=lambda c: f"{c.layer} {c.config} {c.witness}")
def test_check_cases_pass(check):
    outcome = run_check(check)
    assert outcome.status == "pass", outcome.note or outcome.error


# ------------------------------------------------------------------------------- layer norm


def test_layer_norm_normalises_each_row_and_matches_the_loop(rng):
    norm = refimpl.LayerNorm(6, eps=1e-5)
    x = 3 + 2 * rng.standard_normal((2, 4, 6))
    y = norm(x)
    np.testing.assert_allclose(y.mean(axis=-1), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=-1), 1 / (1 + 1e-5 / x.var(axis=-1)), rtol=1e-12)
    params = norm.params
    np.testing.assert_allclose(y, layer_norm_loop(x, params["weight"], params["bias"], 1e-5))


def test_layer_norm_gradient_is_blind_to_shifts_and_scales(rng):
    # y does not change when a row is shifted (nor, with eps = 0, scaled), so dx is orthogonal
    # to the all-ones direction and to x̂: the two mean terms of the backward.
    norm = refimpl.LayerNorm(5, eps=0.0)
    x = rng.standard_normal((3, 5))
    out, cache = norm.forward(x)
    d_x, _ = norm.backward(rng.standard_normal(out.shape), cache)
    np.testing.assert_allclose(d_x.sum(axis=-1), 0, atol=1e-12)
    np.testing.assert_allclose((d_x * cache.normalized).sum(axis=-1), 0, atol=1e-12)


def test_layer_norm_refuses_bad_input():
    norm = refimpl.LayerNorm(4)
    with pytest.raises(
        ValueError, match=r"input: expected shape \(…, E\) with E = 4, got \(2, 3\)"
    ):
        norm.forward(np.zeros((2, 3)))
    with pytest.raises(TypeError, match="input"):
        norm.forward(np.zeros((2, 4), dtype=np.int32))
    with pytest.raises(ValueError, match="eps"):
        refimpl.LayerNorm(4, eps=-1.0)
    _, cache = norm.forward(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="d_out: expected the forward output's shape"):
        norm.backward(np.zeros((3, 4)), cache)


# -------------------------------------------------------------------------------- attention


def test_attention_keys_shapes_and_torch_initialisation():
    mha = refimpl.MultiheadAttention(64, 4, seed=0)
    shapes = {k: v.shape for k, v in mha.params.items()}
    assert shapes == {
        "in_proj_weight": (192, 64),
        "in_proj_bias": (192,),
        "out_proj.weight": (64, 64),
        "out_proj.bias": (64,),
    }
    params = mha.params
    xavier = np.sqrt(6 / (192 + 64))  # xavier_uniform_ on (3E, E)
    assert np.abs(params["in_proj_weight"]).max() <= xavier
    assert np.abs(params["in_proj_weight"]).max() > 0.9 * xavier
    assert np.abs(params["out_proj.weight"]).max() <= 1 / 8  # nn.Linear's U(±1/√E)
    assert not params["in_proj_bias"].any() and not params["out_proj.bias"].any()


def test_attention_layouts_agree_and_match_the_loop(rng):
    x = rng.standard_normal((3, 5, 8))  # N, S, E
    first = refimpl.MultiheadAttention(8, 2, batch_first=True, seed=0)
    second = refimpl.MultiheadAttention(8, 2, seed=0)
    out = first(x)
    np.testing.assert_array_equal(second(x.transpose(1, 0, 2)), out.transpose(1, 0, 2))
    np.testing.assert_allclose(out, attention_loop(x, first.params, 2), rtol=1e-12)


def test_attention_weights_are_a_convex_combination(rng):
    mha = refimpl.MultiheadAttention(4, 2, batch_first=True, seed=0)
    _, cache = mha.forward(rng.standard_normal((2, 3, 4)))
    assert cache.probs.shape == (2, 2, 3, 3)
    np.testing.assert_allclose(cache.probs.sum(axis=-1), 1, rtol=1e-12)
    assert (cache.probs > 0).all()


def test_the_key_bias_gets_no_gradient(rng):
    # q·b_k shifts all of a query's scores alike and softmax ignores shifts.
    mha = refimpl.MultiheadAttention(4, 2, batch_first=True, seed=0)
    mha.load_state_dict({**mha.params, "in_proj_bias": rng.standard_normal(12)})
    out, cache = mha.forward(rng.standard_normal((3, 5, 4)))
    _, d_params = mha.backward(rng.standard_normal(out.shape), cache)
    d_bias = d_params["in_proj_bias"]
    assert np.abs(d_bias[4:8]).max() < 1e-14 * np.abs(d_bias).max()
    assert np.abs(d_bias[:4]).min() > 1e-6 and np.abs(d_bias[8:]).min() > 1e-6


def test_one_token_attends_to_itself_only_so_queries_and_keys_learn_nothing(rng):
    mha = refimpl.MultiheadAttention(4, 2, batch_first=True, seed=0)
    out, cache = mha.forward(rng.standard_normal((3, 1, 4)))
    _, d_params = mha.backward(rng.standard_normal(out.shape), cache)
    assert not d_params["in_proj_weight"][:8].any() and not d_params["in_proj_bias"][:8].any()
    assert d_params["in_proj_weight"][8:].any()


def test_attention_refuses_bad_input():
    with pytest.raises(
        ValueError, match=r"num_heads: the width E = 6 must split evenly into H = 4"
    ):
        refimpl.MultiheadAttention(6, 4)
    mha = refimpl.MultiheadAttention(4, 2)
    with pytest.raises(ValueError, match=r"input: expected shape \(S, N, E\) = \(3, 2, 4\)"):
        mha.forward(np.zeros((3, 2, 5)))
    with pytest.raises(ValueError, match=r"input: expected a 3-D array of shape \(S, N, E\)"):
        mha.forward(np.zeros((3, 4)))
    _, cache = mha.forward(np.zeros((3, 2, 4)))
    with pytest.raises(ValueError, match=r"d_out: expected shape \(S, N, E\) = \(3, 2, 4\)"):
        mha.backward(np.zeros((2, 3, 4)), cache)


# ---------------------------------------------------------------------------- encoder layer


def test_encoder_layer_has_torch_keys_and_defaults():
    layer = refimpl.TransformerEncoderLayer(8, 2)
    assert list(layer.params) == [
        "self_attn.in_proj_weight",
        "self_attn.in_proj_bias",
        "self_attn.out_proj.weight",
        "self_attn.out_proj.bias",
        "linear1.weight",
        "linear1.bias",
        "linear2.weight",
        "linear2.bias",
        "norm1.weight",
        "norm1.bias",
        "norm2.weight",
        "norm2.bias",
    ]
    assert layer.params["linear1.weight"].shape == (2048, 8)
    assert (layer.layer_norm_eps, layer.activation, layer.batch_first) == (1e-5, "relu", False)
    with pytest.raises(ValueError, match="dropout"):
        refimpl.TransformerEncoderLayer(8, 2, dropout=1.5)


def test_encoder_layer_backward_never_changes_its_cache_or_params(rng):
    layer = refimpl.TransformerEncoderLayer(4, 2, 6, seed=0)
    out, cache = layer.forward(rng.standard_normal((3, 2, 4)))
    saved = [
        a.copy()
        for a in (cache.feed_forward.input, cache.feed_forward.hidden, cache.attention.probs)
    ]
    params = layer.state_dict()
    layer.backward(rng.standard_normal(out.shape), cache)
    for before, after in zip(
        saved,
        (cache.feed_forward.input, cache.feed_forward.hidden, cache.attention.probs),
        strict=True,
    ):
        np.testing.assert_array_equal(before, after)
    for key, value in layer.params.items():
        np.testing.assert_array_equal(value, params[key])


# ------------------------------------------------------------------------- interaction arch


def _inputs(rng, batch=4, features=2, dim=8):
    return rng.standard_normal((batch, dim)), rng.standard_normal((batch, features, dim))


def test_arch_keys_torchrec_defaults_and_equal_layers_at_start():
    arch = refimpl.InteractionTransformerArch(2, 8, seed=0)
    params = arch.params
    assert (arch.nhead, arch.ntransformer_layers, arch.dim_feedforward) == (8, 4, 2048)
    assert (
        len(params) == 4 * 12
        and next(iter(params)) == "interarch_TE.layers.0.self_attn.in_proj_weight"
    )
    assert params["interarch_TE.layers.3.linear2.weight"].shape == (8, 2048)
    for key, value in params.items():  # nn.TransformerEncoder deep-copies one layer
        np.testing.assert_array_equal(
            value, params["interarch_TE.layers.0" + key[len("interarch_TE.layers.i") :]]
        )
        assert not any(value is v for k, v in params.items() if k != key)


def test_arch_output_is_f_plus_one_times_d_wide_not_what_torchrec_docstring_says(rng):
    features, dim = 3, 8
    arch = refimpl.InteractionTransformerArch(features, dim, 2, 1, dim_feedforward=8, seed=0)
    out = arch(*_inputs(rng, 5, features, dim))
    docstring_width = dim + features + features * (features - 1) // 2
    assert out.shape == (5, (features + 1) * dim) and out.shape[1] != docstring_width


def test_per_sample_attention_ignores_the_rest_of_the_batch(rng):
    arch = refimpl.InteractionTransformerArch(2, 8, 2, 2, dim_feedforward=16, seed=0)
    dense, sparse = _inputs(rng)
    changed = dense.copy()
    changed[1] += 1.0
    out, out_changed = arch(dense, sparse), arch(changed, sparse)
    np.testing.assert_array_equal(out[[0, 2, 3]], out_changed[[0, 2, 3]])
    assert np.abs(out[1] - out_changed[1]).max() > 0.1
    alone = arch(dense[:1], sparse[:1])
    np.testing.assert_allclose(alone, out[:1], rtol=1e-12)


def test_torchrec_semantics_leak_across_the_batch(rng):
    arch = refimpl.InteractionTransformerArch(
        2, 8, 2, 2, attend_across="batch", dim_feedforward=16, seed=0
    )
    dense, sparse = _inputs(rng)
    changed = dense.copy()
    changed[1] += 1.0
    leak = np.abs(arch(dense, sparse)[0] - arch(changed, sparse)[0]).max()
    assert leak > 1e-2
    out, cache = arch.forward(dense, sparse)
    upstream = np.zeros_like(out)
    upstream[0] = rng.standard_normal(out.shape[1])  # (not constant: norm2 would zero it)
    d_dense, _, _ = arch.backward(upstream, cache)
    assert np.abs(d_dense[1]).max() > 1e-3  # sample 0's loss reaches sample 1's input


def test_torchrec_semantics_are_per_sample_attention_on_the_transposed_batch(rng):
    per_sample = refimpl.InteractionTransformerArch(2, 8, 2, 2, dim_feedforward=16, seed=0)
    torchrec = refimpl.InteractionTransformerArch(
        2, 8, 2, 2, attend_across="batch", dim_feedforward=16, seed=0
    )
    torchrec.load_state_dict(per_sample.params)
    dense, sparse = _inputs(rng, batch=3, features=2)  # B = F+1, so the transpose fits too
    combined = np.concatenate([dense[:, None], sparse], axis=1)  # (B, F+1, D)
    swapped = combined.transpose(1, 0, 2)  # feature slots as "samples", samples as "features"
    expected = per_sample(swapped[:, 0], swapped[:, 1:]).reshape(3, 3, 8).transpose(1, 0, 2)
    np.testing.assert_allclose(torchrec(dense, sparse), expected.reshape(3, 24), rtol=1e-12)


def test_arch_passthrough_empty_batch_and_float32(rng):
    arch = refimpl.InteractionTransformerArch(0, 8, 2, 1, dim_feedforward=8)
    dense = rng.standard_normal((3, 8))
    out, cache = arch.forward(dense, np.zeros((3, 0, 8)))
    np.testing.assert_array_equal(out, dense)
    d_dense, d_sparse, d_params = arch.backward(np.ones_like(out), cache)
    assert d_sparse.shape == (3, 0, 8) and not any(v.any() for v in d_params.values())
    for mode in ("features", "batch"):
        arch = refimpl.InteractionTransformerArch(2, 8, 2, 1, attend_across=mode, dim_feedforward=8)
        out, cache = arch.forward(*_inputs(rng, batch=0))
        assert out.shape == (0, 24)
        d_dense, d_sparse, _ = arch.backward(out, cache)
        assert d_dense.shape == (0, 8) and d_sparse.shape == (0, 2, 8)
    arch32 = refimpl.InteractionTransformerArch(2, 8, 2, 1, dim_feedforward=8, dtype=np.float32)
    dense, sparse = _inputs(rng)
    out, cache = arch32.forward(dense.astype(np.float32), sparse.astype(np.float32))
    d_dense, _, d_params = arch32.backward(np.ones_like(out), cache)
    assert out.dtype == d_dense.dtype == np.float32
    assert all(v.dtype == np.float32 for v in d_params.values())


def test_arch_refuses_bad_input(rng):
    with pytest.raises(ValueError, match="attend_across"):
        refimpl.InteractionTransformerArch(2, 8, attend_across="samples")
    with pytest.raises(ValueError, match="num_heads: the width E = 6"):
        refimpl.InteractionTransformerArch(2, 6)  # TorchRec's default nhead=8
    arch = refimpl.InteractionTransformerArch(2, 8, 2, 1, dim_feedforward=8)
    dense, sparse = _inputs(rng)
    with pytest.raises(
        ValueError, match=r"dense: expected shape \(B, D\) = \(4, 8\), got \(4, 6\)"
    ):
        arch.forward(dense[:, :6], sparse)
    with pytest.raises(ValueError, match=r"sparse: expected shape \(B, F, D\) = \(4, 2, 8\)"):
        arch.forward(dense, sparse[:, :1])
    _, cache = arch.forward(dense, sparse)
    with pytest.raises(ValueError, match=r"d_out: expected shape \(B, W\) = \(4, 24\)"):
        arch.backward(np.zeros((4, 23)), cache)


# ---------------------------------------------------------------------------------- mutants


def _softmax_backward_without_centering(probs, d_probs):
    return probs * d_probs


def _layer_norm_backward_without_mean_term(params, d_out, cache):
    normalized, inv_std = cache
    d_normalized = d_out * params["weight"]
    d_spread = (d_normalized * normalized).mean(axis=-1, keepdims=True)
    d_x = inv_std * (d_normalized - normalized * d_spread)
    return d_x, {
        "weight": transformer.sum_tokens(d_out * normalized),
        "bias": transformer.sum_tokens(d_out),
    }


def _scores_backward_without_scale(d_scores, q, k, scale):
    return d_scores @ k, d_scores.swapaxes(-1, -2) @ q


MUTANTS = {
    "softmax_backward": _softmax_backward_without_centering,
    "layer_norm_backward": _layer_norm_backward_without_mean_term,
    "scores_backward": _scores_backward_without_scale,
}


def _encoder_layer(rng):
    layer = refimpl.TransformerEncoderLayer(4, 2, 5, batch_first=True, seed=0)
    for value in layer.params.values():
        value += 0.3 * rng.standard_normal(value.shape)
    inputs = refimpl.draw_away_from_kinks(layer, lambda r: (r.standard_normal((2, 3, 4)),), rng)
    return layer, inputs


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_finite_differences_catch_each_broken_step(monkeypatch, rng, name):
    layer, inputs = _encoder_layer(rng)
    assert max(cases.finite_difference_errors(layer, inputs).values()) < 1e-7
    monkeypatch.setattr(transformer, name, MUTANTS[name])
    errors = cases.finite_difference_errors(layer, inputs)
    assert errors["input"] > 1e-3, errors
