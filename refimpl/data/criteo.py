"""Criteo's click logs (the Kaggle Display Advertising Challenge and the Terabyte set), streamed.

Both come as text, one impression per line, 40 tab-separated fields:

- the label, 0 or 1 (clicked);
- 13 integer features (counts, mostly), any of which may be empty and some negative;
- 26 categorical features, each a 32-bit value written as 8 hexadecimal digits (hashed
  strings), any of which may be empty.

The reader turns each line into what facebookresearch/dlrm feeds its model:

- dense: ``log(1 + max(x, 0))`` of each integer feature, an empty one read as 0 (dlrm sets
  negatives to 0, then takes ``log(x + 1)``);
- categorical: ``int(hex, 16) % num_embeddings`` for each feature, an empty one read as
  ``"0"``, so **an empty categorical maps to row 0**, the row it shares with every value that
  is a multiple of ``num_embeddings``. This is dlrm's ``--max-ind-range``: it reduces the raw
  value modulo the range as it parses the text. (dlrm then renumbers the surviving values
  densely in a pass over the whole data set; that changes which row a value gets, not which
  values share one, and a stream cannot make that pass, so the row here is the remainder
  itself.)

TorchRec's own Criteo tooling reads empty fields as 0 too and hashes with ``% hashes`` per
feature, but transforms the integers differently: its ``tsv_to_npys`` takes
``log(x − min + 2)`` with ``min`` the smallest integer in the whole file. The ``log(1 + max(x,
0))`` here is dlrm's, which needs no pass over the data.

Memory stays bounded: the file is read ``chunk_rows`` lines at a time, each chunk parsed as
arrays (no Python loop over lines), and batches are cut from the chunk. A line that is not 40
fields, a label that is not 0 or 1, an integer feature that is not an integer or a categorical
feature that is not hexadecimal (at most 16 digits) raises a ``ValueError`` naming the file
and the line. Kaggle's ``test.txt`` has no labels (39 fields) and is refused for that reason.
Files ending in ``.gz`` are decompressed on the fly.

Held-out lines of one file
--------------------------
Kaggle's challenge ships one labelled file, ``train.txt``: 45,840,617 impressions from seven
consecutive days, in time order. ``holdout=N`` makes validation and test splits out of its
**last N lines** (the first ⌈N/2⌉ of them validation, the rest test) and trains on the lines
before them. The last lines, not a hash of the line number: a hash would scatter the held-out
lines over the whole week, so the model would be tested on the very days (the same campaigns,
the same new ads) it trained on, and its score would promise more than a model that must
predict tomorrow can deliver. It is facebookresearch/dlrm's split of that file without its
shuffling: dlrm cuts the file into seven equal parts by line count, holds out the last
(6,548,659 lines, so ``holdout=6548659`` gives the same lines) and halves it, validation first.
The price is one pass over the file before training to count its lines (no parsing; a gzip
file is decompressed for it), and each pass over a held-out split reads past the lines before
it.
"""

from __future__ import annotations

import gzip
import itertools
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from refimpl.data.batch import Batch
from refimpl.data.source import check_batches_args, check_start
from refimpl.data.text import split_fields, to_int

INT_FEATURES = 13
CAT_FEATURES = 26
FIELDS = 1 + INT_FEATURES + CAT_FEATURES
KEYS = tuple(f"cat_{i}" for i in range(CAT_FEATURES))  # TorchRec's DEFAULT_CAT_NAMES
MAX_HEX_DIGITS = 16  # 64 bits; Criteo's values have 8

_NIBBLE = np.full(256, 255, dtype=np.uint8)  # byte → value of the hex digit, 255 if none
_NIBBLE[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_NIBBLE[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
_NIBBLE[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)


def parse_lines(
    lines: list[bytes],
    num_embeddings: np.ndarray,
    source: str = "<lines>",
    first_line: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse Criteo lines into dense features, hashed ids and labels.

    Parameters
    ----------
    lines : list of bytes, length B
        The lines, without their line endings.
    num_embeddings : ndarray of int, shape (26,)
        Rows per categorical feature (the modulus).
    source : str
        The file name for error messages.
    first_line : int
        The line number of ``lines[0]`` in that file.

    Returns
    -------
    dense : ndarray of float64, shape (B, 13)
        ``log(1 + max(x, 0))``.
    ids : ndarray of int64, shape (B, 26)
        ``int(hex, 16) % num_embeddings``, an empty field as 0.
    labels : ndarray of float64, shape (B,)

    Examples
    --------
    >>> line = b"1\\t5\\t-1" + b"\\t" * 11 + b"\\t0000000a" + b"\\t" * 25
    >>> dense, ids, labels = parse_lines([line], np.full(26, 4))
    >>> dense[0, :3].round(4).tolist(), ids[0, :2].tolist(), labels.tolist()
    ([1.7918, 0.0, 0.0], [2, 0], [1.0])
    """
    fields = split_fields(lines, b"\t", FIELDS, source, first_line)  # (B, 40) bytes
    label = fields[:, 0]
    bad = np.flatnonzero((label != b"0") & (label != b"1"))
    if bad.size:
        raise ValueError(
            f"{source}, line {first_line + bad[0]}, field 1: the label must be 0 or 1, found "
            f"{label[bad[0]].decode('latin-1')!r}"
        )
    ints = fields[:, 1 : 1 + INT_FEATURES]
    ints = to_int(np.where(ints == b"", b"0", ints), source, first_line, first_field=2)  # (B, 13)
    dense = np.log1p(np.maximum(ints, 0).astype(np.float64))  # (B, 13)
    ids = _hex_mod(fields[:, 1 + INT_FEATURES :], num_embeddings, source, first_line)  # (B, 26)
    return dense, ids, (label == b"1").astype(np.float64)


def _hex_mod(cells: np.ndarray, modulus: np.ndarray, source: str, first_line: int) -> np.ndarray:
    """Hexadecimal cells (B, 26) of bytes, empty as 0, each reduced modulo its column's rows."""
    B, K = cells.shape
    length = np.strings.str_len(cells)  # (B, 26)
    if length.size and length.max() > MAX_HEX_DIGITS:
        i, j = np.argwhere(length > MAX_HEX_DIGITS)[0]
        raise ValueError(
            f"{source}, line {first_line + i}, field {2 + INT_FEATURES + j}: more than "
            f"{MAX_HEX_DIGITS} hexadecimal digits: {cells[i, j].decode('latin-1')!r}"
        )
    # Right-align every cell in 2, 4, 8 or 16 digits (zeros in front: an empty cell is 0), so
    # that each pair of digits is one byte and the bytes read big-endian are the value.
    digits = 2 ** int(np.ceil(np.log2(max(int(length.max(initial=0)), 2))))
    text = np.strings.rjust(cells, digits, b"0").astype(f"S{digits}")  # (B, 26)
    nibble = _NIBBLE[np.frombuffer(text.tobytes(), np.uint8)].reshape(B, K, digits)
    bad = (nibble == 255).any(axis=2)  # (B, 26)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(
            f"{source}, line {first_line + i}, field {2 + INT_FEATURES + j}: expected "
            f"hexadecimal digits, found {cells[i, j].decode('latin-1')!r}"
        )
    packed = np.ascontiguousarray((nibble[..., 0::2] << 4) | nibble[..., 1::2])  # (B, 26, d/2)
    value = packed.view(f">u{digits // 2}").reshape(B, K).astype(np.uint64)  # (B, 26)
    return (value % modulus.astype(np.uint64)).astype(np.int64)


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def count_lines(path: str | os.PathLike) -> int:
    """The number of lines of a text file (plain or .gz), a last line without an ending included.

    Reads 1 MiB at a time and counts line feeds: no parsing, bounded memory.
    """
    count, last = 0, b"\n"
    with _open(Path(path)) as f:
        while piece := f.read(1 << 20):
            count += piece.count(b"\n")
            last = piece[-1:]
    return count + (last != b"\n")


class CriteoTSV:
    """Criteo-format TSV files as a stream of ``Batch``es (F = 26 keys, I = 13 dense features).

    Parameters
    ----------
    files : path, or mapping of split name to a path or a sequence of paths
        One path gives a single ``"train"`` split. Criteo's own splits are by day (Terabyte:
        days 0–22 train, day 23 test), so splits are given as files, read in the order given.
    num_embeddings : int or sequence of 26 ints
        Rows per categorical feature (dlrm's ``--max-ind-range``, the same for all 26 when an
        int).
    holdout : int
        0 (default), or N >= 2 with one file given: validation and test are its last N lines
        (see the module docstring), training the lines before them.
    chunk_rows : int
        Lines parsed at a time; memory grows with this, not with the file.
    dtype : numpy float dtype
        Of ``Batch.dense`` and ``Batch.labels`` (default float64).

    Examples
    --------
    >>> data = CriteoTSV({"train": "day_0.gz", "test": "day_23.gz"}, num_embeddings=100_000)
    >>> data.splits, data.keys[:2], data.num_embeddings[:2], data.dense_in_features
    (('train', 'test'), ('cat_0', 'cat_1'), (100000, 100000), 13)

    A file of 50 lines, the last 10 held out:

    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "train.txt"
    >>> _ = path.write_text(("0" + "\\t" * 39 + "\\n") * 50)
    >>> data = CriteoTSV(path, num_embeddings=10, holdout=10)
    >>> [(split, data.num_samples(split)) for split in data.splits]
    [('train', 40), ('validation', 5), ('test', 5)]
    """

    keys = KEYS
    dense_in_features = INT_FEATURES

    def __init__(
        self,
        files: str | os.PathLike | Mapping[str, str | os.PathLike | Sequence[str | os.PathLike]],
        num_embeddings: int | Sequence[int],
        *,
        holdout: int = 0,
        chunk_rows: int = 65536,
        dtype=np.float64,
    ):
        if isinstance(files, str | os.PathLike):
            files = {"train": files}
        # Each split reads whole files, or (holdout) a range of lines of one: (path, skip, take).
        self._files = {
            split: [
                (Path(p), 0, None)
                for p in ([paths] if isinstance(paths, str | os.PathLike) else paths)
            ]
            for split, paths in files.items()
        }
        rows = np.asarray(num_embeddings)
        if rows.ndim == 0:
            rows = np.full(CAT_FEATURES, rows)
        if rows.shape != (CAT_FEATURES,) or not np.issubdtype(rows.dtype, np.integer):
            raise ValueError(
                f"num_embeddings must be an int or {CAT_FEATURES} ints, got {num_embeddings!r}"
            )
        if (rows < 1).any():
            raise ValueError(f"num_embeddings must be positive, got {rows.tolist()}")
        self._rows = rows.astype(np.int64)
        self.num_embeddings = tuple(self._rows.tolist())
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
        self.chunk_rows = chunk_rows
        self.dtype = np.dtype(dtype)
        if not np.issubdtype(self.dtype, np.floating):
            raise TypeError(f"dtype must be a floating dtype, got {self.dtype}")
        self._sizes = {}  # samples per split, where known (holdout)
        if isinstance(holdout, bool) or not isinstance(holdout, int | np.integer):
            raise TypeError(f"holdout: expected an integer (lines), got {holdout!r}")
        if holdout:  # last: it reads the whole file, once the cheap checks have passed
            self._hold_out(int(holdout))
        self.splits = tuple(self._files)

    def _hold_out(self, holdout: int) -> None:
        """Split the one training file into train, validation and test by its last lines."""
        if list(self._files) != ["train"] or len(self._files["train"]) != 1:
            given = {split: [str(p) for p, _, _ in v] for split, v in self._files.items()}
            raise ValueError(
                "holdout: takes validation and test lines from a single training file, but the "
                f"splits are {given}"
            )
        if holdout < 2:
            raise ValueError(f"holdout: expected 0 or at least 2 lines, got {holdout}")
        path = self._files["train"][0][0]
        if not path.is_file():
            raise FileNotFoundError(f"no Criteo file {path}")
        total = count_lines(path)
        if holdout >= total:
            raise ValueError(
                f"holdout: {path} has {total} lines; holding out {holdout} leaves none to train on"
            )
        train, validation = total - holdout, -(-holdout // 2)
        self._files = {
            "train": [(path, 0, train)],
            "validation": [(path, train, validation)],
            "test": [(path, train + validation, holdout - validation)],
        }
        self._sizes = {"train": train, "validation": validation, "test": holdout - validation}

    def num_samples(self, split: str) -> int | None:
        """A held-out split's size; else None: a split's length is known only after reading
        all of its files."""
        check_batches_args(self, split, 1)
        return self._sizes.get(split)

    def batches(
        self, split: str, batch_size: int, shuffle_seed: int | None = None, start: int = 0
    ) -> Iterator[Batch]:
        """The split's lines as ``Batch``es of ``batch_size`` (the last may be smaller).

        With a ``shuffle_seed``, lines are shuffled within each chunk of ``chunk_rows`` (a
        full shuffle would need the whole file in memory), one permutation per chunk drawn in
        turn from ``numpy.random.default_rng(shuffle_seed)``; the files' order is kept.
        ``start`` skips that many batches: the chunks before them are read but not parsed.
        """
        check_batches_args(self, split, batch_size, shuffle_seed, start)
        check_start(self, split, batch_size, start)
        rng = None if shuffle_seed is None else np.random.default_rng(shuffle_seed)
        skip = start * batch_size  # samples of the stream still to pass over
        dense, ids, labels = [], [], []  # parsed rows not yet in a batch
        held = 0
        for rows, path, first_line in self._chunks(split):
            order = None if rng is None else rng.permutation(len(rows))  # drawn even if skipped
            if skip >= len(rows):
                skip -= len(rows)
                continue
            chunk = parse_lines(rows, self._rows, str(path), first_line)
            if order is not None:
                chunk = tuple(part[order] for part in chunk)
            if skip:
                chunk = tuple(part[skip:] for part in chunk)
                skip = 0
            for part, kept in zip(chunk, (dense, ids, labels), strict=True):
                kept.append(part)
            held += len(chunk[2])
            if held >= batch_size:
                full = (held // batch_size) * batch_size
                d, i, y = (np.concatenate(kept) for kept in (dense, ids, labels))
                for first in range(0, full, batch_size):
                    stop = first + batch_size
                    yield self._batch(d[first:stop], i[first:stop], y[first:stop])
                dense, ids, labels, held = [d[full:]], [i[full:]], [y[full:]], held - full
        if held:
            yield self._batch(*(np.concatenate(kept) for kept in (dense, ids, labels)))

    def _chunks(self, split: str) -> Iterator[tuple[list[bytes], Path, int]]:
        """Each chunk's lines (without line endings), its file and its first line number."""
        for path, skip, take in self._files[split]:
            if not path.is_file():
                raise FileNotFoundError(f"no Criteo file {path} (split {split!r})")
            with _open(path) as f:
                for _ in itertools.islice(f, skip):  # the lines before a held-out range
                    pass
                first_line = skip + 1
                left = float("inf") if take is None else take
                while left and (lines := list(itertools.islice(f, min(self.chunk_rows, left)))):
                    left -= len(lines)
                    # One join and one split for the chunk, not a strip per line.
                    text = b"".join(lines).replace(b"\r\n", b"\n")
                    rows = text.split(b"\n")
                    if text.endswith(b"\n"):
                        rows.pop()  # the empty string after the last line ending
                    yield rows, path, first_line
                    first_line += len(rows)

    def _batch(self, dense: np.ndarray, ids: np.ndarray, labels: np.ndarray) -> Batch:
        B = len(labels)
        return Batch(
            dense=dense.astype(self.dtype),  # (B, 13)
            keys=KEYS,
            values=np.ascontiguousarray(ids.T).reshape(-1),  # (26·B,) key-major
            lengths=np.ones(CAT_FEATURES * B, dtype=np.int64),  # one id per bag
            weights=None,
            labels=labels.astype(self.dtype),
        )
