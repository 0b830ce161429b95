"""TorchRec parity for the embedding bags and the three models (float64, every gradient).

TorchRec's ``EmbeddingBagCollection.forward`` casts every pooled bag to float32 whatever the
tables' dtype, so the TorchRec modules here run through :func:`keep_table_dtype`, a test-side
shim that does the same lookups without the cast; the models inherit it through their
collection. Skipped unless requirements-parity.txt is installed.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchrec")

from refimpl.layers import embedding  # noqa: E402
from refimpl.tools.check.cases.embedding import (  # noqa: E402
    COLLECTIONS,
    build_collection,
    draw_features,
)
from refimpl.tools.check.cases.models import MODELS, build_model, draw_model_inputs  # noqa: E402
from refimpl.tools.parity import (  # noqa: E402
    compare_sparse_with_torch,
    keep_table_dtype,
    torch_ebc_like,
    torch_keyed_jagged,
    torch_model_like,
)

pytestmark = pytest.mark.parity


@pytest.mark.parametrize("name", list(COLLECTIONS))
def test_collection_matches_torchrec(rng, name):
    ebc = build_collection(name, seed=rng)
    features = draw_features(rng, ebc, 6)
    errors = compare_sparse_with_torch(ebc, keep_table_dtype(torch_ebc_like(ebc)), (features,))
    assert set(errors) >= {"out", *ebc.params}
    assert ("features.weights" in errors) == ebc.is_weighted
    assert max(errors.values()) < 1e-10, errors


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("collection", ["mean t1, sum t2", "weighted sum"])
def test_models_match_torchrec(rng, kind, collection):
    model = build_model(kind, collection, seed=rng)
    inputs = draw_model_inputs(rng, model, 5, away_from_kinks=False)
    errors = compare_sparse_with_torch(model, torch_model_like(model), inputs)
    assert set(errors) == {"out", "dense_features", "sparse_features.weights", *model.params} - (
        set() if "weighted" in collection else {"sparse_features.weights"}
    )
    assert max(errors.values()) < 1e-10, errors


def test_torchrec_casts_pooled_bags_to_float32_which_the_shim_removes(rng):
    ebc = build_collection("sum, t1 shared by f1 f3", seed=rng)
    module = torch_ebc_like(ebc).double()
    kjt = torch_keyed_jagged(draw_features(rng, ebc, 3))
    assert module(kjt).values().dtype == torch.float32
    assert keep_table_dtype(module)(kjt).values().dtype == torch.float64


def test_a_torchrec_state_dict_loads_unchanged(rng):
    model = build_model("DLRM_DCN", "mean t1, sum t2", seed=rng)
    module = torch_model_like(model)  # float32, TorchRec's own initialisation
    model.load_state_dict(module.state_dict())  # torch tensors, keys untouched
    for key, value in module.state_dict().items():
        np.testing.assert_array_equal(model.params[key], value.numpy())
    dense, features = draw_model_inputs(rng, model, 4, away_from_kinks=False)
    theirs = module(torch.tensor(dense, dtype=torch.float32), torch_keyed_jagged(features))
    np.testing.assert_allclose(
        model(dense, features), theirs.detach().numpy(), rtol=1e-4, atol=1e-6
    )


def test_mutants_fail_parity(rng, monkeypatch):
    from refimpl.fast.embedding import table_gradient

    ebc = build_collection("mean t1, sum t2", seed=rng)
    features = draw_features(rng, ebc, 5)

    def worst(errors):
        return max(v for k, v in errors.items() if k.startswith("embedding_bags.t1"))

    module = keep_table_dtype(torch_ebc_like(ebc))
    assert worst(compare_sparse_with_torch(ebc, module, (features,))) < 1e-10
    with monkeypatch.context() as patch:  # the mean divides by n + 1, forward and backward
        patch.setattr(embedding, "mean_divisor", lambda n, dtype: np.maximum(n, 1)[:, None] + 1.0)
        errors = compare_sparse_with_torch(ebc, module, (features,))
        assert errors["out"] > 1e-3 and worst(errors) > 1e-3

    def drop_repeats(ids, sources, source_index, num_rows, scale=None):
        _, first = np.unique(ids, return_index=True)
        kept = None if scale is None else scale[first]
        return table_gradient(ids[first], sources, source_index[first], num_rows, kept)

    with monkeypatch.context() as patch:  # a repeated id counted once
        patch.setattr(embedding, "table_gradient", drop_repeats)
        errors = compare_sparse_with_torch(ebc, module, (features,))
        assert errors["out"] < 1e-10 and worst(errors) > 1e-3
