"""SymPy proofs about refimpl's BCEWithLogitsLoss: the backward is the exact derivative, and
the stable formula is the textbook cross-entropy.

:func:`refimpl.layers.loss.bce_with_logits_forward` and
:func:`~refimpl.layers.loss.bce_with_logits_backward` run unchanged on object arrays of
symbols: logits ``x_b``, labels ``y_b`` (a soft label among them), a positive weight ``q`` and
an upstream scalar ``g``. ``g · loss`` is differentiated by ``sp.diff`` in each ``x_b`` and
must equal the backward exactly.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import sympy as sp

from refimpl.layers.loss import bce_with_logits_backward, bce_with_logits_forward
from refimpl.tools.gradcheck import rel_error

BATCH = 3


def _is_zero(expression) -> bool:
    """Exactly zero: rewritten in exponentials and simplified."""
    return sp.simplify(sp.expand(sp.sympify(expression).rewrite(sp.exp))) == 0


@cache
def prove(weighted: bool = True):
    """Prove the loss's backward equals ``sp.diff`` of ``g · loss`` and that each logit's loss
    is ``−[q y log σ(x) + (1 − y) log(1 − σ(x))]``, both exactly. Returns the symbols, the
    loss and the backward's gradient.

    >>> _, loss, _ = prove(weighted=False)
    >>> sp.simplify(loss.subs({"x_0": 0, "x_1": 0, "x_2": 0}))    # log 2 at x = 0, any y
    log(2)
    """
    logits = np.array([[sp.Symbol(f"x_{b}")] for b in range(BATCH)], dtype=object)  # (B, 1)
    labels = np.array([[sp.Symbol("y_0")], [sp.Integer(1)], [sp.Rational(1, 3)]], dtype=object)
    pos_weight = sp.Symbol("q", positive=True) if weighted else None
    upstream = sp.Symbol("g")
    loss, cache_ = bce_with_logits_forward(logits, labels, pos_weight)
    d_logits = bce_with_logits_backward(upstream, cache_)
    for b in range(BATCH):
        exact = sp.diff(upstream * loss, logits[b, 0])
        assert _is_zero(exact - d_logits[b, 0]), f"d loss / d x_{b}"
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
    assert sp.simplify(sp.expand(sp.expand_log(difference, force=True))) == 0, "closed form"
    return (logits, labels, pos_weight, upstream), loss, d_logits


def symbolic_witness(seed: int = 0) -> float:
    """Prove (see :func:`prove`), then compare :class:`refimpl.BCEWithLogitsLoss` on floats
    with the symbolic loss and gradient at the same numbers; the worst relative error.

    >>> symbolic_witness() < 1e-12
    True
    """
    from refimpl.layers.loss import BCEWithLogitsLoss

    (logits_sym, labels_sym, q_sym, g_sym), loss_sym, d_sym = prove(True)
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((BATCH, 1)) * 2
    labels = np.array([[0.0], [1.0], [1 / 3]])
    q, g = 2.5, 0.75
    values = {x: v for x, v in zip(logits_sym[:, 0], logits[:, 0], strict=True)}
    values.update({labels_sym[0, 0]: 0.0, q_sym: q, g_sym: g})
    loss_fn = BCEWithLogitsLoss(pos_weight=q)
    loss, cache_ = loss_fn.forward(logits, labels)
    d_logits, _, _ = loss_fn.backward(g, cache_)
    expected_loss = float(loss_sym.subs(values))
    expected_d = np.array([[float(e.subs(values))] for e in d_sym[:, 0]])
    return max(rel_error(loss, expected_loss), rel_error(d_logits, expected_d))
