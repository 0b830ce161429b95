"""SymPy proofs about refimpl's embedding bag: its textbook backward is the exact derivative.

:func:`refimpl.layers.embedding.embedding_bag_forward` and
:func:`~refimpl.layers.embedding.embedding_bag_backward` run here unchanged on object arrays
of SymPy symbols: a table ``E`` of symbols ``e_{j,k}``, per-id weights ``w_i`` and an upstream
gradient ``G`` of symbols ``g_{b,k}``. With ``L = Σ G ⊙ pooled``, ``∂L/∂e_{j,k}`` and
``∂L/∂w_i`` are taken by ``sp.diff`` and must equal, exactly, what the backward returned: the
row-sparse gradient densified (rows no id names must be exactly zero) and the weights'
gradient. The bags are chosen to hold every case: a repeated id in one bag, an empty bag, an
id shared by two bags, and rows of the table no bag names.

Nothing here computes a gradient by hand: the only backward is refimpl's.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import sympy as sp

from derivations.proof import symbols
from refimpl.layers.embedding import embedding_bag_backward, embedding_bag_forward
from refimpl.tools.gradcheck import rel_error

NUM_ROWS, DIM = 5, 2
IDS = np.array([2, 0, 2, 1, 2])  # bag 0: [2, 0, 2] (2 twice); bag 1: []; bag 2: [1, 2]
LENGTHS = np.array([3, 0, 2])  # B = 3; rows 3 and 4 are never named


class BagProof:
    """The symbolic forward, the loss, and refimpl's backward, for one pooling and weighting."""

    def __init__(self, pooling: str = "sum", weighted: bool = False):
        self.table = symbols("e", (NUM_ROWS, DIM))  # E
        self.weights = symbols("w", (len(IDS),)) if weighted else None
        self.upstream = symbols("g", (len(LENGTHS), DIM))  # G
        self.pooled, cache_ = embedding_bag_forward(self.table, IDS, LENGTHS, self.weights, pooling)
        self.loss = sp.expand(sum(self.upstream.ravel() * self.pooled.ravel()))  # L = Σ G ⊙ P
        d_table, self.d_weights = embedding_bag_backward(self.upstream, cache_, NUM_ROWS)
        self.d_table = d_table.to_dense()  # (num_rows, D); zeros where no id points
        self.touched = d_table.indices


@cache
def prove(pooling: str = "sum", weighted: bool = False) -> BagProof:
    """Prove refimpl's backward equals ``sp.diff`` of ``L = Σ G ⊙ pooled``, exactly.

    Also proves what the forward does on the special bags: the empty bag pools to exactly
    zero, and the mean divides by the bag's length counting repeats. Raises AssertionError
    otherwise.

    >>> proof = prove("mean")
    >>> proof.pooled[0, 0]                          # (e₂ + e₀ + e₂) / 3
    e_{0,0}/3 + 2*e_{2,0}/3
    >>> proof.touched.tolist()                      # rows 3 and 4: absent, exactly zero
    [0, 1, 2]
    """
    proof = BagProof(pooling, weighted)
    assert all(v == 0 for v in proof.pooled[1]), "the empty bag must pool to zero"
    for j, k in np.ndindex(NUM_ROWS, DIM):
        exact = sp.diff(proof.loss, proof.table[j, k])
        assert sp.expand(exact - proof.d_table[j, k]) == 0, (pooling, weighted, j, k)
    assert set(proof.touched.tolist()) == set(IDS.tolist())
    if weighted:
        for i, w in enumerate(proof.weights):
            assert sp.expand(sp.diff(proof.loss, w) - proof.d_weights[i]) == 0, (i, "weight")
    else:
        assert proof.d_weights is None
    if pooling == "mean":  # the repeated id counts twice in its bag's length, 3
        assert sp.expand(proof.pooled[0, 0] * 3 - proof.table[0, 0] - 2 * proof.table[2, 0]) == 0
    return proof


def symbolic_witness(pooling: str = "sum", weighted: bool = False, seed: int = 0) -> float:
    """Prove (see :func:`prove`), then compare the layer on floats with the symbolic values.

    Builds a one-table :class:`refimpl.EmbeddingBagCollection` with these bags, loads random
    numbers into the table, and returns the worst relative error of its output, table gradient
    and weights' gradient against the proof's expressions evaluated at the same numbers.

    >>> symbolic_witness("sum", weighted=True) < 1e-12
    True
    """
    from refimpl.layers.embedding import (
        EmbeddingBagCollection,
        EmbeddingBagConfig,
        KeyedJaggedArray,
    )

    proof = prove(pooling, weighted)
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((NUM_ROWS, DIM))
    upstream = rng.standard_normal((len(LENGTHS), DIM))
    weights = rng.uniform(0.5, 1.5, len(IDS)) if weighted else None
    values = dict(zip(proof.table.ravel(), table.ravel(), strict=True))
    values.update(zip(proof.upstream.ravel(), upstream.ravel(), strict=True))
    if weighted:
        values.update(zip(proof.weights, weights, strict=True))

    def evaluate(expressions) -> np.ndarray:
        return np.array([float(sp.sympify(e).subs(values)) for e in np.ravel(expressions)])

    config = EmbeddingBagConfig(NUM_ROWS, DIM, "t", ["f"], pooling)
    ebc = EmbeddingBagCollection([config], is_weighted=weighted)
    ebc.load_state_dict({"embedding_bags.t.weight": table})
    pooled, cache_ = ebc.forward(KeyedJaggedArray(["f"], IDS, LENGTHS, weights))
    d_weights, d_params = ebc.backward(upstream, cache_)
    errors = [
        rel_error(pooled.ravel(), evaluate(proof.pooled)),
        rel_error(d_params["embedding_bags.t.weight"].to_dense().ravel(), evaluate(proof.d_table)),
    ]
    if weighted:
        errors.append(rel_error(d_weights, evaluate(proof.d_weights)))
    return max(errors)
