"""DLRM with a transformer encoder as the interaction: TorchRec's ``DLRM_Transformer``.

TorchRec's ``torchrec.models.experimental.transformerdlrm.DLRM_Transformer`` is a
:class:`~refimpl.models.dlrm.DLRM` whose interaction is
:class:`~refimpl.layers.transformer.InteractionTransformerArch`: the F + 1 vectors
``[dense; sparse]`` of width D go through ``ntransformer_layers`` encoder layers (self-attention
with ``nhead`` heads, a feed-forward block of width 2048, two layer norms), and their (F+1)·D
outputs are the OverArch's input::

    dense_features (B, I) ─ dense_arch ─► (B, D) ───────┐
                                                         ├─► encoder ×L ─► (B, (F+1)·D) ─►
    sparse_features ─ sparse_arch (bags) ─► (B, F, D) ──┘           over_arch ─► logits (B, 1)

TorchRec builds its encoder layers with torch's default ``batch_first=False`` and feeds them
(B, F+1, D): torch reads the batch as the sequence, so each feature attends across the B
samples of the batch and a sample's logit depends on the other samples. refimpl offers both
readings (``attend_across``) and, as the interaction layer does, defaults to per-sample
attention over the F + 1 features; see :class:`DLRM_Transformer`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from refimpl.layers.base import Layer, check_positive_int
from refimpl.layers.embedding import EmbeddingBagCollection
from refimpl.layers.transformer import ATTEND_ACROSS, InteractionTransformerArch
from refimpl.models.dlrm import DLRM


class DLRM_Transformer(DLRM):
    """DLRM with the transformer interaction, as TorchRec's ``DLRM_Transformer``.

    Parameters
    ----------
    embedding_bag_collection, dense_in_features, dense_arch_layer_sizes, over_arch_layer_sizes
        As :class:`~refimpl.models.dlrm.DLRM` (one D for every table; the bottom MLP's last
        size is D).
    nhead : int
        H, the attention heads of every encoder layer; D must be a multiple of H. TorchRec's
        default 8.
    ntransformer_layers : int
        L, the encoder layers; TorchRec's default 4.
    attend_across : {"features", "batch"}
        ``"features"`` (default): each sample's F + 1 vectors attend to one another, so a
        sample's logit depends on that sample alone. ``"batch"``: TorchRec's model as it
        ships, where every feature attends across the B samples of the batch; use it to
        reproduce TorchRec's numbers.
    dim_feedforward : int
        M, the feed-forward width of the encoder layers. TorchRec fixes torch's default 2048;
        refimpl lets it be set for small checks and short trainings.
    seed : int or Generator, optional
        Initialises the dense arch, the encoder (one layer, copied L times, as
        ``nn.TransformerEncoder`` does) and the over arch, in that order.
    dtype : float32 or float64

    Attributes
    ----------
    params : dict
        TorchRec's ``state_dict()`` keys: the collection's tables, ``dense_arch.*``,
        ``inter_arch.interarch_TE.layers.i.self_attn.in_proj_weight`` … ``norm2.bias`` for
        i < L, and ``over_arch.*``.

    Notes
    -----
    Forward::

        embedded_dense  = dense_arch(dense_features)                     (B, D)
        embedded_sparse = sparse_arch(sparse_features)                   (B, F, D)
        interaction     = encoder([embedded_dense; embedded_sparse])     (B, (F+1)·D)
        logits          = over_arch(interaction)                         (B, 1)

    The OverArch reads (F+1)·D values, as TorchRec sizes it. Dropout is the identity: refimpl
    computes what TorchRec's model computes in eval mode.

    Why per-sample attention is the default: with TorchRec's reading a prediction is not a
    function of its sample. It changes with whatever else is in the batch, so evaluation
    depends on the batch size and order, and serving one request at a time (B = 1) makes every
    attention a softmax over a single key, a constant 1: queries and keys then do nothing at
    all. The model's docstring calls the encoder a way to learn "the relationship between
    dense features and sparse features", which is the per-sample reading. The choice matches
    :class:`~refimpl.layers.transformer.InteractionTransformerArch`'s default.

    Examples
    --------
    >>> from refimpl.layers.embedding import EmbeddingBagConfig, KeyedJaggedArray
    >>> ebc = EmbeddingBagCollection([
    ...     EmbeddingBagConfig(100, 8, "t1", ["f1", "f3"]),
    ...     EmbeddingBagConfig(100, 8, "t2", ["f2"])], seed=0)
    >>> model = DLRM_Transformer(ebc, 10, [20, 8], [5, 1], nhead=2, ntransformer_layers=1,
    ...                          dim_feedforward=16, seed=0)
    >>> model.over_arch.in_features                     # (F+1)·D
    32
    >>> sparse = KeyedJaggedArray.from_lengths(          # B = 2
    ...     ["f1", "f2", "f3"], np.array([1, 2, 4, 5, 4, 3, 2, 9]), np.array([2, 0, 1, 1, 2, 2]))
    >>> logits, cache = model.forward(np.ones((2, 10)), sparse)
    >>> d_dense, d_weights, d_params = model.backward(np.ones_like(logits), cache)
    >>> logits.shape, d_dense.shape, d_weights
    ((2, 1), (2, 10), None)
    >>> DLRM_Transformer(ebc, 10, [20, 8], [5, 1], nhead=3)
    Traceback (most recent call last):
    ...
    ValueError: nhead: the embedding_dim D = 8 must split evenly into H = 3 heads
    """

    def __init__(
        self,
        embedding_bag_collection: EmbeddingBagCollection,
        dense_in_features: int,
        dense_arch_layer_sizes: Sequence[int],
        over_arch_layer_sizes: Sequence[int],
        nhead: int = 8,
        ntransformer_layers: int = 4,
        *,
        attend_across: str = "features",
        dim_feedforward: int = 2048,
        seed=None,
        dtype=np.float64,
    ):
        self.nhead = check_positive_int("nhead", nhead)
        self.ntransformer_layers = check_positive_int("ntransformer_layers", ntransformer_layers)
        self.dim_feedforward = check_positive_int("dim_feedforward", dim_feedforward)
        if attend_across not in ATTEND_ACROSS:
            raise ValueError(
                f"attend_across: expected one of {ATTEND_ACROSS}, got {attend_across!r}"
            )
        self.attend_across = attend_across
        super().__init__(
            embedding_bag_collection,
            dense_in_features,
            dense_arch_layer_sizes,
            over_arch_layer_sizes,
            seed=seed,
            dtype=dtype,
        )

    def _interaction(self, rng) -> tuple[Layer, int]:
        """The transformer arch and the OverArch's input width: (F+1)·D."""
        dim = self.embedding_dim
        if dim % self.nhead:  # after DLRM's own checks, as torch's MultiheadAttention asserts it
            raise ValueError(
                f"nhead: the embedding_dim D = {dim} must split evenly into H = {self.nhead} heads"
            )
        arch = InteractionTransformerArch(
            self.num_sparse_features,
            self.embedding_dim,
            self.nhead,
            self.ntransformer_layers,
            attend_across=self.attend_across,
            dim_feedforward=self.dim_feedforward,
            seed=rng,
            dtype=self.dtype,
        )
        return arch, arch.output_size()

    def _config(self) -> str:
        extra = "" if self.attend_across == "features" else ", attend_across='batch'"
        extra += "" if self.dim_feedforward == 2048 else f", dim_feedforward={self.dim_feedforward}"
        return (
            f"{super()._config()}, nhead={self.nhead}, "
            f"ntransformer_layers={self.ntransformer_layers}{extra}"
        )
