"""SimpleDeepFMNN (TorchRec's DeepFM model): construction, keys, gradients, outputs, errors."""

import numpy as np
import pytest
from test_models import TABLE, small_bags, small_ebc

from refimpl import (
    BCEWithLogitsLoss,
    EmbeddingBagCollection,
    KeyedJaggedArray,
    RowSparse,
    SimpleDeepFMNN,
    gradcheck,
)
from refimpl.tools.check.cases.models import draw_model_inputs
from refimpl.tools.check.cases.simple_deepfm import build_deepfm_model, builder
from refimpl.tools.loops import deepfm_loop


def test_keys_and_widths_follow_torchrec():
    model = SimpleDeepFMNN(5, small_ebc(), hidden_layer_size=6, deep_fm_dimension=3, seed=0)
    assert [(k, v.shape) for k, v in model.params.items()] == [  # TorchRec's order
        (TABLE, (7, 4)),
        ("sparse_arch.embedding_bag_collection.embedding_bags.t2.weight", (9, 4)),
        ("dense_arch.model.0.weight", (6, 5)),
        ("dense_arch.model.0.bias", (6,)),
        ("dense_arch.model.2.weight", (4, 6)),
        ("dense_arch.model.2.bias", (4,)),
        ("inter_arch.deep_fm.dense_module.0.weight", (3, 16)),  # fm_in_features = (F+1)·D
        ("inter_arch.deep_fm.dense_module.0.bias", (3,)),
        ("over_arch.model.0.weight", (1, 8)),  # D + DI + 1
        ("over_arch.model.0.bias", (1,)),
    ]
    assert (model.fm_pairs, model.output) == ("scalars", "logits")
    assert model.inter_arch.sparse_feature_names == ["f1", "f3", "f2"]  # the tables' order


@pytest.mark.parametrize(
    "options", [{}, {"fm_pairs": "features"}, {"output": "probabilities"}]
)  # fmt: skip
def test_gradients_finite_differences_and_loop_forward(rng, options):
    model, (dense, features) = builder("weighted sum", 3, **options)(rng)
    result = gradcheck(model, (dense, features), step=5e-4)
    assert result.ok, result
    assert "sparse_features.weights" in {a.name for a in result.arrays}
    np.testing.assert_allclose(model(dense, features), deepfm_loop(model, dense, features), 1e-12)


def test_probabilities_are_the_sigmoid_of_the_logits_on_the_same_weights(rng):
    logits_model = build_deepfm_model("mean t1, sum t2", seed=0)
    probabilities_model = build_deepfm_model("mean t1, sum t2", output="probabilities", seed=0)
    dense, features = draw_model_inputs(rng, logits_model, 4, away_from_kinks=False)
    z = logits_model(dense, features)  # (B, 1)
    np.testing.assert_allclose(probabilities_model(dense, features), 1 / (1 + np.exp(-z)), 1e-14)


def test_the_fm_pairs_change_only_the_fm_term(rng):
    scalars = build_deepfm_model("sum, t1 shared by f1 f3", seed=0)
    features_fm = build_deepfm_model("sum, t1 shared by f1 f3", fm_pairs="features", seed=0)
    dense, features = draw_model_inputs(rng, scalars, 3, away_from_kinks=False)
    a = scalars.inter_arch(
        scalars.dense_arch(dense), scalars._by_name(scalars.sparse_arch(features))
    )
    b = features_fm.inter_arch(
        features_fm.dense_arch(dense), features_fm._by_name(features_fm.sparse_arch(features))
    )
    np.testing.assert_array_equal(a[:, :-1], b[:, :-1])  # dense and deep: the same
    assert np.abs(a[:, -1] - b[:, -1]).min() > 1e-6  # the FM: all scalar pairs vs vector pairs


def test_the_loss_drives_the_model_and_float32_stays_float32(rng):
    model = SimpleDeepFMNN(5, small_ebc(dtype=np.float32), 6, 3, seed=0, dtype=np.float32)
    labels = np.array([[1.0], [0.0]], np.float32)
    loss_fn = BCEWithLogitsLoss()
    logits, cache = model.forward(np.ones((2, 5), np.float32), small_bags())
    _, loss_cache = loss_fn.forward(logits, labels)
    d_logits, _, _ = loss_fn.backward(1.0, loss_cache)
    d_dense, d_weights, d_params = model.backward(d_logits, cache)
    assert d_weights is None and isinstance(d_params[TABLE], RowSparse)
    assert list(d_params) == list(model.params)
    assert logits.dtype == d_dense.dtype == np.float32
    assert all(g.dtype == np.float32 for g in d_params.values())


def test_an_empty_batch():
    model = build_deepfm_model("sum, t1 shared by f1 f3", seed=0)
    features = KeyedJaggedArray(["f1", "f2", "f3"], np.zeros(0, int), np.zeros(0, int))
    logits, cache = model.forward(np.zeros((0, 5)), features)
    d_dense, _, d_params = model.backward(logits, cache)
    assert logits.shape == (0, 1) and d_dense.shape == (0, 5)
    assert d_params[TABLE].nnz_rows == 0 and not d_params["over_arch.model.0.weight"].any()


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: SimpleDeepFMNN(5, small_ebc((4, 3)), 6, 3), ValueError, "same embedding_dim D"),
        (lambda: SimpleDeepFMNN(5, EmbeddingBagCollection([]), 6, 3), ValueError,
         "at least one embedding bag"),
        (lambda: SimpleDeepFMNN(5, small_ebc(), 0, 3), ValueError, "hidden_layer_size: expected"),
        (lambda: SimpleDeepFMNN(5, small_ebc(), 6, 3, output="probability"), ValueError,
         r"output: expected one of \('logits', 'probabilities'\), got 'probability'"),
        (lambda: SimpleDeepFMNN(5, small_ebc(), 6, 3, fm_pairs="pairs"), ValueError, "fm_pairs"),
        (lambda: SimpleDeepFMNN(5, small_ebc(), 6, 3, dtype=np.float32), TypeError, "one dtype"),
    ],
)  # fmt: skip
def test_torchrec_checks_with_clear_messages(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_bad_inputs_and_a_malformed_state_dict_change_nothing():
    model = build_deepfm_model("sum, t1 shared by f1 f3", seed=0)
    with pytest.raises(ValueError, match=r"dense_features: expected shape \(B, I\) = \(2, 5\)"):
        model.forward(np.zeros((2, 4)), small_bags())
    with pytest.raises(TypeError, match="sparse_features: expected a KeyedJaggedArray"):
        model.forward(np.zeros((2, 5)), {"f1": np.zeros((2, 4))})
    with pytest.raises(ValueError, match="B = 2 bags per key, but dense_features has B = 3"):
        model.forward(np.zeros((3, 5)), small_bags())
    before = model.state_dict()
    broken = {k: np.zeros_like(v) for k, v in before.items() if k != "over_arch.model.0.bias"}
    with pytest.raises(ValueError, match=r"missing keys \['over_arch.model.0.bias'\]"):
        model.load_state_dict(broken)
    assert all(np.array_equal(before[k], v) for k, v in model.params.items())


def test_mutant_fm_gradient_without_its_self_term_fails_the_model_check(rng, monkeypatch):
    from refimpl.layers import fm

    def without_self_term(d_out, cache):  # s instead of s − x: forgets a scalar is no pair
        return d_out * np.broadcast_to(cache.total, cache.inputs.shape)

    model = build_deepfm_model("sum, t1 shared by f1 f3", seed=rng)
    inputs = draw_model_inputs(rng, model, 2)
    assert gradcheck(model, inputs).ok
    monkeypatch.setattr(fm, "fm_scalar_pairs_backward", without_self_term)
    result = gradcheck(model, inputs)
    assert not result.ok and result.worst.rel_error > 1e-3


def test_the_training_loop_builds_it_from_its_options():
    from refimpl.data.synthetic import SyntheticCriteo
    from refimpl.train import TrainConfig, build_model

    data = SyntheticCriteo([20, 30, 25], num_train=64, num_validation=32, num_test=32)
    config = TrainConfig(model="deepfm", embedding_dim=4, hidden_layer_size=5, deep_fm_dimension=7)
    model = build_model(config.resolved(), data)
    assert isinstance(model, SimpleDeepFMNN) and model.output == "logits"
    assert model.params["dense_arch.model.0.weight"].shape == (5, data.dense_in_features)
    assert model.params["over_arch.model.0.weight"].shape == (1, 4 + 7 + 1)
    with pytest.raises(TypeError, match="deep_fm_dimension: expected an integer"):
        TrainConfig(model="deepfm", deep_fm_dimension=2.5).resolved()
