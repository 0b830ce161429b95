"""Synthetic Criteo-shaped data: layout, reproducibility, the planted model and its Bayes AUC."""

import tracemalloc

import numpy as np
import pytest

from refimpl.data.batch import Batch
from refimpl.data.source import num_batches
from refimpl.data.synthetic import CHUNK, SyntheticCriteo
from refimpl.train import auc, expected_auc


def small(**kw):
    args = {"num_embeddings": [30, 40, 50, 60], "num_train": 3000, "num_validation": 500}
    args |= {"num_test": 700, "pair_strengths": [2.0, 1.0], "seed": 7}
    return SyntheticCriteo(**(args | kw))


def batch_at(data, split, index, batch_size, shuffle_seed=None):
    """Batch ``index`` of a split, as a resumed run starts with it."""
    return next(data.batches(split, batch_size, shuffle_seed, start=index))


def whole(data, split, batch_size, shuffle_seed=None, start=0):
    """A split as one Batch, through batches of the given size (bags regrouped per feature)."""
    batches = list(data.batches(split, batch_size, shuffle_seed, start))
    F = len(data.keys)
    per_feature = [[], []]  # lengths, values
    for f in range(F):
        for b in batches:
            n = b.size
            offsets = np.r_[0, np.cumsum(b.lengths)]
            per_feature[0].append(b.lengths[f * n : (f + 1) * n])
            per_feature[1].append(b.values[offsets[f * n] : offsets[(f + 1) * n]])
    return Batch(
        np.concatenate([b.dense for b in batches]),
        data.keys,
        np.concatenate(per_feature[1]),
        np.concatenate(per_feature[0]),
        None,
        np.concatenate([b.labels for b in batches]),
    )


def test_layout_of_a_batch():
    data = small(bag_lengths=[1, 3, 1, 5], dtype=np.float32)
    batch = batch_at(data, "train", 2, batch_size=100)
    assert batch.dense.shape == (100, 13) and batch.dense.dtype == np.float32
    assert batch.keys == ("cat_0", "cat_1", "cat_2", "cat_3")
    assert batch.lengths.shape == (400,) and batch.values.dtype == np.int64
    assert batch.values.shape == (batch.lengths.sum(),) and batch.weights is None
    lengths = batch.lengths.reshape(4, 100)  # key-major: feature f's B bags together
    assert (lengths[[0, 2]] == 1).all()
    assert lengths[1].min() == 1 and lengths[1].max() == 3 and lengths[3].max() == 5
    offsets = np.r_[0, np.cumsum(batch.lengths)]
    for f, rows in enumerate([30, 40, 50, 60]):
        ids = batch.values[offsets[f * 100] : offsets[(f + 1) * 100]]
        assert ids.min() >= 0 and ids.max() < rows
    assert set(np.unique(batch.labels)) == {0.0, 1.0}
    assert num_batches(data, "train", 1000) == 3 and batch_at(data, "train", 2, 1000).size == 1000
    assert batch_at(data, "test", 2, 300).size == 100  # the last batch holds what is left


def test_each_sample_is_fixed_by_seed_split_and_position():
    data = small()
    a, b = whole(data, "train", 1000), whole(data, "train", 333)  # chunk edges fall anywhere
    for field in ("dense", "values", "lengths", "labels"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    again = batch_at(small(), "train", 5, batch_size=333)
    np.testing.assert_array_equal(again.values, batch_at(data, "train", 5, batch_size=333).values)
    resumed = list(data.batches("train", 333, start=4))
    assert len(resumed) == num_batches(data, "train", 333) - 4
    np.testing.assert_array_equal(resumed[1].dense, batch_at(data, "train", 5, 333).dense)
    test, train = batch_at(data, "test", 0, 100), batch_at(data, "train", 0, 100)
    assert not np.array_equal(test.dense, train.dense)
    assert not np.array_equal(batch_at(small(seed=8), "train", 0, 100).dense, a.dense[:100])


def samples(batch):
    """Each sample as (dense row, its bags, label), keyed by its first dense feature."""
    F, B = len(batch.keys), batch.size
    offsets = np.r_[0, np.cumsum(batch.lengths)]
    return {
        float(batch.dense[i, 0]): (
            batch.dense[i].tolist(),
            [batch.values[offsets[f * B + i] : offsets[f * B + i + 1]].tolist() for f in range(F)],
            float(batch.labels[i]),
        )
        for i in range(B)
    }


def test_shuffling_permutes_whole_samples_and_resumes_exactly():
    data = small(num_train=2 * CHUNK + 1808, bag_lengths=[1, 3, 2, 4])  # the last chunk is short
    plain = whole(data, "train", 1000)
    mixed = whole(data, "train", 1000, shuffle_seed=5)
    assert samples(mixed) == samples(plain)  # the same samples, each with its bags and label
    assert not np.array_equal(mixed.dense, plain.dense)
    assert not np.array_equal(whole(data, "train", 1000, shuffle_seed=6).dense, mixed.dense)
    again = whole(data, "train", 1000, shuffle_seed=5)
    np.testing.assert_array_equal(again.values, mixed.values)
    # batch k of a shuffled epoch is the same whether the epoch starts at 0 or resumes at k
    for start in (3, 4, 9):
        resumed = batch_at(data, "train", start, 1000, shuffle_seed=5)
        from_zero = list(data.batches("train", 1000, shuffle_seed=5))[start]
        for name in ("dense", "values", "lengths", "labels"):
            np.testing.assert_array_equal(getattr(resumed, name), getattr(from_zero, name))
    assert list(data.batches("train", 1000, shuffle_seed=5, start=10)) == []  # after the last


def naive_logit(data, dense, bags):
    """The planted logit of one sample, written out: bags[f] is the list of ids of feature f."""
    z = data.bias + sum(w * x for w, x in zip(data.dense_weights, dense, strict=True))
    for pair in data.pairs:
        a, b = pair.features
        h_a = sum(data.hidden[data.keys[a]][i] for i in bags[a])
        h_b = sum(data.hidden[data.keys[b]][i] for i in bags[b])
        z += pair.strength * float(np.dot(h_a, h_b))
    return z


def test_logits_equal_the_formula_sample_by_sample():
    data = small(bag_lengths=[2, 3, 1, 4], num_train=50)
    batch = batch_at(data, "train", 0, 50)
    offsets = np.r_[0, np.cumsum(batch.lengths)]
    expected = []
    for i in range(50):
        bags = [batch.values[offsets[f * 50 + i] : offsets[f * 50 + i + 1]] for f in range(4)]
        expected.append(naive_logit(data, batch.dense[i], bags))
    np.testing.assert_allclose(data.logits(batch), expected, rtol=1e-13, atol=1e-13)


def test_distractor_features_have_no_effect_and_pairs_do():
    data = small(num_embeddings=[30] * 6, pair_strengths=[1.5])
    (a, b) = data.pairs[0].features
    batch = batch_at(data, "train", 0, 200)
    z = data.logits(batch)
    for f in range(6):
        shuffled = batch.values.copy()
        lo, hi = f * 200, (f + 1) * 200  # one-hot: feature f's ids are values[lo:hi]
        shuffled[lo:hi] = np.roll(shuffled[lo:hi], 1)
        moved = data.logits(batch._replace(values=shuffled))
        assert np.allclose(moved, z) == (f not in (a, b))
    assert set(data.hidden) == {data.keys[a], data.keys[b]}


def test_labels_are_drawn_from_the_planted_probabilities():
    data = small(num_train=40_000)
    p = np.concatenate([data.probabilities(b) for b in data.batches("train", 5000)])
    y = np.concatenate([b.labels for b in data.batches("train", 5000)])
    order = np.argsort(p)
    for part in np.array_split(order, 8):  # in every slice of p, the click rate is mean p
        sd = np.sqrt(np.sum(p[part] * (1 - p[part]))) / len(part)
        assert abs(y[part].mean() - p[part].mean()) < 4.5 * sd


def test_bayes_auc_is_the_expected_auc_of_the_planted_probability():
    data = small(num_test=400)
    batch = batch_at(data, "test", 0, 400)
    p = data.probabilities(batch)
    weight = np.outer(p, 1 - p)  # pair (i positive, j negative)
    np.fill_diagonal(weight, 0)
    ranked = (p[:, None] > p[None, :]) + 0.5 * (p[:, None] == p[None, :])
    assert data.bayes_auc("test") == pytest.approx(np.sum(weight * ranked) / weight.sum(), 1e-14)
    # the planted scorer is best; forgetting a planted pair or the dense part costs AUC
    bayes = data.bayes_auc("test")
    weaker = data.logits(batch) - data.bias - batch.dense @ data.dense_weights
    assert expected_auc(p, weaker) < bayes - 0.01
    labels = np.concatenate([b.labels for b in data.batches("test", 400)])
    assert abs(auc(labels, p) - bayes) < 3 / np.sqrt(400)


def test_label_noise_shrinks_probabilities_but_keeps_their_order():
    clean, noisy = small(), small(label_noise=0.2)
    batch = batch_at(clean, "test", 0, 700)
    p, q = clean.probabilities(batch), noisy.probabilities(batch)
    assert q.min() >= 0.2 and q.max() <= 0.8
    np.testing.assert_array_equal(np.argsort(p, kind="stable"), np.argsort(q, kind="stable"))
    assert noisy.bayes_auc("test") < clean.bayes_auc("test")


@pytest.mark.parametrize("skew", [0.0, 1.0, 1.5])
def test_ids_follow_the_power_law(skew):
    data = small(num_embeddings=[8], pair_strengths=[], skew=skew, num_train=40_000)
    ids = whole(data, "train", 40_000).values
    counts = np.bincount(ids, minlength=8)
    edges = np.arange(1, 10.0)  # id r covers [r + 1, r + 2) of the continuous law
    cdf = np.log(edges) if skew == 1 else edges ** (1 - skew) - 1
    expected = np.diff(cdf) / (cdf[-1] - cdf[0]) * 40_000
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected) + 1)


def streaming_peak(chunks):
    data = small(num_embeddings=[1000] * 26, num_train=chunks * CHUNK)
    tracemalloc.start()
    for batch in data.batches("train", 1000):
        assert batch.size <= 1000
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_streaming_memory_does_not_grow_with_the_split():
    short, long = streaming_peak(3), streaming_peak(24)  # the long split is ~40 MB of arrays
    assert long < 1.1 * short and long < 15_000_000, (short, long)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda d: batch_at(d, "dev", 0, 10), ValueError, "split: expected one of"),
        (lambda d: next(d.batches("train", 1000, start=4)), ValueError, "has 3 batches"),
        (lambda d: next(d.batches("train", 10, start=1.0)), TypeError, "start"),
        (lambda d: next(d.batches("train", 10, shuffle_seed=-1)), ValueError, "shuffle_seed"),
        (lambda d: next(d.batches("train", 0)), ValueError, "batch_size"),
        (lambda d: small(bag_lengths=[1, 2]), ValueError, "bag_lengths: expected one int or F"),
        (lambda d: small(pair_strengths=[1.0] * 7), ValueError, "only 6"),
        (lambda d: small(dense_effects=[1.0] * 14), ValueError, "I = 13"),
        (lambda d: small(label_noise=0.5), ValueError, "label_noise"),
        (lambda d: small(base_rate=0.0), ValueError, "base_rate"),
        (lambda d: small(num_embeddings=[]), ValueError, "at least one"),
        (lambda d: small(num_embeddings=[10, 0]), ValueError, "num_embeddings\\[1\\]"),
        (lambda d: small(num_test=0).bayes_auc("test"), ValueError, "no samples"),
        (lambda d: small(dtype=np.int64), TypeError, "dtype"),
    ],
)
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call(small())
