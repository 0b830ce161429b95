"""The SymPy witnesses of the embedding bag and the loss, and that they catch broken backwards."""

import numpy as np
import pytest

sp = pytest.importorskip("sympy")

from derivations import embedding as bag_proof  # noqa: E402
from derivations import loss as loss_proof  # noqa: E402
from refimpl.layers.rowsparse import RowSparse  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("pooling", "weighted"), [("sum", False), ("mean", False), ("sum", True)])
def test_bag_backward_is_the_exact_derivative(pooling, weighted):
    assert bag_proof.symbolic_witness(pooling, weighted) < 1e-12


def test_loss_backward_is_the_exact_derivative():
    assert loss_proof.symbolic_witness() < 1e-12
    loss_proof.prove(weighted=False)


def test_a_repeated_id_counted_once_fails_the_proof(monkeypatch):
    original = bag_proof.embedding_bag_backward

    def counted_once(d_pooled, cache, num_rows):
        _, d_weights = original(d_pooled, cache, num_rows)
        ids, lengths = cache.ids, cache.lengths
        bag = np.repeat(np.arange(len(lengths)), lengths)
        _, first = np.unique(ids, return_index=True)
        rows = d_pooled[bag[first]]
        if cache.pooling == "mean":
            rows = rows / np.maximum(lengths, 1)[bag[first], None]
        return RowSparse(ids[first], rows, num_rows), d_weights

    monkeypatch.setattr(bag_proof, "embedding_bag_backward", counted_once)
    with pytest.raises(AssertionError):
        bag_proof.prove.__wrapped__("sum", False)  # uncached: the broken backward runs


def test_a_mean_by_the_wrong_count_fails_the_proof(monkeypatch):
    original = bag_proof.embedding_bag_backward

    def wrong_count(d_pooled, cache, num_rows):
        return original(d_pooled * 3 / 2, cache, num_rows)  # ÷ 2 where the bag holds 3

    monkeypatch.setattr(bag_proof, "embedding_bag_backward", wrong_count)
    with pytest.raises(AssertionError):
        bag_proof.prove.__wrapped__("mean", False)
