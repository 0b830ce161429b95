"""A NumPy reference for DLRM's feature-interaction layers, with hand-derived backward passes.

Every layer is named and constructed like its TorchRec counterpart, keeps parameters keyed and
shaped like TorchRec's ``state_dict()``, and follows one contract: ``forward(*inputs)`` returns
``(out, cache)``; ``backward(d_out, cache)`` returns one gradient per input, then a dict of
parameter gradients.
"""

from refimpl.layers.activations import ACTIVATIONS, get_activation
from refimpl.layers.base import Layer
from refimpl.layers.crossnet import (
    CrossNet,
    LowRankCrossNet,
    LowRankMixtureCrossNet,
    VectorCrossNet,
)
from refimpl.layers.dcn import InteractionDCNArch
from refimpl.layers.dot import InteractionArch, pair_indices
from refimpl.layers.fm import DeepFM, FactorizationMachine, FMInteractionArch
from refimpl.layers.mlp import MLP, DenseArch, Linear, OverArch
from refimpl.layers.projection import InteractionProjectionArch
from refimpl.layers.sequential import ReLU, Sequential
from refimpl.layers.transformer import (
    InteractionTransformerArch,
    LayerNorm,
    MultiheadAttention,
    TransformerEncoderLayer,
)
from refimpl.tools.gradcheck import GradCheckResult, draw_away_from_kinks, gradcheck, rel_error

__all__ = [
    "ACTIVATIONS",
    "MLP",
    "CrossNet",
    "DeepFM",
    "DenseArch",
    "FMInteractionArch",
    "FactorizationMachine",
    "GradCheckResult",
    "InteractionArch",
    "InteractionDCNArch",
    "InteractionProjectionArch",
    "InteractionTransformerArch",
    "Layer",
    "LayerNorm",
    "Linear",
    "LowRankCrossNet",
    "LowRankMixtureCrossNet",
    "MultiheadAttention",
    "OverArch",
    "ReLU",
    "Sequential",
    "TransformerEncoderLayer",
    "VectorCrossNet",
    "draw_away_from_kinks",
    "get_activation",
    "gradcheck",
    "pair_indices",
    "rel_error",
]
