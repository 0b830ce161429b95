"""The SymPy proofs of the projection interaction and its MLPs (derivations/projection.py):
every proof holds, every deliberate mistake is caught, and the float witness agrees."""

import numpy as np
import pytest

sp = pytest.importorskip("sympy")

import derivations.projection as proj  # noqa: E402
import refimpl  # noqa: E402
from derivations.proof import mutated  # noqa: E402
from refimpl.layers import mlp  # noqa: E402

pytestmark = pytest.mark.slow

SMALL = {"num_sparse_features": 1, "embedding_dim": 2}  # N = 4
# B = 1: the batch axis of each branch's backward is proven by the MLP proofs at B = 2.
ONE_LAYER = {**SMALL, "branch1_layer_sizes": (4,), "branch2_layer_sizes": (6,), "batch": 1}
TWO_LAYERS = {**SMALL, "branch1_layer_sizes": (2, 4), "branch2_layer_sizes": (2, 6), "batch": 1}

PROOFS = [
    ("Linear", {}),
    ("Linear", {"bias": False}),
    *(("MLP", {"layer_sizes": (2, 2), "activation": name}) for name in refimpl.ACTIVATIONS),
    ("MLP", {"activation": "identity", "bias": False}),
    ("DenseArch", {"layer_sizes": (2, 2)}),
    ("OverArch", {"layer_sizes": (2, 2, 1)}),
    ("InteractionProjectionArch", ONE_LAYER),
    ("InteractionProjectionArch", TWO_LAYERS),
]
IDS = [proj.spec(kind, **config).label() for kind, config in PROOFS]

# mutant -> (kind, configuration, the leaf where the proof must find it)
MUTANT_CASES = {
    "ReLU mask dropped": ("MLP", {"layer_sizes": (2, 2)}, "input"),
    "bias not summed": ("MLP", {"layer_sizes": (2, 2)}, "_mlp."),
    "dZ transposed": ("InteractionProjectionArch", ONE_LAYER, "dense"),
    "transpose for reshape": ("InteractionProjectionArch", ONE_LAYER, "dense"),
    "branch 2 dropped": ("InteractionProjectionArch", ONE_LAYER, "dense"),
    "passthrough dropped": ("InteractionProjectionArch", ONE_LAYER, "dense"),
}


@pytest.mark.parametrize(("kind", "config"), PROOFS, ids=IDS)
def test_the_backward_is_proven(kind, config):
    s = proj.spec(kind, **config)
    statement = proj.prove(kind, **config)
    assert statement.startswith(s.label())
    assert statement.endswith("(identity)" if s.smooth else "rational point)")


@pytest.mark.parametrize(("kind", "config"), PROOFS[4:], ids=IDS[4:])
def test_the_point_switches_every_relu_mask_both_ways(kind, config):
    for pattern in proj.relu_pattern(kind, **config):
        assert 1 / 3 <= pattern.mean() <= 2 / 3


def test_every_mutant_is_tested():
    assert set(MUTANT_CASES) == set(proj.MUTANTS)


@pytest.mark.parametrize("mutant", MUTANT_CASES)
def test_every_mutant_fails_its_proof(mutant):
    kind, config, where = MUTANT_CASES[mutant]
    assert proj.gap(kind, **config) is None
    found = proj.gap(kind, mutant, **config)
    assert found is not None and found.startswith(where), found


def test_a_bias_of_one_sample_is_no_mistake_at_one_sample():
    assert proj.gap("Linear", "bias not summed", batch=1) is None
    assert proj.gap("Linear", "bias not summed") == "bias[0]"


def test_the_float_witness_agrees_with_the_layers():
    for kind, config in (("OverArch", {"layer_sizes": (2, 2, 1)}), PROOFS[-2]):
        errors = proj.witness_errors(kind, **config)
        layer = proj.spec(kind, **config).layer()
        assert list(errors) == ["output", *layer.input_names, *layer.params]
        assert max(errors.values()) < 1e-10, errors


def test_the_float_witness_catches_a_broken_layer():
    dropped = ("d_z = d_x * get_activation(names[i]).derivative(activated[i])", "d_z = d_x")
    with mutated(mlp.mlp_backward, *dropped):
        errors = proj.witness_errors("InteractionProjectionArch", **ONE_LAYER)
    assert errors["output"] < 1e-12  # the forward is untouched
    assert errors["dense"] > 1e-3 and errors["sparse"] > 1e-3


def test_the_bmm_through_refimpl():
    ex = proj.bmm_example()
    F1, D, F2 = 2, 4, 3
    for i in range(F1):
        for k in range(D):
            assert ex.Y[i, k] == ex.y[i * D + k]
    for k in range(D):
        for j in range(F2):
            assert ex.Z[k, j] == ex.z[k * F2 + j]  # row-major: a reshape, not a transpose
    assert ex.I == ex.Y * ex.Z
    assert proj.prove_bmm_backward() and proj.prove_bmm_backward(1, 3, 2)


def test_transpose_in_place_of_reshape_is_a_different_function():
    assert proj.prove_transpose_differs()
    R, T = proj.reshape_vs_transpose()
    assert R.shape == T.shape == (4, 3) and R != T
    # They coincide only when one side is 1: then the reshape is a transpose.
    assert not proj.prove_transpose_differs(F2=1) and not proj.prove_transpose_differs(D=1)


def test_symbols_are_keyed_and_shaped_like_refimpl():
    for kind, config in PROOFS:
        s = proj.spec(kind, **config)
        leaves, layer = proj.leaves(s), s.layer()
        assert list(leaves) == [*layer.input_names, *layer.params]
        assert all(leaves[k].shape == v.shape for k, v in layer.params.items())
    assert str(proj.leaves(proj.spec("OverArch"))["model.1.weight"][0, 0]) == "W^{(out)}_{0,0}"


@pytest.mark.parametrize(
    ("kind", "config", "error"),
    [
        ("Nope", {}, ValueError),
        ("MLP", {"branch_layers": 2}, TypeError),
        ("Linear", {"layer_sizes": (2,)}, TypeError),
        ("MLP", {"activation": "gelu"}, ValueError),
        ("OverArch", {"layer_sizes": (4,)}, ValueError),
        ("InteractionProjectionArch", {"branch_layers": 3}, ValueError),
        ("InteractionProjectionArch", {"branch1_layer_sizes": (6,)}, ValueError),
    ],
)
def test_spec_refuses_bad_configurations(kind, config, error):
    with pytest.raises(error):
        proj.spec(kind, **config)


def test_spec_defaults_are_the_seed_sizes():
    s = proj.spec("InteractionProjectionArch")
    assert (s.batch, s.num_sparse_features, s.embedding_dim, s.in_features) == (2, 2, 4, 12)
    assert s.sizes == ((8,), (12,))
    assert np.all(s.layer().output_size(4) == 4 + 2 * 3)
