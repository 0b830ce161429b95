"""A NumPy reference for DLRM's feature-interaction layers, with hand-derived backward passes.

Every layer is named and constructed like its TorchRec counterpart, keeps parameters keyed and
shaped like TorchRec's ``state_dict()``, and follows one contract: ``forward(*inputs)`` returns
``(out, cache)``; ``backward(d_out, cache)`` returns one gradient per input, then a dict of
parameter gradients.
"""

from refimpl.layers.activations import ACTIVATIONS, get_activation
from refimpl.layers.base import Layer
from refimpl.layers.concat import InteractionConcatArch
from refimpl.layers.crossnet import (
    CrossNet,
    LowRankCrossNet,
    LowRankMixtureCrossNet,
    VectorCrossNet,
)
from refimpl.layers.dcn import InteractionDCNArch
from refimpl.layers.dot import InteractionArch, pair_indices
from refimpl.layers.embedding import (
    EmbeddingBagCollection,
    EmbeddingBagConfig,
    KeyedJaggedArray,
    SparseArch,
)
from refimpl.layers.fm import DeepFM, FactorizationMachine, FMInteractionArch
from refimpl.layers.loss import BCEWithLogitsLoss
from refimpl.layers.mlp import MLP, DenseArch, Linear, OverArch
from refimpl.layers.projection import InteractionProjectionArch
from refimpl.layers.rowsparse import RowSparse
from refimpl.layers.sequential import ReLU, Sequential, Sigmoid
from refimpl.layers.transformer import (
    InteractionTransformerArch,
    LayerNorm,
    MultiheadAttention,
    TransformerEncoderLayer,
)
from refimpl.models.deepfm import SimpleDeepFMNN
from refimpl.models.dlrm import DLRM, DLRM_DCN, DLRM_Baseline, DLRM_Projection
from refimpl.models.transformer_dlrm import DLRM_Transformer
from refimpl.tools.gradcheck import GradCheckResult, draw_away_from_kinks, gradcheck, rel_error
from refimpl.train import metrics, optim  # refimpl.optim.Adam, refimpl.metrics.auc, …

__all__ = [
    "ACTIVATIONS",
    "DLRM",
    "DLRM_DCN",
    "MLP",
    "BCEWithLogitsLoss",
    "CrossNet",
    "DLRM_Baseline",
    "DLRM_Projection",
    "DLRM_Transformer",
    "DeepFM",
    "DenseArch",
    "EmbeddingBagCollection",
    "EmbeddingBagConfig",
    "FMInteractionArch",
    "FactorizationMachine",
    "GradCheckResult",
    "InteractionArch",
    "InteractionConcatArch",
    "InteractionDCNArch",
    "InteractionProjectionArch",
    "InteractionTransformerArch",
    "KeyedJaggedArray",
    "Layer",
    "LayerNorm",
    "Linear",
    "LowRankCrossNet",
    "LowRankMixtureCrossNet",
    "MultiheadAttention",
    "OverArch",
    "ReLU",
    "RowSparse",
    "Sequential",
    "Sigmoid",
    "SimpleDeepFMNN",
    "SparseArch",
    "TransformerEncoderLayer",
    "VectorCrossNet",
    "draw_away_from_kinks",
    "get_activation",
    "gradcheck",
    "metrics",
    "optim",
    "pair_indices",
    "rel_error",
]
