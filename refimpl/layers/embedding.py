"""Sparse features and embedding bags: TorchRec's KeyedJaggedTensor and EmbeddingBagCollection.

A categorical feature gives each sample a *bag* of ids (a user's recent items, a page's
tags), possibly empty, possibly with repeats. An embedding bag looks up one row of a table
``T`` (num_embeddings, D) per id and pools the bag into one vector: the sum, or the mean, of
its rows, each row optionally scaled by a per-id weight. Written as a matrix product, with
``A`` the (B, num_embeddings) *bag matrix* whose entry ``A[b, j]`` is the total weight of id
``j`` in bag ``b`` (divided by the bag's length for the mean)::

    pooled = A T                    (B, D)
    dT     = Aᵀ d_pooled            (num_embeddings, D)

``A`` has one nonzero per distinct id in a bag, so ``dT`` is zero on every row no id in the
batch named: the gradient is row-sparse (:class:`~refimpl.layers.rowsparse.RowSparse`), and a
repeated id adds its gradient once per occurrence. Nothing here ever forms ``A`` or a dense
``dT``: memory and time follow the ids in the batch, never the table size.

:func:`embedding_bag_forward` and :func:`embedding_bag_backward` are the textbook form for one
feature and its table (they run on float arrays and on exact object arrays alike);
:class:`EmbeddingBagCollection` computes the same numbers through :mod:`refimpl.fast.embedding`.

Letters: B batch, F features, D embedding dim, M ids in a batch, U distinct ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import NamedTuple

import numpy as np

from refimpl.fast.embedding import bag_sums, table_gradient
from refimpl.fast.threads import on_threads
from refimpl.layers.activations import is_exact
from refimpl.layers.base import Layer, as_rng, check_array, check_positive_int
from refimpl.layers.rowsparse import RowSparse

POOLINGS = ("sum", "mean")


def _fmt_list(values, limit: int = 8) -> str:
    values = list(values)
    shown = ", ".join(str(v) for v in values[:limit])
    return f"[{shown}{', …' if len(values) > limit else ''}]"


# ------------------------------------------------------------------------- KeyedJaggedArray


class KeyedJaggedArray:
    """A batch of bags of ids for F named features: TorchRec's ``KeyedJaggedTensor`` in NumPy.

    Parameters
    ----------
    keys : sequence of str
        The F feature names, unique.
    values : ndarray of int, shape (M,)
        Every id of the batch, feature by feature and, within a feature, bag by bag.
    lengths : ndarray of int, shape (F·B,)
        Bag sizes, *key-major* as TorchRec: the B bags of ``keys[0]``, then the B bags of
        ``keys[1]``, … . Non-negative, summing to M.
    weights : ndarray of float, shape (M,), optional
        A weight per id, used by a weighted :class:`EmbeddingBagCollection`.

    Examples
    --------
    Two features, B = 3: feature "a" has bags [0, 1], [], [2]; feature "b" has [3], [4], [5, 6, 7].

    >>> kja = KeyedJaggedArray.from_lengths(
    ...     ["a", "b"], np.array([0, 1, 2, 3, 4, 5, 6, 7]), np.array([2, 0, 1, 1, 1, 3]))
    >>> kja.stride, kja.offsets
    (3, array([0, 2, 2, 3, 4, 5, 8]))
    >>> kja.feature("b")
    (array([3, 4, 5, 6, 7]), array([1, 1, 3]), None)
    >>> KeyedJaggedArray.from_lengths(["a"], np.array([0, 1]), np.array([1, 2]))
    Traceback (most recent call last):
    ...
    ValueError: lengths: the bag sizes sum to 3, but values holds M = 2 ids
    """

    __slots__ = ("_offsets", "keys", "lengths", "stride", "values", "weights")

    def __init__(self, keys: Sequence[str], values, lengths, weights=None):
        keys = self._check_keys(keys)
        values = self._check_ints("values", values, "(M,)")
        lengths = self._check_ints("lengths", lengths, "(F·B,)")
        if np.any(lengths < 0):
            bad = np.flatnonzero(lengths < 0)
            raise ValueError(
                f"lengths: expected non-negative bag sizes, got {_fmt_list(lengths[bad])} at "
                f"positions {_fmt_list(bad)}"
            )
        num_keys = len(keys)
        if num_keys == 0 and len(lengths):
            raise ValueError(f"lengths: no keys, so expected no bag sizes, got {len(lengths)}")
        if num_keys and len(lengths) % num_keys:
            raise ValueError(
                f"lengths: expected F·B entries (key-major) with F = {num_keys} keys, got "
                f"{len(lengths)}, which is not a multiple of {num_keys}"
            )
        total = int(lengths.sum())
        if total != len(values):
            raise ValueError(
                f"lengths: the bag sizes sum to {total}, but values holds M = {len(values)} ids"
            )
        if weights is not None:
            weights = np.asarray(weights)
            if weights.dtype not in (np.float32, np.float64):
                raise TypeError(
                    f"weights: expected a float32 or float64 array of shape (M,), got dtype "
                    f"{weights.dtype}"
                )
            if weights.shape != values.shape:
                raise ValueError(
                    f"weights: expected one weight per id, shape (M,) = ({len(values)},), got "
                    f"{weights.shape}"
                )
        self.keys = keys
        self.values = values
        self.lengths = lengths
        self.weights = weights
        self.stride = len(lengths) // num_keys if num_keys else 0  # B
        self._offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    @staticmethod
    def _check_keys(keys) -> tuple[str, ...]:
        if isinstance(keys, str) or not isinstance(keys, Sequence):
            raise TypeError(f"keys: expected a list of feature names, got {keys!r}")
        keys = tuple(keys)
        for key in keys:
            if not isinstance(key, str):
                raise TypeError(f"keys: expected feature names as str, got {key!r}")
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if duplicates:
            raise ValueError(f"keys: expected unique feature names, {duplicates} repeat")
        return keys

    @staticmethod
    def _check_ints(name: str, array, shape: str) -> np.ndarray:
        array = np.asarray(array)
        if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
            raise TypeError(
                f"{name}: expected an integer array of shape {shape}, got dtype {array.dtype}"
            )
        if array.ndim != 1:
            raise ValueError(
                f"{name}: expected a 1-D array of shape {shape}, got shape {array.shape}"
            )
        return array

    @classmethod
    def from_lengths(cls, keys, values, lengths, weights=None) -> KeyedJaggedArray:
        """From bag sizes, key-major (TorchRec's ``KeyedJaggedTensor.from_lengths_sync``)."""
        return cls(keys, values, lengths, weights)

    @classmethod
    def from_offsets(cls, keys, values, offsets, weights=None) -> KeyedJaggedArray:
        """From offsets: F·B + 1 non-decreasing positions into ``values``, from 0 to M.

        >>> KeyedJaggedArray.from_offsets(["a"], np.array([5, 6, 7]), np.array([0, 2, 3])).lengths
        array([2, 1])
        """
        offsets = cls._check_ints("offsets", offsets, "(F·B + 1,)")
        values = cls._check_ints("values", values, "(M,)")
        if len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != len(values):
            raise ValueError(
                f"offsets: expected F·B + 1 positions from 0 to M = {len(values)}, got "
                f"{_fmt_list(offsets)}"
            )
        lengths = np.diff(offsets)
        if np.any(lengths < 0):
            bad = int(np.flatnonzero(lengths < 0)[0])
            raise ValueError(
                f"offsets: expected non-decreasing positions, got {offsets[bad]} then "
                f"{offsets[bad + 1]} at positions {bad}, {bad + 1}"
            )
        return cls(keys, values, lengths, weights)

    @property
    def offsets(self) -> np.ndarray:
        """Cumulative lengths with a leading 0, shape (F·B + 1,)."""
        return self._offsets

    def feature(self, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(ids (M_f,), lengths (B,), weights (M_f,) or None)`` of one feature (views)."""
        if key not in self.keys:
            raise KeyError(
                f"{key!r}: not a key of this KeyedJaggedArray, whose keys are {list(self.keys)}"
            )
        i, batch = self.keys.index(key), self.stride
        lo, hi = self._offsets[i * batch], self._offsets[(i + 1) * batch]
        weights = None if self.weights is None else self.weights[lo:hi]
        return self.values[lo:hi], self.lengths[i * batch : (i + 1) * batch], weights

    def feature_slice(self, key: str) -> slice:
        """Where one feature's ids sit in ``values``."""
        i, batch = self.keys.index(key), self.stride
        return slice(int(self._offsets[i * batch]), int(self._offsets[(i + 1) * batch]))

    def __repr__(self) -> str:
        weighted = ", weighted" if self.weights is not None else ""
        sizes = f"B={self.stride}, M={len(self.values)}{weighted}"
        return f"KeyedJaggedArray(keys={list(self.keys)}, {sizes})"


# ------------------------------------------------------------------- textbook: one bag table


class BagCache(NamedTuple):
    ids: np.ndarray  # (M,) the ids looked up, bag by bag
    lengths: np.ndarray  # (B,) bag sizes
    per_id_weights: np.ndarray | None  # (M,) or None
    rows: np.ndarray | None  # T[ids], (M, D): kept only when weighted (for d_weights)
    pooling: str


def bag_offsets(lengths: np.ndarray) -> np.ndarray:
    """Where each bag starts and ends: cumulative lengths with a leading 0, shape (B + 1,)."""
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def segment_sum(rows: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The sum of each bag's rows: ``rows`` (M, D) cut into consecutive bags of ``lengths``.

    An empty bag sums to zero. ``np.add.reduceat`` sums from each start to the next start
    given; handing it the starts of the non-empty bags alone makes each of those sums stop at
    its own bag's end (the empty bags in between hold no rows).

    >>> segment_sum(np.array([[1.0], [2.0], [4.0]]), np.array([2, 0, 1]))
    array([[3.],
           [0.],
           [4.]])
    """
    sums = np.zeros((len(lengths), *rows.shape[1:]), rows.dtype)  # (B, D)
    nonempty = np.flatnonzero(lengths > 0)
    if len(nonempty):
        sums[nonempty] = np.add.reduceat(rows, bag_offsets(lengths)[nonempty], axis=0)
    return sums


def bag_sizes(lengths: np.ndarray, like: np.ndarray) -> np.ndarray:
    """The mean's divisors: each bag's length n_b as a (B, 1) column, 1 for an empty bag (whose
    sum is zero anyway). Exact fractions when ``like`` is an exact array, so that an empty bag's
    ``0 / 1`` stays an exact 0 rather than the float Python's ``/`` makes of two ints.

    >>> bag_sizes(np.array([3, 0]), np.zeros(2)).ravel()
    array([3, 1])
    """
    sizes = np.maximum(lengths, 1)[:, None]  # (B, 1)
    if is_exact(like):
        return np.vectorize(Fraction, otypes=[object])(sizes)
    return sizes


def embedding_bag_forward(weight, ids, lengths, per_id_weights=None, pooling="sum"):
    """Pool each bag's rows of ``weight``: ``pooled[b] = Σ_{i in bag b} w_i T[ids_i]`` (÷ n_b).

    Parameters
    ----------
    weight : ndarray, shape (num_embeddings, D)
        The table ``T``.
    ids : ndarray of int, shape (M,)
        The ids, bag after bag (each in range: the layer checks).
    lengths : ndarray of int, shape (B,)
        The bag sizes n_b, summing to M.
    per_id_weights : ndarray, shape (M,), optional
        ``w_i``; all ones when None.
    pooling : {"sum", "mean"}
        The mean divides by n_b; an empty bag gives zeros either way.

    Returns
    -------
    pooled : ndarray, shape (B, D)
    cache : BagCache

    Examples
    --------
    Bags [0, 2, 0] and [] over a 3-row table:

    >>> weight = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    >>> embedding_bag_forward(weight, np.array([0, 2, 0]), np.array([3, 0]))[0]
    array([[4., 2.],
           [0., 0.]])
    >>> embedding_bag_forward(weight, np.array([0, 2, 0]), np.array([3, 0]), pooling="mean")[0]
    array([[1.33333333, 0.66666667],
           [0.        , 0.        ]])
    """
    rows = weight[ids]  # T[ids], (M, D)
    scaled = rows if per_id_weights is None else rows * per_id_weights[:, None]  # (M, D)
    pooled = segment_sum(scaled, lengths)  # (B, D)
    if pooling == "mean":
        pooled = pooled / bag_sizes(lengths, pooled)  # (B, D); n_b = 0 rows stay zero
    kept_rows = None if per_id_weights is None else rows
    return pooled, BagCache(ids, lengths, per_id_weights, kept_rows, pooling)


def embedding_bag_backward(d_pooled, cache: BagCache, num_embeddings: int):
    """The gradients of :func:`embedding_bag_forward`: the table's, row-sparse, and the weights'.

    Each id's lookup receives its bag's gradient (÷ n_b for the mean, × w_i when weighted);
    the table's gradient adds these per row, so a repeated id counts once per occurrence::

        d_rows_i = w_i d_pooled[bag(i)] / n_bag(i)       (M, D)
        dT[j]    = Σ_{i : ids_i = j} d_rows_i              (U rows; every other row is zero)
        dw_i     = d_pooled[bag(i)] · T[ids_i]             (M,), sum pooling only

    Returns
    -------
    d_weight : RowSparse, shape (num_embeddings, D)
    d_per_id_weights : ndarray, shape (M,), or None when unweighted

    Examples
    --------
    >>> weight = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    >>> pooled, cache = embedding_bag_forward(weight, np.array([0, 2, 0]), np.array([3, 0]))
    >>> d_weight, _ = embedding_bag_backward(np.array([[1.0, 10.0], [5.0, 5.0]]), cache, 3)
    >>> d_weight.indices, d_weight.values      # id 0 twice in the bag: twice the gradient
    (array([0, 2]), array([[ 2., 20.],
           [ 1., 10.]]))
    """
    ids, lengths, per_id_weights, rows, pooling = cache
    bag = np.repeat(np.arange(len(lengths)), lengths)  # the bag of each id, (M,)
    d_bag = d_pooled if pooling == "sum" else d_pooled / bag_sizes(lengths, d_pooled)
    d_looked_up = d_bag[bag]  # the gradient reaching each lookup, (M, D)
    if per_id_weights is None:
        return RowSparse.from_rows(ids, d_looked_up, num_embeddings), None
    d_per_id_weights = (d_looked_up * rows).sum(axis=1)  # dw_i = d_pooled[bag] · T[id], (M,)
    d_rows = d_looked_up * per_id_weights[:, None]  # (M, D)
    return RowSparse.from_rows(ids, d_rows, num_embeddings), d_per_id_weights


# ------------------------------------------------------------------ EmbeddingBagCollection


def mean_divisor(lengths: np.ndarray, dtype) -> np.ndarray:
    """Each bag's length as a (B, 1) column, 1 for an empty bag (whose sum is zero anyway)."""
    return np.maximum(lengths, 1)[:, None].astype(dtype)


def _pooling_name(pooling) -> str:
    name = getattr(pooling, "value", pooling)  # TorchRec's PoolingType.SUM has value "SUM"
    if isinstance(name, str) and name.lower() in POOLINGS:
        return name.lower()
    raise ValueError(f"pooling: expected one of {POOLINGS}, got {pooling!r}")


@dataclass
class EmbeddingBagConfig:
    """One table of an :class:`EmbeddingBagCollection`, as TorchRec's ``EmbeddingBagConfig``.

    Parameters
    ----------
    num_embeddings : int
        The table's rows; ids must lie in ``[0, num_embeddings)``.
    embedding_dim : int
        D, the width of a row.
    name : str
        The table's name: its weight is ``embedding_bags.<name>.weight``.
    feature_names : list of str
        The features this table serves (one table may serve several). Empty means the table's
        own name, as TorchRec.
    pooling : {"sum", "mean"}
        Also accepts TorchRec's ``PoolingType.SUM`` / ``PoolingType.MEAN``.
    weight_init_min, weight_init_max : float, optional
        The uniform initialisation's bounds; default ∓√(1/num_embeddings), TorchRec's. Both 0
        gives a zero table that the operating system allocates lazily, page by page as rows
        are written: a table of 10⁷ rows then costs no memory until it is used.

    Examples
    --------
    >>> EmbeddingBagConfig(num_embeddings=10, embedding_dim=4, name="t1", feature_names=["f1"])
    EmbeddingBagConfig(num_embeddings=10, embedding_dim=4, name='t1', feature_names=['f1'], \
pooling='sum', weight_init_max=None, weight_init_min=None)
    """

    num_embeddings: int
    embedding_dim: int
    name: str = ""
    feature_names: list[str] = field(default_factory=list)
    pooling: str = "sum"
    weight_init_max: float | None = None
    weight_init_min: float | None = None

    def __post_init__(self):
        self.num_embeddings = check_positive_int("num_embeddings", self.num_embeddings)
        self.embedding_dim = check_positive_int("embedding_dim", self.embedding_dim)
        if not isinstance(self.name, str):
            raise TypeError(f"name: expected a str, got {self.name!r}")
        if isinstance(self.feature_names, str) or not isinstance(self.feature_names, Sequence):
            raise TypeError(
                f"feature_names: expected a list of str, got {self.feature_names!r} (table "
                f"{self.name!r})"
            )
        self.feature_names = list(self.feature_names) or [self.name]
        for feature in self.feature_names:
            if not isinstance(feature, str):
                raise TypeError(f"feature_names: expected str, got {feature!r}")
        self.pooling = _pooling_name(self.pooling)

    def init_bounds(self) -> tuple[float, float]:
        """TorchRec's ``(weight_init_min, weight_init_max)``, defaulting to ∓√(1/num_embeddings)."""
        bound = float(np.sqrt(1.0 / self.num_embeddings))
        low = -bound if self.weight_init_min is None else float(self.weight_init_min)
        high = bound if self.weight_init_max is None else float(self.weight_init_max)
        return low, high


class EBCCache(NamedTuple):
    features: tuple  # per output feature: (table index, ids, lengths, weights or None, slice)
    batch: int
    num_ids: int  # M of the whole KeyedJaggedArray (for the weights' gradient)
    looked_up: tuple  # per output feature: T[ids] (M_f, D) when weighted, else None


class EmbeddingBagCollection(Layer):
    """Embedding bags for every sparse feature, as TorchRec's ``EmbeddingBagCollection``.

    Parameters
    ----------
    tables : list of EmbeddingBagConfig
        Table names unique; a table may serve several features, a feature one table.
    is_weighted : bool
        Scale each looked-up row by the id's weight from ``KeyedJaggedArray.weights`` (sum
        pooling only: torch's ``EmbeddingBag`` refuses per-id weights with the mean).
    seed : int or Generator, optional
        Initialises each table, in order, from U(weight_init_min, weight_init_max), by default
        U(−√(1/num_embeddings), +√(1/num_embeddings)) as TorchRec.
    dtype : float32 or float64

    Attributes
    ----------
    params : dict
        ``embedding_bags.<name>.weight`` (num_embeddings, D) per table, TorchRec's keys.
    embedding_names : list of str
        The output's features, in order: table by table, then each table's ``feature_names``.

    Notes
    -----
    ``forward(features)`` gives (B, Σ_f D_f): the pooled bags of each feature side by side in
    :attr:`embedding_names` order (TorchRec's ``KeyedTensor.values()``). ``backward`` gives
    ``(d_features_weights, d_params)``: the per-id weights' gradient, (M,) aligned with
    ``features.values`` (None when unweighted: ids have no gradient), and one
    :class:`~refimpl.layers.rowsparse.RowSparse` per table, summed over every feature the
    table serves. See :func:`embedding_bag_forward` and :func:`embedding_bag_backward`.

    TorchRec's forward casts every pooled bag to float32 (``.float()``), whatever the table's
    dtype; refimpl keeps the table's dtype, so float64 stays float64.

    Examples
    --------
    >>> ebc = EmbeddingBagCollection([
    ...     EmbeddingBagConfig(10, 2, "t1", ["f1", "f3"]),
    ...     EmbeddingBagConfig(5, 2, "t2", ["f2"], pooling="mean")], seed=0)
    >>> list(ebc.params), ebc.embedding_names
    (['embedding_bags.t1.weight', 'embedding_bags.t2.weight'], ['f1', 'f3', 'f2'])
    >>> kja = KeyedJaggedArray.from_lengths(                   # B = 2
    ...     ["f1", "f2", "f3"], np.array([1, 1, 4, 0, 9]), np.array([2, 0, 1, 1, 1, 0]))
    >>> pooled, cache = ebc.forward(kja)
    >>> pooled.shape                                            # (B, 3·D)
    (2, 6)
    >>> _, d_params = ebc.backward(np.ones_like(pooled), cache)
    >>> d_params["embedding_bags.t1.weight"]                   # f1's [1, 1] and f3's [9]
    RowSparse(rows=2 of 10, D=2)
    """

    input_names = ("features",)

    def __init__(
        self,
        tables: Sequence[EmbeddingBagConfig],
        is_weighted: bool = False,
        *,
        seed=None,
        dtype=np.float64,
    ):
        super().__init__(dtype)
        if isinstance(tables, EmbeddingBagConfig) or not isinstance(tables, Sequence):
            raise TypeError(f"tables: expected a list of EmbeddingBagConfig, got {tables!r}")
        tables = list(tables)
        for table in tables:
            if not isinstance(table, EmbeddingBagConfig):
                raise TypeError(
                    f"tables: expected refimpl EmbeddingBagConfig entries, got "
                    f"{type(table).__name__}"
                )
        names = [t.name for t in tables]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"tables: duplicate table names {duplicates}")
        self.is_weighted = bool(is_weighted)
        if self.is_weighted:
            means = [t.name for t in tables if t.pooling == "mean"]
            if means:
                raise ValueError(
                    f"is_weighted: per-id weights need sum pooling (torch's EmbeddingBag "
                    f"refuses them with the mean), but tables {means} pool by the mean"
                )
        self.tables = tables
        rng = as_rng(seed)
        for table in tables:
            shape = (table.num_embeddings, table.embedding_dim)
            low, high = table.init_bounds()
            if low == high == 0.0:
                weight = np.zeros(shape, self.dtype)  # lazily allocated by the OS
            else:
                weight = rng.uniform(low, high, size=shape).astype(self.dtype)
            self._params[f"embedding_bags.{table.name}.weight"] = weight
        # (table index, feature name) in output order: TorchRec's KeyedTensor order.
        self._outputs = [(t, f) for t, table in enumerate(tables) for f in table.feature_names]
        shared = {f for _, f in self._outputs if sum(g == f for _, g in self._outputs) > 1}
        self.embedding_names = [
            f"{f}@{tables[t].name}" if f in shared else f for t, f in self._outputs
        ]

    def _config(self) -> str:
        tables = ", ".join(
            f"{t.name}({t.num_embeddings}x{t.embedding_dim}, {t.feature_names}, {t.pooling})"
            for t in self.tables
        )
        return f"[{tables}]" + (", is_weighted=True" if self.is_weighted else "")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._config()})"

    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        """The tables, as TorchRec's method of that name."""
        return list(self.tables)

    @property
    def feature_names(self) -> list[str]:
        """The sparse features read, in output order (a feature served by two tables twice)."""
        return [f for _, f in self._outputs]

    @property
    def output_dims(self) -> list[int]:
        """D_f of each output feature, in output order."""
        return [self.tables[t].embedding_dim for t, _ in self._outputs]

    def weight(self, table: int) -> np.ndarray:
        return self._params[f"embedding_bags.{self.tables[table].name}.weight"]

    def _lookups(self, features: KeyedJaggedArray) -> list:
        """Each output feature's ``(table, ids, lengths, weights, slice)``, validated."""
        if not isinstance(features, KeyedJaggedArray):
            raise TypeError(f"features: expected a KeyedJaggedArray, got {type(features).__name__}")
        missing = [f for f in dict.fromkeys(self.feature_names) if f not in features.keys]
        if missing:
            raise ValueError(
                f"features: the tables read features {missing}, which are not among the "
                f"KeyedJaggedArray's keys {list(features.keys)}"
            )
        if self.is_weighted and features.weights is None:
            raise ValueError(
                "features: this EmbeddingBagCollection is weighted (is_weighted=True) but the "
                "KeyedJaggedArray has no weights"
            )
        if self.is_weighted and features.weights.dtype != self.dtype:
            raise TypeError(
                f"features: expected {self.dtype} weights, the tables' dtype, got "
                f"{features.weights.dtype}"
            )
        lookups = []
        for t, name in self._outputs:
            table = self.tables[t]
            ids, lengths, weights = features.feature(name)
            if len(ids) and (ids.min() < 0 or ids.max() >= table.num_embeddings):
                bad = ids[(ids < 0) | (ids >= table.num_embeddings)]
                raise ValueError(
                    f"features: key {name!r} has ids {_fmt_list(np.unique(bad))} outside the rows "
                    f"[0, {table.num_embeddings}) of table {table.name!r}"
                )
            lookups.append(
                (
                    t,
                    ids,
                    lengths,
                    weights if self.is_weighted else None,
                    features.feature_slice(name),
                )
            )
        return lookups

    def forward(self, features: KeyedJaggedArray) -> tuple[np.ndarray, EBCCache]:
        """
        Parameters
        ----------
        features : KeyedJaggedArray
            Must hold every feature the tables read (others are ignored), B bags each.

        Returns
        -------
        pooled : ndarray, shape (B, Σ_f D_f)
        cache : EBCCache
        """
        lookups = self._lookups(features)

        def pool(lookup) -> tuple:  # one feature's (B, D_f) bags, and its rows when weighted
            t, ids, lengths, weights, _ = lookup
            bags, rows = bag_sums(self.weight(t), ids, lengths, weights)  # (B, D_f)
            if self.tables[t].pooling == "mean":
                bags = bags / mean_divisor(lengths, self.dtype)  # (B, D_f)
            return bags, rows

        size = len(features.values) * max(self.output_dims, default=0)  # elements looked up
        results = on_threads(pool, lookups, size)
        pooled, looked_up = [bags for bags, _ in results], [rows for _, rows in results]
        batch = features.stride
        out = np.concatenate(pooled, axis=1) if pooled else np.zeros((batch, 0), self.dtype)
        return out, EBCCache(tuple(lookups), batch, len(features.values), tuple(looked_up))

    def backward(self, d_out: np.ndarray, cache: EBCCache):
        """
        Parameters
        ----------
        d_out : ndarray, shape (B, Σ_f D_f)
        cache : EBCCache from ``forward``

        Returns
        -------
        d_weights : ndarray, shape (M,), or None
            The gradient of ``features.weights`` when weighted (zero on features no table
            reads); None otherwise (ids have no gradient).
        d_params : dict of RowSparse
            One per table, keyed like ``params``.
        """
        lookups, batch, num_ids, looked_up = cache
        check_array("d_out", d_out, "B E", {"B": batch, "E": sum(self.output_dims)}, self.dtype)
        starts = np.concatenate([[0], np.cumsum(self.output_dims)])
        # Per table, every feature it serves: ids, bag gradients, the bag of each id, weights.
        per_table = {t: ([], [], [], []) for t in range(len(self.tables))}
        d_weights = np.zeros(num_ids, self.dtype) if self.is_weighted else None
        for k, (t, ids, lengths, weights, where) in enumerate(lookups):
            d_bags = np.ascontiguousarray(d_out[:, starts[k] : starts[k + 1]])  # (B, D_f)
            if self.tables[t].pooling == "mean":
                d_bags = d_bags / mean_divisor(lengths, self.dtype)  # (B, D_f)
            bag = np.repeat(np.arange(batch), lengths)  # the bag of each id, (M_f,)
            if weights is not None:
                # dw_i = d_bags[bag(i)] · T[id_i], one dot product per id
                d_weights[where] += np.einsum("md,md->m", d_bags[bag], looked_up[k])
            table_ids, sources, source_index, scales = per_table[t]
            source_index.append(bag + batch * len(sources))  # row of the stacked d_bags
            table_ids.append(ids)
            sources.append(d_bags)
            scales.append(weights)
        jobs = [
            (
                np.concatenate(table_ids),
                np.concatenate(sources) if len(sources) > 1 else sources[0],  # (S·B, D)
                np.concatenate(source_index),
                self.tables[t].num_embeddings,  # every table serves at least one feature
                np.concatenate(scales) if self.is_weighted else None,
            )
            for t, (table_ids, sources, source_index, scales) in per_table.items()
        ]
        size = num_ids * max(self.output_dims, default=0)  # gradient elements, about
        grads = on_threads(lambda job: table_gradient(*job), jobs, size)  # independent tables
        names = [f"embedding_bags.{table.name}.weight" for table in self.tables]
        return d_weights, dict(zip(names, grads, strict=True))


class SparseArch(Layer):
    """TorchRec's ``SparseArch``: the collection's pooled bags as (B, F, D).

    Parameters
    ----------
    embedding_bag_collection : EmbeddingBagCollection
        At least one table, all of one D.

    Notes
    -----
    Keys ``embedding_bag_collection.embedding_bags.<name>.weight``. The forward is the
    collection's reshaped from (B, F·D) to (B, F, D); the backward reshapes back.

    Examples
    --------
    >>> ebc = EmbeddingBagCollection([EmbeddingBagConfig(10, 3, "t", ["a", "b"])], seed=0)
    >>> arch = SparseArch(ebc)
    >>> kja = KeyedJaggedArray.from_lengths(["a", "b"], np.array([1, 2, 3]), np.array([1, 1, 1, 0]))
    >>> arch(kja).shape                             # (B, F, D)
    (2, 2, 3)
    """

    input_names = ("features",)

    def __init__(self, embedding_bag_collection: EmbeddingBagCollection):
        if not isinstance(embedding_bag_collection, EmbeddingBagCollection):
            raise TypeError(
                "embedding_bag_collection: expected a refimpl EmbeddingBagCollection, got "
                f"{type(embedding_bag_collection).__name__}"
            )
        super().__init__(embedding_bag_collection.dtype)
        tables = embedding_bag_collection.tables
        if not tables:
            raise ValueError("embedding_bag_collection: at least one table is required")
        dims = {t.name: t.embedding_dim for t in tables}
        if len(set(dims.values())) > 1:
            raise ValueError(
                f"embedding_bag_collection: every table must have the same embedding_dim D, "
                f"got {dims}"
            )
        self._children["embedding_bag_collection"] = embedding_bag_collection
        self.D = tables[0].embedding_dim
        self.F = len(embedding_bag_collection.feature_names)

    @property
    def embedding_bag_collection(self) -> EmbeddingBagCollection:
        return self._children["embedding_bag_collection"]

    @property
    def sparse_feature_names(self) -> list[str]:
        return self.embedding_bag_collection.feature_names

    def forward(self, features: KeyedJaggedArray) -> tuple[np.ndarray, EBCCache]:
        """(B, F, D) from a KeyedJaggedArray; the cache is the collection's."""
        pooled, cache = self.embedding_bag_collection.forward(features)  # (B, F·D)
        return pooled.reshape(cache.batch, self.F, self.D), cache  # (B, F, D)

    def backward(self, d_out: np.ndarray, cache: EBCCache):
        """``(d_weights or None, d_params)`` from ``d_out`` (B, F, D)."""
        check_array(
            "d_out", d_out, "B F D", {"B": cache.batch, "F": self.F, "D": self.D}, self.dtype
        )
        d_weights, d_ebc = self.embedding_bag_collection.backward(
            d_out.reshape(cache.batch, self.F * self.D),
            cache,  # (B, F·D)
        )
        return d_weights, {f"embedding_bag_collection.{k}": v for k, v in d_ebc.items()}
