"""Delimited text tables read whole-array at a time, with errors that name the line.

Both helpers work on ``str`` or ``bytes`` lines alike. Splitting happens once for all lines
(join, split, reshape) rather than line by line; a line with the wrong number of fields, or a
cell that is not an integer, is found afterwards and reported with its file and line number.
"""

from __future__ import annotations

import numpy as np

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def split_fields(
    lines: list, sep: str | bytes, n_fields: int, source: str, first_line: int = 1
) -> np.ndarray:
    """Split ``lines`` on ``sep`` into an (n, n_fields) array of ``str`` or ``bytes`` cells.

    Parameters
    ----------
    lines : list of str or list of bytes, length n
        The lines, without their line endings.
    sep : str or bytes
        The field separator (the same type as the lines).
    n_fields : int
        The number of fields every line must have.
    source : str
        The file name used in error messages.
    first_line : int
        The line number of ``lines[0]`` in that file (1-based).

    Raises
    ------
    ValueError
        A line does not have ``n_fields`` fields; the message names the file and line.

    Examples
    --------
    >>> split_fields(["a|1", "b|2"], "|", 2, "t.txt").tolist()
    [['a', '1'], ['b', '2']]
    >>> split_fields(["a|1", "b"], "|", 2, "t.txt", first_line=7)
    Traceback (most recent call last):
    ...
    ValueError: t.txt, line 8: expected 2 fields separated by '|', found 1: 'b'
    """
    if len(lines) == 0:
        return np.empty((0, n_fields), dtype=type(sep))
    counts = np.strings.count(_fixed_width(lines), sep) + 1  # (n,) fields per line
    bad = np.flatnonzero(counts != n_fields)
    if bad.size:
        i = bad[0]
        raise ValueError(
            f"{source}, line {first_line + i}: expected {n_fields} fields separated by "
            f"{_shown(sep)}, found {counts[i]}: {_shown(lines[i][:120])}"
        )
    return _fixed_width(sep.join(lines).split(sep)).reshape(len(lines), n_fields)


def _fixed_width(texts: list) -> np.ndarray:
    """A list of str or bytes as one NumPy array of the narrowest fixed width that holds all."""
    width = max(1, max(map(len, texts)))
    kind = "S" if isinstance(texts[0], bytes) else "U"
    return np.fromiter(texts, dtype=f"{kind}{width}", count=len(texts))


def to_int(cells: np.ndarray, source: str, first_line: int = 1, first_field: int = 1) -> np.ndarray:
    """Decimal text cells, shape (n, k), as int64; a bad cell is reported by line and field.

    ``first_field`` is the 1-based field number of column 0 in the file's lines.

    >>> to_int(np.array([["1", "-2"], ["30", "4"]]), "t.txt").tolist()
    [[1, -2], [30, 4]]
    >>> to_int(np.array([["1", "-2"], ["3x", "4"]]), "t.txt", first_line=5, first_field=3)
    Traceback (most recent call last):
    ...
    ValueError: t.txt, line 6, field 3: expected an integer, found '3x'
    """
    try:
        return cells.astype(np.int64)
    except (ValueError, OverflowError):
        pass
    # Only on the error path: walk the cells to name the first bad one.
    for (i, j), cell in np.ndenumerate(cells):
        try:
            value = int(cell)
            ok = INT64_MIN <= value <= INT64_MAX
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(
                f"{source}, line {first_line + i}, field {first_field + j}: expected an "
                f"integer, found {_shown(cell)}"
            ) from None
    raise AssertionError("astype(int64) failed but every cell converts")  # pragma: no cover


def _shown(text: str | bytes) -> str:
    """``repr`` of text, decoding bytes first so messages read the same for both."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    return repr(str(text))
