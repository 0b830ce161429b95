"""The symbolic derivation of the dot interaction's backward (derivations/dot_interaction.py).

Each proof must hold exactly, and the same machinery must reject a wrong formula: a check that
cannot fail proves nothing.
"""

import pytest

sp = pytest.importorskip("sympy")

import derivations.dot_interaction as dot  # noqa: E402
from refimpl.layers.dot import InteractionArch  # noqa: E402

OPTIONS = [(False, "triu"), (False, "tril"), (True, "triu"), (True, "tril")]


def test_forward_matches_the_seed():
    fwd = dot.forward()
    d, s = fwd.dense, fwd.sparse
    assert fwd.output.shape == (2, 7)
    assert [c.shape for c in fwd.combined] == [(3, 4), (3, 4)]
    # The seed's F_{b,0} = d_b·s_{b,0}, F_{b,1} = d_b·s_{b,1}, F_{b,2} = s_{b,0}·s_{b,1}.
    for b in range(2):
        seed_pairs = [
            sum(d[b, j] * s[b][0, j] for j in range(4)),
            sum(d[b, j] * s[b][1, j] for j in range(4)),
            sum(s[b][0, j] * s[b][1, j] for j in range(4)),
        ]
        assert dot.exactly_equal(fwd.pairs[b, :], sp.Matrix([seed_pairs]))
        assert dot.exactly_equal(fwd.output[b, :4], d[b, :])
        assert dot.exactly_equal(fwd.gram[b], fwd.gram[b].T)


def test_seed_output_derivatives():
    assert dot.prove_seed_output_derivatives()


def test_seed_element_formula_a():
    assert dot.prove_seed_element_formula().startswith("(a)")


def test_seed_sparse_blocks_b():
    assert dot.prove_seed_sparse_blocks().startswith("(b)")


@pytest.mark.parametrize(("self_interaction", "pair_order"), OPTIONS)
def test_closed_form_c(self_interaction, pair_order):
    assert dot.prove_closed_form(self_interaction, pair_order).startswith("(c)")
    assert dot.prove_completed_formula(self_interaction, pair_order).startswith("(e)")


@pytest.mark.parametrize(("self_interaction", "pair_order"), OPTIONS)
def test_closed_form_at_three_features(self_interaction, pair_order):
    # At F = 2 the triu and tril orders list the same pairs (transposed, and C Cᵀ is
    # symmetric); at F = 3 they differ, so the order really is exercised here.
    sizes = {"batch": 1, "num_features": 3, "dim": 2}
    assert dot.prove_closed_form(self_interaction, pair_order, **sizes)
    assert dot.prove_completed_formula(self_interaction, pair_order, **sizes)


def test_seed_dense_line_is_doubled_d():
    statements = dot.prove_seed_dense_line()
    assert len(statements) == 4
    truth = dot.symbolic_gradients().dense
    assert not dot.exactly_equal(dot.seed_dense_matrix_line(), truth)
    assert dot.exactly_equal(dot.seed_dense_matrix_line() - dot.seed_dense_bmm_term(), truth)


def test_completed_sparse_formula_at_seed_size():
    fwd = dot.forward()
    g, d, s = fwd.upstream, fwd.dense, fwd.sparse
    for b, form in enumerate(dot.block_forms(fwd)):
        assert form.corner == 0
        assert form.column == sp.Matrix([[g[b, 4]], [g[b, 5]]])
        assert form.block == sp.Matrix([[0, g[b, 6]], [g[b, 6], 0]])
        # dS_b = [g4; g5] d_b + [[0, g6], [g6, 0]] S_b, the seed's A/B (C/D) rows stacked.
        expected = form.column * d[b, :] + form.block * s[b]
        assert dot.exactly_equal(expected, dot.symbolic_gradients().sparse[b])


def test_self_interaction_doubles_the_diagonal():
    fwd = dot.forward(self_interaction=True)
    for form, g_mat in zip(dot.block_forms(fwd), dot.pair_gradient_matrices(fwd), strict=True):
        assert form.corner == 2 * g_mat[0, 0] != 0
        for i in range(2):
            assert form.block[i, i] == 2 * g_mat[i + 1, i + 1] != 0


def test_prove_all():
    proven = dot.prove_all()
    assert len(proven) == 1 + 1 + 1 + 4 + 2 * len(OPTIONS)


@pytest.mark.parametrize(("self_interaction", "pair_order"), OPTIONS)
@pytest.mark.parametrize("seed", [0, 1])
def test_symbolic_witness(self_interaction, pair_order, seed):
    assert dot.symbolic_witness(self_interaction, pair_order, seed=seed) < 1e-12


def test_symbolic_witness_three_features():
    for self_interaction, pair_order in OPTIONS:
        error = dot.symbolic_witness(self_interaction, pair_order, batch=2, num_features=3, dim=3)
        assert error < 1e-12


# ---- the machinery must reject wrong formulas ------------------------------------------------


@pytest.mark.parametrize(("self_interaction", "pair_order"), OPTIONS)
def test_missing_transpose_is_rejected(self_interaction, pair_order):
    wrong = dot.closed_form_gradients(self_interaction, pair_order, rule=lambda g: g)  # G C
    truth = dot.symbolic_gradients(self_interaction, pair_order)
    assert not dot.exactly_equal(wrong, truth)
    with pytest.raises(AssertionError, match="not proven"):
        dot.prove_equal(wrong, truth, "G C")


def test_transpose_only_is_rejected():
    wrong = dot.closed_form_gradients(rule=lambda g: g.T)  # Gᵀ C
    assert not dot.exactly_equal(wrong, dot.symbolic_gradients())


def test_doubled_diagonal_missing_is_rejected():
    # (G + Gᵀ − diag(G)) C would be right off the diagonal but halve the self terms.
    def rule(g):
        return g + g.T - sp.diag(*[g[i, i] for i in range(g.shape[0])])

    wrong = dot.closed_form_gradients(True, "triu", rule=rule)
    assert not dot.exactly_equal(wrong, dot.symbolic_gradients(True, "triu"))
    assert dot.exactly_equal(  # and at self_interaction=False the diagonal is empty: same
        dot.closed_form_gradients(rule=rule), dot.symbolic_gradients()
    )


def test_seeds_doubled_dense_line_is_rejected():
    with pytest.raises(AssertionError, match="not proven"):
        dot.prove_equal(dot.seed_dense_matrix_line(), dot.symbolic_gradients().dense, "seed")


def test_swapped_seed_block_is_rejected():
    # An index typo of the kind a hand derivation makes: A with s_{0,0} in place of s_{0,1}.
    factors = dot.seed_sparse_block_factors()
    wrong_a = factors["A"][0] * factors["B"][1]
    blocks = dot.seed_sparse_blocks()
    wrong = (sp.Matrix.vstack(wrong_a, blocks["B"]), dot.seed_sparse_gradient()[1])
    assert not dot.exactly_equal(wrong, dot.symbolic_gradients().sparse)


def test_wrong_pair_order_is_rejected_at_three_features():
    # Scattering tril-ordered gradients at the triu positions (ignoring pair_order).
    sizes = {"batch": 1, "num_features": 3, "dim": 2}
    fwd = dot.forward(False, "tril", **sizes)
    triu = dot.forward(False, "triu", **sizes)
    g_mat = sp.zeros(4, 4)
    for k, (i, j) in enumerate(zip(triu.rows, triu.cols, strict=True)):
        g_mat[i, j] = fwd.upstream[0, 2 + k]
    d_combined = (g_mat + g_mat.T) * fwd.combined[0]
    d_sparse = d_combined[1:, :]
    assert not dot.exactly_equal(d_sparse, dot.symbolic_gradients(False, "tril", **sizes).sparse[0])


def test_proof_error_names_the_statement():
    x = sp.Symbol("x")
    with pytest.raises(AssertionError, match="my claim; entry 0 differs by 1"):
        dot.prove_equal(sp.Matrix([[x + 1]]), sp.Matrix([[x]]), "my claim")
    with pytest.raises(ValueError, match="shapes differ"):
        dot.exactly_equal(sp.Matrix([[x]]), sp.Matrix([[x, x]]))


def test_witness_catches_a_broken_backward(monkeypatch):
    original = InteractionArch.backward

    def dropped_passthrough(self, d_out, cache):
        d_dense, d_sparse, d_params = original(self, d_out, cache)
        return d_dense - d_out[:, : d_dense.shape[1]], d_sparse, d_params

    monkeypatch.setattr(InteractionArch, "backward", dropped_passthrough)
    assert dot.symbolic_witness() > 1e-3


def test_witness_catches_a_broken_closed_form(monkeypatch):
    right = dot.closed_form_gradients

    def missing_transpose(*args, **kwargs):
        return right(*args, rule=lambda g: g, **kwargs)  # G C

    monkeypatch.setattr(dot, "closed_form_gradients", missing_transpose)
    with pytest.raises(AssertionError, match="not proven"):
        dot.symbolic_witness()


def test_latex_layout():
    text = dot.latex_seed_layout(dot.forward().sparse)
    assert text.count("[") == 4
    assert "s_{1,1,3}" in text


@pytest.mark.parametrize("self_interaction", [False, True])
def test_no_sparse_features(self_interaction):
    # F = 0: TorchRec returns dense unchanged, so dL/dD = G and there is nothing else.
    fwd = dot.forward(self_interaction, num_features=0)
    assert fwd.output == fwd.dense
    assert dot.prove_closed_form(self_interaction, num_features=0)
    assert dot.symbolic_gradients(self_interaction, num_features=0).dense == fwd.upstream
    assert dot.symbolic_witness(self_interaction, num_features=0) == 0.0
