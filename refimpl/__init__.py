"""A NumPy reference for DLRM's feature-interaction layers, with hand-derived backward passes.

Every layer is named and constructed like its TorchRec counterpart, keeps parameters keyed and
shaped like TorchRec's ``state_dict()``, and follows one contract: ``forward(*inputs)`` returns
``(out, cache)``; ``backward(d_out, cache)`` returns one gradient per input, then a dict of
parameter gradients.
"""

from refimpl._layer import Layer
from refimpl.activations import ACTIVATIONS, get_activation
from refimpl.dot import InteractionArch, pair_indices
from refimpl.gradcheck import GradCheckResult, gradcheck, rel_error

__all__ = [
    "ACTIVATIONS",
    "GradCheckResult",
    "InteractionArch",
    "Layer",
    "get_activation",
    "gradcheck",
    "pair_indices",
    "rel_error",
]
