"""FactorizationMachine (TorchRec's pairs of scalars, the papers' pairs of features), DeepFM and
FMInteractionArch: values, gradients, the check cases, bad input, and broken backwards."""

import numpy as np
import pytest

import refimpl
from refimpl.layers import fm as fm_module
from refimpl.tools.check import run_check
from refimpl.tools.check.cases import fm as fm_cases
from refimpl.tools.gradcheck import gradcheck
from refimpl.tools.loops import fm_loop


def _embeddings(rng, batch=3):
    return [rng.standard_normal((batch, 4)), rng.standard_normal((batch, 2, 4))]


@pytest.mark.parametrize(
    "check",
    [c for c in fm_cases.checks() if c.witness in ("finite-diff", "hand")],
    ids=lambda c: f"{c.layer} {c.config} {c.witness}",
)
def test_check_cases_pass(check):
    outcome = run_check(check)
    assert outcome.status == "pass", outcome.note or outcome.error


@pytest.mark.parametrize("pairs", ["scalars", "features"])
def test_fm_equals_its_definition_over_pairs(rng, pairs):
    embeddings = _embeddings(rng)
    ours = refimpl.FactorizationMachine(pairs=pairs)(embeddings)
    np.testing.assert_allclose(ours, fm_loop(embeddings, pairs), rtol=1e-12)


def test_the_two_fms_agree_for_one_dimensional_embeddings_only(rng):
    scalars = refimpl.FactorizationMachine()
    features = refimpl.FactorizationMachine(pairs="features")
    one_dim = [rng.standard_normal((4, 5, 1))]
    np.testing.assert_allclose(scalars(one_dim), features(one_dim), rtol=1e-12)
    wide = [rng.standard_normal((4, 5, 3))]
    assert np.all(np.abs(scalars(wide) - features(wide)) > 1e-6)


def test_torchrec_fm_adds_the_pairs_across_dimensions(rng):
    # TorchRec's sum over all scalar pairs = the papers' FM + the pairs (i,d), (j,e), d ≠ e
    # (i = j included): Σ_{d<e} s_d s_e over the per-dimension sums s_d = Σ_i v_id.
    v = rng.standard_normal((3, 4, 5))  # B, F, D
    s = v.sum(axis=1)  # (B, D)
    cross = (s.sum(axis=1) ** 2 - (s * s).sum(axis=1)) / 2  # Σ_{d<e} s_d s_e
    scalars = refimpl.FactorizationMachine()([v])[:, 0]
    features = refimpl.FactorizationMachine(pairs="features")([v])[:, 0]
    np.testing.assert_allclose(scalars, features + cross, rtol=1e-12)


@pytest.mark.parametrize("pairs", ["scalars", "features"])
def test_each_gradient_is_the_sum_of_the_others_it_pairs_with(rng, pairs):
    v = rng.standard_normal((2, 3, 4))
    fm = refimpl.FactorizationMachine(pairs=pairs)
    out, cache = fm.forward([v])
    (d_v,), d_params = fm.backward(np.ones_like(out), cache)
    if pairs == "scalars":
        expected = v.reshape(2, -1).sum(axis=1)[:, None, None] - v  # every other scalar
    else:
        expected = v.sum(axis=1, keepdims=True) - v  # the other features, same dimension
    np.testing.assert_allclose(d_v, expected, rtol=1e-12)
    assert d_params == {}


def test_fm_gradients_keep_each_input_shape(rng):
    embeddings = [
        rng.standard_normal((2, 3)),
        rng.standard_normal((2, 2, 3)),
        rng.standard_normal((2, 3)),
    ]
    for pairs in ("scalars", "features"):
        fm = refimpl.FactorizationMachine(pairs=pairs)
        out, cache = fm.forward(embeddings)
        grads, _ = fm.backward(np.ones_like(out), cache)
        assert [g.shape for g in grads] == [e.shape for e in embeddings]


def test_fm_keeps_float32_and_handles_an_empty_batch(rng):
    fm = refimpl.FactorizationMachine()
    x = rng.standard_normal((3, 2, 4)).astype(np.float32)
    out, cache = fm.forward([x])
    assert (
        out.dtype == np.float32 and fm.backward(np.ones_like(out), cache)[0][0].dtype == np.float32
    )
    out, cache = fm.forward([np.zeros((0, 2, 4))])
    assert out.shape == (0, 1) and fm.backward(out, cache)[0][0].shape == (0, 2, 4)


def test_fm_refuses_bad_input():
    fm = refimpl.FactorizationMachine()
    with pytest.raises(TypeError, match="embeddings: expected a list"):
        fm.forward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="at least one array"):
        fm.forward([])
    with pytest.raises(ValueError, match=r"embeddings\[1\]: batch size B = 3"):
        fm.forward([np.zeros((2, 3)), np.zeros((3, 3))])
    with pytest.raises(ValueError, match=r"embeddings\[0\].*at least 2 axes"):
        fm.forward([np.zeros(3)])
    with pytest.raises(TypeError, match=r"embeddings\[0\].*float32 or float64.*int64"):
        fm.forward([np.zeros((2, 3), dtype=np.int64)])
    with pytest.raises(ValueError, match="pairs"):
        refimpl.FactorizationMachine(pairs="dims")
    with pytest.raises(ValueError, match=r'pairs="features" needs.*one'):
        refimpl.FactorizationMachine(pairs="features").forward([np.zeros((2, 3)), np.zeros((2, 4))])
    _, cache = fm.forward([np.zeros((2, 3))])
    with pytest.raises(ValueError, match=r"d_out: expected shape \(B, 1\) = \(2, 1\)"):
        fm.backward(np.zeros((2, 2)), cache)


def test_deep_fm_flattens_as_torchrec_and_prefixes_its_module():
    linear = refimpl.Linear(6, 2, seed=0)
    deep = refimpl.DeepFM(linear)
    assert list(deep.params) == ["dense_module.weight", "dense_module.bias"]
    a, b = np.arange(2.0).reshape(1, 2), np.arange(2.0, 6.0).reshape(1, 2, 2)
    out = deep([a, b])
    np.testing.assert_allclose(out, linear(np.arange(6.0).reshape(1, 6)))
    with pytest.raises(TypeError, match="dense_module"):
        refimpl.DeepFM("linear")


def _arch(seed=0, **kwargs):
    return refimpl.FMInteractionArch(10, ["f1", "f2"], 3, seed=seed, **kwargs)


def _arch_inputs(rng, batch=4):
    dense = rng.standard_normal((batch, 4))
    return dense, {"f1": rng.standard_normal((batch, 4)), "f2": rng.standard_normal((batch, 2))}


def test_fm_interaction_arch_keys_layout_and_branches(rng):
    arch = _arch()
    assert {k: v.shape for k, v in arch.params.items()} == {
        "deep_fm.dense_module.0.weight": (3, 10),
        "deep_fm.dense_module.0.bias": (3,),
    }
    dense, sparse = _arch_inputs(rng)
    out = arch(dense, sparse)
    embeddings = [dense, sparse["f1"], sparse["f2"]]
    flat = np.concatenate(embeddings, axis=1)
    params = arch.params
    deep = np.maximum(
        flat @ params["deep_fm.dense_module.0.weight"].T + params["deep_fm.dense_module.0.bias"], 0
    )
    np.testing.assert_allclose(
        out, np.concatenate([dense, deep, fm_loop(embeddings)], axis=1), rtol=1e-12
    )
    assert arch.output_size(4) == out.shape[1] == 4 + 3 + 1


def test_fm_interaction_arch_reads_features_by_name(rng):
    arch = _arch()
    dense, sparse = _arch_inputs(rng)
    reordered = {"extra": rng.standard_normal((4, 7)), "f2": sparse["f2"], "f1": sparse["f1"]}
    np.testing.assert_array_equal(arch(dense, sparse), arch(dense, reordered))
    out, cache = arch.forward(dense, reordered)
    _, d_sparse, _ = arch.backward(np.ones_like(out), cache)
    assert list(d_sparse) == ["f1", "f2"]  # the arch's names, not the mapping's extras


def test_a_feature_listed_twice_gets_both_gradients(rng):
    twice = refimpl.FMInteractionArch(12, ["f1", "f1"], 3, seed=0)
    apart = refimpl.FMInteractionArch(12, ["f1", "g1"], 3, seed=0)
    dense, sparse = rng.standard_normal((3, 4)), {"f1": rng.standard_normal((3, 4))}
    out, cache = twice.forward(dense, sparse)
    upstream = rng.standard_normal(out.shape)
    d_dense, d_sparse, _ = twice.backward(upstream, cache)
    out2, cache2 = apart.forward(dense, {"f1": sparse["f1"], "g1": sparse["f1"]})
    d_dense2, d_sparse2, _ = apart.backward(upstream, cache2)
    np.testing.assert_array_equal(out, out2)
    np.testing.assert_allclose(d_sparse["f1"], d_sparse2["f1"] + d_sparse2["g1"], rtol=1e-12)
    np.testing.assert_allclose(d_dense, d_dense2, rtol=1e-12)


def test_fm_interaction_arch_without_sparse_features_passes_dense_through(rng):
    arch = refimpl.FMInteractionArch(4, [], 3)
    dense = rng.standard_normal((2, 4))
    out, cache = arch.forward(dense, {})
    np.testing.assert_array_equal(out, dense)
    assert out is not dense
    d_dense, d_sparse, d_params = arch.backward(np.ones_like(out), cache)
    np.testing.assert_array_equal(d_dense, np.ones_like(dense))
    assert d_sparse == {} and all(not g.any() for g in d_params.values())


def test_fm_interaction_arch_empty_batch_and_float32(rng):
    arch = _arch()
    dense, sparse = _arch_inputs(rng, batch=0)
    out, cache = arch.forward(dense, sparse)
    assert out.shape == (0, 8)
    d_dense, d_sparse, d_params = arch.backward(out, cache)
    assert d_sparse["f2"].shape == (0, 2)
    assert d_dense.shape == (0, 4) and not d_params["deep_fm.dense_module.0.weight"].any()
    arch32 = _arch(dtype=np.float32)
    dense, sparse = _arch_inputs(rng)
    out = arch32(dense.astype(np.float32), {k: v.astype(np.float32) for k, v in sparse.items()})
    assert out.dtype == np.float32


def test_fm_interaction_arch_refuses_bad_input(rng):
    arch = _arch()
    dense, sparse = _arch_inputs(rng)
    with pytest.raises(TypeError, match="sparse_features: expected a mapping"):
        arch.forward(dense, np.zeros((4, 2, 4)))
    with pytest.raises(ValueError, match=r"sparse_features: missing features \['f2'\]"):
        arch.forward(dense, {"f1": sparse["f1"]})
    with pytest.raises(ValueError, match=r"sparse_features\['f1'\]: expected shape \(B, D_f\)"):
        arch.forward(dense, {**sparse, "f1": np.zeros((3, 4))})
    with pytest.raises(ValueError, match="fm_in_features: the arch was built for N = 10"):
        arch.forward(dense, {**sparse, "f2": np.zeros((4, 3))})
    with pytest.raises(TypeError, match="dense_features: dtype float32"):
        arch.forward(dense.astype(np.float32), sparse)
    with pytest.raises(TypeError, match="sparse_feature_names"):
        refimpl.FMInteractionArch(10, "f1", 3)
    with pytest.raises(ValueError, match="deep_fm_dimension"):
        refimpl.FMInteractionArch(10, ["f1"], 0)
    _, cache = arch.forward(dense, sparse)
    with pytest.raises(ValueError, match=r"d_out: expected shape \(B, W\) = \(4, 8\)"):
        arch.backward(np.zeros((4, 7)), cache)


def test_fm_interaction_arch_loads_a_state_dict_or_changes_nothing(rng):
    arch = _arch()
    before = arch.state_dict()
    with pytest.raises(ValueError, match="missing keys"):
        arch.load_state_dict({"deep_fm.dense_module.0.weight": np.zeros((3, 10))})
    for key, value in arch.params.items():
        np.testing.assert_array_equal(value, before[key])


def _wrong_scalar_pairs_backward(d_out, cache):
    flat, total = cache
    return d_out * (total - flat) / 2  # keeps the ½ that the square's 2 cancels


def _wrong_feature_pairs_backward(d_out, cache):
    stacked, total = cache
    everything = total.sum(axis=1)[:, None, None]  # TorchRec's sum of all scalars instead
    return d_out[:, :, None] * (everything - stacked)


@pytest.mark.parametrize(
    ("name", "mutant", "pairs"),
    [
        ("fm_scalar_pairs_backward", _wrong_scalar_pairs_backward, "scalars"),
        ("fm_feature_pairs_backward", _wrong_feature_pairs_backward, "features"),
    ],
)
def test_finite_differences_catch_a_broken_fm_backward(monkeypatch, rng, name, mutant, pairs):
    arch = fm_cases.PositionalSparseFeatures(
        refimpl.FMInteractionArch(12, ["f1", "f2"], 2, fm_pairs=pairs, seed=0)
    )
    inputs = (rng.standard_normal((2, 4)), rng.standard_normal((2, 4)), rng.standard_normal((2, 4)))
    assert gradcheck(arch, inputs).ok
    monkeypatch.setattr(fm_module, name, mutant)
    assert not gradcheck(arch, inputs).ok
