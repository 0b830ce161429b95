"""DLRM as a whole: TorchRec's ``DLRM``, ``DLRM_DCN`` and ``DLRM_Projection``, and a baseline.

Deep Learning Recommendation Model (Naumov et al. 2019, https://arxiv.org/abs/1906.00091), as
``torchrec.models.dlrm`` builds it. One sample has I dense features (counts, prices) and F
sparse ones (bags of category ids)::

    dense_features (B, I) ─ dense_arch ─► (B, D) ──────┐
                                                        ├─► inter_arch ─► over_arch ─► logits (B, 1)
    sparse_features ─ sparse_arch (bags) ─► (B, F, D) ─┘

The bottom MLP (``dense_arch``) brings the dense features to the embeddings' width D; the
interaction mixes the F + 1 vectors of width D; the top MLP (``over_arch``) maps the result to
one logit per sample; ``σ(logit)`` is the predicted click probability, and the loss is
:class:`~refimpl.layers.loss.BCEWithLogitsLoss`. The three models differ in the interaction
only: the pairwise dot products (:class:`~refimpl.layers.dot.InteractionArch`), a low-rank
cross network (:class:`~refimpl.layers.dcn.InteractionDCNArch`), or two projections and a
product (:class:`~refimpl.layers.projection.InteractionProjectionArch`). :class:`DLRM_Baseline`
has none: the F + 1 vectors go side by side into the top MLP
(:class:`~refimpl.layers.concat.InteractionConcatArch`), the yardstick for what an interaction
buys.

The backward runs the same chain in reverse; the only new step is the last one, where the
gradient of the pooled embeddings reaches the tables as row-sparse gradients
(:class:`~refimpl.layers.rowsparse.RowSparse`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from refimpl.layers.base import (
    Layer,
    as_rng,
    check_array,
    check_positive_int,
    prefixed,
    sub_params,
)
from refimpl.layers.concat import (
    InteractionConcatArch,
    concat_interaction,
    concat_interaction_backward,
)
from refimpl.layers.crossnet import (
    LowRankCrossNet,
    low_rank_crossnet_backward,
    low_rank_crossnet_forward,
)
from refimpl.layers.dcn import InteractionDCNArch, dcn_backward, dcn_forward
from refimpl.layers.dot import (
    InteractionArch,
    dot_interaction,
    dot_interaction_backward,
    pair_indices,
)
from refimpl.layers.embedding import (
    EmbeddingBagCollection,
    KeyedJaggedArray,
    SparseArch,
    embedding_bag_backward,
    embedding_bag_forward,
)
from refimpl.layers.mlp import (
    DenseArch,
    OverArch,
    check_layer_sizes,
    dense_arch_backward,
    dense_arch_forward,
    over_arch_backward,
    over_arch_forward,
)
from refimpl.layers.projection import (
    InteractionProjectionArch,
    projection_backward,
    projection_forward,
)
from refimpl.layers.rowsparse import RowSparse

CHILDREN = ("sparse_arch", "dense_arch", "inter_arch", "over_arch")  # TorchRec's order


class DLRMCache(NamedTuple):
    dense_arch: object
    sparse_arch: object
    inter_arch: object
    over_arch: object


def check_collection(embedding_bag_collection, dtype) -> int:
    """D of the collection, with TorchRec's two checks (at least one table, one D for all) and
    ours (its dtype is the model's)."""
    if not isinstance(embedding_bag_collection, EmbeddingBagCollection):
        raise TypeError(
            "embedding_bag_collection: expected a refimpl EmbeddingBagCollection, got "
            f"{type(embedding_bag_collection).__name__}"
        )
    tables = embedding_bag_collection.embedding_bag_configs()
    if not tables:
        raise ValueError("embedding_bag_collection: at least one embedding bag is required")
    dims = {t.name: t.embedding_dim for t in tables}
    if len(set(dims.values())) > 1:
        raise ValueError(
            f"embedding_bag_collection: all EmbeddingBagConfigs must have the same "
            f"embedding_dim D, got {dims}"
        )
    if embedding_bag_collection.dtype != dtype:
        raise TypeError(
            f"embedding_bag_collection: its tables are {embedding_bag_collection.dtype}, "
            f"the model's dtype is {dtype}; build both with one dtype"
        )
    return tables[0].embedding_dim


def check_model_inputs(dense_features, sparse_features, dense_in_features: int, dtype) -> None:
    """A whole model's two inputs: dense (B, I) of the model's dtype, B bags per key."""
    check_array("dense_features", dense_features, "B I", {"I": dense_in_features}, dtype)
    if not isinstance(sparse_features, KeyedJaggedArray):
        raise TypeError(
            f"sparse_features: expected a KeyedJaggedArray, got {type(sparse_features).__name__}"
        )
    if sparse_features.stride != dense_features.shape[0]:
        raise ValueError(
            f"sparse_features: B = {sparse_features.stride} bags per key, but "
            f"dense_features has B = {dense_features.shape[0]} rows"
        )


def model_gradients(params, d_sparse, d_dense, d_inter, d_over) -> dict:
    """The four children's gradients under the model's keys, in ``params``' order."""
    grads = {
        **prefixed("sparse_arch", d_sparse),
        **prefixed("dense_arch", d_dense),
        **prefixed("inter_arch", d_inter),
        **prefixed("over_arch", d_over),
    }
    return {k: grads[k] for k in params}


class DLRM(Layer):
    """DLRM with the dot-product interaction, as TorchRec's ``torchrec.models.dlrm.DLRM``.

    Parameters
    ----------
    embedding_bag_collection : EmbeddingBagCollection
        At least one table, all of one embedding dim D; its dtype is the model's.
    dense_in_features : int
        I, the number of dense features.
    dense_arch_layer_sizes : list of int
        The bottom MLP; the last size must be D.
    over_arch_layer_sizes : list of int
        The top MLP, at least two sizes; the last is the number of logits (1 for clicks).
    seed : int or Generator, optional
        Initialises the dense layers (the tables were initialised by the collection).
    dtype : float32 or float64
        Must be the collection's.

    Attributes
    ----------
    params : dict
        TorchRec's ``state_dict()`` keys: ``sparse_arch.embedding_bag_collection.
        embedding_bags.<table>.weight``, ``dense_arch.model._mlp.i._linear.*``,
        ``over_arch.model.0._mlp.i._linear.*``, ``over_arch.model.1.*`` (and ``inter_arch.*``
        for the DCN and projection models).

    Notes
    -----
    Forward, with F the number of sparse features::

        embedded_dense  = dense_arch(dense_features)                (B, D)
        embedded_sparse = sparse_arch(sparse_features)              (B, F, D)
        interaction     = inter_arch(embedded_dense, embedded_sparse)
        logits          = over_arch(interaction)                    (B, 1)

    The dot interaction's output is (B, D + F(F+1)/2): TorchRec sizes the OverArch's input
    as ``D + choose(F, 2) + F``, the same number. Backward runs the four in reverse and
    returns ``(d_dense_features, d_sparse_weights, d_params)``: ``d_sparse_weights`` is None
    (ids have no gradient) unless the collection is weighted, when it is the gradient of
    ``sparse_features.weights``; every table's entry in ``d_params`` is a
    :class:`~refimpl.layers.rowsparse.RowSparse`, the rest dense arrays.

    Examples
    --------
    >>> from refimpl.layers.embedding import EmbeddingBagConfig
    >>> ebc = EmbeddingBagCollection([
    ...     EmbeddingBagConfig(100, 8, "t1", ["f1", "f3"]),
    ...     EmbeddingBagConfig(100, 8, "t2", ["f2"])], seed=0)
    >>> model = DLRM(ebc, dense_in_features=10, dense_arch_layer_sizes=[20, 8],
    ...              over_arch_layer_sizes=[5, 1], seed=0)
    >>> sparse = KeyedJaggedArray.from_lengths(                 # B = 2
    ...     ["f1", "f2", "f3"], np.array([1, 2, 4, 5, 4, 3, 2, 9]), np.array([2, 0, 1, 1, 2, 2]))
    >>> logits, cache = model.forward(np.ones((2, 10)), sparse)
    >>> logits.shape
    (2, 1)
    >>> d_dense, d_weights, d_params = model.backward(np.ones_like(logits), cache)
    >>> d_dense.shape, d_weights
    ((2, 10), None)
    >>> d_params["sparse_arch.embedding_bag_collection.embedding_bags.t1.weight"]
    RowSparse(rows=5 of 100, D=8)
    """

    input_names = ("dense_features", "sparse_features")

    def __init__(
        self,
        embedding_bag_collection: EmbeddingBagCollection,
        dense_in_features: int,
        dense_arch_layer_sizes: Sequence[int],
        over_arch_layer_sizes: Sequence[int],
        *,
        seed=None,
        dtype=np.float64,
    ):
        super().__init__(dtype)
        dim = check_collection(embedding_bag_collection, self.dtype)
        self.dense_in_features = check_positive_int("dense_in_features", dense_in_features)
        dense_sizes = check_layer_sizes("dense_arch_layer_sizes", dense_arch_layer_sizes)
        over_sizes = check_layer_sizes("over_arch_layer_sizes", over_arch_layer_sizes)
        if dense_sizes[-1] != dim:
            raise ValueError(
                f"dense_arch_layer_sizes: the last size ({dense_sizes[-1]}) must equal the "
                f"embedding_bag_collection's embedding_dim D = {dim}: the bottom MLP brings the "
                f"dense features to the embeddings' width"
            )
        self.embedding_dim = dim
        rng = as_rng(seed)
        sparse_arch = SparseArch(embedding_bag_collection)
        self.num_sparse_features = sparse_arch.F
        self._children["sparse_arch"] = sparse_arch
        self._children["dense_arch"] = DenseArch(
            self.dense_in_features, dense_sizes, seed=rng, dtype=self.dtype
        )
        inter_arch, over_in = self._interaction(rng)
        self._children["inter_arch"] = inter_arch
        self._children["over_arch"] = OverArch(over_in, over_sizes, seed=rng, dtype=self.dtype)

    def _interaction(self, rng) -> tuple[Layer, int]:
        """The interaction layer and the OverArch's input width: D + F(F+1)/2."""
        features = self.num_sparse_features
        return InteractionArch(features), self.embedding_dim + features * (features + 1) // 2

    # children, by TorchRec's attribute names
    @property
    def sparse_arch(self) -> SparseArch:
        return self._children["sparse_arch"]

    @property
    def dense_arch(self) -> DenseArch:
        return self._children["dense_arch"]

    @property
    def inter_arch(self) -> Layer:
        return self._children["inter_arch"]

    @property
    def over_arch(self) -> OverArch:
        return self._children["over_arch"]

    def _config(self) -> str:
        return (
            f"F={self.num_sparse_features}, D={self.embedding_dim}, "
            f"dense_in_features={self.dense_in_features}, "
            f"dense_arch_layer_sizes={list(self.dense_arch.layer_sizes)}, "
            f"over_arch_layer_sizes={list(self.over_arch.layer_sizes)}"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._config()})"

    def _check_inputs(self, dense_features, sparse_features) -> None:
        check_model_inputs(dense_features, sparse_features, self.dense_in_features, self.dtype)

    def forward(self, dense_features: np.ndarray, sparse_features: KeyedJaggedArray):
        """
        Parameters
        ----------
        dense_features : ndarray, shape (B, I)
        sparse_features : KeyedJaggedArray
            B bags for every feature the tables read.

        Returns
        -------
        logits : ndarray, shape (B, 1) (B, over_arch_layer_sizes[-1] in general)
        cache : DLRMCache
        """
        self._check_inputs(dense_features, sparse_features)
        embedded_dense, dense_cache = self.dense_arch.forward(dense_features)  # (B, D)
        embedded_sparse, sparse_cache = self.sparse_arch.forward(sparse_features)  # (B, F, D)
        interaction, inter_cache = self.inter_arch.forward(embedded_dense, embedded_sparse)
        logits, over_cache = self.over_arch.forward(interaction)  # (B, 1)
        return logits, DLRMCache(dense_cache, sparse_cache, inter_cache, over_cache)

    def backward(self, d_logits: np.ndarray, cache: DLRMCache):
        """
        Parameters
        ----------
        d_logits : ndarray, shape (B, 1)
        cache : DLRMCache from ``forward``

        Returns
        -------
        d_dense_features : ndarray, shape (B, I)
        d_sparse_weights : None, or ndarray (M,) when the collection is weighted
        d_params : dict keyed like ``params``; tables as RowSparse
        """
        dense_cache, sparse_cache, inter_cache, over_cache = cache
        d_interaction, d_over = self.over_arch.backward(d_logits, over_cache)
        d_embedded_dense, d_embedded_sparse, d_inter = self.inter_arch.backward(
            d_interaction, inter_cache
        )  # (B, D), (B, F, D)
        d_weights, d_sparse = self.sparse_arch.backward(d_embedded_sparse, sparse_cache)
        d_dense_features, d_dense = self.dense_arch.backward(d_embedded_dense, dense_cache)
        d_params = model_gradients(self.params, d_sparse, d_dense, d_inter, d_over)
        return d_dense_features, d_weights, d_params

    def kink_distance(self, dense_features, sparse_features) -> float:
        """The nearest ReLU pre-activation to 0 in the dense arch, interaction and over arch."""
        self._check_inputs(dense_features, sparse_features)
        embedded_dense = self.dense_arch(dense_features)  # (B, D)
        embedded_sparse = self.sparse_arch(sparse_features)  # (B, F, D)
        interaction = self.inter_arch(embedded_dense, embedded_sparse)
        return min(
            self.dense_arch.kink_distance(dense_features),
            self.inter_arch.kink_distance(embedded_dense, embedded_sparse),
            self.over_arch.kink_distance(interaction),
        )


class DLRM_DCN(DLRM):
    """DLRM with a low-rank cross network as the interaction, as TorchRec's ``DLRM_DCN``.

    Parameters
    ----------
    embedding_bag_collection, dense_in_features, dense_arch_layer_sizes, over_arch_layer_sizes
        As :class:`DLRM`.
    dcn_num_layers : int
        L, the cross layers.
    dcn_low_rank_dim : int
        r, the rank of each layer's ``W V``.
    seed, dtype
        As :class:`DLRM`.

    Notes
    -----
    ``inter_arch`` is ``InteractionDCNArch(F, LowRankCrossNet((F+1)·D, L, r))`` (keys
    ``inter_arch.crossnet.W_kernels.l``, ``V_kernels.l``, ``bias.l``), its output (B, (F+1)·D)
    is the OverArch's input. DCN-V2: https://arxiv.org/abs/2008.13535.

    Examples
    --------
    >>> from refimpl.layers.embedding import EmbeddingBagConfig
    >>> ebc = EmbeddingBagCollection([EmbeddingBagConfig(100, 8, "t1", ["f1", "f2"])], seed=0)
    >>> model = DLRM_DCN(ebc, 10, [20, 8], [5, 1], dcn_num_layers=2, dcn_low_rank_dim=4, seed=0)
    >>> [k for k in model.params if k.startswith("inter_arch")][:2]
    ['inter_arch.crossnet.W_kernels.0', 'inter_arch.crossnet.W_kernels.1']
    >>> model.over_arch.in_features                     # (F+1)·D
    24
    """

    def __init__(
        self,
        embedding_bag_collection: EmbeddingBagCollection,
        dense_in_features: int,
        dense_arch_layer_sizes: Sequence[int],
        over_arch_layer_sizes: Sequence[int],
        dcn_num_layers: int,
        dcn_low_rank_dim: int,
        *,
        seed=None,
        dtype=np.float64,
    ):
        self.dcn_num_layers = check_positive_int("dcn_num_layers", dcn_num_layers)
        self.dcn_low_rank_dim = check_positive_int("dcn_low_rank_dim", dcn_low_rank_dim)
        super().__init__(
            embedding_bag_collection,
            dense_in_features,
            dense_arch_layer_sizes,
            over_arch_layer_sizes,
            seed=seed,
            dtype=dtype,
        )

    def _interaction(self, rng) -> tuple[Layer, int]:
        width = (self.num_sparse_features + 1) * self.embedding_dim  # N = (F+1)·D
        crossnet = LowRankCrossNet(
            width, self.dcn_num_layers, self.dcn_low_rank_dim, seed=rng, dtype=self.dtype
        )
        return InteractionDCNArch(self.num_sparse_features, crossnet), width

    def _config(self) -> str:
        return (
            f"{super()._config()}, dcn_num_layers={self.dcn_num_layers}, "
            f"dcn_low_rank_dim={self.dcn_low_rank_dim}"
        )


class DLRM_Projection(DLRM):
    """DLRM with the projection interaction, as TorchRec's ``DLRM_Projection``.

    Parameters
    ----------
    embedding_bag_collection, dense_in_features, dense_arch_layer_sizes, over_arch_layer_sizes
        As :class:`DLRM`.
    interaction_branch1_layer_sizes, interaction_branch2_layer_sizes : list of int
        Two DenseArch branches over the flattened (F+1)·D values; each last size must be a
        multiple of D (F1·D and D·F2).
    seed, dtype
        As :class:`DLRM`.

    Notes
    -----
    ``inter_arch`` is ``InteractionProjectionArch(F, DenseArch((F+1)·D, sizes1),
    DenseArch((F+1)·D, sizes2))`` (keys ``inter_arch.interaction_branch1.model._mlp.i.*``…),
    its output (B, D + F1·F2) the OverArch's input.

    Examples
    --------
    >>> from refimpl.layers.embedding import EmbeddingBagConfig
    >>> ebc = EmbeddingBagCollection([EmbeddingBagConfig(100, 8, "t1", ["f1", "f2"])], seed=0)
    >>> model = DLRM_Projection(ebc, 10, [20, 8], [5, 1], [16], [24], seed=0)
    >>> model.over_arch.in_features                     # D + F1·F2 = 8 + 2·3
    14
    >>> DLRM_Projection(ebc, 10, [20, 8], [5, 1], [12], [24])
    Traceback (most recent call last):
    ...
    ValueError: interaction_branch1_layer_sizes: the last size (12) is not a multiple of the
    embedding_dim D = 8
    """

    def __init__(
        self,
        embedding_bag_collection: EmbeddingBagCollection,
        dense_in_features: int,
        dense_arch_layer_sizes: Sequence[int],
        over_arch_layer_sizes: Sequence[int],
        interaction_branch1_layer_sizes: Sequence[int],
        interaction_branch2_layer_sizes: Sequence[int],
        *,
        seed=None,
        dtype=np.float64,
    ):
        self.interaction_branch_layer_sizes = (
            check_layer_sizes("interaction_branch1_layer_sizes", interaction_branch1_layer_sizes),
            check_layer_sizes("interaction_branch2_layer_sizes", interaction_branch2_layer_sizes),
        )
        super().__init__(
            embedding_bag_collection,
            dense_in_features,
            dense_arch_layer_sizes,
            over_arch_layer_sizes,
            seed=seed,
            dtype=dtype,
        )

    def _interaction(self, rng) -> tuple[Layer, int]:
        width = (self.num_sparse_features + 1) * self.embedding_dim  # N = (F+1)·D
        sizes1, sizes2 = self.interaction_branch_layer_sizes
        for i, sizes in enumerate((sizes1, sizes2), 1):  # after DLRM's own checks, as TorchRec
            if sizes[-1] % self.embedding_dim:
                raise ValueError(
                    f"interaction_branch{i}_layer_sizes: the last size ({sizes[-1]}) is not a "
                    f"multiple of the embedding_dim D = {self.embedding_dim}"
                )
        branch1 = DenseArch(width, sizes1, seed=rng, dtype=self.dtype)
        branch2 = DenseArch(width, sizes2, seed=rng, dtype=self.dtype)
        arch = InteractionProjectionArch(self.num_sparse_features, branch1, branch2)
        f1, f2 = (s[-1] // self.embedding_dim for s in (sizes1, sizes2))
        return arch, self.embedding_dim + f1 * f2

    def _config(self) -> str:
        sizes1, sizes2 = self.interaction_branch_layer_sizes
        return (
            f"{super()._config()}, interaction_branch1_layer_sizes={list(sizes1)}, "
            f"interaction_branch2_layer_sizes={list(sizes2)}"
        )


class DLRM_Baseline(DLRM):
    """DLRM without an interaction: the yardstick for what an interaction buys.

    Parameters
    ----------
    embedding_bag_collection, dense_in_features, dense_arch_layer_sizes, over_arch_layer_sizes
        As :class:`DLRM`.
    seed, dtype
        As :class:`DLRM`.

    Notes
    -----
    ``inter_arch`` is :class:`~refimpl.layers.concat.InteractionConcatArch`: the dense vector
    and the F pooled embeddings laid end to end, (B, (F+1)·D), the OverArch's input; it has no
    parameters, so the keys are DLRM's minus nothing and plus nothing. TorchRec has no such
    class; its ``DLRM_DCN`` with ``dcn_num_layers=0`` computes exactly this (its
    ``InteractionDCNArch`` concatenates the same way and a cross network of no layers returns
    its input), with the same ``state_dict()`` keys, which is how the parity checks build it.

    Examples
    --------
    >>> from refimpl.layers.embedding import EmbeddingBagConfig
    >>> ebc = EmbeddingBagCollection([EmbeddingBagConfig(100, 8, "t1", ["f1", "f2"])], seed=0)
    >>> model = DLRM_Baseline(ebc, 10, [20, 8], [5, 1], seed=0)
    >>> model.over_arch.in_features                     # (F+1)·D
    24
    >>> [k for k in model.params if k.startswith("inter_arch")]
    []
    """

    def _interaction(self, rng) -> tuple[Layer, int]:
        width = (self.num_sparse_features + 1) * self.embedding_dim  # (F+1)·D
        return InteractionConcatArch(self.num_sparse_features, dtype=self.dtype), width


# ------------------------------------------------------------------ textbook forms (exact too)


class DLRMSpec(NamedTuple):
    """What the textbook functions need besides ``params``: the model's shape.

    ``features`` lists, in output order, each feature's ``(table key, pooling,
    num_embeddings)``; ``kind`` is ``"DLRM"``, ``"DLRM_DCN"``, ``"DLRM_Projection"`` or
    ``"DLRM_Baseline"``.
    """

    kind: str
    features: tuple
    weighted: bool

    @classmethod
    def of(cls, model: DLRM) -> DLRMSpec:
        ebc = model.sparse_arch.embedding_bag_collection
        prefix = "sparse_arch.embedding_bag_collection.embedding_bags"
        features = tuple(
            (f"{prefix}.{table.name}.weight", table.pooling, table.num_embeddings)
            for table in ebc.tables
            for _ in table.feature_names
        )
        return cls(type(model).__name__, features, ebc.is_weighted)


def model_bags(model: DLRM, sparse_features: KeyedJaggedArray) -> tuple:
    """``(ids, lengths, weights or None)`` per output feature: the textbook's sparse input."""
    ebc = model.sparse_arch.embedding_bag_collection
    bags = []
    for name in ebc.feature_names:
        ids, lengths, weights = sparse_features.feature(name)
        bags.append((ids, lengths, weights if ebc.is_weighted else None))
    return tuple(bags)


def dlrm_forward(params, dense_features, bags, spec: DLRMSpec):
    """The whole model's textbook forward, composed of each layer's textbook form.

    Runs on float and exact object arrays alike (the symbolic witness runs it on SymPy
    expressions). ``bags`` as :func:`model_bags`. Returns ``(logits (B, 1), cache)``.
    """
    embedded_dense, dense_cache = dense_arch_forward(
        sub_params(params, "dense_arch."), dense_features
    )
    pooled, bag_caches = [], []
    for (key, pooling, _), (ids, lengths, weights) in zip(spec.features, bags, strict=True):
        bag, bag_cache = embedding_bag_forward(params[key], ids, lengths, weights, pooling)
        pooled.append(bag)  # (B, D)
        bag_caches.append(bag_cache)
    sparse = np.stack(pooled, axis=1)  # (B, F, D)
    inter_params = sub_params(params, "inter_arch.")
    if spec.kind == "DLRM_DCN":
        crossnet = sub_params(inter_params, "crossnet.")
        interaction, inter_cache = dcn_forward(
            embedded_dense, sparse, lambda x: low_rank_crossnet_forward(crossnet, x)
        )
    elif spec.kind == "DLRM_Projection":
        branch1 = sub_params(inter_params, "interaction_branch1.")
        branch2 = sub_params(inter_params, "interaction_branch2.")
        interaction, inter_cache = projection_forward(
            embedded_dense,
            sparse,
            lambda flat: dense_arch_forward(branch1, flat),
            lambda flat: dense_arch_forward(branch2, flat),
        )
    elif spec.kind == "DLRM_Baseline":
        interaction, inter_cache = concat_interaction(embedded_dense, sparse)  # (B, (F+1)·D)
    else:
        rows, cols = pair_indices(len(spec.features))
        interaction, inter_cache = dot_interaction(embedded_dense, sparse, rows, cols)
    logits, over_cache = over_arch_forward(sub_params(params, "over_arch."), interaction)
    cache = (dense_cache, tuple(bag_caches), inter_cache, over_cache, sparse.shape)
    return logits, cache


def dlrm_backward(params, d_logits, cache, spec: DLRMSpec):
    """``(d_dense_features, d_weights per feature or None, d_params)`` of :func:`dlrm_forward`.

    The chain in reverse: the logits Linear, the OverArch's MLP, the interaction, then the
    dense arch for the dense half and, for the sparse half, each feature's bag; a table that
    serves several features sums their row-sparse gradients.
    """
    dense_cache, bag_caches, inter_cache, over_cache, (_, features, _) = cache
    d_interaction, d_over = over_arch_backward(
        sub_params(params, "over_arch."), d_logits, over_cache
    )
    inter_params = sub_params(params, "inter_arch.")
    d_inter = {}
    if spec.kind == "DLRM_DCN":
        crossnet = sub_params(inter_params, "crossnet.")
        d_embedded_dense, d_sparse, d_crossnet = dcn_backward(
            d_interaction, inter_cache, lambda d, c: low_rank_crossnet_backward(crossnet, d, c)
        )
        d_inter = prefixed("crossnet", d_crossnet)
    elif spec.kind == "DLRM_Projection":
        branch1 = sub_params(inter_params, "interaction_branch1.")
        branch2 = sub_params(inter_params, "interaction_branch2.")
        d_embedded_dense, d_sparse, d_branch1, d_branch2 = projection_backward(
            d_interaction,
            inter_cache,
            lambda d, cache: dense_arch_backward(branch1, d, cache),
            lambda d, cache: dense_arch_backward(branch2, d, cache),
        )
        d_inter = {
            **prefixed("interaction_branch1", d_branch1),
            **prefixed("interaction_branch2", d_branch2),
        }
    elif spec.kind == "DLRM_Baseline":
        d_embedded_dense, d_sparse = concat_interaction_backward(d_interaction, inter_cache)
    else:
        rows, cols = pair_indices(features)
        d_embedded_dense, d_sparse = dot_interaction_backward(
            d_interaction, inter_cache, rows, cols
        )
    d_dense_features, d_dense = dense_arch_backward(
        sub_params(params, "dense_arch."), d_embedded_dense, dense_cache
    )
    d_tables, d_weights = {}, []
    for f, ((key, _, num_rows), bag_cache) in enumerate(
        zip(spec.features, bag_caches, strict=True)
    ):
        d_table, d_bag_weights = embedding_bag_backward(d_sparse[:, f], bag_cache, num_rows)
        d_weights.append(d_bag_weights)
        if key in d_tables:  # a table serving several features: their gradients add
            both = d_tables[key]
            d_table = RowSparse.from_rows(
                np.concatenate([both.indices, d_table.indices]),
                np.concatenate([both.values, d_table.values]),
                num_rows,
            )
        d_tables[key] = d_table
    grads = {
        **d_tables,
        **prefixed("dense_arch", d_dense),
        **prefixed("inter_arch", d_inter),
        **prefixed("over_arch", d_over),
    }
    return (
        d_dense_features,
        tuple(d_weights) if spec.weighted else None,
        {k: grads[k] for k in params},
    )
