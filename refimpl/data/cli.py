"""``python -m refimpl data movielens-100k``: fetch a data set into the cache and describe it."""

from __future__ import annotations

import argparse
import sys
import time

from refimpl.data import movielens
from refimpl.data.fetch import ChecksumError, FetchError, data_home

SOURCES = {
    "auto": movielens.MIRRORS,
    "grouplens": (movielens.GROUPLENS,),
    "pypi": (movielens.RECBOLE_WHEEL,),
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m refimpl data",
        description="Fetch a data set into the cache (checked by sha256; nothing is fetched "
        "again when a verified copy is there) and print what it holds.",
    )
    parser.add_argument("dataset", choices=["movielens-100k"])
    parser.add_argument(
        "--dir",
        default=None,
        help=f"the cache (default $REFIMPL_DATA, else ~/.cache/refimpl; now {data_home()})",
    )
    parser.add_argument(
        "--source",
        choices=tuple(SOURCES),
        default="auto",
        help="auto: GroupLens, then the recbole 1.2.1 wheel on the package index",
    )
    args = parser.parse_args(argv)

    start = time.perf_counter()
    try:
        fetched = movielens.fetch(args.dir, mirrors=SOURCES[args.source])
    except (ChecksumError, FetchError) as error:
        print(f"error: {error}", file=sys.stderr)
        if isinstance(error, ChecksumError) and args.source == "auto":
            print("(--source grouplens or --source pypi tries one source only)", file=sys.stderr)
        return 1
    for note in fetched.notes:
        print(f"note: {note}")
    how = "downloaded from" if fetched.downloaded else "already in the cache, from"
    print(f"{fetched.path}: {how} {fetched.mirror.name}, sha256 {fetched.mirror.sha256} (verified)")
    mirror = fetched.mirror
    tables = movielens.read_archive(fetched.path, mirror.layout, mirror.member_sha256)
    data = movielens.MovieLens100k(tables)
    print(data)
    rows = ", ".join(f"{k} {n:,}" for k, n in zip(data.keys, data.num_embeddings, strict=True))
    print(f"embedding rows: {rows}; dense features: {', '.join(movielens.DENSE_FEATURES)}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0
