"""What every data source offers the training loop.

A source (synthetic data, MovieLens-100k, Criteo-format files) is an object with

- ``splits``: the names it can serve, e.g. ``("train", "validation", "test")``;
- ``keys``: the names of its F categorical features, the keys of every
  :class:`~refimpl.data.batch.Batch` it yields, in this order;
- ``num_embeddings``: for each key, in the same order, the number of rows its embedding table
  needs (ids run from 0 to that number − 1);
- ``dense_in_features``: I, the width of ``Batch.dense`` (DLRM's ``dense_in_features``);
- ``batches(split, batch_size, shuffle_seed=None)``: the split's samples as ``Batch``es of
  ``batch_size`` samples (the last one may be smaller), in a fixed order when ``shuffle_seed``
  is None and in an order drawn from ``numpy.random.default_rng(shuffle_seed)`` otherwise.

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

    def batches(
        self, split: str, batch_size: int, shuffle_seed: int | None = None
    ) -> Iterator[Batch]: ...


def check_batches_args(source: DataSource, split: str, batch_size: int) -> None:
    """Raise ``ValueError``/``TypeError`` unless ``split`` is one of the source's splits and
    ``batch_size`` a positive integer."""
    if split not in source.splits:
        raise ValueError(f"split must be one of {source.splits}, got {split!r}")
    if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool):
        raise TypeError(f"batch_size must be an integer, got {type(batch_size).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
