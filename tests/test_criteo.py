"""The Criteo TSV reader against a line-by-line reading in plain Python, on files written here."""

import gzip
import math

import numpy as np
import pytest

from refimpl.data.criteo import KEYS, CriteoTSV, parse_lines


def random_lines(n, seed=0):
    """Lines in Criteo's format: empty and negative integers, empty and mixed-case hex."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n):
        ints = [str(v) if rng.random() > 0.2 else "" for v in rng.integers(-3, 10**6, 13)]
        cats = [f"{v:08x}" if rng.random() > 0.1 else "" for v in rng.integers(0, 2**32, 26)]
        lines.append("\t".join([str(rng.integers(0, 2)), *ints, *cats]))
    return lines


def expected(line, rows):
    """One line read as facebookresearch/dlrm does: empty fields are "0"; negatives become 0
    before log(x + 1); categoricals are int(x, 16) % max_ind_range."""
    fields = [f or "0" for f in line.split("\t")]
    dense = [math.log(max(int(x), 0) + 1) for x in fields[1:14]]
    ids = [int(x, 16) % r for x, r in zip(fields[14:], rows, strict=True)]
    return dense, ids, float(fields[0])


def write(path, lines, end="\n", final=True):
    path.write_text(end.join(lines) + (end if final else ""))
    return path


def read_all(data, split="train", batch_size=7, **kw):
    batches = list(data.batches(split, batch_size, **kw))
    dense = np.concatenate([b.dense for b in batches])
    ids = np.concatenate([b.values.reshape(len(KEYS), b.size) for b in batches], axis=1).T
    labels = np.concatenate([b.labels for b in batches])
    return batches, dense, ids, labels


def test_hand_values():
    line = "\t".join(["1", "0", "-5", "", "7", *[""] * 9, "0000000a", "FFFFFFFF", "", *["1"] * 23])
    dense, ids, labels = parse_lines([line.encode()], np.full(26, 7))
    np.testing.assert_allclose(dense[0, :4], [0.0, 0.0, 0.0, math.log(8)])
    assert ids[0, :4].tolist() == [10 % 7, 0xFFFFFFFF % 7, 0, 1]  # empty → row 0
    assert labels.tolist() == [1.0]


def test_matches_a_line_by_line_reading(tmp_path):
    lines = random_lines(53)
    rows = list(range(1000, 1026))
    data = CriteoTSV(write(tmp_path / "day_0", lines), num_embeddings=rows, chunk_rows=10)
    batches, dense, ids, labels = read_all(data, batch_size=8)
    assert [b.size for b in batches] == [8] * 6 + [5]
    for i, line in enumerate(lines):
        d, k, y = expected(line, rows)
        np.testing.assert_allclose(dense[i], d, rtol=1e-15)
        assert ids[i].tolist() == k and labels[i] == y
    for b in batches:
        assert b.keys == KEYS and b.weights is None
        assert b.lengths.tolist() == [1] * (26 * b.size) and b.dense.shape == (b.size, 13)


def test_chunks_do_not_change_the_batches(tmp_path):
    path = write(tmp_path / "day_0", random_lines(40, seed=1))
    reference = read_all(CriteoTSV(path, 1000, chunk_rows=1000), batch_size=6)
    for chunk_rows in (1, 5, 6, 13):
        got = read_all(CriteoTSV(path, 1000, chunk_rows=chunk_rows), batch_size=6)
        for a, b in zip(reference[1:], got[1:], strict=True):
            np.testing.assert_array_equal(a, b)


def test_streams_lazily(tmp_path):
    """A bad line late in the file is met only when the stream reaches its chunk."""
    lines = random_lines(30)
    lines[25] = "not a criteo line"
    stream = CriteoTSV(write(tmp_path / "big", lines), 1000, chunk_rows=10).batches("train", 10)
    assert next(stream).size == 10 and next(stream).size == 10
    with pytest.raises(ValueError, match=r"big, line 26: expected 40 fields"):
        next(stream)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: f[:-1], r"line 4: expected 40 fields separated by '\\t', found 39"),
        (lambda f: ["2", *f[1:]], r"line 4, field 1: the label must be 0 or 1, found '2'"),
        (lambda f: [*f[:3], "1.5", *f[4:]], r"line 4, field 4: expected an integer, found '1.5'"),
        (lambda f: [*f[:20], "xyz", *f[21:]], r"line 4, field 21: expected hexadecimal digits"),
        (lambda f: [*f[:39], "1" * 17], r"line 4, field 40: more than 16 hexadecimal digits"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, edit, message):
    lines = random_lines(6)
    lines[3] = "\t".join(edit(lines[3].split("\t")))
    data = CriteoTSV(write(tmp_path / "day_1", lines), 100, chunk_rows=2)  # line 4: 2nd chunk
    with pytest.raises(ValueError, match=rf"day_1, {message}"):
        list(data.batches("train", 4))


def test_splits_files_gzip_and_line_endings(tmp_path):
    lines = random_lines(12, seed=2)
    write(tmp_path / "a.tsv", lines[:5], end="\r\n", final=False)  # CRLF, no final newline
    with gzip.open(tmp_path / "b.tsv.gz", "wt") as f:
        f.write("\n".join(lines[5:9]) + "\n")
    write(tmp_path / "c.tsv", lines[9:])
    data = CriteoTSV(
        {"train": [tmp_path / "a.tsv", tmp_path / "b.tsv.gz"], "test": str(tmp_path / "c.tsv")},
        num_embeddings=97,
        chunk_rows=3,
        dtype=np.float32,
    )
    assert data.splits == ("train", "test") and data.dense_in_features == 13
    assert data.keys == KEYS and data.num_embeddings == (97,) * 26
    for split, part in (("train", lines[:9]), ("test", lines[9:])):
        _batches, dense, ids, labels = read_all(data, split, batch_size=4)
        assert dense.dtype == np.float32 and labels.dtype == np.float32
        for i, line in enumerate(part):
            d, k, y = expected(line, [97] * 26)
            np.testing.assert_allclose(dense[i], d, rtol=1e-6)
            assert ids[i].tolist() == k and labels[i] == y


def test_shuffle_within_chunks(tmp_path):
    path = write(tmp_path / "day_0", random_lines(30, seed=3))
    _, plain, _, _ = read_all(CriteoTSV(path, 50, chunk_rows=10), batch_size=4)
    _, mixed, _, _ = read_all(CriteoTSV(path, 50, chunk_rows=10), batch_size=4, shuffle_seed=1)
    _, again, _, _ = read_all(CriteoTSV(path, 50, chunk_rows=10), batch_size=4, shuffle_seed=1)
    np.testing.assert_array_equal(mixed, again)
    assert not np.array_equal(plain, mixed)
    for chunk in range(3):  # each chunk of 10 lines keeps its own lines
        rows = slice(10 * chunk, 10 * chunk + 10)
        np.testing.assert_array_equal(np.sort(plain[rows], axis=0), np.sort(mixed[rows], axis=0))


@pytest.mark.parametrize("shuffle_seed", [None, 1])
def test_start_skips_whole_batches(tmp_path, shuffle_seed):
    path = write(tmp_path / "day_0", random_lines(30, seed=4))
    data = CriteoTSV(path, 50, chunk_rows=7)  # batches straddle chunks
    assert data.num_samples("train") is None
    every = list(data.batches("train", 4, shuffle_seed))
    for start in (0, 1, 3, 7):
        resumed = list(data.batches("train", 4, shuffle_seed, start=start))
        assert len(resumed) == len(every) - start
        for a, b in zip(resumed, every[start:], strict=True):
            np.testing.assert_array_equal(a.values, b.values)
            np.testing.assert_array_equal(a.dense, b.dense)
    assert list(data.batches("train", 4, shuffle_seed, start=9)) == []


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_embeddings must be an int or 26 ints"):
        CriteoTSV(tmp_path / "x", num_embeddings=[10] * 25)
    with pytest.raises(ValueError, match="num_embeddings must be an int or 26 ints"):
        CriteoTSV(tmp_path / "x", num_embeddings=1e5)
    with pytest.raises(ValueError, match="num_embeddings must be positive"):
        CriteoTSV(tmp_path / "x", num_embeddings=0)
    data = CriteoTSV(tmp_path / "absent.tsv", num_embeddings=10)
    with pytest.raises(FileNotFoundError, match=r"no Criteo file .*absent\.tsv"):
        next(data.batches("train", 4))
    with pytest.raises(ValueError, match="split: expected one of"):
        next(data.batches("test", 4))


@pytest.mark.parametrize("gz", [False, True])
def test_holdout_takes_the_last_lines_validation_first(tmp_path, gz):
    lines = random_lines(23, seed=5)
    if gz:
        path = tmp_path / "train.txt.gz"
        with gzip.open(path, "wt") as f:
            f.write("\n".join(lines))  # no final line ending
    else:
        path = write(tmp_path / "train.txt", lines, end="\r\n")
    data = CriteoTSV(path, 1000, holdout=7, chunk_rows=3)
    assert data.splits == ("train", "validation", "test")
    assert [data.num_samples(s) for s in data.splits] == [16, 4, 3]  # validation gets ⌈7/2⌉
    whole = read_all(CriteoTSV(path, 1000), batch_size=5)
    parts = [read_all(data, split, batch_size=5) for split in data.splits]
    for column in (1, 2, 3):  # dense, ids, labels: the three splits are the file, in order
        np.testing.assert_array_equal(np.concatenate([p[column] for p in parts]), whole[column])
    _, shuffled, _, _ = read_all(data, "train", batch_size=5, shuffle_seed=2)
    np.testing.assert_array_equal(np.sort(shuffled, axis=0), np.sort(parts[0][1], axis=0))
    resumed = list(data.batches("test", 2, start=1))
    np.testing.assert_array_equal(resumed[0].labels, parts[2][3][2:])


def test_holdout_errors_name_the_line_of_the_file_and_the_problem(tmp_path):
    lines = random_lines(12, seed=6)
    lines[10] = "\t".join(["7", *lines[10].split("\t")[1:]])
    path = write(tmp_path / "train.txt", lines)
    data = CriteoTSV(path, 100, holdout=4, chunk_rows=2)
    assert len(list(data.batches("train", 4))) == 2  # lines 1-8 are fine
    with pytest.raises(ValueError, match=r"train\.txt, line 11, field 1: the label must be 0 or 1"):
        list(data.batches("test", 4))  # the test split is lines 11 and 12
    with pytest.raises(ValueError, match="12 lines; holding out 12 leaves none to train on"):
        CriteoTSV(path, 100, holdout=12)
    with pytest.raises(ValueError, match="expected 0 or at least 2 lines, got 1"):
        CriteoTSV(path, 100, holdout=1)
    with pytest.raises(ValueError, match="from a single training file"):
        CriteoTSV({"train": path, "test": path}, 100, holdout=4)
    with pytest.raises(FileNotFoundError, match=r"no Criteo file .*absent"):
        CriteoTSV(tmp_path / "absent", 100, holdout=4)
    with pytest.raises(TypeError, match="holdout: expected an integer"):
        CriteoTSV(path, 100, holdout=0.1)
