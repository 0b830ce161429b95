"""DeepFM as a whole model: TorchRec's ``SimpleDeepFMNN``.

TorchRec's ``torchrec.models.deepfm.SimpleDeepFMNN`` (Guo et al., "DeepFM", IJCAI 2017,
https://arxiv.org/abs/1703.04247): a two-layer dense arch brings the dense features to the
embeddings' width D, and the interaction is
:class:`~refimpl.layers.fm.FMInteractionArch`, the dense vector next to a deep branch and a
factorization machine over ``[dense, sparse_1, …, sparse_F]``::

    dense_features (B, I) ─ dense_arch ─► (B, D) ─────────┐
                                                           ├─► [dense, deep, fm] ─► over_arch
    sparse_features ─ sparse_arch (bags) ─► F × (B, D) ───┘      (B, D + DI + 1)   (B, 1)

The over arch is one Linear. TorchRec ends it with ``nn.Sigmoid``, so its model returns
probabilities although its docstring calls them logits, and its own training wrapper
(``SimpleDeepFMNNWrapper``) feeds them to ``binary_cross_entropy_with_logits``, which applies
a second sigmoid. refimpl returns the logits by default, the input
:class:`~refimpl.layers.loss.BCEWithLogitsLoss` expects, and TorchRec's probabilities with
``output="probabilities"``; see :class:`SimpleDeepFMNN`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from refimpl.layers.base import Layer, as_rng, check_array, check_positive_int
from refimpl.layers.embedding import EmbeddingBagCollection, KeyedJaggedArray, SparseArch
from refimpl.layers.fm import PAIRS, FMInteractionArch
from refimpl.layers.mlp import Linear, prefixed
from refimpl.layers.sequential import ReLU, Sequential, Sigmoid
from refimpl.models.dlrm import check_collection, check_model_inputs, model_gradients

OUTPUTS = ("logits", "probabilities")


class DeepFMDenseArch(Layer):
    """TorchRec's ``torchrec.models.deepfm.DenseArch``: Linear, ReLU, Linear, ReLU, as ``model``.

    Parameters
    ----------
    in_features : int
        I, the dense features.
    hidden_layer_size : int
        The hidden width.
    embedding_dim : int
        D, the output width.
    seed : int or Generator, optional
    dtype : float32 or float64

    Notes
    -----
    Keys ``model.0.weight`` (hidden, I), ``model.0.bias``, ``model.2.weight`` (D, hidden),
    ``model.2.bias`` (the ReLUs at positions 1 and 3 hold nothing). Unlike DLRM's
    :class:`~refimpl.layers.mlp.DenseArch`, the sizes are fixed at two layers.

    >>> DeepFMDenseArch(5, 6, 4, seed=0)(np.ones((2, 5))).shape
    (2, 4)
    """

    input_names = ("features",)

    def __init__(
        self, in_features: int, hidden_layer_size: int, embedding_dim: int, *, seed=None,
        dtype=np.float64,
    ):  # fmt: skip
        super().__init__(dtype)
        self.in_features = check_positive_int("in_features", in_features)
        self.hidden_layer_size = check_positive_int("hidden_layer_size", hidden_layer_size)
        self.embedding_dim = check_positive_int("embedding_dim", embedding_dim)
        rng = as_rng(seed)
        self._children["model"] = Sequential(
            Linear(self.in_features, self.hidden_layer_size, seed=rng, dtype=self.dtype),
            ReLU(dtype=self.dtype),
            Linear(self.hidden_layer_size, self.embedding_dim, seed=rng, dtype=self.dtype),
            ReLU(dtype=self.dtype),
        )

    @property
    def model(self) -> Sequential:
        return self._children["model"]

    def _config(self) -> str:
        return (
            f"in_features={self.in_features}, hidden_layer_size={self.hidden_layer_size}, "
            f"embedding_dim={self.embedding_dim}"
        )

    def forward(self, features: np.ndarray):
        """(B, I) to (B, D); the cache is the Sequential's."""
        check_array("features", features, "B I", {"I": self.in_features}, self.dtype)
        return self.model.forward(features)

    def backward(self, d_out: np.ndarray, cache):
        """``(d_features (B, I), d_params)``."""
        d_features, d_model = self.model.backward(d_out, cache)
        return d_features, prefixed("model", d_model)

    def kink_distance(self, features: np.ndarray) -> float:
        return self.model.kink_distance(features)


class DeepFMOverArch(Layer):
    """TorchRec's ``torchrec.models.deepfm.OverArch``: one Linear to a single output.

    Parameters
    ----------
    in_features : int
        D + DI + 1, the interaction's width.
    output : {"logits", "probabilities"}
        ``"logits"`` (default): the Linear's output. ``"probabilities"``: then a sigmoid, as
        TorchRec's ``nn.Sequential(nn.Linear(in_features, 1), nn.Sigmoid())``.
    seed : int or Generator, optional
    dtype : float32 or float64

    Notes
    -----
    Keys ``model.0.weight`` (1, in_features) and ``model.0.bias`` (1,) either way: the sigmoid
    holds no parameters, so TorchRec's ``state_dict()`` loads into both.

    >>> arch = DeepFMOverArch(3, output="probabilities", seed=0)
    >>> arch.load_state_dict({"model.0.weight": np.zeros((1, 3)), "model.0.bias": np.zeros(1)})
    >>> arch(np.ones((2, 3)))
    array([[0.5],
           [0.5]])
    """

    input_names = ("features",)

    def __init__(self, in_features: int, *, output: str = "logits", seed=None, dtype=np.float64):
        super().__init__(dtype)
        if output not in OUTPUTS:
            raise ValueError(f"output: expected one of {OUTPUTS}, got {output!r}")
        self.in_features = check_positive_int("in_features", in_features)
        self.output = output
        linear = Linear(self.in_features, 1, seed=seed, dtype=self.dtype)
        tail = (Sigmoid(dtype=self.dtype),) if output == "probabilities" else ()
        self._children["model"] = Sequential(linear, *tail)

    @property
    def model(self) -> Sequential:
        return self._children["model"]

    def _config(self) -> str:
        return f"in_features={self.in_features}" + (
            "" if self.output == "logits" else ", output='probabilities'"
        )

    def forward(self, features: np.ndarray):
        """(B, in_features) to (B, 1); the cache is the Sequential's."""
        check_array("features", features, "B I", {"I": self.in_features}, self.dtype)
        return self.model.forward(features)

    def backward(self, d_out: np.ndarray, cache):
        """``(d_features (B, in_features), d_params)``."""
        d_features, d_model = self.model.backward(d_out, cache)
        return d_features, prefixed("model", d_model)


class SimpleDeepFMNNCache(NamedTuple):
    dense_arch: object
    sparse_arch: object
    inter_arch: object
    over_arch: object


class SimpleDeepFMNN(Layer):
    """DeepFM as TorchRec's ``torchrec.models.deepfm.SimpleDeepFMNN``.

    Parameters
    ----------
    num_dense_features : int
        I, the dense features.
    embedding_bag_collection : EmbeddingBagCollection
        At least one table, all of one embedding dim D; its dtype is the model's.
    hidden_layer_size : int
        The dense arch's hidden width.
    deep_fm_dimension : int
        DI, the width of the interaction's deep branch.
    fm_pairs : {"scalars", "features"}
        The factorization machine's pairs (:class:`~refimpl.layers.fm.FactorizationMachine`):
        TorchRec's ``"scalars"`` (every pair of scalars of the flattened input) by default,
        or the paper's ``"features"`` (every pair of feature vectors).
    output : {"logits", "probabilities"}
        ``"logits"`` (default): the over arch's Linear, what the model contract and
        :class:`~refimpl.layers.loss.BCEWithLogitsLoss` expect. ``"probabilities"``: its
        sigmoid, what TorchRec's model returns (its ``OverArch`` ends in ``nn.Sigmoid``); use
        it to reproduce TorchRec's numbers.
    seed : int or Generator, optional
        Initialises the dense arch, the deep branch and the over arch, in that order (the
        tables were initialised by the collection).
    dtype : float32 or float64
        Must be the collection's.

    Attributes
    ----------
    params : dict
        TorchRec's ``state_dict()`` keys: ``sparse_arch.embedding_bag_collection.
        embedding_bags.<table>.weight``, ``dense_arch.model.0.*`` and ``dense_arch.model.2.*``,
        ``inter_arch.deep_fm.dense_module.0.*``, ``over_arch.model.0.*``.

    Notes
    -----
    Forward, with ``names`` the F features in the collection's order::

        embedded_dense = dense_arch(dense_features)                  (B, D)
        embedded       = sparse_arch(sparse_features)                (B, F, D), by name
        interaction    = [embedded_dense, deep, fm]                  (B, D + DI + 1)
        logits         = interaction W_oᵀ + b_o                      (B, 1)

    where ``deep = relu(x W_dᵀ + b_d)`` and ``fm`` is the factorization machine, both over
    ``x``, the (F+1)·D values of ``[embedded_dense, embedded[name_1], …]`` (TorchRec's
    ``fm_in_features``). Backward runs the four in reverse; the dense vector's gradient sums
    its passthrough, the deep branch's and the FM's. It returns ``(d_dense_features,
    d_sparse_weights, d_params)`` like :class:`~refimpl.models.dlrm.DLRM`: tables as
    :class:`~refimpl.layers.rowsparse.RowSparse`, ``d_sparse_weights`` None unless the
    collection is weighted.

    Why logits by default: TorchRec's docstring says the model returns logits, and its own
    ``SimpleDeepFMNNWrapper`` trains it with ``binary_cross_entropy_with_logits``, treating
    the output as logits; but the output has been through a sigmoid already, so that loss
    reads ``σ(σ(z))``: the probability it scores lies in (0.5, 0.73), a perfect model still
    loses log(1 + e⁻¹) ≈ 0.31 on every positive and log 2 on every negative, and the gradient
    is squeezed by both sigmoids' slopes. Returning the logit is what both meant.

    Examples
    --------
    >>> from refimpl.layers.embedding import EmbeddingBagConfig
    >>> ebc = EmbeddingBagCollection([
    ...     EmbeddingBagConfig(100, 8, "t1", ["f1", "f3"]),
    ...     EmbeddingBagConfig(100, 8, "t2", ["f2"])], seed=0)
    >>> model = SimpleDeepFMNN(10, ebc, hidden_layer_size=20, deep_fm_dimension=5, seed=0)
    >>> model.inter_arch.fm_in_features, model.over_arch.in_features   # (F+1)·D, D + DI + 1
    (32, 14)
    >>> sparse = KeyedJaggedArray.from_lengths(          # B = 2
    ...     ["f1", "f2", "f3"], np.array([1, 2, 4, 5, 4, 3, 2, 9]), np.array([2, 0, 1, 1, 2, 2]))
    >>> logits, cache = model.forward(np.ones((2, 10)), sparse)
    >>> d_dense, d_weights, d_params = model.backward(np.ones_like(logits), cache)
    >>> logits.shape, d_dense.shape, d_params["over_arch.model.0.weight"].shape
    ((2, 1), (2, 10), (1, 14))
    """

    input_names = ("dense_features", "sparse_features")

    def __init__(
        self,
        num_dense_features: int,
        embedding_bag_collection: EmbeddingBagCollection,
        hidden_layer_size: int,
        deep_fm_dimension: int,
        *,
        fm_pairs: str = "scalars",
        output: str = "logits",
        seed=None,
        dtype=np.float64,
    ):
        super().__init__(dtype)
        dim = check_collection(embedding_bag_collection, self.dtype)
        self.num_dense_features = check_positive_int("num_dense_features", num_dense_features)
        hidden = check_positive_int("hidden_layer_size", hidden_layer_size)
        deep = check_positive_int("deep_fm_dimension", deep_fm_dimension)
        if fm_pairs not in PAIRS:
            raise ValueError(f"fm_pairs: expected one of {PAIRS}, got {fm_pairs!r}")
        if output not in OUTPUTS:
            raise ValueError(f"output: expected one of {OUTPUTS}, got {output!r}")
        self.embedding_dim = dim
        rng = as_rng(seed)
        sparse_arch = SparseArch(embedding_bag_collection)
        self.num_sparse_features = sparse_arch.F
        names = sparse_arch.sparse_feature_names
        fm_in_features = (len(names) + 1) * dim  # D + Σ_f D_f, every D_f = D
        self._children["sparse_arch"] = sparse_arch  # TorchRec's order
        self._children["dense_arch"] = DeepFMDenseArch(
            self.num_dense_features, hidden, dim, seed=rng, dtype=self.dtype
        )
        self._children["inter_arch"] = FMInteractionArch(
            fm_in_features, names, deep, fm_pairs=fm_pairs, seed=rng, dtype=self.dtype
        )
        self._children["over_arch"] = DeepFMOverArch(
            dim + deep + 1, output=output, seed=rng, dtype=self.dtype
        )

    # children, by TorchRec's attribute names
    @property
    def sparse_arch(self) -> SparseArch:
        return self._children["sparse_arch"]

    @property
    def dense_arch(self) -> DeepFMDenseArch:
        return self._children["dense_arch"]

    @property
    def inter_arch(self) -> FMInteractionArch:
        return self._children["inter_arch"]

    @property
    def over_arch(self) -> DeepFMOverArch:
        return self._children["over_arch"]

    @property
    def dense_in_features(self) -> int:
        """I, as the DLRM models name it (TorchRec's ``num_dense_features`` here)."""
        return self.num_dense_features

    @property
    def fm_pairs(self) -> str:
        return self.inter_arch.fm_pairs

    @property
    def output(self) -> str:
        return self.over_arch.output

    def __repr__(self) -> str:
        extra = "" if self.fm_pairs == "scalars" else f", fm_pairs={self.fm_pairs!r}"
        extra += "" if self.output == "logits" else ", output='probabilities'"
        return (
            f"SimpleDeepFMNN(num_dense_features={self.num_dense_features}, "
            f"F={self.num_sparse_features}, D={self.embedding_dim}, "
            f"hidden_layer_size={self.dense_arch.hidden_layer_size}, "
            f"deep_fm_dimension={self.inter_arch.deep_fm_dimension}{extra})"
        )

    def _check_inputs(self, dense_features, sparse_features) -> None:
        check_model_inputs(dense_features, sparse_features, self.num_dense_features, self.dtype)

    def _by_name(self, embedded_sparse: np.ndarray) -> dict[str, np.ndarray]:
        """(B, F, D) as the interaction reads it: feature name to its (B, D) bags."""
        names = self.sparse_arch.sparse_feature_names
        return {name: embedded_sparse[:, f] for f, name in enumerate(names)}

    def forward(self, dense_features: np.ndarray, sparse_features: KeyedJaggedArray):
        """
        Parameters
        ----------
        dense_features : ndarray, shape (B, I)
        sparse_features : KeyedJaggedArray
            B bags for every feature the tables read.

        Returns
        -------
        logits : ndarray, shape (B, 1); probabilities with ``output="probabilities"``
        cache : SimpleDeepFMNNCache
        """
        self._check_inputs(dense_features, sparse_features)
        embedded_dense, dense_cache = self.dense_arch.forward(dense_features)  # (B, D)
        embedded_sparse, sparse_cache = self.sparse_arch.forward(sparse_features)  # (B, F, D)
        interaction, inter_cache = self.inter_arch.forward(
            embedded_dense, self._by_name(embedded_sparse)
        )  # (B, D + DI + 1)
        logits, over_cache = self.over_arch.forward(interaction)  # (B, 1)
        return logits, SimpleDeepFMNNCache(dense_cache, sparse_cache, inter_cache, over_cache)

    def backward(self, d_logits: np.ndarray, cache: SimpleDeepFMNNCache):
        """
        Parameters
        ----------
        d_logits : ndarray, shape (B, 1)
        cache : SimpleDeepFMNNCache from ``forward``

        Returns
        -------
        d_dense_features : ndarray, shape (B, I)
        d_sparse_weights : None, or ndarray (M,) when the collection is weighted
        d_params : dict keyed like ``params``; tables as RowSparse
        """
        dense_cache, sparse_cache, inter_cache, over_cache = cache
        d_interaction, d_over = self.over_arch.backward(d_logits, over_cache)
        d_embedded_dense, d_by_name, d_inter = self.inter_arch.backward(
            d_interaction, inter_cache
        )  # (B, D), F × (B, D)
        names = self.sparse_arch.sparse_feature_names
        d_embedded_sparse = np.stack([d_by_name[n] for n in names], axis=1)  # (B, F, D)
        d_weights, d_sparse = self.sparse_arch.backward(d_embedded_sparse, sparse_cache)
        d_dense_features, d_dense = self.dense_arch.backward(d_embedded_dense, dense_cache)
        d_params = model_gradients(self.params, d_sparse, d_dense, d_inter, d_over)
        return d_dense_features, d_weights, d_params

    def kink_distance(self, dense_features, sparse_features) -> float:
        """The nearest ReLU pre-activation to 0 in the dense arch and the deep branch."""
        self._check_inputs(dense_features, sparse_features)
        embedded_dense = self.dense_arch(dense_features)  # (B, D)
        embedded_sparse = self.sparse_arch(sparse_features)  # (B, F, D)
        return min(
            self.dense_arch.kink_distance(dense_features),
            self.inter_arch.kink_distance(embedded_dense, self._by_name(embedded_sparse)),
        )
