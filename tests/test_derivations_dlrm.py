"""The SymPy witness of the whole tiny DLRM, DLRM_DCN, DLRM_Projection and DLRM_Baseline, and
that it catches a broken backward."""

import numpy as np
import pytest

sp = pytest.importorskip("sympy")

from derivations import dlrm as model_proof  # noqa: E402
from refimpl.layers.rowsparse import RowSparse  # noqa: E402
from refimpl.models import dlrm as models  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("kind", model_proof.KINDS)
def test_the_model_backward_is_the_exact_derivative(kind):
    assert model_proof.symbolic_witness(kind) < 1e-12
    _, _, _, d_params = model_proof.prove(kind)
    t2 = d_params["sparse_arch.embedding_bag_collection.embedding_bags.t2.weight"]
    assert t2[0].tolist() == t2[3].tolist() == [0, 0]  # rows no id names: exactly zero


def test_a_repeated_id_counted_once_fails_the_model_proof(monkeypatch):
    original = models.embedding_bag_backward

    def counted_once(d_pooled, cache, num_rows):
        d_table, d_weights = original(d_pooled, cache, num_rows)
        repeats = np.bincount(cache.ids, minlength=num_rows)[d_table.indices]
        values = d_table.values / repeats[:, None]  # as if each id were there once
        return RowSparse(d_table.indices, values, num_rows), d_weights

    monkeypatch.setattr(models, "embedding_bag_backward", counted_once)
    with pytest.raises(AssertionError, match=r"embedding_bags\.t1\.weight"):
        model_proof.proof.__wrapped__("DLRM")  # uncached: the broken backward runs
