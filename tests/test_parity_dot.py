"""TorchRec parity for InteractionArch (skipped unless requirements-parity.txt is installed)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dlrm = pytest.importorskip("torchrec.models.dlrm")

import refimpl  # noqa: E402
from derivations.proof import mutated  # noqa: E402
from refimpl.fast import dot as fast_dot  # noqa: E402
from refimpl.tools.parity import compare_with_torch  # noqa: E402

pytestmark = pytest.mark.parity


@pytest.mark.parametrize(
    ("batch", "features", "dim"),
    [(2, 2, 4), (1, 1, 8), (3, 1, 3), (1, 26, 16), (5, 26, 8), (4, 0, 6), (2, 7, 128)],
)
def test_forward_and_gradients_match_torchrec(rng, batch, features, dim):
    dense = rng.standard_normal((batch, dim))
    sparse = rng.standard_normal((batch, features, dim))
    module = dlrm.InteractionArch(num_sparse_features=features)
    errors = compare_with_torch(refimpl.InteractionArch(features), module, (dense, sparse))
    assert set(errors) == {"out", "dense", "sparse"}
    assert max(errors.values()) < 1e-10, errors


def test_torchrec_pair_order_is_refimpl_default(rng):
    dense, sparse = rng.standard_normal((1, 3)), rng.standard_normal((1, 3, 3))
    theirs = dlrm.InteractionArch(3)(torch.tensor(dense), torch.tensor(sparse)).numpy()
    ours_tril = refimpl.InteractionArch(3, pair_order="tril")(dense, sparse)
    np.testing.assert_allclose(refimpl.InteractionArch(3)(dense, sparse), theirs, rtol=1e-6)
    assert not np.allclose(ours_tril, theirs)


def test_a_broken_backward_fails_parity(rng):
    # The layer's fast path with its sparse gradient halved.
    dense, sparse = rng.standard_normal((2, 4)), rng.standard_normal((2, 2, 4))
    halved = ("return d_dense, d_combined[:, 1:]", "return d_dense, d_combined[:, 1:] / 2")
    with mutated(fast_dot.dot_backward, *halved):
        errors = compare_with_torch(
            refimpl.InteractionArch(2), dlrm.InteractionArch(2), (dense, sparse)
        )
    assert errors["sparse"] > 0.1 and errors["dense"] < 1e-10


def test_an_empty_batch_matches_torchrec():
    # TorchRec returns an empty (0, D + F(F+1)/2) output; so does refimpl, and the gradients.
    dense, sparse = np.zeros((0, 4)), np.zeros((0, 3, 4))
    theirs = dlrm.InteractionArch(3)(torch.tensor(dense), torch.tensor(sparse))
    out, cache = refimpl.InteractionArch(3).forward(dense, sparse)
    assert out.shape == tuple(theirs.shape) == (0, 10)
    d_dense, d_sparse, _ = refimpl.InteractionArch(3).backward(out, cache)
    assert d_dense.shape == (0, 4) and d_sparse.shape == (0, 3, 4)
