"""The symbolic derivation of the dot interaction's backward (derivations/dot_interaction.py).

Each proof must hold exactly, and the same machinery must reject a wrong formula: a check that
cannot fail proves nothing.
"""

import pytest

sp = pytest.importorskip("sympy")

import numpy as np  # noqa: E402

import derivations.dot_interaction as dot  # noqa: E402
from derivations.proof import Proof, mutated  # noqa: E402
from refimpl.fast import dot as fast_dot  # noqa: E402
from refimpl.layers import dot as textbook  # noqa: E402
from refimpl.layers.dot import pair_indices  # noqa: E402

pytestmark = pytest.mark.slow

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


def test_refimpls_backward_on_the_seeds_symbols_is_the_derivative():
    assert dot.exactly_equal(dot.refimpl_gradients(), dot.symbolic_gradients())


@pytest.mark.parametrize("mutant", dot.MUTANTS)
@pytest.mark.parametrize(("self_interaction", "pair_order"), OPTIONS)
def test_every_mutant_fails_the_proof(mutant, self_interaction, pair_order):
    assert dot.gap(mutant, self_interaction, pair_order) is not None
    with pytest.raises(AssertionError, match="not proven"), mutated(*dot.MUTANTS[mutant]):
        dot.prove_closed_form(self_interaction, pair_order)


def test_transpose_only_is_rejected():
    # Gᵀ C in place of (G + Gᵀ) C
    with mutated(
        textbook.dot_interaction_backward,
        "(d_gram + d_gram.transpose(0, 2, 1)) @ combined",
        "d_gram.transpose(0, 2, 1) @ combined",
    ):
        assert dot.gap() is not None


def test_the_diagonal_counted_once_is_rejected():
    # (G + Gᵀ − diag(G)) C: right off the diagonal, half the self terms.
    once = (
        "(d_gram + d_gram.transpose(0, 2, 1)) @ combined",
        "(d_gram + d_gram.transpose(0, 2, 1) - d_gram * np.eye(num_vectors, dtype=int)) @ combined",
    )
    with mutated(textbook.dot_interaction_backward, *once):
        assert dot.gap(None, True, "triu") is not None
        assert dot.gap(None, False, "triu") is None  # no diagonal kept: nothing to get wrong


def test_a_wrong_pair_order_is_rejected_at_three_features():
    # tril-ordered pairs out of the forward, their gradients scattered at the triu positions:
    # refimpl's own backward, called with the other order's indices.
    sizes = {"batch": 1, "num_features": 3, "dim": 2}
    fwd = dot.forward(False, "tril", **sizes)
    dense = np.array(fwd.dense.tolist(), dtype=object)
    sparse = np.array([m.tolist() for m in fwd.sparse], dtype=object)
    tril, triu = pair_indices(3, pair_order="tril"), pair_indices(3)

    def forward(values):
        return textbook.dot_interaction(values["dense"], values["sparse"], *tril)

    def wrong(values, d_out, combined):
        d_dense, d_sparse = textbook.dot_interaction_backward(d_out, combined, *triu)
        return {"dense": d_dense, "sparse": d_sparse}

    proof = Proof("tril scattered as triu", forward, wrong, {"dense": dense, "sparse": sparse})
    assert proof.gap is not None


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


def test_witness_catches_a_broken_fast_path():
    # The layer's fast backward without the dense passthrough: the float witness sees it.
    dropped = (
        "np.add(d_out[rows, :dim], d_combined[rows, 0], out=d_dense[rows])",
        "np.copyto(d_dense[rows], d_combined[rows, 0])",
    )
    with mutated(fast_dot.dot_backward, *dropped):
        errors = dot.witness_errors()
    assert errors["output"] < 1e-12 and errors["sparse"] < 1e-12
    assert errors["dense"] > 1e-3


def test_witness_catches_a_broken_textbook_backward():
    with (
        pytest.raises(AssertionError, match="not proven"),
        mutated(*dot.MUTANTS["transpose missing"]),
    ):
        dot.witness_errors(seed=1)


def test_latex_layout():
    text = dot.latex_seed_layout(dot.forward().sparse)
    assert text.count("[") == 4
    assert "s_{1,1,3}" in text


@pytest.mark.parametrize("self_interaction", [False, True])
def test_no_sparse_features(self_interaction):
    # F = 0: TorchRec returns dense unchanged, so dL/dD = G and there is nothing else.
    fwd = dot.forward(self_interaction, num_features=0)
    assert fwd.output == fwd.dense
    assert dot.symbolic_gradients(self_interaction, num_features=0).dense == fwd.upstream
    with pytest.raises(ValueError, match="F = 0"):  # the layer passes dense through itself
        dot.prove_closed_form(self_interaction, num_features=0)
