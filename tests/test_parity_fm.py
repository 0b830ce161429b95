"""TorchRec parity for FactorizationMachine, DeepFM and FMInteractionArch, and the finding that
TorchRec's FactorizationMachine is not the papers' (skipped unless requirements-parity.txt is
installed)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
deepfm_modules = pytest.importorskip("torchrec.modules.deepfm")

import refimpl  # noqa: E402
from refimpl.fast import fm as fast_fm  # noqa: E402
from refimpl.tools.check import run_check  # noqa: E402
from refimpl.tools.check.cases import fm as cases  # noqa: E402
from refimpl.tools.parity import compare_with_torch  # noqa: E402

pytestmark = pytest.mark.parity

PARITY_CHECKS = [c for c in cases.checks() if c.witness == "parity"]


@pytest.mark.parametrize("check", PARITY_CHECKS, ids=lambda c: f"{c.layer} {c.config}")
def test_matches_torchrec(check):
    outcome = run_check(check)
    assert outcome.status == "pass", outcome.note or outcome.error


def test_torchrec_fm_sums_every_pair_of_scalars_not_of_features():
    # The example of the finding: B=2, F=3, D=4 drawn by torch.manual_seed(0), float64 from
    # then on. TorchRec gives -3.83 for the first sample, the papers' FM -2.31.
    torch.manual_seed(0)
    v = torch.randn(2, 3, 4).double()
    theirs = deepfm_modules.FactorizationMachine()([v]).numpy()
    scalars = refimpl.FactorizationMachine()([v.numpy()])
    features = refimpl.FactorizationMachine(pairs="features")([v.numpy()])
    np.testing.assert_allclose(theirs, scalars, rtol=1e-12)
    assert round(float(theirs[0, 0]), 2) == -3.83
    assert round(float(features[0, 0]), 2) == -2.31
    assert np.all(np.abs(theirs - features) > 0.5)


def test_torchrec_fm_equals_the_papers_only_for_one_dimensional_embeddings(rng):
    v = rng.standard_normal((3, 5, 1))
    theirs = deepfm_modules.FactorizationMachine()([torch.tensor(v)]).numpy()
    np.testing.assert_allclose(theirs, refimpl.FactorizationMachine(pairs="features")([v]))


def test_a_broken_fm_backward_fails_parity(monkeypatch, rng):
    layer = cases.PositionalEmbeddings(refimpl.FactorizationMachine(), 2)
    inputs = (rng.standard_normal((3, 4)), rng.standard_normal((3, 2, 4)))
    assert max(compare_with_torch(layer, cases.torch_module_like(layer), inputs).values()) < 1e-10

    def keeps_the_half(d_out, flat, total):
        return d_out * (total - flat) / 2

    monkeypatch.setattr(fast_fm, "fm_scalar_pairs_backward_fast", keeps_the_half)
    errors = compare_with_torch(layer, cases.torch_module_like(layer), inputs)
    assert errors["embeddings[0]"] > 0.1 and errors["out"] < 1e-10
