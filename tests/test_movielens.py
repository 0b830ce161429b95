"""MovieLens-100k: both layouts read to identical arrays, the features and split by hand, and the
cache (checksums, atomic writes, clear errors). Small file sets are written here in both layouts
with the same content; one slow test fetches the real data."""

import dataclasses
import hashlib
import os
import zipfile

import numpy as np
import pytest

from refimpl.data import movielens
from refimpl.data.fetch import ChecksumError, FetchError
from refimpl.data.movielens import GENRES, KEYS, Mirror, MovieLens100k, fetch, read_archive

USERS = [  # id, age, gender, occupation, zip code
    (1, 25, "M", "technician", "85711"),  # 25 and 50 start their groups
    (2, 50, "F", "other", "94043"),
    (3, 17, "M", "student", "T8H1N"),  # a Canadian code; under 18
    (4, 60, "F", "retired", "01002"),  # 56 and over; zip starting with 0
]
# id, GroupLens title, release date, RecBole title, RecBole release_year, genres. RecBole's
# columns are written here as RecBole's file has them, not derived from the GroupLens ones.
MOVIES = [
    (1, "Toy Story (1995)", "01-Jan-1995", "Toy Story", "1995",
     ["Animation", "Children's", "Comedy"]),
    (10, "Richard III (1995)", "22-Jan-1996", "Richard III", "1995", ["Drama", "War"]),
    (50, "Star Wars (1977)", "01-Jan-1977", "Star Wars", "1977",
     ["Action", "Adventure", "Romance", "Sci-Fi", "War"]),
    (267, "unknown", "", "unkonwn", "unkonwn", ["unknown"]),
    (543, "Misérables, Les (1995)", "01-Jan-1995", "Misérables, Les", "1995",
     ["Drama", "Musical"]),
    (1412, "Land Before Time III: The Time of the Great Giving (1995) (V)", "01-Jan-1995",
     "Land Before Time III: The Time of the Great Giving (1995)", "V",
     ["Animation", "Children's"]),
]  # fmt: skip
MOVIE_IDS = [m[0] for m in MOVIES]


def ratings():
    """User 1 rates 20 times (ties in time included), the others a few times."""
    rng = np.random.default_rng(7)
    rows = []
    for k in range(20):  # user 1: timestamps with ties (k // 2)
        rows.append((1, MOVIE_IDS[k % 6] if k < 6 else 2000 + k, int(rng.integers(1, 6)), k // 2))
    rows += [(2, 10, 4, 50), (2, 267, 2, 40), (2, 1412, 5, 60), (3, 50, 3, 70), (3, 543, 4, 10)]
    rows += [(4, 1, 1, 30), (4, 50, 5, 31)]
    return rows


EXTRA_MOVIES = [(2000 + k, f"Film {k} (1990)", "01-Jan-1990", f"Film {k}", "1990", ["Drama"])
                for k in range(6, 20)]  # fmt: skip


def write_grouplens(path, order=1):
    """The GroupLens layout: ml-100k/u.data, u.user, u.item (Latin-1, '|'-separated)."""
    data = "".join(f"{u}\t{m}\t{r}\t{t}\n" for u, m, r, t in ratings()[::order])
    user = "".join(f"{i}|{a}|{g}|{o}|{z}\n" for i, a, g, o, z in USERS)
    item = ""
    for i, title, date, _, _, genres in MOVIES + EXTRA_MOVIES:
        flags = "|".join("1" if g in genres else "0" for g in GENRES)
        url = f"http://us.imdb.com/M/title-exact?{title.replace(' ', '%20')}"
        item += f"{i}|{title}|{date}||{url}|{flags}\n"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("ml-100k/u.data", data)
        z.writestr("ml-100k/u.user", user)
        z.writestr("ml-100k/u.item", item.encode("latin-1"))
        z.writestr("ml-100k/README", "not read")
    return path


def write_recbole(path, order=-1):
    """The layout inside the recbole wheel: atomic files with name:type headers (UTF-8)."""
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    inter += "".join(f"{u}\t{m}\t{r}\t{t}\n" for u, m, r, t in ratings()[::order])
    user = "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
    user += "".join(f"{i}\t{a}\t{g}\t{o}\t{z}\n" for i, a, g, o, z in USERS[::order])
    item = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    for i, _, _, title, year, genres in (MOVIES + EXTRA_MOVIES)[::order]:
        item += f"{i}\t{title}\t{year}\t{' '.join(genres)}\n"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("recbole/__init__.py", "")
        # What pip checks in a wheel it downloads: its metadata.
        info = "recbole-1.2.1.dist-info"
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: recbole\nVersion: 1.2.1\n")
        z.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        for kind, text in (("inter", inter), ("user", user), ("item", item)):
            z.writestr(f"recbole/dataset_example/ml-100k/ml-100k.{kind}", text.encode("utf-8"))
    return path


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mirror_for(path, layout, sha=None, filename=None):
    return Mirror(
        name=f"test {layout}",
        filename=filename or ("ml-100k.zip" if layout == "grouplens" else "recbole-x.whl"),
        sha256=sha or sha256(path),
        layout=layout,
        url=path.as_uri(),
    )


@pytest.fixture
def archives(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    return write_grouplens(src / "ml-100k.zip"), write_recbole(src / "recbole-x.whl")


def all_batches(data, split, **kw):
    return list(data.batches(split, batch_size=4, **kw))


def test_both_layouts_give_identical_arrays(archives):
    grouplens = read_archive(archives[0], "grouplens")
    recbole = read_archive(archives[1], "recbole")
    for name, a, b in zip(grouplens._fields, grouplens, recbole, strict=True):
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    x, y = MovieLens100k(grouplens), MovieLens100k(recbole)
    assert x.num_embeddings == y.num_embeddings
    for split in x.splits:
        for bx, by in zip(all_batches(x, split), all_batches(y, split), strict=True):
            for name, a, b in zip(bx._fields, bx, by, strict=True):
                if name != "weights":
                    np.testing.assert_array_equal(a, b, err_msg=f"{split} {name}")


def test_tables_by_hand(archives):
    t = read_archive(archives[0], "grouplens")
    assert t.movie_ids[:6].tolist() == [1, 10, 50, 267, 543, 1412]
    # The year is the title's (Richard III: 1995 though released in 1996); "(V)" is skipped;
    # the "unknown" movie has none.
    assert t.year[:6].tolist() == [1995, 1995, 1977, 0, 1995, 1995]
    star_wars = np.flatnonzero(t.genres[2]).tolist()
    assert [GENRES[g] for g in star_wars] == ["Action", "Adventure", "Romance", "Sci-Fi", "War"]
    assert t.zip_code.tolist() == ["85711", "94043", "T8H1N", "01002"]
    assert len(t.user) == len(ratings()) and (np.diff(t.user) >= 0).all()


def test_features_by_hand(archives):
    data = MovieLens100k(read_archive(archives[1], "recbole"))
    # F then M; buckets <18 … 56+; occupations sorted; zip first digit, 10 for a letter.
    rows = dict(zip(data.keys, data.num_embeddings, strict=True))
    assert rows == {
        "user_id": 4, "movie_id": 20, "gender": 2, "age_bucket": 7, "occupation": 4,
        "zip_prefix": 11, "release_year": 1 + 3, "genres": 19,
    }  # fmt: skip
    every = np.concatenate([data._rows[s] for s in data.splits])
    batch = data.batch(np.sort(every))  # all ratings, sorted by user, time, movie
    B = batch.size
    by_key = np.split(batch.values, np.cumsum(batch.lengths.reshape(len(KEYS), B).sum(1))[:-1])
    ids = dict(zip(KEYS, by_key, strict=True))
    user3 = np.flatnonzero(ids["user_id"] == 2)  # user id 3 is the third user
    assert (ids["gender"][user3] == 1).all() and (ids["age_bucket"][user3] == 0).all()
    assert (ids["occupation"][user3] == 2).all()  # other, retired, student, technician
    assert (ids["zip_prefix"][user3] == 10).all()
    for position, bucket in ((0, 2), (1, 5)):  # 25: 25–34; 50: 50–55
        assert (ids["age_bucket"][ids["user_id"] == position] == bucket).all()
    user4 = np.flatnonzero(ids["user_id"] == 3)
    assert (ids["age_bucket"][user4] == 6).all() and (ids["zip_prefix"][user4] == 0).all()
    assert (ids["gender"][user4] == 0).all()
    # user 2 rated 267 (year unknown: id 0), 10 (1995: id 3 of 1977, 1990, 1995) and 1412.
    user2 = np.flatnonzero(ids["user_id"] == 1)  # in time order: 267, 10, 1412
    assert ids["movie_id"][user2].tolist() == [3, 1, 5]
    assert ids["release_year"][user2].tolist() == [0, 3, 3]
    # Genre bags: one length per sample, ids in GENRES order.
    genre_lengths = batch.lengths[len(KEYS[:-1]) * B :]
    bag_starts = np.r_[0, np.cumsum(genre_lengths)]
    first = user2[0]
    assert ids["genres"][bag_starts[first] : bag_starts[first + 1]].tolist() == [0]  # unknown
    second = user2[1]
    assert ids["genres"][bag_starts[second] : bag_starts[second + 1]].tolist() == [8, 17]
    ratings_in_order = sorted(ratings(), key=lambda r: (r[0], r[3], r[1]))
    assert batch.labels.tolist() == [float(r[2] >= 4) for r in ratings_in_order]
    # Dense: standardized with the training rows' statistics; an unknown year becomes 0.
    assert batch.dense[first, 1] == 0.0
    train = data.batch(data._rows["train"])
    np.testing.assert_allclose(train.dense.mean(axis=0), 0, atol=1e-12)
    ages = np.array([USERS[int(u)][1] for u in ids["user_id"]], float)
    np.testing.assert_allclose(batch.dense[:, 0], (ages - data.dense_mean[0]) / data.dense_std[0])


def test_split_by_user_time(archives):
    data = MovieLens100k(read_archive(archives[0], "grouplens"))
    rows = {s: data._rows[s] for s in data.splits}
    every = np.sort(np.concatenate(list(rows.values())))
    np.testing.assert_array_equal(every, np.arange(len(ratings())))  # disjoint and complete
    # User 1 has 20 ratings: its last 2 in time are test, the 2 before validation.
    t = read_archive(archives[0], "grouplens")
    for split, expected in (("train", 16), ("validation", 2), ("test", 2)):
        assert (t.user[rows[split]] == 1).sum() == expected
    user1 = lambda s: t.timestamp[rows[s]][t.user[rows[s]] == 1]  # noqa: E731
    assert user1("train").max() <= user1("validation").min()
    assert user1("validation").max() <= user1("test").min()
    # Users with under 10 ratings are all training.
    assert set(t.user[rows["test"]].tolist()) == {1}
    assert data.num_samples("test") == 2 and data.num_samples("train") == len(ratings()) - 4


def test_batches(archives):
    data = MovieLens100k(read_archive(archives[0], "grouplens"), dtype=np.float32)
    plain = list(data.batches("train", batch_size=5))
    assert [b.size for b in plain] == [5, 5, 5, 5, 3]
    for b in plain:
        assert b.keys == KEYS and b.dense.shape == (b.size, 3) and b.dense.dtype == np.float32
        assert b.lengths.shape == (len(KEYS) * b.size,) and b.lengths.sum() == len(b.values)
        assert b.values.dtype == np.int64 and b.labels.dtype == np.float32
        start = 0
        for key, lengths in zip(KEYS, b.lengths.reshape(len(KEYS), b.size), strict=True):
            ids = b.values[start : start + lengths.sum()]
            assert ((ids >= 0) & (ids < data.num_embeddings[KEYS.index(key)])).all(), key
            start += lengths.sum()
    shuffled = list(data.batches("train", batch_size=5, shuffle_seed=3))
    again = list(data.batches("train", batch_size=5, shuffle_seed=3))
    np.testing.assert_array_equal(shuffled[0].values, again[0].values)
    order = lambda bs: np.concatenate([b.dense[:, 2] for b in bs])  # noqa: E731
    assert not np.array_equal(order(plain), order(shuffled))
    np.testing.assert_array_equal(np.sort(order(plain)), np.sort(order(shuffled)))
    resumed = list(data.batches("train", batch_size=5, shuffle_seed=3, start=2))
    assert len(resumed) == len(shuffled) - 2 and data.num_samples("train") == 23
    for a, b in zip(resumed, shuffled[2:], strict=True):
        np.testing.assert_array_equal(a.values, b.values)
        np.testing.assert_array_equal(a.dense, b.dense)
    assert list(data.batches("train", batch_size=5, start=5)) == []
    with pytest.raises(ValueError, match="split: expected one of"):
        next(data.batches("dev", 5))
    with pytest.raises(ValueError, match="batch_size: expected an integer >= 1"):
        next(data.batches("train", 0))
    with pytest.raises(ValueError, match="'train' has 5 batches of 5, cannot start at batch 6"):
        next(data.batches("train", 5, start=6))


def test_fetch_is_idempotent_and_leaves_only_the_archive(archives, tmp_path):
    mirror = mirror_for(archives[0], "grouplens")
    fetched = fetch(tmp_path / "cache", mirrors=(mirror,))
    assert fetched.downloaded and fetched.path == tmp_path / "cache/movielens-100k/ml-100k.zip"
    assert sha256(fetched.path) == mirror.sha256
    first_mtime = os.stat(fetched.path).st_mtime_ns
    again = fetch(tmp_path / "cache", mirrors=(mirror,))
    assert not again.downloaded and os.stat(again.path).st_mtime_ns == first_mtime
    assert os.listdir(tmp_path / "cache/movielens-100k") == ["ml-100k.zip"]
    data = MovieLens100k.load(tmp_path / "cache", mirrors=(mirror,))
    assert data.num_samples("train") + data.num_samples("test") == len(ratings()) - 2


def test_fetch_falls_back_when_a_mirror_is_unreachable(archives, tmp_path):
    gone = Mirror("gone", "ml-100k.zip", "0" * 64, "grouplens", url=(tmp_path / "no.zip").as_uri())
    fetched = fetch(tmp_path / "cache", mirrors=(gone, mirror_for(archives[1], "recbole")))
    assert fetched.mirror.layout == "recbole" and "gone: could not download" in fetched.notes[0]
    assert os.listdir(tmp_path / "cache/movielens-100k") == ["recbole-x.whl"]
    with pytest.raises(FetchError, match=r"could not fetch MovieLens-100k.*gone"):
        fetch(tmp_path / "other", mirrors=(gone,))
    assert os.listdir(tmp_path / "other/movielens-100k") == []


def test_corrupted_download_is_an_error_and_leaves_nothing(archives, tmp_path):
    wrong = mirror_for(archives[0], "grouplens", sha="ab" * 32)
    with pytest.raises(ChecksumError, match=f"expected {'ab' * 32}.*not kept"):
        fetch(tmp_path / "cache", mirrors=(wrong, mirror_for(archives[1], "recbole")))
    assert os.listdir(tmp_path / "cache/movielens-100k") == []  # no temp file, no wheel


def test_corrupted_cache_is_refused_then_replaced(archives, tmp_path):
    mirror = mirror_for(archives[0], "grouplens")
    path = fetch(tmp_path, mirrors=(mirror,)).path
    path.write_bytes(path.read_bytes()[:-10])  # truncated behind our back
    with pytest.raises(ChecksumError, match="the cached copy is corrupt; fetch it with"):
        MovieLens100k.load(tmp_path, mirrors=(mirror,))
    fetched = fetch(tmp_path, mirrors=(mirror,))
    assert fetched.downloaded and "wrong sha256" in fetched.notes[0]
    assert sha256(path) == mirror.sha256


def test_missing_data_directory(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"no MovieLens-100k data directory .*absent"):
        MovieLens100k.load(tmp_path / "absent")
    monkeypatch.setenv("REFIMPL_DATA", str(tmp_path))
    (tmp_path / "movielens-100k").mkdir()
    with pytest.raises(FileNotFoundError, match=r"holds none of ml-100k\.zip, recbole-1\.2\.1"):
        MovieLens100k.load()
    assert movielens.dataset_dir() == tmp_path / "movielens-100k"


def rewrite(path, member, edit):
    with zipfile.ZipFile(path) as z:
        contents = {name: z.read(name) for name in z.namelist()}
    contents[member] = edit(contents[member])
    with zipfile.ZipFile(path, "w") as z:
        for name, data in contents.items():
            z.writestr(name, data)


@pytest.mark.parametrize(
    ("layout", "member", "edit", "message"),
    [
        ("grouplens", "ml-100k/u.user", lambda b: b.replace(b"|other|", b"|"),
         r"u.user, line 2: expected 5 fields separated by '\|', found 4"),
        ("grouplens", "ml-100k/u.data", lambda b: b.replace(b"\t40\n", b"\t4o\n"),
         r"u.data, line 22, field 4: expected an integer, found '4o'"),
        ("recbole", "recbole/dataset_example/ml-100k/ml-100k.item",
         lambda b: b.replace(b"Drama War", b"Drama Warr"), r"ml-100k.item, line \d+: genres"),
        ("recbole", "recbole/dataset_example/ml-100k/ml-100k.inter",
         lambda b: b.replace(b"rating:float", b"rating"), r"ml-100k.inter, line 1: header"),
        ("recbole", "recbole/dataset_example/ml-100k/ml-100k.user",
         lambda b: b.replace(b"zip_code:token", b"zip:token"), r"no field \['zip_code'\]"),
    ],
)  # fmt: skip
def test_malformed_files_name_the_line(archives, layout, member, edit, message):
    path = archives[0] if layout == "grouplens" else archives[1]
    rewrite(path, member, edit)
    with pytest.raises(ValueError, match=message):
        read_archive(path, layout)


def test_a_file_in_the_archive_is_checked_too(archives):
    member = "ml-100k/u.user"
    good = hashlib.sha256(zipfile.ZipFile(archives[0]).read(member)).hexdigest()
    assert read_archive(archives[0], "grouplens", ((member, good),)).user_ids.size == 4
    with pytest.raises(ChecksumError, match=rf"ml-100k.zip:{member} has sha256 {good}"):
        read_archive(archives[0], "grouplens", ((member, "0" * 64),))


def test_wrong_archive_and_references(archives):
    with pytest.raises(ValueError, match="not a recbole-layout ml-100k archive"):
        read_archive(archives[0], "recbole")
    t = read_archive(archives[0], "grouplens")
    with pytest.raises(ValueError, match=r"ratings name user ids absent .*\[9\]"):
        MovieLens100k(t._replace(user=np.r_[t.user[:-1], 9]))
    with pytest.raises(ValueError, match="ratings must be 1 to 5"):
        MovieLens100k(t._replace(rating=t.rating * 2))


@pytest.mark.slow
def test_pip_download_of_a_local_wheel(archives, tmp_path):
    """The pip route end to end, offline: a wheel named like recbole's in a local index."""
    index = tmp_path / "index"
    index.mkdir()
    wheel = index / "recbole-1.2.1-py3-none-any.whl"
    wheel.write_bytes(archives[1].read_bytes())
    options = ("--no-index", "--find-links", str(index))
    pypi = Mirror(
        "local index", wheel.name, sha256(wheel), "recbole", "", "recbole==1.2.1", options
    )
    fetched = fetch(tmp_path / "cache", mirrors=(pypi,))
    assert fetched.downloaded and sha256(fetched.path) == pypi.sha256
    assert os.listdir(tmp_path / "cache/movielens-100k") == [wheel.name]
    wrong = dataclasses.replace(pypi, sha256="cd" * 32)
    with pytest.raises(ChecksumError, match="not the wheel this code knows"):
        fetch(tmp_path / "other", mirrors=(wrong,))
    assert os.listdir(tmp_path / "other/movielens-100k") == []


@pytest.mark.slow
def test_real_movielens_100k(tmp_path, capsys):
    """Fetch the real data (GroupLens, else the recbole wheel) and check its known counts."""
    try:
        fetched = fetch(tmp_path)
    except FetchError as error:
        pytest.skip(f"neither GroupLens nor the package index is reachable: {error}")
    t = read_archive(fetched.path, fetched.mirror.layout, fetched.mirror.member_sha256)
    assert (len(t.user_ids), len(t.movie_ids), len(t.user)) == (943, 1682, 100_000)
    if fetched.mirror.layout == "recbole":  # RecBole's copy is GroupLens' u.data and u.user
        grouplens = dict(movielens.GROUPLENS.member_sha256)
        with zipfile.ZipFile(fetched.path) as wheel:
            inter, user = (wheel.read(m) for m in movielens.MEMBERS["recbole"][:2])
        body = inter.split(b"\n", 1)[1]
        assert hashlib.sha256(body).hexdigest() == grouplens["ml-100k/u.data"]
        as_pipes = user.split(b"\n", 1)[1].replace(b"\t", b"|")
        assert hashlib.sha256(as_pipes).hexdigest() == grouplens["ml-100k/u.user"]
    assert np.unique(t.user).size == 943 and np.unique(t.movie).size == 1682
    assert (t.rating >= 4).sum() == 55_375
    assert t.genres.sum(axis=1).max() == 6 and t.genres.sum(axis=1).min() == 1
    data = MovieLens100k(t)
    assert [data.num_samples(s) for s in data.splits] == [80_808, 9_596, 9_596]
    assert data.num_embeddings == (943, 1682, 2, 7, 21, 11, 72, 19)
    from refimpl.data import cli

    assert cli.main(["movielens-100k", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "already in the cache" in out and "943 users, 1,682 movies, 100,000 ratings" in out
