"""One batch of training data, as every data source yields it."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Batch(NamedTuple):
    """B samples: dense features, categorical ids as key-major jagged arrays, labels.

    The categorical part has the layout of TorchRec's ``KeyedJaggedTensor``: for each of the F
    keys in turn, the B bags of that key (``lengths`` has F·B entries, key-major), their ids
    concatenated in ``values``.

    Attributes
    ----------
    dense : ndarray, shape (B, I)
        Dense (numerical) features, float.
    keys : tuple of str
        The F categorical feature names.
    values : ndarray of int64, shape (Σ lengths,)
        Ids, bag after bag, key-major.
    lengths : ndarray of int64, shape (F·B,)
        The length of each bag: key 0's B bags, then key 1's, …
    weights : ndarray or None, shape (Σ lengths,)
        Optional per-id weights.
    labels : ndarray, shape (B,)
        Click labels, 0.0 or 1.0.
    """

    dense: np.ndarray
    keys: tuple[str, ...]
    values: np.ndarray
    lengths: np.ndarray
    weights: np.ndarray | None
    labels: np.ndarray

    @property
    def size(self) -> int:
        """B, the number of samples."""
        return len(self.labels)

    def sparse(self):
        """The categorical part as a :class:`refimpl.KeyedJaggedArray`."""
        from refimpl.layers.embedding import KeyedJaggedArray

        return KeyedJaggedArray.from_lengths(self.keys, self.values, self.lengths, self.weights)
