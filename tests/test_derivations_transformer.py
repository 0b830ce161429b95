"""derivations.transformer: softmax, layer norm and attention backwards are SymPy's gradients,
the key bias gets none, and the three deliberate mistakes are rejected."""

import pytest

pytest.importorskip("sympy")

from derivations import transformer

pytestmark = pytest.mark.slow


def test_softmax_vjp_is_the_symbolic_gradient():
    assert "an identity" in transformer.prove_softmax_vjp(3, rows=2)


def test_layer_norm_backward_is_the_symbolic_gradient():
    assert "random rational point" in transformer.prove_layer_norm(rows=2, width=3)


@pytest.mark.parametrize("heads", [1, 2])
def test_attention_backward_is_the_symbolic_gradient(heads):
    assert "random rational point" in transformer.prove_attention(1, 2, 2, heads)


def test_the_key_bias_gradient_is_identically_zero():
    assert "identically 0" in transformer.prove_key_bias_gradient_is_zero(seq=3, width=2)


def test_softmax_without_centering_is_rejected():
    with pytest.raises(AssertionError, match="differs from SymPy's derivative"):
        transformer.prove_softmax_vjp(3, mistake="softmax_without_centering")


@pytest.mark.parametrize("mistake", ["softmax_without_centering", "attention_without_scale"])
def test_attention_mistakes_are_rejected(mistake):
    with pytest.raises(AssertionError, match="differs from SymPy's derivative"):
        transformer.prove_attention(1, 2, 2, 1, mistake=mistake)


def test_layer_norm_mistake_is_rejected():
    with pytest.raises(AssertionError, match="differs from SymPy's derivative"):
        transformer.prove_layer_norm(2, 3, mistake="layer_norm_without_mean_term")


@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("LayerNorm", {"rows": 2, "width": 3}),
        ("MultiheadAttention", {"batch": 1, "seq": 2, "width": 2, "heads": 1}),
    ],
)
def test_refimpl_layer_matches_the_symbolic_gradient_in_float64(name, config):
    assert transformer.symbolic_witness(name, **config) < 1e-12
