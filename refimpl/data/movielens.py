"""MovieLens-100k as a click-through-style task: will this user rate this movie 4 or 5?

MovieLens-100k (GroupLens, 1998) holds 100,000 ratings (1 to 5) that 943 users gave 1,682
movies between September 1997 and April 1998, with a little about each user and each movie.
Each rating becomes one sample:

- **label** 1 when the rating is 4 or 5, else 0 (55 % of ratings are 4 or 5);
- **categorical features** (F = 8 keys, in this order), each id running from 0 to
  its number of rows − 1 (``num_embeddings``, in key order):

  ============  ======  =================================================================
  key           rows    id
  ============  ======  =================================================================
  user_id       943     the user's position among user ids in ascending order
  movie_id      1,682   the movie's position among movie ids in ascending order
  gender        2       F 0, M 1
  age_bucket    7       MovieLens-1M's groups: under 18, 18–24, 25–34, 35–44, 45–49,
                        50–55, 56 and over
  occupation    21      position in the sorted list of the users' occupations
  zip_prefix    11      the zip code's first digit (the US national area, 0–9); 10 for a
                        code that does not start with a digit (the Canadian ones)
  release_year  1 + 71  0 when unknown, else the position among the movies' years + 1
  genres        19      a bag of 1 to 6 ids: the movie's genres, in the order of the
                        data set's genre list (``GENRES``): a multi-hot feature, pooled by
                        the embedding bag
  ============  ======  =================================================================

- **dense features** (I = 3): the user's age, the movie's release year, and the time of the
  rating (seconds since 1970), each standardized with the mean and standard deviation over the
  training samples (an unknown release year becomes that mean, so 0).

The release year is the year in the movie's title, "Toy Story (1995)", which both sources
below carry. The separate release date is only in GroupLens' copy, and is sometimes a later
release than the title's year ("Richard III (1995)": 22-Jan-1996).

The split: by time, within each user
------------------------------------
Each user's ratings in time order (ties by movie id): the last ⌊n/10⌋ are the test split, the
⌊n/10⌋ before them validation, the rest training (every user rated at least 20 movies, so
every user is in all three). Deterministic, no seed. Why not the alternatives:

- *random by seed* would train on a user's later ratings and test on earlier ones: the model
  would see the future of the very user it predicts, and its test AUC would promise more than
  a recommender can deliver;
- *one global time cut* (the last 10 % of all ratings as test) is the honest production
  protocol, but in this data set two users in three gave all their ratings within one day:
  after an 80/10/10 cut, 86 % of the test ratings come from users with no rating at all in
  training, so the user-id embedding (the collaborative signal the lessons are about) would be
  untrained for almost the whole test set.

The per-user time split keeps each user's future out of their own training data and every user
in training. What it does not exclude: another user's ratings from a later date can be in
training (the global cut's leak-free guarantee is traded for a usable user embedding).

Where the data comes from, and the two layouts
----------------------------------------------
``fetch`` tries, in order:

1. ``https://files.grouplens.org/datasets/movielens/ml-100k.zip``, the GroupLens original
   (``ml-100k/u.data``: ``user item rating timestamp``, tab-separated; ``u.user``:
   ``id|age|gender|occupation|zip``; ``u.item``: ``id|title|release date|video release
   date|IMDb URL|`` then 19 genre flags, Latin-1 text);
2. the copy inside the ``recbole==1.2.1`` wheel on the Python package index, fetched with
   ``pip download --no-deps`` and read straight from the wheel (a zip) without installing
   RecBole, for machines that reach only the package index.

RecBole stores ml-100k as "atomic files" (``recbole/dataset_example/ml-100k/ml-100k.inter``,
``.user``, ``.item``, UTF-8): a header of ``name:type`` fields (types ``token``, ``token_seq``,
``float``, ``float_seq``), then one tab-separated row per line, sequence items separated by
spaces. How its fields map to GroupLens':

- ``.inter``: ``user_id:token item_id:token rating:float timestamp:float`` = u.data's four
  columns (whole numbers in the text);
- ``.user``: ``user_id age gender occupation zip_code`` (all ``token``) = u.user's five;
- ``.item``: ``item_id:token movie_title:token_seq release_year:token class:token_seq``. The
  title is GroupLens' title with its last parenthesized group split off into
  ``release_year``: "Toy Story (1995)" becomes "Toy Story" and "1995". Two rows do not follow:
  movie 267, GroupLens title "unknown" and no date, becomes title and year "unkonwn" (sic);
  movie 1412, "Land Before Time III: The Time of the Great Giving (1995) (V)", keeps "(1995)"
  in its title and gets year "V". ``class`` lists the genres whose flag is 1, by name, in
  GroupLens' column order ("Animation Children's Comedy"). The release date, video release
  date and IMDb URL are dropped.

So both layouts are read into the same :class:`MovieLensTables`: the year is the last
"(dddd)" in the GroupLens title, and RecBole's ``release_year`` when that is four digits, else
the last "(dddd)" in its title (1995 for movie 1412; none for movie 267). Ratings, users and
movies are put in a canonical order (ratings by user, time, movie; users and movies by id), so
the arrays do not depend on the order of lines in either file.

Checksums: each archive's sha256 is checked when it is fetched and again when it is read (the
GroupLens zip's as TensorFlow Datasets' URL checksums list it, the wheel's as the package index
lists it), and so is each of the three files read from it. GroupLens' three file hashes are the
ones other projects that download from GroupLens list; two of them are also checked against
RecBole's copy in the tests: the body of ``ml-100k.inter`` (after its header line) is GroupLens'
``u.data`` byte for byte, and ``ml-100k.user`` with its tabs turned into "|" is ``u.user``.

The data's license forbids redistributing it: it lives in the cache (``$REFIMPL_DATA``), never
in the repository.
"""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from refimpl.data.batch import Batch
from refimpl.data.fetch import (
    ChecksumError,
    FetchError,
    data_home,
    download_url,
    pip_download,
    sha256_file,
    verify,
)
from refimpl.data.source import check_batches_args, check_start
from refimpl.data.text import split_fields, to_int

NAME = "movielens-100k"

GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
AGE_EDGES = (18, 25, 35, 45, 50, 56)  # MovieLens-1M's age groups: < 18, 18–24, …, 56+
ZIP_OTHER = 10  # the zip_prefix id of a code that does not start with a digit
KEYS = (
    "user_id", "movie_id", "gender", "age_bucket", "occupation", "zip_prefix", "release_year",
    "genres",
)  # fmt: skip
DENSE_FEATURES = ("age", "release_year", "timestamp")
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Mirror:
    """One place ml-100k can be fetched from, and the exact bytes expected there.

    Attributes
    ----------
    name : str
        How messages call it.
    filename : str
        The file kept in the cache (the archive itself, read in place).
    sha256 : str
        The archive's sha256.
    layout : {"grouplens", "recbole"}
        Which files the archive holds (see the module docstring).
    url : str
        Fetched with urllib when not empty ...
    requirement : str
        ... else with ``pip download --no-deps <requirement>``.
    pip_options : tuple of str
        Extra options for pip.
    member_sha256 : tuple of (str, str)
        The sha256 of files inside the archive, checked as they are read.
    """

    name: str
    filename: str
    sha256: str
    layout: str
    url: str = ""
    requirement: str = ""
    pip_options: tuple[str, ...] = ()
    member_sha256: tuple[tuple[str, str], ...] = ()


GROUPLENS = Mirror(
    name="GroupLens",
    filename="ml-100k.zip",
    sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
    layout="grouplens",
    url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
    member_sha256=(
        ("ml-100k/u.data", "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"),
        ("ml-100k/u.user", "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c"),
        ("ml-100k/u.item", "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701"),
    ),
)
RECBOLE_WHEEL = Mirror(
    name="the recbole 1.2.1 wheel on the package index",
    filename="recbole-1.2.1-py3-none-any.whl",
    sha256="9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
    layout="recbole",
    requirement="recbole==1.2.1",
    member_sha256=tuple(
        (f"recbole/dataset_example/ml-100k/ml-100k.{kind}", sha256)
        for kind, sha256 in (
            ("inter", "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff"),
            ("user", "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972"),
            ("item", "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532"),
        )
    ),
)
MIRRORS = (GROUPLENS, RECBOLE_WHEEL)

MEMBERS = {
    "grouplens": ("ml-100k/u.data", "ml-100k/u.user", "ml-100k/u.item"),
    "recbole": tuple(
        f"recbole/dataset_example/ml-100k/ml-100k.{kind}" for kind in ("inter", "user", "item")
    ),
}
FETCH_HINT = "fetch it with `python -m refimpl data movielens-100k`"


class Fetched(NamedTuple):
    """What :func:`fetch` did: the verified archive, where it came from, what failed first."""

    path: Path
    mirror: Mirror
    downloaded: bool  # False when a verified copy was already in the cache
    notes: tuple[str, ...]  # mirrors that could not be reached, a corrupt copy replaced


def dataset_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The directory holding the archive: ``<data_home(data_dir)>/movielens-100k``."""
    return data_home(data_dir) / NAME


def fetch(data_dir: str | os.PathLike | None = None, mirrors=MIRRORS) -> Fetched:
    """Fetch ml-100k into the cache unless a verified copy is already there.

    Parameters
    ----------
    data_dir : path, optional
        The cache (default ``$REFIMPL_DATA``, else ``~/.cache/refimpl``); created if missing.
    mirrors : sequence of Mirror
        Tried in order; the first whose archive is in the cache with the right sha256 is used
        as it is, else the first that can be downloaded.

    Raises
    ------
    ChecksumError
        A mirror answered with bytes that are not the expected ones (nothing is kept; the next
        mirror is not tried: wrong bytes are worth knowing about, not working around).
    FetchError
        No mirror could be reached; the message says why for each.
    """
    root = dataset_dir(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    notes = []
    for mirror in mirrors:
        path = root / mirror.filename
        if path.exists():
            if sha256_file(path) == mirror.sha256:
                return Fetched(path, mirror, downloaded=False, notes=())
            path.unlink()
            notes.append(f"{path} had the wrong sha256: deleted, fetching again")
    for mirror in mirrors:
        try:
            if mirror.url:
                path = download_url(mirror.url, root / mirror.filename, mirror.sha256)
            else:
                path = pip_download(
                    mirror.requirement, mirror.filename, root, mirror.sha256, mirror.pip_options
                )
        except FetchError as error:  # unreachable: try the next (a ChecksumError propagates)
            notes.append(f"{mirror.name}: {error}")
            continue
        return Fetched(path, mirror, downloaded=True, notes=tuple(notes))
    raise FetchError(f"could not fetch MovieLens-100k into {root}: " + "; ".join(notes))


class MovieLensTables(NamedTuple):
    """ml-100k as read from either layout, before any feature is made.

    Ratings are sorted by (user, timestamp, movie); users and movies by id.

    Attributes
    ----------
    user, movie, rating, timestamp : ndarray of int64, shape (N,)
        One entry per rating: user id, movie id, rating 1–5, seconds since 1970.
    user_ids, age : ndarray of int64, shape (U,)
    gender, occupation, zip_code : ndarray of str, shape (U,)
    movie_ids, year : ndarray of int64, shape (M,)
        ``year`` is 0 where the title has none.
    genres : ndarray of bool, shape (M, 19)
        ``genres[m, g]`` is whether movie m has genre ``GENRES[g]``.
    """

    user: np.ndarray
    movie: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray
    user_ids: np.ndarray
    age: np.ndarray
    gender: np.ndarray
    occupation: np.ndarray
    zip_code: np.ndarray
    movie_ids: np.ndarray
    year: np.ndarray
    genres: np.ndarray


def read_archive(
    path: str | os.PathLike, layout: str, member_sha256: tuple[tuple[str, str], ...] = ()
) -> MovieLensTables:
    """Read the three ml-100k files straight out of a zip (the GroupLens zip or the wheel).

    ``member_sha256`` lists (file in the archive, expected sha256) pairs to check as they are
    read (a :class:`Mirror`'s).

    Raises
    ------
    ValueError
        ``layout`` is unknown, a file is missing from the archive, or a line is malformed (the
        message names the archive, the file and the line).
    ChecksumError
        A listed file has another sha256.
    """
    if layout not in MEMBERS:
        raise ValueError(f"layout must be one of {tuple(MEMBERS)}, got {layout!r}")
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        missing = [m for m in MEMBERS[layout] if m not in names]
        if missing:
            raise ValueError(f"{path} is not a {layout}-layout ml-100k archive: no {missing}")
        # GroupLens' files are Latin-1 (accented titles); RecBole's are UTF-8.
        encoding = "latin-1" if layout == "grouplens" else "utf-8"
        contents = [archive.read(m) for m in MEMBERS[layout]]
    expected = dict(member_sha256)
    for member, content in zip(MEMBERS[layout], contents, strict=True):
        actual = hashlib.sha256(content).hexdigest()
        if expected.get(member, actual) != actual:
            raise ChecksumError(f"{path}:{member} has sha256 {actual}, expected {expected[member]}")
    texts = [content.decode(encoding) for content in contents]
    sources = [f"{path}:{m}" for m in MEMBERS[layout]]
    read = _read_grouplens if layout == "grouplens" else _read_recbole
    return _canonical(read(texts, sources))


def _read_grouplens(texts, sources):
    (data, user, item), (data_src, user_src, item_src) = texts, sources
    ratings = to_int(split_fields(data.splitlines(), "\t", 4, data_src), data_src)  # (N, 4)
    users = split_fields(user.splitlines(), "|", 5, user_src)  # (U, 5)
    user_nums = to_int(users[:, :2], user_src)  # (U, 2): id, age
    items = split_fields(item.splitlines(), "|", 24, item_src)  # (M, 24)
    movie_ids = to_int(items[:, :1], item_src)[:, 0]
    flags = to_int(items[:, 5:], item_src, first_field=6)  # (M, 19)
    if not np.isin(flags, (0, 1)).all():
        raise ValueError(f"{item_src}: genre flags must be 0 or 1")
    # Titles are free text: one regular expression per title (1,682 of them, once).
    year = np.array([_last_year(title) for title in items[:, 1]], dtype=np.int64)
    return MovieLensTables(
        *ratings.T,
        user_ids=user_nums[:, 0], age=user_nums[:, 1], gender=users[:, 2],
        occupation=users[:, 3], zip_code=users[:, 4],
        movie_ids=movie_ids, year=year, genres=flags.astype(bool),
    )  # fmt: skip


def read_atomic(text: str, source: str) -> dict[str, np.ndarray]:
    """RecBole's atomic file: a ``name:type`` header, then tab-separated rows.

    Returns each column as an array of ``str`` keyed by field name; the caller converts by
    type (``float`` to numbers, ``token_seq`` split on spaces).

    >>> cols = read_atomic("user_id:token\\tage:token\\n1\\t24\\n2\\t53\\n", "x.user")
    >>> {name: col.tolist() for name, col in cols.items()}
    {'user_id': ['1', '2'], 'age': ['24', '53']}
    """
    lines = text.splitlines()
    if not lines:
        raise ValueError(f"{source} is empty: expected a header of name:type fields")
    header = lines[0].split("\t")
    for field in header:
        name, _, kind = field.rpartition(":")
        if not name or kind not in ("token", "token_seq", "float", "float_seq"):
            raise ValueError(
                f"{source}, line 1: header field {field!r} is not name:type with type token, "
                "token_seq, float or float_seq"
            )
    names = [field.rpartition(":")[0] for field in header]
    cells = split_fields(lines[1:], "\t", len(names), source, first_line=2)  # (n, fields)
    return dict(zip(names, cells.T, strict=True))


def _read_recbole(texts, sources):
    columns = [read_atomic(text, source) for text, source in zip(texts, sources, strict=True)]
    wanted = (
        ("user_id", "item_id", "rating", "timestamp"),
        ("user_id", "age", "gender", "occupation", "zip_code"),
        ("item_id", "movie_title", "release_year", "class"),
    )
    for cols, names, source in zip(columns, wanted, sources, strict=True):
        absent = [n for n in names if n not in cols]
        if absent:
            raise ValueError(f"{source}: no field {absent} in the header")
    inter, user, item = columns
    ratings = to_int(np.stack([inter[n] for n in wanted[0]], axis=1), sources[0], first_line=2)
    user_nums = to_int(np.stack([user["user_id"], user["age"]], axis=1), sources[1], 2)
    movie_ids = to_int(item["item_id"][:, None], sources[2], first_line=2)[:, 0]
    # release_year is the title's split-off last "(...)"; where that was not a year, look for
    # one left in the title (movie 1412), as the GroupLens reading does.
    year_text = item["release_year"]
    is_year = np.strings.isdigit(year_text) & (np.strings.str_len(year_text) == 4)
    year = np.where(is_year, year_text, "0").astype(np.int64)
    for m in np.flatnonzero(~is_year):  # two movies in the real data
        year[m] = _last_year(item["movie_title"][m])
    return MovieLensTables(
        *ratings.T,
        user_ids=user_nums[:, 0], age=user_nums[:, 1], gender=user["gender"],
        occupation=user["occupation"], zip_code=user["zip_code"],
        movie_ids=movie_ids, year=year, genres=_genre_flags(item["class"], sources[2]),
    )  # fmt: skip


def _genre_flags(classes: np.ndarray, source: str) -> np.ndarray:
    """(M, 19) bool from space-separated genre names; an unknown name is a ValueError."""
    padded = np.strings.add(np.strings.add(" ", classes), " ")  # (M,) so names match whole
    flags = np.stack([np.strings.find(padded, f" {g} ") >= 0 for g in GENRES], axis=1)
    named = np.strings.count(np.strings.strip(classes), " ") + 1  # (M,) names per movie
    bad = np.flatnonzero(flags.sum(axis=1) != named)
    if bad.size:
        raise ValueError(
            f"{source}, line {bad[0] + 2}: genres {classes[bad[0]]!r} are not all among {GENRES}"
        )
    return flags


def _last_year(title: str) -> int:
    """The last "(dddd)" in a title, 0 if none: "Fargo (1996)" → 1996."""
    years = re.findall(r"\((\d{4})\)", title)
    return int(years[-1]) if years else 0


def _canonical(t: MovieLensTables) -> MovieLensTables:
    """Ratings by (user, time, movie), users and movies by id."""
    by_rating = np.lexsort((t.movie, t.timestamp, t.user))
    by_user = np.argsort(t.user_ids, kind="stable")
    by_movie = np.argsort(t.movie_ids, kind="stable")
    return MovieLensTables(
        t.user[by_rating], t.movie[by_rating], t.rating[by_rating], t.timestamp[by_rating],
        t.user_ids[by_user], t.age[by_user], _narrow(t.gender[by_user]),
        _narrow(t.occupation[by_user]), _narrow(t.zip_code[by_user]),
        t.movie_ids[by_movie], t.year[by_movie], t.genres[by_movie],
    )  # fmt: skip


def _narrow(text: np.ndarray) -> np.ndarray:
    """Text as the narrowest ``str`` array, so equal columns are equal arrays, dtype included."""
    return np.array(text.tolist(), dtype=str)


class MovieLens100k:
    """MovieLens-100k as ``Batch``es: F = 8 categorical keys, I = 3 dense features.

    See the module docstring for the features and the split. Build it with :meth:`load` (from
    the cache) or from :class:`MovieLensTables`.

    Parameters
    ----------
    tables : MovieLensTables
    dtype : numpy float dtype
        Of ``Batch.dense`` and ``Batch.labels`` (default float64).

    Attributes
    ----------
    splits : tuple of str
        ``("train", "validation", "test")``.
    keys : tuple of str
        The F = 8 categorical features (``KEYS``).
    num_embeddings : tuple of int
        Rows per key, in key order.
    dense_in_features : int
        I = 3 (``DENSE_FEATURES``).
    dense_mean, dense_std : ndarray, shape (I,)
        The training statistics the raw dense features are standardized with.

    Typical use: ``data = MovieLens100k.load()`` after ``python -m refimpl data
    movielens-100k``, then ``for batch in data.batches("train", 256, shuffle_seed=epoch)``.
    """

    splits = SPLITS
    keys = KEYS
    dense_in_features = len(DENSE_FEATURES)

    def __init__(self, tables: MovieLensTables, *, dtype=np.float64):
        t = _canonical(tables)  # the split reads ratings grouped by user, in time order
        self.dtype = np.dtype(dtype)
        if not np.issubdtype(self.dtype, np.floating):
            raise TypeError(f"dtype must be a floating dtype, got {self.dtype}")
        u = _positions(t.user_ids, t.user, "user id")  # (N,) rows into the user table
        m = _positions(t.movie_ids, t.movie, "movie id")  # (N,) rows into the movie table
        if not np.isin(t.rating, (1, 2, 3, 4, 5)).all():
            raise ValueError(f"ratings must be 1 to 5, got {np.unique(t.rating).tolist()}")
        if not np.isin(t.gender, ("F", "M")).all():
            raise ValueError(f"gender must be F or M, got {np.unique(t.gender).tolist()}")

        occupations = np.unique(t.occupation)
        years = np.unique(t.year[t.year > 0])
        first = t.zip_code.astype("U1")  # (U,) the zip code's first character
        zip_prefix = np.where(np.strings.isdigit(first), first, str(ZIP_OTHER)).astype(np.int64)
        per_user = np.stack(
            [
                (t.gender == "M").astype(np.int64),
                np.searchsorted(AGE_EDGES, t.age, side="right"),
                np.searchsorted(occupations, t.occupation),
                zip_prefix,
            ],
            axis=1,
        )  # (U, 4): gender, age_bucket, occupation, zip_prefix
        year_id = np.where(t.year > 0, np.searchsorted(years, t.year) + 1, 0)  # (M,)
        self._ids = np.column_stack([u, m, per_user[u], year_id[m]])  # (N, 7) single-id keys
        self._movie = m  # (N,) for the genre bags
        self._genres = t.genres  # (M, 19)
        self._labels = (t.rating >= 4).astype(np.float64)  # (N,)
        self.num_embeddings = (
            len(t.user_ids), len(t.movie_ids), 2, len(AGE_EDGES) + 1, len(occupations),
            ZIP_OTHER + 1, len(years) + 1, len(GENRES),
        )  # fmt: skip

        self._rows = dict(zip(SPLITS, _split_by_user_time(t.user), strict=True))
        year = np.where(t.year > 0, t.year, np.nan)[m]  # (N,)
        raw = np.column_stack([t.age[u], year, t.timestamp]).astype(np.float64)  # (N, 3)
        train = raw[self._rows["train"]]
        self.dense_mean = np.nanmean(train, axis=0)  # (3,)
        self.dense_std = np.nanstd(train, axis=0)  # (3,)
        self.dense_std[self.dense_std == 0] = 1.0  # a constant feature stays 0, not NaN
        raw = np.where(np.isnan(raw), self.dense_mean, raw)
        self._dense = (raw - self.dense_mean) / self.dense_std  # (N, 3)
        self.num_users, self.num_movies = len(t.user_ids), len(t.movie_ids)

    @classmethod
    def load(
        cls, data_dir: str | os.PathLike | None = None, *, mirrors=MIRRORS, dtype=np.float64
    ) -> MovieLens100k:
        """Read the archive :func:`fetch` put in the cache (checking its sha256 again).

        Raises
        ------
        FileNotFoundError
            The cache holds no ml-100k archive (the message says how to fetch it).
        ChecksumError
            The cached archive is not the expected one.
        """
        root = dataset_dir(data_dir)
        if not root.is_dir():
            raise FileNotFoundError(
                f"no MovieLens-100k data directory {root}: {FETCH_HINT} (the cache is "
                "$REFIMPL_DATA, else ~/.cache/refimpl)"
            )
        for mirror in mirrors:
            path = root / mirror.filename
            if path.exists():
                try:
                    verify(path, mirror.sha256)
                except ChecksumError as error:
                    raise ChecksumError(
                        f"{error}: the cached copy is corrupt; {FETCH_HINT}"
                    ) from None
                return cls(read_archive(path, mirror.layout, mirror.member_sha256), dtype=dtype)
        names = ", ".join(mirror.filename for mirror in mirrors)
        raise FileNotFoundError(f"{root} holds none of {names}: {FETCH_HINT}")

    def num_samples(self, split: str) -> int:
        """The number of samples (ratings) in a split."""
        check_batches_args(self, split, 1)
        return len(self._rows[split])

    def batches(
        self, split: str, batch_size: int, shuffle_seed: int | None = None, start: int = 0
    ) -> Iterator[Batch]:
        """The split's samples as ``Batch``es of ``batch_size`` (the last may be smaller).

        Unshuffled, samples come user by user in time order, which suits evaluation but not
        SGD: give a ``shuffle_seed`` for training (the whole split is permuted by
        ``numpy.random.default_rng(shuffle_seed)``). ``start`` skips that many batches.
        """
        check_batches_args(self, split, batch_size, shuffle_seed, start)
        check_start(self, split, batch_size, start)
        rows = self._rows[split]
        if shuffle_seed is not None:
            rows = np.random.default_rng(shuffle_seed).permutation(rows)
        for first in range(start * batch_size, len(rows), batch_size):
            yield self.batch(rows[first : first + batch_size])

    def batch(self, rows: np.ndarray) -> Batch:
        """The samples at these positions (0 to N − 1, over all splits) as one ``Batch``."""
        ids = self._ids[rows]  # (B, 7)
        bags = self._genres[self._movie[rows]]  # (B, 19) multi-hot
        _, genre_ids = np.nonzero(bags)  # row-major: bag after bag, genres in GENRES order
        B = len(rows)
        return Batch(
            dense=self._dense[rows].astype(self.dtype),
            keys=KEYS,
            values=np.concatenate([ids.T.reshape(-1), genre_ids]).astype(np.int64),
            lengths=np.concatenate([np.ones(ids.shape[1] * B), bags.sum(axis=1)]).astype(np.int64),
            weights=None,
            labels=self._labels[rows].astype(self.dtype),
        )

    def __repr__(self) -> str:
        sizes = ", ".join(f"{split} {self.num_samples(split):,}" for split in SPLITS)
        return (
            f"MovieLens100k({self.num_users:,} users, {self.num_movies:,} movies, "
            f"{len(self._labels):,} ratings, {self._labels.mean():.1%} rated 4 or 5; {sizes})"
        )


def _positions(ids: np.ndarray, wanted: np.ndarray, what: str) -> np.ndarray:
    """Where each of ``wanted`` sits in the sorted, unique ``ids``; an absent one is an error."""
    if (np.diff(ids) <= 0).any():
        raise ValueError(f"every {what} must appear once in its table")
    where = np.searchsorted(ids, wanted)  # (N,)
    found = where < len(ids)
    found[found] = ids[where[found]] == wanted[found]
    if not found.all():
        raise ValueError(f"ratings name {what}s absent from their table: {wanted[~found][:5]}")
    return where


def _split_by_user_time(user: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train, validation and test positions, for ratings sorted by (user, time, movie).

    Each user's last ⌊n/10⌋ ratings are test, the ⌊n/10⌋ before them validation.
    """
    N = len(user)
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]]) if N else np.zeros(0, int)
    counts = np.diff(np.r_[starts, N])  # ratings per user
    position = np.arange(N) - np.repeat(starts, counts)  # (N,) index within the user's ratings
    n = np.repeat(counts, counts)  # (N,) the user's number of ratings
    from_end = n - position  # 1 for the user's last rating
    is_test = from_end <= n // 10
    is_validation = ~is_test & (from_end <= 2 * (n // 10))
    is_train = ~is_test & ~is_validation
    return np.flatnonzero(is_train), np.flatnonzero(is_validation), np.flatnonzero(is_test)


__all__ = [
    "GENRES",
    "GROUPLENS",
    "KEYS",
    "MIRRORS",
    "RECBOLE_WHEEL",
    "ChecksumError",
    "FetchError",
    "Fetched",
    "Mirror",
    "MovieLens100k",
    "MovieLensTables",
    "fetch",
    "read_archive",
    "read_atomic",
]
