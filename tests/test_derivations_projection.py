"""The symbolic derivation of the projection interaction and its MLPs (derivations/projection.py).

Every proof must hold exactly, and the same machinery must reject a wrong closed form: a
transposition error in dZ, a transpose in place of TorchRec's reshape, a dropped ReLU mask.
"""

import numpy as np
import pytest

sp = pytest.importorskip("sympy")

import derivations.projection as proj  # noqa: E402
import refimpl  # noqa: E402
from refimpl.layers.activations import ACTIVATIONS, Activation  # noqa: E402
from refimpl.tools.gradcheck import rel_error  # noqa: E402

CONFIGS = [
    ("Linear", {}),
    ("Linear", {"bias": False}),
    ("Linear", {"batch": 3, "in_features": 2, "out_features": 4}),
    ("MLP", {}),
    ("MLP", {"activation": "tanh"}),
    ("MLP", {"activation": "identity", "bias": False}),
    ("DenseArch", {}),
    ("OverArch", {}),
    ("OverArch", {"layer_sizes": (3, 2, 1)}),
    ("InteractionProjectionArch", {"branch_layers": 1}),
    ("InteractionProjectionArch", {"branch_layers": 2}),
]
IDS = [f"{kind}-{'-'.join(f'{k}={v}' for k, v in config.items())}" for kind, config in CONFIGS]
BRANCH2 = (
    "interaction_branch2.model._mlp.0._linear.weight",
    "interaction_branch2.model._mlp.0._linear.bias",
)


# ----------------------------------------------------------------------------------- ReLU


def test_relu_derivative_is_zero_at_the_kink_as_pytorch():
    facts = proj.relu_convention()
    z = sp.Symbol("z")
    assert facts["ReLU'(z)"] == proj.Step(z)
    assert facts["ReLU'(0)"] == 0
    assert facts["Heaviside(0, 0)"] == 0 == sp.Heaviside(0, 0)
    assert facts["Piecewise'(0)"] == 0
    # The two other conventions one meets: SymPy's Max and a central difference give 1/2.
    assert facts["Max'(0)"] == sp.Rational(1, 2)
    assert facts["central difference at 0"] == sp.Rational(1, 2)


def test_step_is_heaviside_with_value_zero_at_zero():
    z = sp.Symbol("z")
    for value in (-2, sp.Rational(-1, 3), 0, sp.Rational(1, 7), 5):
        assert proj.Step(value) == sp.Heaviside(value, 0)
        assert proj.Step(value) == proj.Step(z).rewrite(sp.Piecewise).subs(z, value)
    assert proj.Step(z).rewrite(sp.Heaviside) == sp.Heaviside(z, 0)
    # ReLU's own derivative and the derivative of its Piecewise form are the same function.
    piecewise = sp.diff(proj.ReLU(z).rewrite(sp.Piecewise), z)
    assert piecewise == proj.ReLU(z).diff(z).rewrite(sp.Piecewise)


def test_relu_values():
    assert [proj.ReLU(v) for v in (-1, 0, sp.Rational(3, 2))] == [0, 0, sp.Rational(3, 2)]


# ------------------------------------------------------------------------- the bmm, reshapes


def test_bmm_example_reshapes_are_row_major():
    ex = proj.bmm_example()
    F1, D, F2 = 2, 4, 3
    for i in range(F1):
        for k in range(D):
            assert ex.Y[i, k] == ex.y[i * D + k]
    for k in range(D):
        for j in range(F2):
            assert ex.Z[k, j] == ex.z[k * F2 + j]
    assert ex.I == ex.Y * ex.Z


@pytest.mark.parametrize(("F1", "D", "F2"), [(2, 4, 3), (1, 3, 2), (3, 2, 5)])
def test_bmm_backward_and_undone_reshapes(F1, D, F2):
    assert proj.prove_bmm_backward(F1, D, F2)


def test_bmm_backward_rejects_a_transposed_dZ():
    ex = proj.bmm_example()
    wrong = (ex.dI.T * ex.Y).reshape(1, 12)  # dZᵀ, (F2, D), flattened as if it were dZ
    assert any(sp.expand(e) != 0 for e in ex.dz - wrong)
    right = ex.dZ.reshape(1, 12)
    assert all(sp.expand(e) == 0 for e in ex.dz - right)


def test_transpose_in_place_of_reshape_is_a_different_function():
    assert proj.prove_transpose_differs()
    R, T = proj.reshape_vs_transpose()
    assert R.shape == T.shape == (4, 3)
    assert R != T
    # They coincide only when one side is 1: then the reshape is a transpose.
    assert not proj.prove_transpose_differs(F2=1)
    assert not proj.prove_transpose_differs(D=1)


@pytest.mark.parametrize("activation", ["generic", "relu", "tanh", "identity"])
def test_one_layer_backward(activation):
    assert proj.prove_linear_backward(activation)


# ------------------------------------------------------------------------- whole layers


@pytest.mark.parametrize(("kind", "config"), CONFIGS, ids=IDS)
def test_every_closed_form_equals_the_symbolic_gradient(kind, config):
    proof = proj.prove(kind, **config)
    d = proj.derive(kind, **config)
    assert set(proof) == set(d.forward.tape.symbols)  # every input and every parameter
    assert all(proof.values()), [k for k, ok in proof.items() if not ok]


def test_projection_gradient_is_not_trivial():
    d = proj.derive("InteractionProjectionArch")
    assert d.forward.out.shape == (2, 4 + 2 * 3)
    for key, grad in d.gradient.items():
        assert all(isinstance(p, proj.Poly) for p in grad.ravel())
        assert any(p for p in grad.ravel()), key
    # d_dense includes the passthrough: G[b, j] appears on its own, with coefficient 1.
    (g00,) = d.ring.map[d.G[0, 0]]
    assert d.gradient["dense"][0, 0][g00] == 1
    assert sp.Symbol("g_0_0") in d.ring.as_expr(d.gradient["dense"][0, 0]).args


def test_sparse_polynomials_agree_with_sympy_expand():
    symbols = sp.symbols("a0:5")
    rng = np.random.default_rng(3)

    def random_expr():
        terms = []
        for _ in range(4):
            factors = [symbols[i] for i in rng.integers(0, 5, size=rng.integers(0, 3))]
            terms.append(int(rng.integers(-3, 4)) * sp.Mul(*factors))
        return sp.Add(*terms)

    gens = {s: proj.Poly.generator(i) for i, s in enumerate(symbols)}

    def to_poly(expr):
        poly = proj.Poly()
        for term in sp.Add.make_args(sp.expand(expr)):
            coeff, factors = term.as_coeff_mul()
            product = proj.Poly.constant(int(coeff))
            for f in factors:
                base, exp = f.as_base_exp()
                product = product * gens[base] ** int(exp)
            poly = poly + product
        return poly

    for _ in range(20):
        a, b = random_expr(), random_expr()
        pa, pb = to_poly(a), to_poly(b)
        assert pa * pb == to_poly(a * b)
        assert pa + pb == to_poly(a + b) and pa - pb == to_poly(a - b)
        assert 2 - pa**2 == to_poly(2 - a**2)
        assert (pa * pb == to_poly(a * b + 1)) is False
    assert proj.Poly.generator(0) - proj.Poly.generator(0) == proj.Poly()


@pytest.mark.parametrize("branch_layers", [1, 2])
def test_transposition_error_in_dZ_is_detected(branch_layers):
    proof = proj.prove("InteractionProjectionArch", "dZ_transposed", branch_layers=branch_layers)
    assert not proof["dense"] and not proof["sparse"]
    assert not any(proof[k] for k in proof if k.startswith("interaction_branch2"))
    assert all(proof[k] for k in proof if k.startswith("interaction_branch1"))


@pytest.mark.parametrize("branch_layers", [1, 2])
def test_transpose_for_reshape_is_detected(branch_layers):
    proof = proj.prove(
        "InteractionProjectionArch", "transpose_for_reshape", branch_layers=branch_layers
    )
    assert not proof["dense"] and not proof["sparse"]
    assert not any(proof[BRANCH2[0].replace("_mlp.0", f"_mlp.{i}")] for i in range(branch_layers))


@pytest.mark.parametrize(
    ("kind", "config"),
    [
        ("MLP", {}),
        ("OverArch", {}),
        ("InteractionProjectionArch", {"branch_layers": 1}),
        ("InteractionProjectionArch", {"branch_layers": 2}),
    ],
)
def test_missing_relu_mask_is_detected(kind, config):
    proof = proj.prove(kind, "no_relu_mask", **config)
    inputs = proj.derive(kind, **config).forward.inputs
    assert not any(proof[name] for name in inputs)
    assert not all(proof.values())


def test_missing_mask_is_no_mistake_without_relu():
    # Dropping a ReLU mask only matters where there is a ReLU: tanh's slope is kept.
    assert all(proj.prove("MLP", "no_relu_mask", activation="tanh").values())


def test_unknown_mistake_is_refused():
    with pytest.raises(ValueError, match="mistake"):
        proj.prove("MLP", "forgot_the_bias")


# ----------------------------------------------------------------------- the witness


@pytest.mark.parametrize(("kind", "config"), CONFIGS, ids=IDS)
def test_witness_agrees_with_refimpl(kind, config):
    assert proj.symbolic_witness(kind, **config) < 1e-12


def test_witness_signature_used_by_refimpl_cases():
    assert proj.symbolic_witness("InteractionProjectionArch", branch_layers=1) < 1e-12
    assert proj.symbolic_witness("MLP", activation="relu") < 1e-12
    assert proj.symbolic_witness("MLP", seed=3, activation="tanh", layer_sizes=[3, 2]) < 1e-12


def test_witness_reports_every_array():
    errors = proj.witness_errors("InteractionProjectionArch", branch_layers=2)
    d = proj.derive("InteractionProjectionArch", branch_layers=2)
    assert list(errors) == ["out", *d.forward.tape.symbols]
    assert max(errors.values()) < 1e-12


def test_witness_draws_use_both_sides_of_every_relu():
    d = proj.derive("InteractionProjectionArch", branch_layers=2)
    values = proj.draw_values(d, np.random.default_rng(0))
    for z in proj.pre_activations(d, values):
        assert (z > 0).any() and (z < 0).any() and np.min(np.abs(z)) >= 1e-3


def test_witness_catches_a_wrong_refimpl_backward(monkeypatch):
    # A ReLU whose derivative forgets the mask: every refimpl layer built now uses it.
    relu = ACTIVATIONS["relu"]
    broken = Activation("relu", relu.forward, lambda z, a: np.ones_like(a), kinked=True)
    monkeypatch.setitem(ACTIVATIONS, "relu", broken)
    errors = proj.witness_errors("InteractionProjectionArch", branch_layers=1)
    assert errors["out"] < 1e-12  # the forward is untouched
    assert errors["dense"] > 1e-3 and errors["sparse"] > 1e-3


def test_lambdified_gradient_matches_central_differences():
    # The witness's reference, checked on its own against the lambdified forward.
    d = proj.derive("MLP", activation="tanh")
    rng = np.random.default_rng(1)
    values = proj.draw_values(d, rng)
    upstream = rng.standard_normal(d.forward.out.shape)
    _, grad = proj.evaluate(d, values, upstream)
    h = 1e-6
    for key, array in values.items():
        numeric = np.zeros_like(array)
        for idx in np.ndindex(*array.shape):
            up, down = dict(values), dict(values)
            up[key], down[key] = array.copy(), array.copy()
            up[key][idx] += h
            down[key][idx] -= h
            loss_up = np.sum(upstream * proj.evaluate(d, up, upstream)[0])
            loss_down = np.sum(upstream * proj.evaluate(d, down, upstream)[0])
            numeric[idx] = (loss_up - loss_down) / (2 * h)
        assert rel_error(grad[key], numeric) < 1e-7, key


def test_symbolic_and_refimpl_agree_exactly_at_a_kink():
    # z = x Wᵀ + b is exactly 0 for x = 0, b = 0: both take ReLU'(0) = 0, so no gradient
    # reaches the first layer's weights or the input, and the two agree there.
    d = proj.derive("MLP")
    rng = np.random.default_rng(2)
    values = {key: rng.standard_normal(a.shape) for key, a in d.forward.tape.symbols.items()}
    values["input"] = np.zeros_like(values["input"])
    values["_mlp.0._linear.bias"] = np.zeros_like(values["_mlp.0._linear.bias"])
    upstream = rng.standard_normal(d.forward.out.shape)
    assert all(np.all(z == 0) for z in proj.pre_activations(d, values)[:1])
    _, grad = proj.evaluate(d, values, upstream)
    assert np.all(grad["_mlp.0._linear.bias"] == 0) and np.all(grad["input"] == 0)
    errors = proj.compare_with_refimpl(d, values, upstream)
    assert max(errors.values()) < 1e-12


# ----------------------------------------------------------------------------- Linear


@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradient_is_the_textbook_one(bias):
    # dW = Gᵀ x, db = Σ_b G, dx = G W, entry by entry in plain SymPy, against the derivation.
    B, I, O = 2, 3, 2
    d = proj.derive("Linear", bias=bias)
    x, W = d.forward.tape.symbols["input"], d.forward.tape.symbols["weight"]
    G = d.G
    expected = {
        "input": [[sum(G[b, o] * W[o, i] for o in range(O)) for i in range(I)] for b in range(B)],
        "weight": [[sum(G[b, o] * x[b, i] for b in range(B)) for i in range(I)] for o in range(O)],
    }
    if bias:
        expected["bias"] = [sum(G[b, o] for b in range(B)) for o in range(O)]
    assert list(d.gradient) == list(expected)
    for key, value in expected.items():
        got = np.vectorize(d.ring.as_expr, otypes=[object])(d.gradient[key])
        assert all(sp.expand(a - b) == 0 for a, b in zip(got.ravel(), np.ravel(value), strict=True))
    # The forward is x Wᵀ (+ b) with no activation: nothing is named, no ReLU or tanh atom.
    assert not d.forward.tape.named


def test_linear_bias_not_summed_is_detected():
    assert "bias_not_summed" in proj.LINEAR_MISTAKES
    proof = proj.prove("Linear", "bias_not_summed")
    assert proof == {"input": True, "weight": True, "bias": False}
    # Without a bias there is nothing to get wrong; an MLP's every bias is caught.
    assert all(proj.prove("Linear", "bias_not_summed", bias=False).values())
    mlp = proj.prove("MLP", "bias_not_summed")
    assert [k for k, ok in mlp.items() if not ok] == ["_mlp.0._linear.bias", "_mlp.1._linear.bias"]


@pytest.mark.parametrize("bias", [True, False])
def test_linear_witness_reports_every_array(bias):
    errors = proj.witness_errors("Linear", bias=bias)
    assert list(errors) == ["out", "input", "weight", *(["bias"] if bias else [])]
    assert max(errors.values()) < 1e-12
    assert proj.symbolic_witness("Linear", bias=bias) == max(errors.values())


def test_linear_witness_catches_a_wrong_refimpl_backward(monkeypatch):
    # refimpl's Linear with the bias gradient of the first sample only.
    right = refimpl.Linear.backward

    def first_row_bias(self, d_out, cache):
        d_input, d_params = right(self, d_out, cache)
        return d_input, {**d_params, "bias": d_out[0].copy()}

    monkeypatch.setattr(refimpl.Linear, "backward", first_row_bias)
    errors = proj.witness_errors("Linear")
    assert errors["bias"] > 1e-3
    assert max(errors["out"], errors["input"], errors["weight"]) < 1e-12


# ----------------------------------------------------------------------- configuration


def test_spec_defaults_are_the_seed_sizes():
    s = proj.spec("InteractionProjectionArch")
    assert (s.batch, s.num_sparse_features, s.embedding_dim, s.in_features) == (2, 2, 4, 12)
    assert s.sizes == ((8,), (12,))


@pytest.mark.parametrize(
    ("kind", "config", "error"),
    [
        ("Nope", {}, ValueError),
        ("MLP", {"branch_layers": 2}, TypeError),
        ("Linear", {"layer_sizes": (2,)}, TypeError),
        ("MLP", {"activation": "sigmoid"}, ValueError),
        ("OverArch", {"layer_sizes": (4,)}, ValueError),
        ("InteractionProjectionArch", {"branch_layers": 3}, ValueError),
        ("InteractionProjectionArch", {"branch1_layer_sizes": (6,)}, ValueError),
    ],
)
def test_spec_refuses_bad_configurations(kind, config, error):
    with pytest.raises(error):
        proj.spec(kind, **config)
