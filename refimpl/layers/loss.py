"""The click loss: binary cross-entropy on logits, as ``torch.nn.BCEWithLogitsLoss``.

A DLRM outputs one logit ``x`` per sample; ``p = σ(x)`` is the predicted click probability and
the label ``y`` is 1 for a click, 0 otherwise (any value in between is a soft label, which
torch accepts, and so do we). With an optional weight ``ω`` on the positive term
(``pos_weight``), the loss of one logit is::

    ℓ(x, y) = −[ω y log σ(x) + (1 − y) log(1 − σ(x))]

and the loss ℒ is the mean of ℓ over the n logits (n = B for a (B, 1) batch). Since
``−log σ(x) = softplus(−x)`` and ``−log(1 − σ(x)) = x + softplus(−x)``
(``softplus(z) = log(1 + e^z)``)::

    ℓ     = (1 − y) x + (1 + (ω − 1) y) softplus(−x)
    dℓ/dx = (1 − y) − (1 + (ω − 1) y) σ(−x) = (1 + (ω − 1) y) σ(x) − ω y

which is ``σ(x) − y`` when ω = 1: the prediction minus the label, divided by n for the mean.
softplus is evaluated without overflow for logits of ±10⁴
(:func:`~refimpl.layers.activations.softplus`), and σ likewise.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from refimpl.layers.activations import get_activation, softplus
from refimpl.layers.base import FLOAT_DTYPES, Layer


class BCECache(NamedTuple):
    logits: np.ndarray  # x, any shape
    labels: np.ndarray  # y, the shape of x
    pos_weight: object  # ω, broadcast to x's shape, or None


def bce_with_logits_forward(logits, labels, pos_weight=None):
    """The mean of ``ℓ = (1 − y) x + (1 + (ω − 1) y) softplus(−x)``; returns ``(loss, cache)``.

    Runs on float and exact object arrays alike.

    >>> loss, _ = bce_with_logits_forward(np.array([[0.0], [1e4]]), np.array([[1.0], [0.0]]))
    >>> float(loss)                          # (log 2 + 10⁴) / 2
    5000.346573590279
    """
    q_minus_1 = 0 if pos_weight is None else pos_weight - 1
    per_logit = (1 - labels) * logits + (1 + q_minus_1 * labels) * softplus(-logits)  # (…)
    return per_logit.sum() / per_logit.size, BCECache(logits, labels, pos_weight)


def bce_with_logits_backward(d_loss, cache: BCECache):
    """``d_loss · ((1 + (ω − 1) y) σ(x) − ω y) / n``, the gradient of the mean loss in x.

    >>> _, cache = bce_with_logits_forward(np.array([[0.0], [2.0]]), np.array([[1.0], [0.0]]))
    >>> bce_with_logits_backward(1.0, cache)          # (σ(x) − y) / 2
    array([[-0.25      ],
           [ 0.44039854]])
    """
    logits, labels, pos_weight = cache
    probability = get_activation("sigmoid").forward(logits)  # σ(x), stable for both signs
    if pos_weight is None:
        d_per_logit = probability - labels  # σ(x) − y
    else:
        d_per_logit = (1 + (pos_weight - 1) * labels) * probability - pos_weight * labels
    return d_loss * d_per_logit / logits.size


class BCEWithLogitsLoss(Layer):
    """Mean binary cross-entropy on logits, as ``torch.nn.BCEWithLogitsLoss()``.

    Parameters
    ----------
    pos_weight : float or ndarray, optional
        ω, the weight of the positive term, broadcast against the labels as torch does (for
        logits of shape (B, k), one weight per column). Default: no weighting (ω = 1).

    Notes
    -----
    ``forward(logits, labels)`` returns ``(loss, cache)``, the loss a 0-d array of the logits'
    dtype; ``backward(d_loss=1.0, cache)`` returns ``(d_logits, None, {})``: labels are data
    (torch could differentiate them; DLRM never needs it) and the loss has no parameters.
    Labels must have the logits' shape and dtype; like torch, any real label is accepted
    (soft labels), not only 0 and 1. The mean over no logits is refused (torch returns nan).

    Examples
    --------
    >>> loss_fn = BCEWithLogitsLoss()
    >>> logits, labels = np.array([[2.0], [-1.0]]), np.array([[1.0], [0.0]])
    >>> loss, cache = loss_fn.forward(logits, labels)
    >>> round(float(loss), 6)                        # (log(1 + e⁻²) + log(1 + e⁻¹)) / 2
    0.220095
    >>> d_logits, _, _ = loss_fn.backward(1.0, cache)
    >>> d_logits                                     # (σ(x) − y) / B
    array([[-0.05960146],
           [ 0.13447071]])
    """

    input_names = ("logits", "labels")

    def __init__(self, pos_weight=None):
        super().__init__()  # no parameters; works in the logits' dtype, float32 or float64
        if pos_weight is not None:
            pos_weight = np.asarray(pos_weight)
            if pos_weight.dtype == bool or not np.issubdtype(pos_weight.dtype, np.number):
                raise TypeError(
                    f"pos_weight: expected a number or a float array, got dtype {pos_weight.dtype}"
                )
            pos_weight = pos_weight.astype(np.float64)
        self.pos_weight = pos_weight

    def __repr__(self) -> str:
        extra = "" if self.pos_weight is None else f"pos_weight={self.pos_weight.tolist()}"
        return f"BCEWithLogitsLoss({extra})"

    def _check(self, logits, labels):
        for name, array in (("logits", logits), ("labels", labels)):
            if not isinstance(array, np.ndarray):
                raise TypeError(f"{name}: expected a NumPy array, got {type(array).__name__}")
            if array.dtype not in FLOAT_DTYPES:
                raise TypeError(
                    f"{name}: expected a float32 or float64 array, got dtype {array.dtype}"
                )
        if labels.shape != logits.shape:
            raise ValueError(
                f"labels: expected the logits' shape {logits.shape} (e.g. (B, 1)), got "
                f"{labels.shape}"
            )
        if labels.dtype != logits.dtype:
            raise TypeError(f"labels: dtype {labels.dtype} differs from the logits' {logits.dtype}")
        if logits.size == 0:
            raise ValueError(
                f"logits: the mean over no logits is undefined (shape {logits.shape}); torch "
                "returns nan"
            )
        if self.pos_weight is None:
            return None
        try:
            shape = np.broadcast_shapes(self.pos_weight.shape, labels.shape)
        except ValueError:
            shape = None
        if shape != labels.shape:
            raise ValueError(
                f"pos_weight: shape {self.pos_weight.shape} does not broadcast to the labels' "
                f"{labels.shape} (one weight per column: shape (C,) for logits (B, C))"
            )
        return np.broadcast_to(self.pos_weight, labels.shape).astype(logits.dtype)

    def forward(self, logits: np.ndarray, labels: np.ndarray):
        """
        Parameters
        ----------
        logits : ndarray, e.g. shape (B, 1)
        labels : ndarray, the shape and dtype of ``logits``

        Returns
        -------
        loss : 0-d ndarray
        cache : BCECache
        """
        pos_weight = self._check(logits, labels)
        loss, cache = bce_with_logits_forward(logits, labels, pos_weight)
        return np.asarray(loss, logits.dtype), cache

    def backward(self, d_loss, cache: BCECache):
        """
        Parameters
        ----------
        d_loss : float
            The upstream gradient of the loss (1.0 when the loss is what is minimised).
        cache : BCECache from ``forward``

        Returns
        -------
        d_logits : ndarray, the logits' shape
        d_labels : None
        d_params : dict, empty
        """
        d_loss = np.asarray(d_loss)
        if d_loss.shape != () or d_loss.dtype.kind not in "fiu":
            raise ValueError(f"d_loss: expected a real scalar, got {d_loss!r}")
        dtype = cache.logits.dtype
        return bce_with_logits_backward(d_loss.astype(dtype), cache).astype(dtype), None, {}
