"""Synthetic click data with a known answer: Criteo-shaped samples from a planted model.

Each sample has I dense features (13, as Criteo) and F categorical features, each a bag of ids
into its own table. Its click probability comes from a planted logistic model:

    z = bias + Σ_i w_i x_i + Σ_{(a, b) planted} s_ab · ⟨h_a(bag_a), h_b(bag_b)⟩
    p = ρ + (1 − 2ρ) · σ(z),        y ~ Bernoulli(p)

where x are the dense features (standard normal, as Criteo's after the usual log transform and
standardisation), w has a few non-zero dense effects, each planted pair (a, b) of categorical
features interacts through the dot product of hidden vectors (h_f(bag) = the sum of the hidden
rows of the bag's ids, k numbers per id), s_ab is the pair's strength and ρ an optional rate of
label noise. Every other categorical feature is a distractor: it has no effect at all.

Because p is known for every sample, so is the best AUC any model can reach on a split (see
:meth:`SyntheticCriteo.bayes_auc`), and a lesson can ask whether a trained model found the
planted pairs (:attr:`SyntheticCriteo.pairs`, :attr:`SyntheticCriteo.hidden`).

Sample i of a split is a fixed function of (seed, split, i), whatever the batch size: samples
are drawn in chunks of :data:`CHUNK` from a generator seeded by (seed, split, chunk index), and a
batch is cut from the chunks it covers. Shuffling (``shuffle_seed``) permutes the order of the
chunks and the order of the samples within each chunk, each permutation a fixed function of
the shuffle seed: a different mix of samples in every batch of every epoch, with no more in
memory. A resumed run therefore sees the same batches, and streaming a split holds the chunks
one batch spans (one or two for batches up to :data:`CHUNK`), never the split.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from refimpl.data.batch import Batch
from refimpl.data.source import check_batches_args, check_start
from refimpl.layers.base import as_dtype, check_positive_int

CHUNK = 4096  # samples drawn per generator: the unit of reproducibility
SPLITS = {"train": 1, "validation": 2, "test": 3}  # a split's code seeds its samples
_PLANTED = 4  # seeds the planted model; split codes differ, so streams never coincide


@dataclass(frozen=True)
class PlantedPair:
    """Two categorical features whose hidden vectors interact, and how strongly.

    Attributes
    ----------
    features : (int, int)
        Feature indices a < b, in the order of ``keys``.
    keys : (str, str)
        Their names.
    strength : float
        s_ab: with one-id bags the pair's logit term has standard deviation about s_ab.
    """

    features: tuple[int, int]
    keys: tuple[str, str]
    strength: float


@dataclass
class _Chunk:
    dense: np.ndarray  # (C, I)
    lengths: list[np.ndarray]  # F arrays (C,)
    offsets: list[np.ndarray]  # F arrays (C + 1,)
    ids: list[np.ndarray]  # F arrays (Σ lengths,)
    labels: np.ndarray | None  # (C,), None until drawn

    def cut(self, lo: int, hi: int) -> _Chunk:
        return _Chunk(
            self.dense[lo:hi],
            [n[lo:hi] for n in self.lengths],
            [o[lo : hi + 1] - o[lo] for o in self.offsets],
            [ids[o[lo] : o[hi]] for ids, o in zip(self.ids, self.offsets, strict=True)],
            self.labels[lo:hi],
        )

    def take(self, order: np.ndarray) -> _Chunk:
        """The samples in the given order (a permutation of the chunk's)."""
        lengths = [n[order] for n in self.lengths]
        offsets = [np.r_[0, np.cumsum(n)] for n in lengths]
        ids = []
        for old_ids, old_offsets, n, new_offsets in zip(
            self.ids, self.offsets, lengths, offsets, strict=True
        ):
            # the id at new position q of bag b comes from old position q − new start + old start
            shift = np.repeat(old_offsets[order] - new_offsets[:-1], n)  # (Σ lengths,)
            ids.append(old_ids[np.arange(new_offsets[-1]) + shift])
        return _Chunk(self.dense[order], lengths, offsets, ids, self.labels[order])


class SyntheticCriteo:
    """Criteo-shaped batches whose labels come from a planted model (see the module docstring).

    Parameters
    ----------
    num_embeddings : sequence of int, default 26 tables of 1000 rows
        Rows of each categorical feature's table; F = its length.
    dense_in_features : int, default 13
        I, the number of dense features.
    pair_strengths : sequence of float, default (1.5, 1.0, 0.7)
        One planted pair per strength, the pairs drawn at random (distinct) from the F features.
    dense_effects : sequence of float, default (0.8, -0.5, 0.3)
        Weights of as many dense features, drawn at random; the other dense weights are 0.
    hidden_dim : int, default 4
        k, the length of the planted hidden vectors.
    bag_lengths : int or sequence of int, default 1
        The longest bag of each feature (one int for all); a bag's length is uniform in
        1 … bag_length, so 1 means one-hot.
    skew : float, default 0
        Ids are drawn with P(id = r) ∝ (r + 1)^(−skew) (a continuous power law, floored):
        0 is uniform; Criteo's ids are skewed (around 1).
    base_rate : float, default 0.25
        The bias is logit(base_rate); the realised click rate is pulled toward 0.5 by the
        spread of the logit.
    label_noise : float, default 0
        ρ in [0, 0.5): labels flip with probability ρ (the ranking by p does not change).
    num_train, num_validation, num_test : int
        Samples in each split.
    seed : int
        Seeds the planted model and every sample.
    dtype : float32 or float64
        The dtype of the dense features.

    Examples
    --------
    >>> data = SyntheticCriteo([50, 60, 70], num_train=10, pair_strengths=[1.0], seed=0)
    >>> data.pairs
    [PlantedPair(features=(0, 2), keys=('cat_0', 'cat_2'), strength=1.0)]
    >>> batch = next(data.batches("train", batch_size=4))
    >>> batch.dense.shape, batch.keys, batch.lengths.shape, batch.labels.shape
    ((4, 13), ('cat_0', 'cat_1', 'cat_2'), (12,), (4,))
    >>> [b.size for b in data.batches("train", batch_size=4, shuffle_seed=1)]
    [4, 4, 2]
    """

    splits = tuple(SPLITS)

    def __init__(
        self,
        num_embeddings: Sequence[int] = (1000,) * 26,
        dense_in_features: int = 13,
        pair_strengths: Sequence[float] = (1.5, 1.0, 0.7),
        dense_effects: Sequence[float] = (0.8, -0.5, 0.3),
        hidden_dim: int = 4,
        bag_lengths: int | Sequence[int] = 1,
        skew: float = 0.0,
        base_rate: float = 0.25,
        label_noise: float = 0.0,
        num_train: int = 1_000_000,
        num_validation: int = 100_000,
        num_test: int = 100_000,
        seed: int = 0,
        dtype=np.float64,
    ):
        self.num_embeddings = tuple(
            check_positive_int(f"num_embeddings[{f}]", n) for f, n in enumerate(num_embeddings)
        )
        F = len(self.num_embeddings)
        if F == 0:
            raise ValueError("num_embeddings: expected at least one categorical feature")
        self.dense_in_features = check_positive_int("dense_in_features", dense_in_features)
        self.hidden_dim = check_positive_int("hidden_dim", hidden_dim)
        if isinstance(bag_lengths, int | np.integer):
            bag_lengths = [bag_lengths] * F
        if len(bag_lengths) != F:
            raise ValueError(
                f"bag_lengths: expected one int or F = {F} of them, got {len(bag_lengths)}"
            )
        self.bag_lengths = tuple(
            check_positive_int(f"bag_lengths[{f}]", n) for f, n in enumerate(bag_lengths)
        )
        self.skew = _real("skew", skew, low=0.0)
        self.base_rate = _real("base_rate", base_rate, low=0.0, below=1.0)
        if self.base_rate == 0:
            raise ValueError("base_rate: expected a number in (0, 1), got 0.0")
        self.label_noise = _real("label_noise", label_noise, low=0.0, below=0.5)
        self.sizes = {
            "train": check_positive_int("num_train", num_train, minimum=0),
            "validation": check_positive_int("num_validation", num_validation, minimum=0),
            "test": check_positive_int("num_test", num_test, minimum=0),
        }
        self.seed = check_positive_int("seed", seed, minimum=0)
        self.dtype = as_dtype(dtype)
        self.keys = tuple(f"cat_{f}" for f in range(F))
        strengths = [_real("pair_strengths", s, low=-np.inf) for s in pair_strengths]
        effects = [_real("dense_effects", w, low=-np.inf) for w in dense_effects]
        if len(strengths) > F * (F - 1) // 2:
            raise ValueError(
                f"pair_strengths: {len(strengths)} pairs asked, but F = {F} features have only "
                f"{F * (F - 1) // 2}"
            )
        if len(effects) > self.dense_in_features:
            raise ValueError(
                f"dense_effects: {len(effects)} effects for I = {self.dense_in_features} dense "
                "features"
            )
        self._plant(strengths, effects)

    def _plant(self, strengths: list[float], effects: list[float]) -> None:
        rng = np.random.default_rng([self.seed, _PLANTED])
        F, k = len(self.keys), self.hidden_dim
        a, b = np.triu_indices(F, k=1)
        chosen = np.sort(rng.choice(len(a), size=len(strengths), replace=False))
        #: the planted pairs, in feature order
        self.pairs = [
            PlantedPair((int(a[c]), int(b[c])), (self.keys[a[c]], self.keys[b[c]]), s)
            for c, s in zip(chosen, strengths, strict=True)
        ]
        # Entries of variance 1/√k make a one-hot pair's ⟨h_a, h_b⟩ of variance 1; dividing by
        # √(mean bag length) keeps it so for longer bags.
        self.hidden = {}
        for f in sorted({f for pair in self.pairs for f in pair.features}):
            scale = k**-0.25 / np.sqrt((1 + self.bag_lengths[f]) / 2)
            self.hidden[self.keys[f]] = scale * rng.standard_normal((self.num_embeddings[f], k))
        #: the weights of the dense features in the logit
        self.dense_weights = np.zeros(self.dense_in_features)
        chosen = rng.choice(self.dense_in_features, size=len(effects), replace=False)
        self.dense_weights[chosen] = effects
        #: the logit's constant term
        self.bias = float(np.log(self.base_rate / (1 - self.base_rate)))

    # -- the planted model -------------------------------------------------------------------

    def logits(self, batch: Batch) -> np.ndarray:
        """The planted logit z of every sample of ``batch``, shape (B,)."""
        B = len(batch.dense)
        offsets = np.r_[0, np.cumsum(batch.lengths)]  # (F·B + 1,)
        pooled = {}
        for key, hidden in self.hidden.items():
            f = batch.keys.index(key)
            lo, hi = offsets[f * B], offsets[(f + 1) * B]
            rows = hidden[batch.values[lo:hi]]  # (Σ lengths of feature f, k)
            pooled[key] = _bag_sums(rows, batch.lengths[f * B : (f + 1) * B])  # (B, k)
        z = self.bias + batch.dense.astype(np.float64) @ self.dense_weights  # (B,)
        for pair in self.pairs:
            h_a, h_b = pooled[pair.keys[0]], pooled[pair.keys[1]]
            z = z + pair.strength * np.sum(h_a * h_b, axis=1)  # (B,)
        return z

    def probabilities(self, batch: Batch) -> np.ndarray:
        """The planted click probability p of every sample of ``batch``, shape (B,)."""
        z = self.logits(batch)
        sigmoid = np.exp(-np.logaddexp(0.0, -z))  # σ(z), stable for either sign
        return self.label_noise + (1 - 2 * self.label_noise) * sigmoid

    def bayes_auc(self, split: str = "test") -> float:
        """The best AUC a model can expect on ``split``: the planted probability's own.

        With pᵢ the planted probability of sample i and labels drawn independently from them,
        it is the expected number of (positive, negative) pairs that ranking by p orders
        correctly over the expected number of such pairs::

            Σ_{i≠j} pᵢ (1 − pⱼ) ([pᵢ > pⱼ] + ½ [pᵢ = pⱼ])  /  Σ_{i≠j} pᵢ (1 − pⱼ)

        summed over the split's actual samples (:func:`refimpl.train.metrics.expected_auc`),
        exactly, in O(n log n): no labels are drawn for it. No scorer can beat it pair by pair
        (pᵢ (1 − pⱼ) ≥ pⱼ (1 − pᵢ) exactly when pᵢ ≥ pⱼ). It is the value the AUC of the split
        tends to if its labels are redrawn again and again; the AUC measured on the split's one
        draw of labels scatters around it by about 1/√n.
        """
        from refimpl.train.metrics import expected_auc

        if self.num_samples(split) == 0:
            raise ValueError(f"split: {split!r} has no samples")
        p = np.concatenate([self.probabilities(b) for b in self.batches(split, CHUNK)])
        return expected_auc(p, p)

    # -- streaming ---------------------------------------------------------------------------

    def num_samples(self, split: str) -> int:
        """The number of samples in ``split``."""
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {self.splits}, got {split!r}")
        return self.sizes[split]

    def batches(
        self, split: str, batch_size: int, shuffle_seed: int | None = None, start: int = 0
    ) -> Iterator[Batch]:
        """Stream ``split`` as batches, from batch ``start`` (to resume) to the end.

        Without ``shuffle_seed`` the samples come in their own order (sample i of the split is
        position i); with one, chunk by chunk in a shuffled order of the chunks, each chunk's
        samples shuffled. Holds the chunks one batch spans, never the split.
        """
        check_batches_args(self, split, batch_size, shuffle_seed, start)
        check_start(self, split, batch_size, start)
        size = self.sizes[split]
        chunks = -(-size // CHUNK)
        if shuffle_seed is None:
            order = np.arange(chunks)
        else:
            order = np.random.default_rng([shuffle_seed, 0]).permutation(chunks)
        chunk_sizes = np.minimum(CHUNK, size - order * CHUNK)  # (chunks,) in stream order
        bounds = np.r_[0, np.cumsum(chunk_sizes)]  # where each chunk starts in the stream
        cached: dict[int, _Chunk] = {}
        for index in range(start, -(-size // batch_size)):
            lo, hi = index * batch_size, min((index + 1) * batch_size, size)
            first, last = np.searchsorted(bounds, [lo, hi - 1], side="right") - 1
            parts = []
            for k in range(first, last + 1):  # the k-th chunk of the stream
                if k not in cached:
                    cached[k] = self._stream_chunk(split, int(order[k]), shuffle_seed)
                a, b = max(lo, bounds[k]) - bounds[k], min(hi, bounds[k + 1]) - bounds[k]
                parts.append(cached[k].cut(a, b))
            cached = {k: v for k, v in cached.items() if k >= last}  # forget the chunks behind
            yield self._to_batch(parts)

    def _stream_chunk(self, split: str, c: int, shuffle_seed: int | None) -> _Chunk:
        chunk = self._chunk(split, c)
        if shuffle_seed is None:
            return chunk
        order = np.random.default_rng([shuffle_seed, 1, c]).permutation(len(chunk.dense))
        return chunk.take(order)

    def _chunk(self, split: str, c: int) -> _Chunk:
        """Samples c·CHUNK … of ``split``, from their own generator."""
        rng = np.random.default_rng([self.seed, SPLITS[split], c])
        C = min(CHUNK, self.sizes[split] - c * CHUNK)
        dense = rng.standard_normal((C, self.dense_in_features)).astype(self.dtype)
        lengths, ids = [], []
        for rows, longest in zip(self.num_embeddings, self.bag_lengths, strict=True):
            n = rng.integers(1, longest + 1, size=C) if longest > 1 else np.ones(C, np.int64)
            lengths.append(n)
            ids.append(_power_law(rng, rows, self.skew, int(n.sum())))
        chunk = _Chunk(dense, lengths, [np.r_[0, np.cumsum(n)] for n in lengths], ids, None)
        p = self.probabilities(self._to_batch([chunk]))
        chunk.labels = (rng.uniform(size=C) < p).astype(self.dtype)  # (C,)
        return chunk

    def _to_batch(self, parts: list[_Chunk]) -> Batch:
        """Concatenate chunk pieces into one key-major Batch."""
        F = len(self.keys)
        labels = None if parts[0].labels is None else np.concatenate([p.labels for p in parts])
        return Batch(
            dense=np.concatenate([p.dense for p in parts]),
            keys=self.keys,
            values=np.concatenate([p.ids[f] for f in range(F) for p in parts]).astype(np.int64),
            lengths=np.concatenate([p.lengths[f] for f in range(F) for p in parts]).astype(
                np.int64
            ),
            weights=None,
            labels=labels,
        )


def _real(name: str, value, low: float, below: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name}: expected a real number, got {value!r}")
    value = float(value)
    if not np.isfinite(value) or value < low or (below is not None and value >= below):
        bound = f"in [{low}, {below})" if below is not None else f">= {low}"
        raise ValueError(f"{name}: expected a finite number {bound}, got {value}")
    return value


def _power_law(rng: np.random.Generator, rows: int, skew: float, size: int) -> np.ndarray:
    """Ids in [0, rows) with density ∝ (r + 1)^(−skew), by inverting the continuous CDF."""
    u = rng.uniform(size=size)
    if skew == 1.0:
        x = (rows + 1.0) ** u
    else:
        x = ((rows + 1.0) ** (1 - skew) * u + (1 - u)) ** (1 / (1 - skew))  # in [1, rows + 1)
    return np.minimum(np.floor(x).astype(np.int64) - 1, rows - 1)


def _bag_sums(rows: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Sum consecutive runs of ``rows`` (Σ lengths, k) of the given ``lengths`` (B,): (B, k)."""
    out = np.zeros((len(lengths), rows.shape[1]))
    nonempty = lengths > 0
    starts = np.r_[0, np.cumsum(lengths)[:-1]][nonempty]
    if len(starts):
        out[nonempty] = np.add.reduceat(rows, starts, axis=0)
    return out
