"""The dot interaction (TorchRec's ``InteractionArch``) rebuilt symbolically at the seed's size.

The seed (its section 2, "Default Interaction") works the backward by hand at B=2, D=4, F=2
with its own symbols: ``d_{b,j}`` (dense), ``s_{b,i,j}`` (sparse), ``F_{b,k}`` (the kept pair
dot products) and ``y_{b,k}`` (the (2, 7) output Y). This module builds the same forward in
SymPy, differentiates ``L = Σ G ⊙ Y`` for a symbolic upstream gradient ``G = (g_{b,k})``, where
``g_{b,k} = ∂L/∂y_{b,k}``, and proves exactly (every entry of a difference expanded to zero):

(a) the seed's element formula for ``∂L/∂d_{i,j}`` is the derivative;
(b) the seed's blocks A, B, C, D for ``∂L/∂S`` are the derivative;
(c) refimpl's backward, :func:`refimpl.layers.dot.dot_interaction_backward` run on these
    symbols (``dC = (G + Gᵀ) C``), is the derivative, for every pair option (through
    :class:`derivations.proof.Proof`: nothing here re-implements it);
(d) the seed's ∂L/∂D matrix line, as written, is the derivative *plus the bmm term again*
    (its expanded matrix and its ``[g₄ g₅]·S`` product are one term written twice);
(e) the block form that completes the seed's unfinished "整理得：" for ∂L/∂S,
    ``dS_b = m_b d_b + M_b S_b`` (``d_b`` a row, so ``m_b d_b`` is an outer product), is
    the derivative.

A note on letters: the seed's ``F_{b,k}`` is a pair value, not the feature count F (called
``num_features`` here); at F = 2 there are three of them, F_{b,0}, F_{b,1}, F_{b,2}.

>>> fwd = forward()
>>> fwd.output.shape, fwd.rows, fwd.cols
((2, 7), (0, 0, 1), (1, 2, 2))
>>> fwd.pairs[0, 2]
s_{0,0,0}*s_{0,1,0} + s_{0,0,1}*s_{0,1,1} + s_{0,0,2}*s_{0,1,2} + s_{0,0,3}*s_{0,1,3}
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np
import sympy as sp

from derivations.proof import Proof, mutated
from refimpl.layers import dot
from refimpl.layers.dot import InteractionArch, pair_indices

SEED_BATCH, SEED_FEATURES, SEED_DIM = 2, 2, 4  # the seed's B, F ("sparse_feature_size"), D

Matrix = sp.ImmutableMatrix


# --------------------------------------------------------------------------------------------
# Symbols, in the seed's notation
# --------------------------------------------------------------------------------------------


def dense_symbols(batch: int = SEED_BATCH, dim: int = SEED_DIM) -> Matrix:
    """The seed's dense matrix ``D``: entries ``d_{b,j}``.

    Returns
    -------
    ImmutableMatrix, shape (B, D)

    >>> dense_symbols(1, 2)
    Matrix([[d_{0,0}, d_{0,1}]])
    """
    return Matrix(batch, dim, lambda b, j: sp.Symbol(f"d_{{{b},{j}}}"))


def sparse_symbols(
    batch: int = SEED_BATCH, num_features: int = SEED_FEATURES, dim: int = SEED_DIM
) -> tuple[Matrix, ...]:
    """The seed's sparse tensor ``S``: entries ``s_{b,i,j}``, one (F, D) matrix per sample.

    Returns
    -------
    tuple of B ImmutableMatrix, each shape (F, D)
    """
    return tuple(
        Matrix(num_features, dim, lambda i, j, b=b: sp.Symbol(f"s_{{{b},{i},{j}}}"))
        for b in range(batch)
    )


def _letter_matrix(letter: str, batch: int, width: int) -> Matrix:
    return Matrix(batch, width, lambda b, k: sp.Symbol(f"{letter}_{{{b},{k}}}"))


def upstream_symbols(batch: int, width: int) -> Matrix:
    """The upstream gradient ``G``: entries ``g_{b,k} = ∂L/∂y_{b,k}``, shape (B, D + P)."""
    return _letter_matrix("g", batch, width)


def output_symbols(batch: int, width: int) -> Matrix:
    """The seed's names ``y_{b,k}`` for the output entries, shape (B, D + P)."""
    return _letter_matrix("y", batch, width)


def pair_symbols(batch: int, num_pairs: int) -> Matrix:
    """The seed's abbreviations ``F_{b,k}`` for the kept pair dot products, shape (B, P)."""
    return _letter_matrix("F", batch, num_pairs)


# --------------------------------------------------------------------------------------------
# Forward and the symbolic gradient
# --------------------------------------------------------------------------------------------


class Forward(NamedTuple):
    """The symbolic forward pass, every intermediate the seed writes down.

    Attributes
    ----------
    dense : ImmutableMatrix, shape (B, D)
    sparse : tuple of B ImmutableMatrix, each (F, D)
    combined : tuple of B ImmutableMatrix, each (F+1, D); ``C_b = [d_b; S_b]``
    gram : tuple of B ImmutableMatrix, each (F+1, F+1); ``C_b C_bᵀ``
    rows, cols : tuple of int, length P; the kept pairs (refimpl.pair_indices)
    pairs : ImmutableMatrix, shape (B, P); the kept entries of the gram matrices
    pair_names : ImmutableMatrix, shape (B, P); the seed's ``F_{b,k}`` standing for ``pairs``
    output : ImmutableMatrix, shape (B, D + P); Y
    output_abbreviated : ImmutableMatrix, shape (B, D + P); Y written with ``F_{b,k}``
    upstream : ImmutableMatrix, shape (B, D + P); G, entries ``g_{b,k}``
    loss : Expr; ``L = Σ G ⊙ Y``
    """

    dense: Matrix
    sparse: tuple[Matrix, ...]
    combined: tuple[Matrix, ...]
    gram: tuple[Matrix, ...]
    rows: tuple[int, ...]
    cols: tuple[int, ...]
    pairs: Matrix
    pair_names: Matrix
    output: Matrix
    output_abbreviated: Matrix
    upstream: Matrix
    loss: sp.Expr


class Gradients(NamedTuple):
    """``∂L/∂D`` and ``∂L/∂S`` in the layout of the inputs.

    Attributes
    ----------
    dense : ImmutableMatrix, shape (B, D)
    sparse : tuple of B ImmutableMatrix, each (F, D)
    """

    dense: Matrix
    sparse: tuple[Matrix, ...]


def forward(
    self_interaction: bool = False,
    pair_order: str = "triu",
    batch: int = SEED_BATCH,
    num_features: int = SEED_FEATURES,
    dim: int = SEED_DIM,
) -> Forward:
    """The dot interaction's forward in symbols (cached: the result is immutable).

    Parameters
    ----------
    self_interaction, pair_order
        As in :class:`refimpl.InteractionArch`.
    batch, num_features, dim : int
        B, F, D; the defaults are the seed's 2, 2, 4.

    Returns
    -------
    Forward
    """
    return _forward(bool(self_interaction), pair_order, batch, num_features, dim)


@lru_cache(maxsize=32)
def _forward(self_interaction, pair_order, batch, num_features, dim) -> Forward:
    rows, cols = (
        tuple(int(i) for i in a) for a in pair_indices(num_features, self_interaction, pair_order)
    )
    dense = dense_symbols(batch, dim)  # (B, D)
    sparse = sparse_symbols(batch, num_features, dim)  # B × (F, D)
    combined = tuple(Matrix.vstack(dense[b, :], sparse[b]) for b in range(batch))  # B × (F+1, D)
    gram = tuple(c * c.T for c in combined)  # B × (F+1, F+1)
    num_pairs = len(rows) if num_features else 0
    pairs = Matrix(batch, num_pairs, lambda b, k: gram[b][rows[k], cols[k]])  # (B, P)
    names = pair_symbols(batch, num_pairs)  # (B, P)
    output = Matrix.hstack(dense, pairs)  # (B, D + P)
    upstream = upstream_symbols(batch, dim + num_pairs)  # (B, D + P)
    loss = sum((g * y for g, y in zip(upstream, output, strict=True)), sp.Integer(0))
    return Forward(
        dense,
        sparse,
        combined,
        gram,
        rows[:num_pairs],
        cols[:num_pairs],
        pairs,
        names,
        output,
        Matrix.hstack(dense, names),
        upstream,
        loss,
    )


def symbolic_gradients(
    self_interaction: bool = False,
    pair_order: str = "triu",
    batch: int = SEED_BATCH,
    num_features: int = SEED_FEATURES,
    dim: int = SEED_DIM,
) -> Gradients:
    """``∂L/∂D`` and ``∂L/∂S`` by differentiating ``L = Σ G ⊙ Y`` symbol by symbol (cached).

    >>> grads = symbolic_gradients()
    >>> grads.dense[0, 0]
    g_{0,0} + g_{0,4}*s_{0,0,0} + g_{0,5}*s_{0,1,0}
    """
    return _symbolic_gradients(bool(self_interaction), pair_order, batch, num_features, dim)


@lru_cache(maxsize=32)
def _symbolic_gradients(self_interaction, pair_order, batch, num_features, dim) -> Gradients:
    fwd = _forward(self_interaction, pair_order, batch, num_features, dim)
    loss = fwd.loss
    d_dense = fwd.dense.applyfunc(lambda x: sp.expand(sp.diff(loss, x)))  # (B, D)
    d_sparse = tuple(s.applyfunc(lambda x: sp.expand(sp.diff(loss, x))) for s in fwd.sparse)
    return Gradients(d_dense, d_sparse)


# --------------------------------------------------------------------------------------------
# The closed form refimpl uses, and the block form that completes the seed's "整理得："
# --------------------------------------------------------------------------------------------


def pair_gradient_matrices(fwd: Forward) -> tuple[Matrix, ...]:
    """``G_b``: the pair part of the upstream gradient scattered into an (F+1, F+1) matrix.

    ``G_b[i_k, j_k] = g_{b, D+k}`` for the kept pairs ``(i_k, j_k)``, zero elsewhere; it is
    ``∂L/∂(C_b C_bᵀ)``, since only the kept entries of the gram matrix reach the output.

    Returns
    -------
    tuple of B ImmutableMatrix, each (F+1, F+1)
    """
    batch, dim = fwd.dense.shape
    n = fwd.combined[0].shape[0]
    out = []
    for b in range(batch):
        g_mat = sp.zeros(n, n)
        for k, (i, j) in enumerate(zip(fwd.rows, fwd.cols, strict=True)):
            g_mat[i, j] = fwd.upstream[b, dim + k]
        out.append(Matrix(g_mat))
    return tuple(out)


def _arrays(fwd: Forward) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The seed's symbols as refimpl's arrays: dense (B, D), sparse (B, F, D), G (B, D + P)."""
    dense = np.array(fwd.dense.tolist(), dtype=object).reshape(fwd.dense.shape)
    batch, dim = dense.shape
    num_features = fwd.combined[0].shape[0] - 1
    sparse = np.array([s.tolist() for s in fwd.sparse], dtype=object)
    sparse = sparse.reshape(batch, num_features, dim)
    upstream = np.array(fwd.upstream.tolist(), dtype=object).reshape(fwd.upstream.shape)
    return dense, sparse, upstream


def refimpl_gradients(
    self_interaction: bool = False,
    pair_order: str = "triu",
    batch: int = SEED_BATCH,
    num_features: int = SEED_FEATURES,
    dim: int = SEED_DIM,
) -> Gradients:
    """refimpl's textbook backward run on the seed's symbols: what it returns for ``G``.

    :func:`refimpl.layers.dot.dot_interaction` then
    :func:`~refimpl.layers.dot.dot_interaction_backward` (``dC = (G + Gᵀ) C``, then the
    passthrough added to row 0) on object arrays of the symbols ``d``, ``s`` and ``g``.

    >>> refimpl_gradients().dense[0, 0]
    g_{0,0} + g_{0,4}*s_{0,0,0} + g_{0,5}*s_{0,1,0}
    """
    fwd = forward(self_interaction, pair_order, batch, num_features, dim)
    dense, sparse, upstream = _arrays(fwd)
    rows, cols = pair_indices(num_features, self_interaction, pair_order)
    _, combined = dot.dot_interaction(dense, sparse, rows, cols)
    d_dense, d_sparse = dot.dot_interaction_backward(upstream, combined, rows, cols)
    return Gradients(
        Matrix(d_dense.tolist()).applyfunc(sp.expand),
        tuple(Matrix(m.tolist()).applyfunc(sp.expand) for m in d_sparse),
    )


class BlockForm(NamedTuple):
    """``G_b + G_bᵀ`` cut along the dense/sparse boundary, ``[[corner, columnᵀ], [column, block]]``.

    Attributes
    ----------
    corner : Expr; 2 g for the dense self pair when kept, else 0
    column : ImmutableMatrix, shape (F, 1); the gradients of the dense–sparse pairs, ``m_b``
    block : ImmutableMatrix, shape (F, F); symmetric, the sparse–sparse pairs, ``M_b``
    """

    corner: sp.Expr
    column: Matrix
    block: Matrix


def block_forms(fwd: Forward) -> tuple[BlockForm, ...]:
    """One :class:`BlockForm` per sample."""
    out = []
    for g_mat in pair_gradient_matrices(fwd):
        sym = g_mat + g_mat.T  # (F+1, F+1)
        out.append(BlockForm(sym[0, 0], Matrix(sym[1:, 0]), Matrix(sym[1:, 1:])))
    return tuple(out)


def completed_gradients(
    self_interaction: bool = False,
    pair_order: str = "triu",
    batch: int = SEED_BATCH,
    num_features: int = SEED_FEATURES,
    dim: int = SEED_DIM,
) -> Gradients:
    """The block form of the gradient, the formula the seed's "整理得：" stops short of.

    With ``G_b + G_bᵀ = [[c_b, m_bᵀ], [m_b, M_b]]`` (:func:`block_forms`)::

        ∂L/∂d_b = g_b[:D] + c_b d_b + m_bᵀ S_b        (1, D)
        ∂L/∂S_b = m_b d_b + M_b S_b                    (F, D)

    where ``m_b d_b`` is an outer product (F, 1)(1, D). At the seed's size, ``m_b = [g_{b,4};
    g_{b,5}]``, ``M_b = [[0, g_{b,6}], [g_{b,6}, 0]]`` and ``c_b = 0``.
    """
    fwd = forward(self_interaction, pair_order, batch, num_features, dim)
    rows_dense, rows_sparse = [], []
    for b, form in enumerate(block_forms(fwd)):
        d_b, s_b = fwd.dense[b, :], fwd.sparse[b]  # (1, D), (F, D)
        rows_dense.append(fwd.upstream[b, :dim] + form.corner * d_b + form.column.T * s_b)
        rows_sparse.append(Matrix(form.column * d_b + form.block * s_b))  # (F, D)
    return Gradients(Matrix.vstack(*rows_dense), tuple(rows_sparse))


# --------------------------------------------------------------------------------------------
# The seed's formulas, as it writes them (B=2, D=4, F=2, TorchRec's pair order)
# --------------------------------------------------------------------------------------------


def _seed() -> tuple[Forward, Matrix, tuple[Matrix, ...], Matrix]:
    fwd = forward()
    return fwd, fwd.dense, fwd.sparse, fwd.upstream


def seed_output_derivatives() -> dict[sp.Symbol, Matrix]:
    """The seed's two hand-written (2, 7) matrices ``∂Y/∂d_{0,0}`` and ``∂Y/∂s_{0,0,0}``."""
    _, d, s, _ = _seed()
    zeros = [0] * 7
    return {
        d[0, 0]: Matrix([[1, 0, 0, 0, s[0][0, 0], s[0][1, 0], 0], zeros]),
        s[0][0, 0]: Matrix([[0, 0, 0, 0, d[0, 0], 0, s[0][1, 0]], zeros]),
    }


def frobenius(a: Matrix, b: Matrix) -> sp.Expr:
    """``Σ a ⊙ b``: what the seed's product "∂L/∂Y · ∂Y/∂d_{0,0}" of two (2, 7) matrices means."""
    return sp.expand(sum((x * y for x, y in zip(a, b, strict=True)), sp.Integer(0)))


def seed_dense_element_formula() -> Matrix:
    """The seed's ``∂L/∂d_{i,j} = g_{i,j} + s_{i,0,j} g_{i,4} + s_{i,1,j} g_{i,5}``, (2, 4)."""
    _, _, s, g = _seed()
    return Matrix(2, 4, lambda i, j: g[i, j] + s[i][0, j] * g[i, 4] + s[i][1, j] * g[i, 5])


def seed_dense_expanded_term() -> Matrix:
    """The explicit (2, 4) matrix in the seed's ∂L/∂D line, entries ``s_{i,0,j} g_{i,4} +
    s_{i,1,j} g_{i,5}``."""
    _, _, s, g = _seed()
    return Matrix(2, 4, lambda i, j: s[i][0, j] * g[i, 4] + s[i][1, j] * g[i, 5])


def seed_dense_bmm_factors() -> tuple[Matrix, tuple[Matrix, ...]]:
    """The two factors of the seed's last term ``[g₄ g₅] · S``: the (2, 2) g-matrix and S.

    The product is batched (the seed's remark: shape [2, 1, 2] times [2, 2, 4]): row b is
    ``[g_{b,4} g_{b,5}] S_b``. Read as a plain 2-D product it would mix the two samples.
    """
    _, _, s, g = _seed()
    return Matrix(g[:, 4:6]), s


def seed_dense_bmm_term() -> Matrix:
    """The seed's ``[g₄ g₅] · S`` as the batched product it means, shape (2, 4)."""
    g_pairs, s = seed_dense_bmm_factors()
    return Matrix.vstack(*(g_pairs[b, :] * s[b] for b in range(2)))


def seed_dense_matrix_line() -> Matrix:
    """The seed's ∂L/∂D matrix line exactly as written: ``G[:, 0:4]`` + expanded matrix +
    ``[g₄ g₅]·S``. Wrong: the last two are the same term (see :func:`prove_seed_dense_line`)."""
    _, _, _, g = _seed()
    return Matrix(g[:, :4]) + seed_dense_expanded_term() + seed_dense_bmm_term()


def seed_sparse_block_factors() -> dict[str, tuple[Matrix, Matrix]]:
    """The seed's blocks of ``∂L/∂S = [[A, B], [C, D]]`` as (1×2 row of g's, 2×4 matrix).

    (The block names C and D are the seed's; they are not the combined matrix C or the dense
    matrix D.)
    """
    _, d, s, g = _seed()

    def factors(b, gi, row_two):
        return Matrix([[g[b, gi], g[b, 6]]]), Matrix.vstack(d[b, :], row_two)

    return {
        "A": factors(0, 4, s[0][1, :]),
        "B": factors(0, 5, s[0][0, :]),
        "C": factors(1, 4, s[1][1, :]),
        "D": factors(1, 5, s[1][0, :]),
    }


def seed_sparse_blocks() -> dict[str, Matrix]:
    """The seed's A, B, C, D multiplied out, each shape (1, 4)."""
    return {k: Matrix(row * mat) for k, (row, mat) in seed_sparse_block_factors().items()}


def seed_sparse_gradient() -> tuple[Matrix, ...]:
    """The seed's ``∂L/∂S = [[A, B], [C, D]]``: sample 0 is ``[A; B]``, sample 1 ``[C; D]``."""
    blocks = seed_sparse_blocks()
    return Matrix.vstack(blocks["A"], blocks["B"]), Matrix.vstack(blocks["C"], blocks["D"])


# --------------------------------------------------------------------------------------------
# Exact proofs
# --------------------------------------------------------------------------------------------


def _entries(x) -> list:
    if isinstance(x, sp.MatrixBase):
        return list(x)
    if isinstance(x, tuple | list):
        return [e for part in x for e in _entries(part)]
    return [x]


def _shapes(x):
    if isinstance(x, sp.MatrixBase):
        return x.shape
    if isinstance(x, tuple | list):
        return tuple(_shapes(part) for part in x)
    return ()


def expanded_difference(a, b) -> list[sp.Expr]:
    """Every entry of ``a − b``, expanded. ``a`` and ``b``: expressions, matrices, or (nested)
    tuples of them, e.g. :class:`Gradients`; their shapes must agree."""
    if _shapes(a) != _shapes(b):
        raise ValueError(f"shapes differ: {_shapes(a)} and {_shapes(b)}")
    return [sp.expand(x - y) for x, y in zip(_entries(a), _entries(b), strict=True)]


def exactly_equal(a, b) -> bool:
    """True when every entry of ``a − b`` expands to 0: polynomial identity, no sampling.

    >>> x, y = sp.symbols("x y")
    >>> exactly_equal((x + y) ** 2, x**2 + 2 * x * y + y**2), exactly_equal(x * y, y * x + 1)
    (True, False)
    """
    return all(e == 0 for e in expanded_difference(a, b))


def prove_equal(a, b, statement: str) -> str:
    """Assert ``a == b`` exactly; return ``statement``, or raise AssertionError saying where."""
    for index, e in enumerate(expanded_difference(a, b)):
        if e != 0:
            raise AssertionError(f"not proven: {statement}; entry {index} differs by {e}")
    return statement


def prove_seed_output_derivatives() -> str:
    """The seed's ∂Y/∂d_{0,0} and ∂Y/∂s_{0,0,0} matrices are right, and ``Σ G ⊙ ∂Y/∂x`` with
    them gives ∂L/∂x (the seed writes this Frobenius product as a matrix product)."""
    fwd = forward()
    for x, seed_matrix in seed_output_derivatives().items():
        prove_equal(seed_matrix, fwd.output.diff(x), f"seed's ∂Y/∂{x}")
        prove_equal(frobenius(fwd.upstream, seed_matrix), sp.diff(fwd.loss, x), f"∂L/∂{x}")
    return "seed's ∂Y/∂d_{0,0}, ∂Y/∂s_{0,0,0} and Σ G ⊙ ∂Y/∂x = ∂L/∂x"


def prove_seed_element_formula() -> str:
    """(a) The seed's element formula for ∂L/∂d_{i,j} is the symbolic derivative."""
    return prove_equal(
        seed_dense_element_formula(),
        symbolic_gradients().dense,
        "(a) seed's ∂L/∂d_{i,j} = g_{i,j} + s_{i,0,j} g_{i,4} + s_{i,1,j} g_{i,5}",
    )


def prove_seed_sparse_blocks() -> str:
    """(b) The seed's blocks A, B, C, D for ∂L/∂S are the symbolic derivative."""
    return prove_equal(
        seed_sparse_gradient(), symbolic_gradients().sparse, "(b) seed's ∂L/∂S = [[A, B], [C, D]]"
    )


def prove_seed_dense_line() -> list[str]:
    """(d) The seed's ∂L/∂D line counts the bmm term twice; either of its two forms alone is
    right, and the two forms are equal to each other."""
    truth = symbolic_gradients().dense
    _, _, _, g = _seed()
    passthrough = Matrix(g[:, :4])
    expanded, bmm = seed_dense_expanded_term(), seed_dense_bmm_term()
    line = seed_dense_matrix_line()
    if exactly_equal(line, truth):
        raise AssertionError("the seed's ∂L/∂D line unexpectedly equals the derivative")
    return [
        prove_equal(expanded, bmm, "(d) the seed's expanded matrix = its [g₄ g₅]·S term"),
        prove_equal(line, truth + bmm, "(d) seed's ∂L/∂D line = true ∂L/∂D + [g₄ g₅]·S (wrong)"),
        prove_equal(passthrough + expanded, truth, "(d) G[:, :4] + expanded matrix = ∂L/∂D"),
        prove_equal(passthrough + bmm, truth, "(d) G[:, :4] + [g₄ g₅]·S = ∂L/∂D"),
    ]


def _options_label(self_interaction, pair_order, batch, num_features, dim) -> str:
    diag = ", self_interaction" if self_interaction else ""
    return f"B={batch} F={num_features} D={dim} {pair_order}{diag}"


MUTANTS = {
    "transpose missing": (
        dot.dot_interaction_backward,
        "(d_gram + d_gram.transpose(0, 2, 1)) @ combined",
        "d_gram @ combined",
    ),
    "passthrough dropped": (
        dot.dot_interaction_backward,
        "d_dense = d_out[:, :dim] + d_combined[:, 0]",
        "d_dense = d_combined[:, 0]",
    ),
    "the seed's doubled term": (
        dot.dot_interaction_backward,
        "d_dense = d_out[:, :dim] + d_combined[:, 0]",
        "d_dense = d_out[:, :dim] + 2 * d_combined[:, 0]",
    ),
}


def _proof(
    self_interaction, pair_order, batch, num_features, dim, *, at_point=False, seed=0
) -> Proof:
    if num_features < 1:
        raise ValueError(
            "num_features: expected F >= 1; with F = 0 the layer returns dense itself, as "
            "TorchRec does, and never calls the textbook functions"
        )
    fwd = forward(self_interaction, pair_order, batch, num_features, dim)
    dense, sparse, _ = _arrays(fwd)
    rows, cols = pair_indices(num_features, self_interaction, pair_order)

    def run_forward(values):
        out, combined = dot.dot_interaction(values["dense"], values["sparse"], rows, cols)
        return out, combined

    def run_backward(values, d_out, combined):
        d_dense, d_sparse = dot.dot_interaction_backward(d_out, combined, rows, cols)
        return {"dense": d_dense, "sparse": d_sparse}

    options = _options_label(self_interaction, pair_order, batch, num_features, dim)
    name = f"(c) refimpl's dC = (G + Gᵀ) C, {options}"
    leaves = {"dense": dense, "sparse": sparse}
    return Proof(name, run_forward, run_backward, leaves, at_point=at_point, seed=seed)


def prove_closed_form(
    self_interaction: bool = False,
    pair_order: str = "triu",
    batch: int = SEED_BATCH,
    num_features: int = SEED_FEATURES,
    dim: int = SEED_DIM,
) -> str:
    """(c) refimpl's backward equals the symbolic derivative, as an identity.

    Runs :func:`refimpl.layers.dot.dot_interaction` and ``dot_interaction_backward`` on the
    seed's symbols through :class:`derivations.proof.Proof`; also checks that refimpl's forward
    on them is the seed's forward.

    >>> print(prove_closed_form(num_features=1, dim=2, batch=1))  # doctest: +NORMALIZE_WHITESPACE
    (c) refimpl's dC = (G + Gᵀ) C, B=1 F=1 D=2 triu: the backward equals the symbolic
    gradient (identity)
    """
    sizes = (bool(self_interaction), pair_order, batch, num_features, dim)
    proof = _proof(*sizes)
    seed_output = forward(*sizes).output
    if any(sp.expand(a - b) != 0 for a, b in zip(proof.output.ravel(), seed_output, strict=True)):
        raise AssertionError("not proven: refimpl's forward on the seed's symbols is the seed's")
    return proof.statement()


def gap(
    mutant: str | None = None, self_interaction: bool = False, pair_order: str = "triu", **sizes
) -> str | None:
    """Where refimpl's backward — or its ``mutant`` (a name in :data:`MUTANTS`) — differs from
    the symbolic derivative (e.g. ``"sparse[0, 0, 0]"``), None where it does not; sizes as
    :func:`forward` (the seed's by default).

    >>> gap("transpose missing")
    'sparse[0, 0, 0]'
    """
    config = {"batch": SEED_BATCH, "num_features": SEED_FEATURES, "dim": SEED_DIM, **sizes}
    args = (
        bool(self_interaction),
        pair_order,
        config["batch"],
        config["num_features"],
        config["dim"],
    )
    if mutant is None:
        return _proof(*args).gap
    if mutant not in MUTANTS:
        raise ValueError(f"mutant: expected one of {sorted(MUTANTS)}, got {mutant!r}")
    with mutated(*MUTANTS[mutant]):
        return _proof(*args).gap


def prove_completed_formula(
    self_interaction: bool = False,
    pair_order: str = "triu",
    batch: int = SEED_BATCH,
    num_features: int = SEED_FEATURES,
    dim: int = SEED_DIM,
) -> str:
    """(e) The block form ``dS_b = m_b d_b + M_b S_b`` (and its ∂L/∂d) is the derivative."""
    sizes = (self_interaction, pair_order, batch, num_features, dim)
    return prove_equal(
        completed_gradients(*sizes),
        symbolic_gradients(*sizes),
        f"(e) dS_b = m_b d_b + M_b S_b, {_options_label(*sizes)}",
    )


OPTIONS = ((False, "triu"), (False, "tril"), (True, "triu"), (True, "tril"))


def prove_all() -> list[str]:
    """Every proof in this module, in order; returns the statements proven."""
    proven = [prove_seed_output_derivatives(), prove_seed_element_formula()]
    proven.append(prove_seed_sparse_blocks())
    proven += prove_seed_dense_line()
    for self_interaction, pair_order in OPTIONS:
        proven.append(prove_closed_form(self_interaction, pair_order))
        proven.append(prove_completed_formula(self_interaction, pair_order))
    return proven


# --------------------------------------------------------------------------------------------
# The witness `python -m refimpl check` runs
# --------------------------------------------------------------------------------------------


def argument_symbols(fwd: Forward) -> list[sp.Symbol]:
    """Every input symbol in NumPy's flattening order: ``dense.ravel()``, ``sparse.ravel()``,
    ``upstream.ravel()``. Use it to lambdify an expression and feed it arrays::

        f = sp.lambdify(argument_symbols(fwd), expr)
        f(*dense.ravel(), *sparse.ravel(), *upstream.ravel())
    """
    return _entries((fwd.dense, fwd.sparse, fwd.upstream))


def witness_errors(
    self_interaction: bool = False,
    pair_order: str = "triu",
    seed: int = 0,
    *,
    batch: int = SEED_BATCH,
    num_features: int = SEED_FEATURES,
    dim: int = SEED_DIM,
) -> dict[str, float]:
    """Prove (c) exactly at a random rational point, then run :class:`refimpl.InteractionArch`
    (its fast path) in float64 there: ``"output"``, ``"dense"``, ``"sparse"`` -> worst
    relative error against SymPy's values."""
    sizes = (bool(self_interaction), pair_order, batch, num_features, dim)
    proof = _proof(*sizes, at_point=True, seed=seed)
    proof.statement()
    arch = InteractionArch(num_features, self_interaction=self_interaction, pair_order=pair_order)
    return proof.float_errors(arch, arch.input_names)


@lru_cache(maxsize=32)
def symbolic_witness(
    self_interaction: bool = False,
    pair_order: str = "triu",
    seed: int = 0,
    *,
    batch: int = SEED_BATCH,
    num_features: int = SEED_FEATURES,
    dim: int = SEED_DIM,
) -> float:
    """What ``python -m refimpl check`` runs: :func:`witness_errors`' worst error (cached).

    >>> symbolic_witness() < 1e-12
    True
    """
    sizes = {"batch": batch, "num_features": num_features, "dim": dim}
    return max(witness_errors(self_interaction, pair_order, seed, **sizes).values())


def latex_seed_layout(blocks) -> str:
    """LaTeX for a batch of row vectors laid out like the seed's S and C: a matrix whose
    entries are bracketed rows, one matrix row per sample.

    ``blocks``: one (k, D) matrix per sample; row i of sample b becomes entry (b, i).

    >>> latex_seed_layout([Matrix([[1, 2]])])
    '\\\\begin{bmatrix} [1, 2] \\\\end{bmatrix}'
    """
    lines = []
    for mat in blocks:
        cells = []
        for i in range(mat.shape[0]):
            cells.append("[" + ", ".join(sp.latex(e) for e in mat[i, :]) + "]")
        lines.append(" & ".join(cells))
    return "\\begin{bmatrix} " + " \\\\ ".join(lines) + " \\end{bmatrix}"
