"""derivations.fm: the O(N) forms are the sums over pairs, each backward is SymPy's gradient,
the two FMs differ by the cross-dimension products, and deliberate mistakes are rejected."""

import pytest

pytest.importorskip("sympy")

from derivations import fm

pytestmark = pytest.mark.slow


def test_forwards_are_the_sums_over_pairs():
    assert "equal the sums over pairs" in fm.prove_pair_sums(batch=2, features=3, dim=2)


@pytest.mark.parametrize("pairs", ["scalars", "features"])
def test_backward_is_the_symbolic_gradient(pairs):
    assert "an identity" in fm.prove_backward(pairs, batch=2, features=3, dim=2)


def test_torchrec_adds_the_products_across_dimensions():
    assert "Σ_(d<e) s_d s_e" in fm.prove_difference(batch=2, features=3, dim=3)


@pytest.mark.parametrize(
    ("pairs", "mistake"),
    [
        ("scalars", "keeps_the_half"),
        ("features", "keeps_the_half"),
        ("features", "torchrec_gradient_for_the_papers_form"),
    ],
)
def test_mistakes_are_rejected(pairs, mistake):
    with pytest.raises(AssertionError, match="differs from SymPy's derivative"):
        fm.prove_backward(pairs, batch=1, features=2, dim=2, mistake=mistake)


@pytest.mark.parametrize("pairs", ["scalars", "features"])
def test_fm_interaction_arch_backward_is_the_symbolic_gradient(pairs):
    assert "random rational point" in fm.prove_fm_interaction(pairs, batch=2, features=2, dim=2)


def test_fm_interaction_arch_mistake_is_rejected(monkeypatch):
    from refimpl.layers import fm as layers_fm

    monkeypatch.setattr(
        layers_fm, "fm_scalar_pairs_backward", lambda d, c: d * c.total + 0 * c.inputs
    )
    with pytest.raises(AssertionError, match="differs from SymPy's derivative"):
        fm.prove_fm_interaction("scalars", batch=1, features=1, dim=2, deep=1)


@pytest.mark.parametrize(
    "name", ["FactorizationMachine scalars", "FactorizationMachine features", "FMInteractionArch"]
)
def test_refimpl_layer_matches_the_symbolic_gradient_in_float64(name):
    features = 2 if name == "FMInteractionArch" else 3
    assert fm.symbolic_witness(name, batch=2, features=features, dim=2) < 1e-12
