"""The factorization-machine interaction of DeepFM, as TorchRec ships it and as the papers have it.

TorchRec: ``torchrec.modules.deepfm.FactorizationMachine`` and ``DeepFM``, and
``torchrec.models.deepfm.FMInteractionArch``. Papers: Rendle, "Factorization Machines", ICDM
2010; Guo et al., "DeepFM", IJCAI 2017, https://arxiv.org/abs/1703.04247.

A factorization machine's second-order term sums the products of pairs. Which pairs is where
TorchRec and the papers part:

- **the papers** (``pairs="features"``): every pair of *feature vectors*,
  ``Σ_{i<j} ⟨c_i, c_j⟩`` over the F feature embeddings c_i (D each);
- **TorchRec** (``pairs="scalars"``, the default here as there): every pair of *scalars* of
  the flattened input ``x`` (all N = F·D entries), ``Σ_{a<b} x_a x_b``. That adds the products
  across embedding dimensions (``c_{i,d} c_{j,e}`` with d ≠ e) and inside one embedding
  (``c_{i,d} c_{i,e}``), which the papers' FM does not have.

Both are computed in O(N) rather than O(N²) by the same identity, ``Σ_{a<b} x_a x_b =
½[(Σ_a x_a)² − Σ_a x_a²]``: TorchRec applies it once to the flattened row, the papers once per
embedding dimension d (to the F numbers ``c_{1,d} … c_{F,d}``) and sum over d.

The textbook functions (``fm_scalar_pairs_forward`` …) run unchanged on float arrays and on
exact object arrays (SymPy symbols, rationals), which is how ``derivations/`` proves them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from refimpl.fast import fm as fast
from refimpl.layers.activations import get_activation
from refimpl.layers.base import (
    FLOAT_DTYPES,
    Layer,
    as_rng,
    check_array,
    check_positive_int,
    linear_uniform,
)
from refimpl.layers.mlp import linear_backward, linear_forward, prefixed, sub_params

PAIRS = ("scalars", "features")
DEEP_LINEAR = "deep_fm.dense_module.0."  # TorchRec's key prefix of the deep branch's Linear


# --------------------------------------------------------------------------------- textbook


class FMCache(NamedTuple):
    inputs: np.ndarray  # the flattened (B, N) or stacked (B, F, D) input
    total: np.ndarray  # s = Σ of the input over what is paired: (B, 1) or (B, D)


def fm_scalar_pairs_forward(flat: np.ndarray) -> tuple[np.ndarray, FMCache]:
    """TorchRec's FM: ``Σ_{a<b} x_a x_b`` over the N scalars of each row, as ``½[s² − Σ x²]``.

    >>> out, _ = fm_scalar_pairs_forward(np.array([[1.0, 2.0, 3.0]]))
    >>> out                                       # 1·2 + 1·3 + 2·3
    array([[11.]])
    """
    total = flat.sum(axis=1, keepdims=True)  # s, (B, 1)
    squares = (flat * flat).sum(axis=1, keepdims=True)  # Σ x², (B, 1)
    return (total * total - squares) / 2, FMCache(flat, total)  # (B, 1)


def fm_scalar_pairs_backward(d_out: np.ndarray, cache: FMCache) -> np.ndarray:
    """``∂/∂x_a ½[s² − Σ x²] = s − x_a``: each scalar's gradient is the sum of the others.

    >>> _, cache = fm_scalar_pairs_forward(np.array([[1.0, 2.0, 3.0]]))
    >>> fm_scalar_pairs_backward(np.ones((1, 1)), cache)
    array([[5., 4., 3.]])
    """
    flat, total = cache
    return d_out * (total - flat)  # (B, N)


def fm_feature_pairs_forward(stacked: np.ndarray) -> tuple[np.ndarray, FMCache]:
    """The papers' FM: ``Σ_{i<j} ⟨c_i, c_j⟩`` over the F vectors, as ``½ Σ_d [s_d² − Σ_i c_id²]``.

    >>> v = np.array([[[1.0, 2.0], [3.0, 4.0]]])  # B=1, F=2, D=2
    >>> fm_feature_pairs_forward(v)[0]             # ⟨c_0, c_1⟩ = 3 + 8
    array([[11.]])
    """
    total = stacked.sum(axis=1)  # s_d = Σ_i c_id, (B, D)
    squares = (stacked * stacked).sum(axis=(1, 2))[:, None]  # Σ_i Σ_d c_id², (B, 1)
    return ((total * total).sum(axis=1, keepdims=True) - squares) / 2, FMCache(stacked, total)


def fm_feature_pairs_backward(d_out: np.ndarray, cache: FMCache) -> np.ndarray:
    """``∂/∂c_id = s_d − c_id``: the sum of the *other* features in the same dimension d.

    >>> _, cache = fm_feature_pairs_forward(np.array([[[1.0, 2.0], [3.0, 4.0]]]))
    >>> fm_feature_pairs_backward(np.ones((1, 1)), cache)
    array([[[3., 4.],
            [1., 2.]]])
    """
    stacked, total = cache
    return d_out[:, :, None] * (total[:, None, :] - stacked)  # (B, F, D)


# ---------------------------------------------------------------------- input bookkeeping


def check_embeddings(embeddings, dtype=None) -> list[np.ndarray]:
    """A non-empty list of floating arrays of one dtype, each (B, …) with the same B.

    TorchRec's modules take ``List[Tensor]``, each ``(B, num_embeddings, embedding_dim)`` or
    any (B, …) shape (they flatten from axis 1).
    """
    if isinstance(embeddings, np.ndarray) or not isinstance(embeddings, Sequence):
        raise TypeError(
            "embeddings: expected a list of arrays, each (B, …) such as (B, F_i, D_i), got "
            f"{type(embeddings).__name__}"
        )
    if not embeddings:
        raise ValueError("embeddings: expected at least one array, got an empty list")
    arrays = []
    for i, e in enumerate(embeddings):
        if not isinstance(e, np.ndarray):
            raise TypeError(f"embeddings[{i}]: expected a NumPy array, got {type(e).__name__}")
        if e.dtype not in FLOAT_DTYPES:
            raise TypeError(f"embeddings[{i}]: expected a float32 or float64 array, got {e.dtype}")
        if e.ndim < 2:
            raise ValueError(
                f"embeddings[{i}]: expected an array of shape (B, …) with at least 2 axes, got "
                f"shape {e.shape}"
            )
        if e.shape[0] != embeddings[0].shape[0]:
            raise ValueError(
                f"embeddings[{i}]: batch size B = {e.shape[0]} differs from embeddings[0]'s "
                f"B = {embeddings[0].shape[0]}"
            )
        expected = embeddings[0].dtype if dtype is None else dtype
        if e.dtype != expected:
            raise TypeError(f"embeddings[{i}]: dtype {e.dtype} differs from {expected}")
        arrays.append(e)
    return arrays


def flatten_embeddings(embeddings: Sequence[np.ndarray]) -> np.ndarray:
    """TorchRec's ``_get_flatten_input``: each (B, …) flattened to (B, ·), then concatenated."""
    batch = embeddings[0].shape[0]
    widths = [int(np.prod(e.shape[1:])) for e in embeddings]  # explicit: B may be 0
    return np.concatenate([e.reshape(batch, w) for e, w in zip(embeddings, widths, strict=True)], 1)


def split_flat(d_flat: np.ndarray, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """Undo :func:`flatten_embeddings` on a gradient: one array per input, in its shape."""
    widths = [int(np.prod(shape[1:])) for shape in shapes]
    pieces = np.split(d_flat, np.cumsum(widths)[:-1], axis=1)
    return [p.reshape(shape) for p, shape in zip(pieces, shapes, strict=True)]


def stack_features(embeddings: Sequence[np.ndarray]) -> np.ndarray:
    """The papers' view: every (B, D) array is one feature, every (B, F_i, D) array F_i of them;
    all stacked to (B, F, D). They must share D."""
    dims = {e.shape[-1] for e in embeddings}
    bad = [i for i, e in enumerate(embeddings) if e.ndim not in (2, 3)]
    if bad or len(dims) != 1:
        shapes = [e.shape for e in embeddings]
        raise ValueError(
            'embeddings: pairs="features" needs arrays of shape (B, D) or (B, F_i, D) with one '
            f"embedding dimension D, got shapes {shapes}"
        )
    return np.concatenate([e if e.ndim == 3 else e[:, None, :] for e in embeddings], axis=1)


# ---------------------------------------------------------------------------------- layers


class FactorizationMachineCache(NamedTuple):
    shapes: tuple  # the input arrays' shapes, to split the gradient back
    fm: FMCache


class FactorizationMachine(Layer):
    """The second-order term of a factorization machine, over a list of embeddings.

    Parameters
    ----------
    pairs : {"scalars", "features"}
        ``"scalars"`` (default) is TorchRec's ``FactorizationMachine``: the inputs are
        flattened to (B, N) and the output is ``Σ_{a<b} x_a x_b`` over all N scalars.
        ``"features"`` is the FM of Rendle (2010) and DeepFM (2017): ``Σ_{i<j} ⟨c_i, c_j⟩``
        over the feature vectors; every input must then be (B, D) (one feature) or
        (B, F_i, D) (F_i features) with one D.
    dtype : float32 or float64
        Unused (no parameters); accepted for a uniform constructor.

    Notes
    -----
    With ``x`` the flattened input (B, N) and ``s = Σ_a x_a`` (B, 1)::

        out = ½ (s² − Σ_a x_a²)          (B, 1)      pairs="scalars"
        dx_a = d_out · (s − x_a)          (B, N)

    With ``c`` the stacked features (B, F, D) and ``s_d = Σ_i c_id`` (B, D)::

        out = ½ Σ_d (s_d² − Σ_i c_id²)    (B, 1)      pairs="features"
        dc_id = d_out · (s_d − c_id)      (B, F, D)

    The two agree when D = 1 and differ otherwise: TorchRec's adds
    ``Σ_{(i,d) ≠ (j,e), d ≠ e} c_id c_je`` (each unordered pair once).

    Examples
    --------
    >>> v = [np.array([[1.0, 2.0]]), np.array([[3.0, 4.0]])]   # two features, D = 2
    >>> FactorizationMachine()(v)                # all pairs of 1, 2, 3, 4
    array([[35.]])
    >>> FactorizationMachine(pairs="features")(v)     # ⟨(1, 2), (3, 4)⟩
    array([[11.]])
    """

    input_names = ("embeddings",)

    def __init__(self, *, pairs: str = "scalars", dtype=np.float64):
        super().__init__(dtype)
        if pairs not in PAIRS:
            raise ValueError(f"pairs: expected one of {PAIRS}, got {pairs!r}")
        self.pairs = pairs

    def _config(self) -> str:
        return "" if self.pairs == "scalars" else f"pairs={self.pairs!r}"

    def forward(self, embeddings: Sequence[np.ndarray]):
        """
        Parameters
        ----------
        embeddings : list of ndarray, each (B, …)
            (B, D) or (B, F_i, D) each for ``pairs="features"``.

        Returns
        -------
        out : ndarray, shape (B, 1)
        cache : FactorizationMachineCache
        """
        arrays = check_embeddings(embeddings)
        shapes = tuple(e.shape for e in arrays)
        if self.pairs == "scalars":  # the fast path: the same numbers (tests/test_fast_fm.py)
            out, flat, total = fast.fm_scalar_pairs_forward_fast(arrays)  # (B, 1), (B, N), (B, 1)
            cache = FMCache(flat, total)
        else:
            out, cache = fm_feature_pairs_forward(stack_features(arrays))
        return out, FactorizationMachineCache(shapes, cache)

    def backward(self, d_out: np.ndarray, cache: FactorizationMachineCache):
        """
        Parameters
        ----------
        d_out : ndarray, shape (B, 1)
        cache : FactorizationMachineCache from ``forward``

        Returns
        -------
        d_embeddings : list of ndarray, shaped like the inputs
        d_params : dict, empty
        """
        shapes, fm = cache
        inputs = fm.inputs
        check_array("d_out", d_out, "B 1", {"B": inputs.shape[0]}, inputs.dtype)
        if self.pairs == "scalars":
            return split_flat(fast.fm_scalar_pairs_backward_fast(d_out, *fm), shapes), {}
        d_stacked = fm_feature_pairs_backward(d_out, fm)  # (B, F, D)
        counts = [1 if len(shape) == 2 else shape[1] for shape in shapes]
        pieces = np.split(d_stacked, np.cumsum(counts)[:-1], axis=1)
        return [p.reshape(shape) for p, shape in zip(pieces, shapes, strict=True)], {}


class DeepFMCache(NamedTuple):
    shapes: tuple  # the input arrays' shapes
    dense_module: object  # the dense module's cache


class DeepFM(Layer):
    """TorchRec's ``DeepFM``: the deep branch, ``dense_module`` over the flattened embeddings.

    Parameters
    ----------
    dense_module : Layer
        Any refimpl layer mapping (B, N) to (B, O), N the total number of input scalars (for
        example ``Sequential(Linear(N, O), ReLU())``, as in TorchRec's ``FMInteractionArch``).
        Its keys appear under ``dense_module.``.

    Notes
    -----
    ``out = dense_module(flatten(embeddings))``; backward runs the module's backward and splits
    its input gradient back into one array per embedding.

    Examples
    --------
    >>> from refimpl.layers.mlp import Linear
    >>> deep = DeepFM(Linear(4, 1, bias=False))
    >>> deep.load_state_dict({"dense_module.weight": np.array([[1.0, 1.0, 1.0, 1.0]])})
    >>> out, cache = deep.forward([np.array([[1.0, 2.0]]), np.array([[3.0, 4.0]])])
    >>> out
    array([[10.]])
    >>> d_embeddings, d_params = deep.backward(np.ones_like(out), cache)
    >>> d_embeddings[1], d_params["dense_module.weight"]
    (array([[1., 1.]]), array([[1., 2., 3., 4.]]))
    """

    input_names = ("embeddings",)

    def __init__(self, dense_module: Layer):
        if not isinstance(dense_module, Layer):
            raise TypeError(f"dense_module: expected a refimpl layer, got {dense_module!r}")
        super().__init__(dense_module.dtype)
        self._children["dense_module"] = dense_module

    @property
    def dense_module(self) -> Layer:
        return self._children["dense_module"]

    def forward(self, embeddings: Sequence[np.ndarray]) -> tuple[np.ndarray, DeepFMCache]:
        """
        Parameters
        ----------
        embeddings : list of ndarray, each (B, …), N scalars per row in all

        Returns
        -------
        out : ndarray, shape (B, O)
        cache : DeepFMCache
        """
        arrays = check_embeddings(embeddings, self.dtype)
        out, cache = self.dense_module.forward(flatten_embeddings(arrays))  # (B, O)
        return out, DeepFMCache(tuple(e.shape for e in arrays), cache)

    def backward(self, d_out: np.ndarray, cache: DeepFMCache):
        """
        Returns
        -------
        d_embeddings : list of ndarray, shaped like the inputs
        d_params : dict keyed like ``params``
        """
        d_flat, d_module = self.dense_module.backward(d_out, cache.dense_module)  # (B, N)
        return split_flat(d_flat, cache.shapes), prefixed("dense_module", d_module)

    def kink_distance(self, embeddings: Sequence[np.ndarray]) -> float:
        arrays = check_embeddings(embeddings, self.dtype)
        return self.dense_module.kink_distance(flatten_embeddings(arrays))


class FMInteractionCache(NamedTuple):
    shapes: tuple  # each embedding's shape, dense's first: to split the gradient back
    flat: np.ndarray  # x = flatten(E), the deep branch's input, (B, N)
    deep: np.ndarray  # relu(x Wᵀ + b): ReLU's derivative is read from it, (B, DI)
    fm: FMCache


def fm_interaction_forward(params, embeddings, pairs: str = "scalars"):
    """TorchRec's FMInteractionArch on ``E = [dense, sparse_1, …]``: ``[dense, deep, fm]``.

    ``params`` keyed like TorchRec's: ``deep_fm.dense_module.0.weight`` (DI, N) and ``.bias``.
    """
    flat = flatten_embeddings(embeddings)  # x, (B, N)
    pre, _ = linear_forward(sub_params(params, DEEP_LINEAR), flat)  # x Wᵀ + b, (B, DI)
    deep = get_activation("relu").forward(pre)  # (B, DI)
    if pairs == "scalars":
        fm, fm_cache = fm_scalar_pairs_forward(flat)  # (B, 1)
    else:
        fm, fm_cache = fm_feature_pairs_forward(stack_features(embeddings))  # (B, 1)
    out = np.concatenate([embeddings[0], deep, fm], axis=1)  # (B, D + DI + 1)
    return out, FMInteractionCache(tuple(e.shape for e in embeddings), flat, deep, fm_cache)


def fm_interaction_backward(params, d_out, cache: FMInteractionCache, pairs: str = "scalars"):
    """``(d_embeddings, d_params)`` for :func:`fm_interaction_forward`: both branches read
    every embedding, so their gradients add; dense also has its passthrough's."""
    shapes, flat, deep, fm_cache = cache
    dim, width = shapes[0][1], deep.shape[1]
    d_pre = d_out[:, dim : dim + width] * get_activation("relu").derivative(deep)  # (B, DI)
    d_deep_input, d_linear = linear_backward(sub_params(params, DEEP_LINEAR), d_pre, flat)
    if pairs == "scalars":
        d_fm = fm_scalar_pairs_backward(d_out[:, dim + width :], fm_cache)  # (B, N)
    else:  # the stacked (B, F, D) features flatten in the order flatten_embeddings uses
        d_fm = fm_feature_pairs_backward(d_out[:, dim + width :], fm_cache).reshape(flat.shape)
    d_embeddings = split_flat(d_deep_input + d_fm, shapes)  # both branches, per embedding
    d_embeddings[0] = d_out[:, :dim] + d_embeddings[0]  # + the dense passthrough, (B, D)
    return d_embeddings, prefixed(DEEP_LINEAR[:-1], d_linear)  # W (DI, N), b (DI,)


class FMInteractionArch(Layer):
    """TorchRec's DeepFM interaction: ``concat(dense, DeepFM(…), FM(…))``.

    Parameters
    ----------
    fm_in_features : int
        N, the number of scalars of ``[dense, sparse[name] for every name]``: D + Σ_f D_f.
    sparse_feature_names : list of str
        The F names read from ``sparse_features``, in this order. F = 0 returns ``dense``
        unchanged, as TorchRec does.
    deep_fm_dimension : int
        DI, the width of the deep branch, TorchRec's ``DeepFM(Sequential(Linear(N, DI),
        ReLU()))``.
    fm_pairs : {"scalars", "features"}
        The FM's pairs (see :class:`FactorizationMachine`): TorchRec's ``"scalars"`` by
        default, or the papers' ``"features"`` (then every D_f must equal D).
    seed : int or Generator, optional
        Initialises the Linear as ``nn.Linear`` does.
    dtype : float32 or float64

    Attributes
    ----------
    params : dict
        TorchRec's keys: ``deep_fm.dense_module.0.weight`` (DI, N) and
        ``deep_fm.dense_module.0.bias`` (DI,).

    Notes
    -----
    Inputs: ``dense_features`` (B, D) and ``sparse_features``, a mapping from feature name to a
    (B, D_f) array: NumPy's counterpart of TorchRec's ``KeyedTensor``, of which this arch only
    uses ``sparse_features[name]``. A mapping keeps the names and each feature's own width
    (TorchRec allows D_f to differ) and hands the gradient back under the same names. Names
    the arch does not list are ignored, as TorchRec ignores them. With
    ``E = [dense, sparse[n_1], …, sparse[n_F]]`` and ``x = flatten(E)`` (B, N)::

        deep = relu(x Wᵀ + b)                           (B, DI)
        fm   = FactorizationMachine(pairs)(E)            (B, 1)
        out  = concat(dense, deep, fm)                   (B, D + DI + 1)

    Backward, with ``d_out = [g_dense, g_deep, g_fm]``::

        dz   = g_deep ⊙ [deep > 0]                       (B, DI)
        dW   = dzᵀ x,   db = Σ_b dz
        dx   = dz W + g_fm ⊙ (s − x)                     both branches read x (pairs="scalars")
        d_dense = g_dense + dx[:, :D],  d_sparse[n_f] = its columns of dx

    (a name listed twice gets the sum of its entries). :func:`fm_interaction_forward` and
    :func:`fm_interaction_backward` are the textbook form the layer calls.

    Examples
    --------
    >>> arch = FMInteractionArch(6, ["f1", "f2"], deep_fm_dimension=3, seed=0)
    >>> dense = np.ones((4, 2))
    >>> sparse = {"f1": np.ones((4, 2)), "f2": np.ones((4, 2))}
    >>> out, cache = arch.forward(dense, sparse)
    >>> out.shape                                   # D + DI + 1
    (4, 6)
    >>> out[:, -1]                                  # six ones: 15 pairs of scalars
    array([15., 15., 15., 15.])
    >>> d_dense, d_sparse, d_params = arch.backward(np.ones_like(out), cache)
    >>> sorted(d_sparse), d_sparse["f1"].shape
    (['f1', 'f2'], (4, 2))
    """

    input_names = ("dense_features", "sparse_features")

    def __init__(
        self,
        fm_in_features: int,
        sparse_feature_names: Sequence[str],
        deep_fm_dimension: int,
        *,
        fm_pairs: str = "scalars",
        seed=None,
        dtype=np.float64,
    ):
        super().__init__(dtype)
        self.fm_in_features = check_positive_int("fm_in_features", fm_in_features)
        self.deep_fm_dimension = check_positive_int("deep_fm_dimension", deep_fm_dimension)
        if isinstance(sparse_feature_names, str) or not all(
            isinstance(n, str) for n in sparse_feature_names
        ):
            raise TypeError(
                f"sparse_feature_names: expected a list of names, got {sparse_feature_names!r}"
            )
        if fm_pairs not in PAIRS:
            raise ValueError(f"fm_pairs: expected one of {PAIRS}, got {fm_pairs!r}")
        self.sparse_feature_names = list(sparse_feature_names)
        self.fm_pairs = fm_pairs
        rng, n, di = as_rng(seed), self.fm_in_features, self.deep_fm_dimension
        self._params["deep_fm.dense_module.0.weight"] = linear_uniform(rng, (di, n), n, dtype)
        self._params["deep_fm.dense_module.0.bias"] = linear_uniform(rng, (di,), n, dtype)

    def output_size(self, embedding_dim: int) -> int:
        """D + DI + 1 (just D when there are no sparse features)."""
        if not self.sparse_feature_names:
            return embedding_dim
        return embedding_dim + self.deep_fm_dimension + 1

    def _config(self) -> str:
        extra = "" if self.fm_pairs == "scalars" else f", fm_pairs={self.fm_pairs!r}"
        return (
            f"fm_in_features={self.fm_in_features}, "
            f"sparse_feature_names={self.sparse_feature_names}, "
            f"deep_fm_dimension={self.deep_fm_dimension}{extra}"
        )

    def _embeddings(self, dense_features, sparse_features) -> list[np.ndarray]:
        """Validate the inputs; return ``[dense, sparse[n_1], …, sparse[n_F]]``."""
        sizes: dict[str, int] = {}
        check_array("dense_features", dense_features, "B D", sizes, self.dtype)
        if not isinstance(sparse_features, Mapping):
            raise TypeError(
                "sparse_features: expected a mapping from feature name to a (B, D_f) array "
                f"(NumPy's KeyedTensor), got {type(sparse_features).__name__}"
            )
        missing = [n for n in self.sparse_feature_names if n not in sparse_features]
        if missing:
            raise ValueError(
                f"sparse_features: missing features {missing} (has {list(sparse_features)})"
            )
        arrays = [dense_features]
        for name in self.sparse_feature_names:
            feature = sparse_features[name]
            label = f"sparse_features[{name!r}]"
            check_array(label, feature, "B D_f", {"B": sizes["B"]}, self.dtype)
            arrays.append(feature)
        width = sum(a.shape[1] for a in arrays)
        if width != self.fm_in_features:
            raise ValueError(
                f"fm_in_features: the arch was built for N = {self.fm_in_features} scalars, but "
                f"dense_features and {self.sparse_feature_names} have D + Σ D_f = {width}"
            )
        if self.fm_pairs == "features" and {a.shape[1] for a in arrays} != {sizes["D"]}:
            raise ValueError(
                'sparse_features: fm_pairs="features" pairs whole vectors, so every D_f must '
                f"equal D = {sizes['D']}, got {[a.shape[1] for a in arrays[1:]]}"
            )
        return arrays

    def forward(self, dense_features: np.ndarray, sparse_features: Mapping[str, np.ndarray]):
        """
        Parameters
        ----------
        dense_features : ndarray, shape (B, D)
        sparse_features : mapping of str to ndarray, each (B, D_f)

        Returns
        -------
        out : ndarray, shape (B, D + DI + 1); a copy of ``dense_features`` when F = 0
        cache : FMInteractionCache, or the (B, D) shape when F = 0
        """
        if not self.sparse_feature_names:
            check_array("dense_features", dense_features, "B D", {}, self.dtype)
            return dense_features.copy(), dense_features.shape
        embeddings = self._embeddings(dense_features, sparse_features)
        return fm_interaction_forward(self._params, embeddings, self.fm_pairs)

    def backward(self, d_out: np.ndarray, cache):
        """
        Parameters
        ----------
        d_out : ndarray, shape (B, D + DI + 1)
        cache : from ``forward``

        Returns
        -------
        d_dense_features : ndarray, shape (B, D)
        d_sparse_features : dict of str to ndarray, each (B, D_f), one per listed name
        d_params : dict keyed like ``params``
        """
        if not self.sparse_feature_names:
            batch, dim = cache
            check_array("d_out", d_out, "B W", {"B": batch, "W": dim}, self.dtype)
            return d_out.copy(), {}, self.zero_param_grads()
        batch, dim = cache.shapes[0]
        check_array("d_out", d_out, "B W", {"B": batch, "W": self.output_size(dim)}, self.dtype)
        d_embeddings, d_params = fm_interaction_backward(self._params, d_out, cache, self.fm_pairs)
        d_sparse: dict[str, np.ndarray] = {}
        for name, d_feature in zip(self.sparse_feature_names, d_embeddings[1:], strict=True):
            d_sparse[name] = d_sparse[name] + d_feature if name in d_sparse else d_feature
        return d_embeddings[0], d_sparse, d_params

    def kink_distance(self, dense_features, sparse_features) -> float:
        """Smallest |x Wᵀ + b| of the deep branch's ReLU."""
        if not self.sparse_feature_names:
            return float("inf")
        flat = flatten_embeddings(self._embeddings(dense_features, sparse_features))
        params = self._params
        pre = (
            flat @ params["deep_fm.dense_module.0.weight"].T + params["deep_fm.dense_module.0.bias"]
        )
        return float(np.min(np.abs(pre))) if pre.size else float("inf")
