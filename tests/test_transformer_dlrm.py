"""DLRM_Transformer: construction, keys, gradients, per-sample versus batch attention, errors."""

import numpy as np
import pytest
from test_models import TABLE, small_bags, small_ebc

from refimpl import (
    DLRM_Transformer,
    KeyedJaggedArray,
    RowSparse,
    rel_error,
)
from refimpl.tools.check.cases.dlrm_transformer import (
    build_transformer_model,
    condition_dense_arch,
    draw_transformer_inputs,
    finite_difference_errors,
)
from refimpl.tools.check.cases.models import draw_model_inputs
from refimpl.tools.gradcheck import numerical_gradient
from refimpl.tools.loops import dlrm_loop


def test_keys_defaults_and_widths_follow_torchrec():
    model = DLRM_Transformer(small_ebc(), 5, [6, 4], [7, 1], nhead=2, ntransformer_layers=2, seed=0)
    layer = "inter_arch.interarch_TE.layers.1."
    keys = list(model.params)
    assert keys[:4] == [TABLE, "sparse_arch.embedding_bag_collection.embedding_bags.t2.weight",
                        "dense_arch.model._mlp.0._linear.weight",
                        "dense_arch.model._mlp.0._linear.bias"]  # fmt: skip
    assert [k[len(layer) :] for k in keys if k.startswith(layer)] == [
        "self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight",
        "self_attn.out_proj.bias", "linear1.weight", "linear1.bias", "linear2.weight",
        "linear2.bias", "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias",
    ]  # fmt: skip
    assert keys[-2:] == ["over_arch.model.1.weight", "over_arch.model.1.bias"]
    assert model.params[layer + "linear1.weight"].shape == (2048, 4)  # torch's default width
    assert model.over_arch.in_features == 16  # (F+1)·D, as TorchRec sizes it
    default = DLRM_Transformer(small_ebc((8, 8)), 5, [6, 8], [7, 1], dim_feedforward=4)
    assert (default.nhead, default.ntransformer_layers, default.attend_across) == (
        8, 4, "features",
    )  # fmt: skip
    # nn.TransformerEncoder copies one layer: every layer starts equal
    first, last = default.params, "inter_arch.interarch_TE.layers."
    assert np.array_equal(first[last + "0.linear1.weight"], first[last + "3.linear1.weight"])


@pytest.mark.parametrize(
    "mode",
    ["features", pytest.param("batch", marks=pytest.mark.slow)],  # about 1.5 s each
)
def test_gradients_finite_differences_and_loop_forward(mode):
    rng = np.random.default_rng(3)
    model = build_transformer_model("weighted sum", mode, seed=rng)
    condition_dense_arch(model)
    inputs = draw_transformer_inputs(rng, model, 2)
    errors = finite_difference_errors(model, inputs)
    assert max(errors.values()) < 1e-7, max(errors.items(), key=lambda kv: kv[1])
    assert any(k.startswith("sparse_features.weights") for k in errors)  # the weights too
    dense, features = draw_model_inputs(rng, model, 4, away_from_kinks=False)  # empty bags
    np.testing.assert_allclose(model(dense, features), dlrm_loop(model, dense, features), 1e-12)


def test_per_sample_attention_keeps_samples_apart_and_torchrec_s_reading_does_not(rng):
    per_sample = build_transformer_model("sum, t1 shared by f1 f3", "features", seed=0)
    across = build_transformer_model("sum, t1 shared by f1 f3", "batch", seed=0)
    for model in (per_sample, across):
        condition_dense_arch(model)
    dense, features = draw_model_inputs(rng, per_sample, 3, away_from_kinks=False)
    moved = dense.copy()
    moved[1] += 1.0  # sample 1 only
    for model, leaks in ((per_sample, False), (across, True)):
        change = np.abs(model(moved, features) - model(dense, features))[:, 0]  # (B,)
        others = change[[0, 2]].max()
        assert change[1] > 1e-3, change
        if leaks:  # each feature attends across the batch: samples 0 and 2 move too
            assert others > 1e-3, change
        else:
            assert others == 0.0  # exactly: no arithmetic is shared between samples


def test_backward_returns_row_sparse_tables_and_float32_stays_float32(rng):
    model = DLRM_Transformer(
        small_ebc(dtype=np.float32), 5, [6, 4], [7, 1], nhead=2, ntransformer_layers=1,
        dim_feedforward=8, seed=0, dtype=np.float32,
    )  # fmt: skip
    logits, cache = model.forward(np.ones((2, 5), np.float32), small_bags())
    d_dense, d_weights, d_params = model.backward(np.ones_like(logits), cache)
    assert logits.shape == (2, 1) and d_dense.shape == (2, 5) and d_weights is None
    assert isinstance(d_params[TABLE], RowSparse) and list(d_params) == list(model.params)
    assert logits.dtype == d_dense.dtype == np.float32
    assert all(g.dtype == np.float32 for g in d_params.values())


@pytest.mark.parametrize("mode", ["features", "batch"])
def test_an_empty_batch(mode):
    model = build_transformer_model("sum, t1 shared by f1 f3", mode, seed=0)
    features = KeyedJaggedArray(["f1", "f2", "f3"], np.zeros(0, int), np.zeros(0, int))
    logits, cache = model.forward(np.zeros((0, 5)), features)
    d_dense, _, d_params = model.backward(logits, cache)
    assert logits.shape == (0, 1) and d_dense.shape == (0, 5)
    assert d_params[TABLE].nnz_rows == 0 and not any(
        np.any(v) for k, v in d_params.items() if k.startswith("inter_arch.")
    )


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: DLRM_Transformer(small_ebc(), 5, [6, 4], [7, 1], nhead=3), ValueError,
         r"nhead: the embedding_dim D = 4 must split evenly into H = 3 heads"),
        (lambda: DLRM_Transformer(small_ebc((4, 2)), 5, [6, 4], [7, 1], nhead=3), ValueError,
         "same embedding_dim D"),  # DLRM's checks come first, as in TorchRec
        (lambda: DLRM_Transformer(small_ebc(), 5, [6, 4], [7, 1], 2, attend_across="samples"),
         ValueError, r"attend_across: expected one of \('features', 'batch'\), got 'samples'"),
        (lambda: DLRM_Transformer(small_ebc(), 5, [6, 4], [7, 1], 2, 0), ValueError,
         "ntransformer_layers: expected an integer >= 1, got 0"),
        (lambda: DLRM_Transformer(small_ebc(), 5, [6, 5], [7, 1], 2), ValueError,
         r"last size \(5\) must equal"),
        (lambda: DLRM_Transformer(small_ebc(), 5, [6, 4], [7, 1], 2, dtype=np.float32), TypeError,
         "one dtype"),
    ],
)  # fmt: skip
def test_torchrec_checks_with_clear_messages(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_bad_inputs_and_a_malformed_state_dict_change_nothing():
    model = build_transformer_model("sum, t1 shared by f1 f3", "features", seed=0)
    with pytest.raises(ValueError, match=r"dense_features: expected shape \(B, I\) = \(2, 5\)"):
        model.forward(np.zeros((2, 4)), small_bags())
    with pytest.raises(ValueError, match="B = 2 bags per key, but dense_features has B = 3"):
        model.forward(np.zeros((3, 5)), small_bags())
    before = model.state_dict()
    broken = {k: np.zeros_like(v) for k, v in before.items()}
    broken["inter_arch.interarch_TE.layers.1.norm1.weight"] = np.ones(5)
    with pytest.raises(ValueError, match=r"layers.1.norm1.weight: expected shape \(4,\), got"):
        model.load_state_dict(broken)
    assert all(np.array_equal(before[k], v) for k, v in model.params.items())


def test_mutant_layer_norm_without_its_mean_term_fails_the_model_check(monkeypatch):
    from refimpl.layers import transformer

    def without_mean_term(params, d_out, cache):
        normalized, inv_std = cache
        d_normalized = d_out * params["weight"]
        d_spread = (d_normalized * normalized).mean(axis=-1, keepdims=True)
        d_x = inv_std * (d_normalized - normalized * d_spread)  # mean(dx̂) dropped
        return d_x, {
            "weight": transformer.sum_tokens(d_out * normalized),
            "bias": transformer.sum_tokens(d_out),
        }

    rng = np.random.default_rng(3)
    model = build_transformer_model("sum, t1 shared by f1 f3", "features", seed=rng)
    condition_dense_arch(model)
    dense, features = draw_transformer_inputs(rng, model, 1)
    out, cache = model.forward(dense, features)
    upstream = rng.standard_normal(out.shape)
    numeric = numerical_gradient(lambda: model.forward(dense, features)[0], dense, 5e-4,
                                 upstream=upstream)  # fmt: skip
    assert rel_error(model.backward(upstream, cache)[0], numeric) < 1e-7  # the check works
    monkeypatch.setattr(transformer, "layer_norm_backward", without_mean_term)
    assert rel_error(model.backward(upstream, cache)[0], numeric) > 1e-3  # and fails it


def test_the_training_loop_builds_it_from_its_options():
    from refimpl.data.synthetic import SyntheticCriteo
    from refimpl.train import TrainConfig, build_model

    data = SyntheticCriteo([20, 30, 25], num_train=64, num_validation=32, num_test=32)
    sizes = {"embedding_dim": 4, "dense_arch_layer_sizes": [8, 4], "over_arch_layer_sizes": [8, 1]}
    config = TrainConfig(model="transformer", nhead=4, ntransformer_layers=3, dim_feedforward=16,
                         attend_across="batch", **sizes).resolved()  # fmt: skip
    model = build_model(config, data)
    assert isinstance(model, DLRM_Transformer) and model.attend_across == "batch"
    assert (model.nhead, model.ntransformer_layers, model.dim_feedforward) == (4, 3, 16)
    with pytest.raises(ValueError, match="attend_across: expected one of"):
        TrainConfig(model="transformer", attend_across="sequence").resolved()
    with pytest.raises(ValueError, match="nhead: the embedding_dim D = 4 must split evenly"):
        build_model(TrainConfig(model="transformer", nhead=3, **sizes).resolved(), data)
