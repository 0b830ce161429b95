"""SymPy proofs about refimpl's BCEWithLogitsLoss: the backward is the exact derivative, and
the stable formula is the textbook cross-entropy.

:func:`refimpl.layers.loss.bce_with_logits_forward` and
:func:`~refimpl.layers.loss.bce_with_logits_backward` run unchanged on object arrays of
symbols: logits ``x_b``, labels ``y_b`` (a symbol, a hard label and a soft one), a positive
weight ``q`` and an upstream scalar ``g``. A :class:`derivations.proof.Proof` proves, as an
identity, that the backward is SymPy's derivative of ``g · loss`` in every logit (each
``exp(−x_b)`` a free positive symbol: the loss and its slope are rational in them).
"""

from __future__ import annotations

from functools import cache

import numpy as np
import sympy as sp

from derivations.proof import Proof, symbols
from refimpl.layers.loss import bce_with_logits_backward, bce_with_logits_forward

BATCH = 3
LABELS = (sp.Integer(0), sp.Integer(1), sp.Rational(1, 3))  # at the float witness's point
POS_WEIGHT = sp.Rational(5, 2)


def _loss_proof(labels: np.ndarray, pos_weight, **options) -> Proof:
    """refimpl's textbook loss and its backward over the leaf ``logits`` (B, 1); the loss, a
    scalar, as a (1,) array."""

    def forward(values):
        loss, cache_ = bce_with_logits_forward(values["logits"], labels, pos_weight)
        return np.array([loss], dtype=object), cache_

    def backward(values, d_loss, cache_):
        return {"logits": bce_with_logits_backward(d_loss[0], cache_)}

    weighted = "" if pos_weight is None else f" pos_weight={pos_weight}"
    label = f"BCEWithLogitsLoss B={BATCH}{weighted}"
    return Proof(label, forward, backward, {"logits": symbols("x", (BATCH, 1))}, **options)


@cache
def prove(weighted: bool = True):
    """Prove the loss's backward equals SymPy's derivative of ``g · loss`` and that each
    logit's loss is ``−[q y log σ(x) + (1 − y) log(1 − σ(x))]``, both exactly. Returns the
    symbols ``(logits, labels, pos_weight, g)``, the loss and the backward's gradient.

    >>> (logits, _, _, _), loss, _ = prove(weighted=False)
    >>> sp.simplify(loss.subs({x: 0 for x in logits.ravel()}))    # log 2 at x = 0, any y
    log(2)
    """
    labels = np.array([[sp.Symbol("y_0", real=True)], [sp.Integer(1)], [sp.Rational(1, 3)]])
    pos_weight = sp.Symbol("q", positive=True) if weighted else None
    proof = _loss_proof(labels, pos_weight)
    proof.statement()
    logits, loss, (upstream,) = proof.values["logits"], proof.output[0], proof.upstream
    sigma = [1 / (1 + sp.exp(-x)) for x in logits[:, 0]]
    q = 1 if pos_weight is None else pos_weight
    textbook = (
        sum(
            -(q * y * sp.log(s) + (1 - y) * sp.log(1 - s))
            for s, y in zip(sigma, labels[:, 0], strict=True)
        )
        / BATCH
    )
    # With u_b = e^(−x_b) > 0 every log splits into logs of u_b and of 1 + u_b, which cancel.
    as_u = {x: -sp.log(sp.Symbol(f"u_{b}", positive=True)) for b, x in enumerate(logits[:, 0])}
    difference = sp.together((textbook - loss).subs(as_u))
    if sp.simplify(sp.expand(sp.expand_log(difference, force=True))) != 0:
        raise AssertionError("not proven: the stable loss is the textbook cross-entropy")
    return (logits, labels, pos_weight, upstream), loss, proof.gradients["logits"]


def symbolic_witness(seed: int = 0) -> float:
    """Prove (see :func:`prove`), then compare :class:`refimpl.BCEWithLogitsLoss` on floats
    with SymPy's loss and gradient at a random rational point (labels 0, 1 and 1/3,
    ``pos_weight`` 5/2); the worst relative error.

    >>> symbolic_witness() < 1e-12
    True
    """
    from refimpl.layers.loss import BCEWithLogitsLoss

    prove(True)
    labels = np.array([[y] for y in LABELS], dtype=object)
    proof = _loss_proof(labels, POS_WEIGHT, at_point=True, seed=seed)
    proof.statement()
    loss_fn = BCEWithLogitsLoss(pos_weight=float(POS_WEIGHT))
    logits = proof.values["logits"].astype(np.float64)
    loss, cache_ = loss_fn.forward(logits, labels.astype(np.float64))
    d_logits, _, _ = loss_fn.backward(float(proof.upstream[0]), cache_)
    return max(proof.compare(loss, {"logits": d_logits}).values())
