"""Row-sparse gradients: the gradient of an embedding table touched by a few ids.

A batch reads a few hundred rows of a table that may have millions. The gradient of the table
is zero on every row no id in the batch named, so it is kept as the rows that were named and
their summed gradient rows: memory and time follow the ids in the batch, never the table size.
"""

from __future__ import annotations

import numpy as np


class RowSparse:
    """A (num_rows, D) gradient that is zero except on ``indices``.

    Parameters
    ----------
    indices : ndarray of int, shape (U,)
        Unique row ids, sorted ascending, each in ``[0, num_rows)``.
    values : ndarray, shape (U, D)
        The gradient row of each id (repeated ids already summed).
    num_rows : int
        The table's number of rows.

    Examples
    --------
    >>> grad = RowSparse(np.array([1, 3]), np.array([[1.0, 2.0], [3.0, 4.0]]), num_rows=4)
    >>> grad.shape, grad.nnz_rows
    ((4, 2), 2)
    >>> grad.to_dense()
    array([[0., 0.],
           [1., 2.],
           [0., 0.],
           [3., 4.]])
    >>> RowSparse.from_rows(np.array([3, 1, 3]), np.ones((3, 2)), num_rows=4).values
    array([[1., 1.],
           [2., 2.]])
    """

    __slots__ = ("indices", "num_rows", "values")

    def __init__(self, indices: np.ndarray, values: np.ndarray, num_rows: int):
        indices = np.asarray(indices)
        values = np.asarray(values)
        if not np.issubdtype(indices.dtype, np.integer) or indices.ndim != 1:
            raise TypeError(
                f"indices: expected a 1-D integer array of row ids, got dtype {indices.dtype} "
                f"and shape {indices.shape}"
            )
        if values.ndim != 2 or len(values) != len(indices):
            raise ValueError(
                f"values: expected shape (U, D) with U = len(indices) = {len(indices)}, "
                f"got {values.shape}"
            )
        if len(indices) and (indices[0] < 0 or indices[-1] >= num_rows):
            raise ValueError(f"indices: expected row ids in [0, {num_rows}), got {indices}")
        if len(indices) > 1 and np.any(indices[1:] <= indices[:-1]):
            raise ValueError("indices: expected unique row ids sorted ascending")
        self.indices = indices
        self.values = values
        self.num_rows = int(num_rows)

    @classmethod
    def from_rows(cls, ids: np.ndarray, rows: np.ndarray, num_rows: int) -> RowSparse:
        """Sum gradient ``rows`` (M, D) that belong to table rows ``ids`` (M,), repeats added.

        Sorts the ids once, takes each distinct id's first row and adds the repeats onto it
        with ``np.add.at``: time O(M log M), memory O(M·D), whatever ``num_rows``. (Summing
        every run with ``np.add.reduceat`` costs about a microsecond per run, three times
        slower when most ids are distinct, as in a batch drawn from a large table.) Runs on
        float and exact object arrays alike.
        """
        ids = np.asarray(ids)
        if len(ids) == 0:
            return cls(np.zeros(0, np.int64), rows[:0], num_rows)
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        first = np.concatenate([[True], sorted_ids[1:] != sorted_ids[:-1]])  # a run starts
        values = rows[order[first]]  # each distinct id's first row, a new (U, D) array
        repeats = ~first
        if repeats.any():
            run = np.cumsum(first) - 1  # the distinct id of each sorted position, (M,)
            np.add.at(values, run[repeats], rows[order[repeats]])
        return cls(sorted_ids[first].astype(np.int64), values, num_rows)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.num_rows, self.values.shape[1])

    @property
    def dtype(self) -> np.dtype:
        return self.values.dtype

    @property
    def nnz_rows(self) -> int:
        """The number of rows stored."""
        return len(self.indices)

    def to_dense(self) -> np.ndarray:
        """The full (num_rows, D) array: allocates the whole table, for comparisons only."""
        dense = np.zeros(self.shape, self.values.dtype)
        dense[self.indices] = self.values
        return dense

    def __repr__(self) -> str:
        return f"RowSparse(rows={self.nnz_rows} of {self.num_rows}, D={self.shape[1]})"
