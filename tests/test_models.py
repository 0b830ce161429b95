"""DLRM, DLRM_DCN, DLRM_Projection: construction, keys, gradients, errors, loading."""

import numpy as np
import pytest

from refimpl import (
    DLRM,
    DLRM_DCN,
    BCEWithLogitsLoss,
    DLRM_Projection,
    EmbeddingBagCollection,
    EmbeddingBagConfig,
    KeyedJaggedArray,
    RowSparse,
    gradcheck,
)
from refimpl.tools.check.cases.models import MODELS, build_model, draw_model_inputs
from refimpl.tools.loops import dlrm_loop

TABLE = "sparse_arch.embedding_bag_collection.embedding_bags.t1.weight"


def small_ebc(dims=(4, 4), dtype=np.float64):
    """Two tables, t1 serving f1 and f3, t2 serving f2 (shared by the model tests)."""
    tables = [
        EmbeddingBagConfig(7, dims[0], "t1", ["f1", "f3"]),
        EmbeddingBagConfig(9, dims[1], "t2", ["f2"]),
    ]
    return EmbeddingBagCollection(tables, seed=0, dtype=dtype)


def small_bags():
    """B = 2 bags of f1, f2, f3 for :func:`small_ebc`: one id, or none."""
    return KeyedJaggedArray(["f1", "f2", "f3"], np.array([1, 2, 3]), np.array([1, 0, 1, 0, 1, 0]))


def test_keys_follow_torchrec_in_order():
    model = DLRM_DCN(small_ebc(), 5, [6, 4], [7, 1], dcn_num_layers=1, dcn_low_rank_dim=2, seed=0)
    assert list(model.params) == [
        TABLE,
        "sparse_arch.embedding_bag_collection.embedding_bags.t2.weight",
        "dense_arch.model._mlp.0._linear.weight",
        "dense_arch.model._mlp.0._linear.bias",
        "dense_arch.model._mlp.1._linear.weight",
        "dense_arch.model._mlp.1._linear.bias",
        "inter_arch.crossnet.W_kernels.0",
        "inter_arch.crossnet.V_kernels.0",
        "inter_arch.crossnet.bias.0",
        "over_arch.model.0._mlp.0._linear.weight",
        "over_arch.model.0._mlp.0._linear.bias",
        "over_arch.model.1.weight",
        "over_arch.model.1.bias",
    ]
    assert model.over_arch.in_features == 16  # (F+1)·D
    assert DLRM(small_ebc(), 5, [6, 4], [7, 1]).over_arch.in_features == 4 + 3 + 3  # D + C(F,2) + F


@pytest.mark.parametrize("kind", MODELS)
def test_gradients_finite_differences_and_loop_forward(rng, kind):
    model = build_model(kind, "mean t1, sum t2", seed=rng)
    inputs = draw_model_inputs(rng, model, 2)
    result = gradcheck(model, inputs)
    assert result.ok, result
    np.testing.assert_allclose(model(*inputs), dlrm_loop(model, *inputs), rtol=1e-12)


def test_weighted_model_returns_the_weights_gradient(rng):
    model = build_model("DLRM", "weighted sum", seed=rng)
    dense, features = draw_model_inputs(rng, model, 3)
    logits, cache = model.forward(dense, features)
    d_dense, d_weights, d_params = model.backward(np.ones_like(logits), cache)
    assert d_dense.shape == dense.shape and d_weights.shape == features.weights.shape
    assert isinstance(d_params[TABLE], RowSparse)


def test_the_loss_drives_the_model_end_to_end(rng):
    model = build_model("DLRM_Projection", "sum, t1 shared by f1 f3", seed=rng)
    dense, features = draw_model_inputs(rng, model, 4)
    labels = np.array([[1.0], [0.0], [0.0], [1.0]])
    loss_fn = BCEWithLogitsLoss()
    logits, cache = model.forward(dense, features)
    _, loss_cache = loss_fn.forward(logits, labels)
    d_logits, _, _ = loss_fn.backward(1.0, loss_cache)
    _, _, d_params = model.backward(d_logits, cache)
    weight = model.params[TABLE]
    row = int(d_params[TABLE].indices[0])
    step = 1e-6
    saved = weight[row, 0]
    losses = []
    for sign in (1, -1):
        weight[row, 0] = saved + sign * step
        losses.append(float(loss_fn(model(dense, features), labels)))
    weight[row, 0] = saved
    numeric = (losses[0] - losses[1]) / (2 * step)
    np.testing.assert_allclose(d_params[TABLE].values[0, 0], numeric, rtol=1e-6)


def test_float32_end_to_end(rng):
    model = DLRM(small_ebc(dtype=np.float32), 5, [6, 4], [7, 1], seed=0, dtype=np.float32)
    features = KeyedJaggedArray(
        ["f1", "f2", "f3"], np.array([1, 2, 3]), np.array([1, 0, 1, 0, 1, 0])
    )
    logits, cache = model.forward(np.ones((2, 5), np.float32), features)
    d_dense, _, d_params = model.backward(np.ones_like(logits), cache)
    assert logits.dtype == d_dense.dtype == np.float32
    assert all(g.dtype == np.float32 for g in d_params.values())


def test_an_empty_batch(rng):
    model = build_model("DLRM", "sum, t1 shared by f1 f3", seed=rng)
    features = KeyedJaggedArray(["f1", "f2", "f3"], np.zeros(0, int), np.zeros(0, int))
    logits, cache = model.forward(np.zeros((0, 5)), features)
    d_dense, _, d_params = model.backward(logits, cache)
    assert logits.shape == (0, 1) and d_dense.shape == (0, 5)
    assert d_params[TABLE].nnz_rows == 0 and not d_params["over_arch.model.1.weight"].any()


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: DLRM(small_ebc((4, 3)), 5, [6, 4], [7, 1]), ValueError, "same embedding_dim D"),
        (lambda: DLRM(small_ebc(), 5, [6, 5], [7, 1]), ValueError, r"last size \(5\) must equal"),
        (lambda: DLRM(small_ebc(), 5, [6, 4], [1]), ValueError, "at least two layer sizes"),
        (
            lambda: DLRM(EmbeddingBagCollection([]), 5, [4], [7, 1]),
            ValueError,
            "at least one embedding bag",
        ),
        (lambda: DLRM(small_ebc(), 5, [6, 4], [7, 1], dtype=np.float32), TypeError, "one dtype"),
        (
            lambda: DLRM_Projection(small_ebc(), 5, [6, 4], [7, 1], [8], [10]),
            ValueError,
            r"interaction_branch2_layer_sizes: the last size \(10\) is not a multiple",
        ),
        (lambda: DLRM_DCN(small_ebc(), 5, [6, 4], [7, 1], 0, 2), ValueError, "dcn_num_layers"),
    ],
)
def test_torchrec_checks_with_clear_messages(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_bad_inputs_are_refused(rng):
    model = build_model("DLRM", "sum, t1 shared by f1 f3", seed=rng)
    features = KeyedJaggedArray(
        ["f1", "f2", "f3"], np.array([1, 2, 3]), np.array([1, 0, 1, 0, 1, 0])
    )
    with pytest.raises(ValueError, match="B = 2 bags per key, but dense_features has B = 3"):
        model.forward(np.zeros((3, 5)), features)
    with pytest.raises(ValueError, match=r"dense_features: expected shape \(B, I\) = \(2, 5\)"):
        model.forward(np.zeros((2, 4)), features)
    with pytest.raises(TypeError, match="sparse_features: expected a KeyedJaggedArray"):
        model.forward(np.zeros((2, 5)), np.zeros((2, 3)))
    too_big = KeyedJaggedArray(
        ["f1", "f2", "f3"], np.array([1, 60, 3]), np.array([1, 0, 1, 0, 1, 0])
    )
    with pytest.raises(ValueError, match=r"key 'f2' has ids \[60\] outside the rows \[0, 50\)"):
        model.forward(np.zeros((2, 5)), too_big)


def test_load_state_dict_refuses_a_malformed_one_changing_nothing(rng):
    model = build_model("DLRM_Projection", "mean t1, sum t2", seed=rng)
    before = model.state_dict()
    state = {k: np.full_like(v, 0.5) for k, v in before.items()}
    broken = dict(state)
    del broken["over_arch.model.1.bias"]
    broken["inter_arch.extra"] = np.zeros(3)
    broken[TABLE] = np.zeros((6, 4))
    with pytest.raises(ValueError) as info:
        model.load_state_dict(broken)
    for part in (
        "missing keys ['over_arch.model.1.bias']",
        "unexpected keys ['inter_arch.extra']",
        f"{TABLE}: expected shape (7, 4), got (6, 4)",
    ):
        assert part in str(info.value)
    assert all(np.array_equal(before[k], v) for k, v in model.params.items())
    model.load_state_dict(state)
    assert all(np.all(v == 0.5) for v in model.params.values())


def test_mutant_repeated_id_counted_once_fails_the_model_check(rng, monkeypatch):
    from refimpl.fast.embedding import table_gradient
    from refimpl.layers import embedding

    def drop_repeats(ids, sources, source_index, num_rows, scale=None):
        _, first = np.unique(ids, return_index=True)
        kept = None if scale is None else scale[first]
        return table_gradient(ids[first], sources, source_index[first], num_rows, kept)

    model = build_model("DLRM", "sum, t1 shared by f1 f3", seed=rng)
    inputs = draw_model_inputs(rng, model, 2)
    monkeypatch.setattr(embedding, "table_gradient", drop_repeats)
    result = gradcheck(model, inputs)
    assert not result.ok and result.worst.name.startswith("sparse_arch.")


@pytest.mark.parametrize("kind", MODELS)
def test_the_model_equals_its_textbook_composition(rng, kind):
    from refimpl.models.dlrm import DLRMSpec, dlrm_backward, dlrm_forward, model_bags

    model = build_model(kind, "weighted sum", seed=rng)
    dense, features = draw_model_inputs(rng, model, 3)
    spec = DLRMSpec.of(model)
    logits, cache = dlrm_forward(model.params, dense, model_bags(model, features), spec)
    ours, model_cache = model.forward(dense, features)
    np.testing.assert_allclose(ours, logits, rtol=1e-13)
    upstream = rng.standard_normal(logits.shape)
    d_dense, d_weights, d_params = dlrm_backward(model.params, upstream, cache, spec)
    model_dense, model_weights, model_params = model.backward(upstream, model_cache)
    np.testing.assert_allclose(model_dense, d_dense, rtol=1e-12)
    names = model.sparse_arch.embedding_bag_collection.feature_names
    by_feature = np.concatenate([model_weights[features.feature_slice(f)] for f in names])
    np.testing.assert_allclose(by_feature, np.concatenate(d_weights), rtol=1e-12)
    for key, value in d_params.items():
        if isinstance(value, RowSparse):
            np.testing.assert_array_equal(model_params[key].indices, value.indices)
            value, theirs = value.values, model_params[key].values
        else:
            theirs = model_params[key]
        np.testing.assert_allclose(theirs, value, rtol=1e-11, atol=1e-15, err_msg=key)
