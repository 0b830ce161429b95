"""SymPy proofs about refimpl's embedding bag: its textbook backward is the exact derivative.

:func:`refimpl.layers.embedding.embedding_bag_forward` and
:func:`~refimpl.layers.embedding.embedding_bag_backward` run here unchanged on object arrays
of SymPy symbols: a table ``E`` of symbols ``e_{j,k}`` and per-id weights ``w_i``. A
:class:`derivations.proof.Proof` proves, as an identity, that what the backward returns for an
upstream gradient ``G`` (symbols ``g_{b,k}``) is SymPy's derivative of ``L = Σ G ⊙ pooled``:
the row-sparse table gradient densified (rows no id names must be exactly zero) and the
weights' gradient. The bags are chosen to hold every case: a repeated id in one bag, an empty
bag, an id shared by two bags, and rows of the table no bag names.

Nothing here computes a gradient by hand: the only backward is refimpl's.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, cached_property

import numpy as np
import sympy as sp

from derivations.proof import Proof, symbols
from refimpl.layers.embedding import embedding_bag_backward, embedding_bag_forward

NUM_ROWS, DIM = 5, 2
IDS = np.array([2, 0, 2, 1, 2])  # bag 0: [2, 0, 2] (2 twice); bag 1: []; bag 2: [1, 2]
LENGTHS = np.array([3, 0, 2])  # B = 3; rows 3 and 4 are never named


@dataclass(frozen=True)
class BagProof:
    """A proven bag: the symbols, refimpl's forward and backward on them, and the loss.

    ``proof`` is the :class:`~derivations.proof.Proof`; ``touched`` the rows the row-sparse
    table gradient holds.
    """

    proof: Proof
    touched: np.ndarray

    @property
    def table(self) -> np.ndarray:
        """E, (num_rows, D) symbols."""
        return self.proof.values["table"]

    @property
    def weights(self) -> np.ndarray | None:
        """The per-id weights w, (M,) symbols; None for an unweighted bag."""
        return self.proof.values.get("weights")

    @property
    def upstream(self) -> np.ndarray:
        """G, (B, D) symbols."""
        return self.proof.upstream

    @property
    def pooled(self) -> np.ndarray:
        """refimpl's forward on the symbols, (B, D)."""
        return self.proof.output

    @cached_property
    def loss(self) -> sp.Expr:
        """``L = Σ G ⊙ pooled``, expanded."""
        return sp.expand(self.proof.loss)

    @property
    def d_table(self) -> np.ndarray:
        """refimpl's table gradient, densified: (num_rows, D), zeros where no id points."""
        return self.proof.gradients["table"]

    @property
    def d_weights(self) -> np.ndarray | None:
        """refimpl's gradient of the weights, (M,); None for an unweighted bag."""
        return self.proof.gradients.get("weights")


def _bag_proof(pooling: str, weighted: bool, **options) -> BagProof:
    """refimpl's textbook bag forward and backward through :class:`Proof`; the backward is
    looked up here at each call (so a broken one put in its place runs instead)."""
    leaves = {"table": symbols("e", (NUM_ROWS, DIM))}  # E
    if weighted:
        leaves["weights"] = symbols("w", (len(IDS),))
    touched = []

    def forward(values):
        return embedding_bag_forward(values["table"], IDS, LENGTHS, values.get("weights"), pooling)

    def backward(values, d_pooled, cache_):
        d_table, d_weights = embedding_bag_backward(d_pooled, cache_, NUM_ROWS)
        touched.append(d_table.indices)
        if not weighted:
            if d_weights is not None:
                raise AssertionError("not proven: an unweighted bag's weights get a gradient")
            return {"table": d_table}
        return {"table": d_table, "weights": d_weights}

    label = f"EmbeddingBag {pooling}{' weighted' if weighted else ''} B={len(LENGTHS)} D={DIM}"
    proof = Proof(label, forward, backward, leaves, **options)
    return BagProof(proof, touched[0])


@cache
def prove(pooling: str = "sum", weighted: bool = False) -> BagProof:
    """Prove refimpl's backward equals SymPy's derivative of ``L = Σ G ⊙ pooled``, as an
    identity.

    Also proves what the forward does on the special bags: the empty bag pools to exactly
    zero, and the mean divides by the bag's length counting repeats. Raises AssertionError
    otherwise.

    >>> proof = prove("mean")
    >>> proof.pooled[0, 0]                          # (e₂ + e₀ + e₂) / 3
    e_{0,0}/3 + 2*e_{2,0}/3
    >>> proof.touched.tolist()                      # rows 3 and 4: absent, exactly zero
    [0, 1, 2]
    """
    bag = _bag_proof(pooling, weighted)
    bag.proof.statement()
    if any(v != 0 for v in bag.pooled[1]):
        raise AssertionError("not proven: the empty bag must pool to zero")
    if set(bag.touched.tolist()) != set(IDS.tolist()):
        raise AssertionError(f"not proven: the gradient holds rows {bag.touched}, ids {IDS}")
    if pooling == "mean":  # the repeated id counts twice in its bag's length, 3
        if sp.expand(bag.pooled[0, 0] * 3 - bag.table[0, 0] - 2 * bag.table[2, 0]) != 0:
            raise AssertionError("not proven: the mean divides by the length, repeats counted")
    return bag


def symbolic_witness(pooling: str = "sum", weighted: bool = False, seed: int = 0) -> float:
    """Prove (see :func:`prove`), then compare the layer on floats with SymPy's numbers.

    Builds a one-table :class:`refimpl.EmbeddingBagCollection` with these bags, loads the
    table of a random rational point, and returns the worst relative error of its output,
    table gradient and weights' gradient against SymPy's there.

    >>> symbolic_witness("sum", weighted=True) < 1e-12
    True
    """
    from refimpl.layers.embedding import (
        EmbeddingBagCollection,
        EmbeddingBagConfig,
        KeyedJaggedArray,
    )

    prove(pooling, weighted)
    proof = _bag_proof(pooling, weighted, at_point=True, seed=seed).proof
    proof.statement()
    floats = {key: value.astype(np.float64) for key, value in proof.values.items()}
    config = EmbeddingBagConfig(NUM_ROWS, DIM, "t", ["f"], pooling)
    ebc = EmbeddingBagCollection([config], is_weighted=weighted)
    ebc.load_state_dict({"embedding_bags.t.weight": floats["table"]})
    pooled, cache_ = ebc.forward(KeyedJaggedArray(["f"], IDS, LENGTHS, floats.get("weights")))
    d_weights, d_params = ebc.backward(proof.upstream.astype(np.float64), cache_)
    ours = {"table": d_params["embedding_bags.t.weight"]}
    if weighted:
        ours["weights"] = d_weights
    return max(proof.compare(pooled, ours).values())
