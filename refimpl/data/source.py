"""What every data source offers the training loop.

A source (synthetic data, MovieLens-100k, Criteo-format files) is an object with

- ``splits``: the names it can serve, e.g. ``("train", "validation", "test")``;
- ``keys``: the names of its F categorical features, the keys of every
  :class:`~refimpl.data.batch.Batch` it yields, in this order;
- ``num_embeddings``: for each key, in the same order, the number of rows its embedding table
  needs (ids run from 0 to that number − 1);
- ``dense_in_features``: I, the width of ``Batch.dense`` (DLRM's ``dense_in_features``);
- ``num_samples(split)``: the number of samples in a split, or None when the source cannot
  know it without reading the whole split (a stream of files);
- ``batches(split, batch_size, shuffle_seed=None, start=0)``: the split's samples as
  ``Batch``es of ``batch_size`` samples (the last one may be smaller), in the source's fixed
  order when ``shuffle_seed`` is None, else in an order that is a fixed function of
  ``shuffle_seed`` (an int >= 0); ``start`` skips the first ``start`` batches of that same
  sequence, so a run stopped after batch k resumes with exactly batch k + 1.

So a model is sized from the source alone: one embedding table per key, ``zip(keys,
num_embeddings)``, and a DenseArch with ``dense_in_features`` inputs.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from typing import Protocol

from refimpl.data.batch import Batch


class DataSource(Protocol):
    """The interface of every data source (see the module docstring)."""

    splits: tuple[str, ...]
    keys: tuple[str, ...]
    num_embeddings: tuple[int, ...]
    dense_in_features: int

    def num_samples(self, split: str) -> int | None: ...

    def batches(
        self, split: str, batch_size: int, shuffle_seed: int | None = None, start: int = 0
    ) -> Iterator[Batch]: ...


def _check_int(name: str, value, minimum: int) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    return int(value)


def check_batches_args(
    source: DataSource,
    split: str,
    batch_size: int,
    shuffle_seed: int | None = None,
    start: int = 0,
) -> None:
    """Raise ``ValueError``/``TypeError`` unless ``split`` is one of the source's splits,
    ``batch_size`` an integer >= 1, ``shuffle_seed`` None or an integer >= 0 and ``start`` an
    integer >= 0 (a start past the split's end is checked where the length is known)."""
    if split not in source.splits:
        raise ValueError(f"split: expected one of {source.splits}, got {split!r}")
    _check_int("batch_size", batch_size, 1)
    if shuffle_seed is not None:
        _check_int("shuffle_seed", shuffle_seed, 0)
    _check_int("start", start, 0)


def num_batches(source: DataSource, split: str, batch_size: int) -> int | None:
    """The number of batches ``source.batches(split, batch_size)`` yields (None if unknown)."""
    check_batches_args(source, split, batch_size)
    samples = source.num_samples(split)
    return None if samples is None else -(-samples // batch_size)


def check_start(source: DataSource, split: str, batch_size: int, start: int) -> None:
    """A ``start`` beyond the last batch is a ValueError (start == the count yields nothing)."""
    count = num_batches(source, split, batch_size)
    if count is not None and start > count:
        raise ValueError(
            f"start: {split!r} has {count} batches of {batch_size}, cannot start at batch {start}"
        )
