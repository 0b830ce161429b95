"""Fetching data files into a local cache: checked by sha256, never half-written.

Every download goes to a temporary file in the directory it is meant for, is hashed as it
arrives, and is renamed into place (an atomic step on one file system) only once its sha256 is
the expected one. An interrupted or corrupted download therefore leaves nothing behind under
the final name, and a file found under that name is one that passed the check (or one someone
else put there, which is why readers check it again).

The cache lives in ``$REFIMPL_DATA`` when that is set, else in ``$XDG_CACHE_HOME/refimpl``,
else in ``~/.cache/refimpl``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path


class ChecksumError(ValueError):
    """A file's sha256 is not the one expected: it is corrupt or not the file we know."""


class FetchError(OSError):
    """A file could not be fetched (a source unreachable, a download tool failing)."""


def data_home(path: str | os.PathLike | None = None) -> Path:
    """The cache directory: ``path`` if given, else ``$REFIMPL_DATA``, else the user's cache.

    >>> str(data_home("/tmp/somewhere"))
    '/tmp/somewhere'
    """
    if path is not None:
        return Path(path).expanduser()
    if os.environ.get("REFIMPL_DATA"):
        return Path(os.environ["REFIMPL_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "refimpl"


def sha256_file(path: str | os.PathLike) -> str:
    """The hex sha256 of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(1 << 20):
            digest.update(piece)
    return digest.hexdigest()


def verify(path: str | os.PathLike, sha256: str) -> None:
    """Raise :class:`ChecksumError` unless the file at ``path`` has this sha256."""
    actual = sha256_file(path)
    if actual != sha256:
        raise ChecksumError(f"sha256 of {path} is {actual}, expected {sha256}")


def download_url(url: str, dest: str | os.PathLike, sha256: str, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest`` if its bytes have this sha256; else leave nothing.

    Raises
    ------
    FetchError
        The URL could not be read (no network, no such host, HTTP error, timeout).
    ChecksumError
        The bytes arrived but are not the expected ones; nothing is kept.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    while piece := response.read(1 << 20):
                        digest.update(piece)
                        out.write(piece)
            except OSError as error:  # URLError, HTTPError and timeouts are all OSErrors
                raise FetchError(f"could not download {url}: {error}") from error
        if digest.hexdigest() != sha256:
            raise ChecksumError(
                f"the download of {url} has sha256 {digest.hexdigest()}, expected {sha256}: "
                "it is corrupt or not the file this code knows, so it was not kept"
            )
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)  # already renamed when all went well
    return dest


def pip_download(
    requirement: str,
    filename: str,
    dest_dir: str | os.PathLike,
    sha256: str,
    pip_options: tuple[str, ...] = (),
) -> Path:
    """Fetch one wheel from the package index with ``pip download --no-deps``; install nothing.

    The wheel lands in a temporary directory inside ``dest_dir``, is checked, and is renamed to
    ``dest_dir/filename``.

    Parameters
    ----------
    requirement : str
        A pinned requirement, e.g. ``"recbole==1.2.1"``.
    filename : str
        The wheel's file name, which pip keeps.
    dest_dir : path
        Where the wheel ends up.
    sha256 : str
        The wheel's expected sha256 (the package index lists it).
    pip_options : tuple of str
        Extra options for pip (tests point it at a local directory with ``--no-index
        --find-links``).

    Raises
    ------
    FetchError
        pip failed (index unreachable, no such version) or did not produce ``filename``.
    ChecksumError
        The wheel is not the expected one; nothing is kept.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest_dir, prefix=".pip-download-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        command += ["--quiet", "--dest", tmp, *pip_options, requirement]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            last_lines = " | ".join(done.stderr.strip().splitlines()[-3:])
            raise FetchError(f"`pip download {requirement}` failed: {last_lines}")
        wheel = Path(tmp) / filename
        if not wheel.is_file():
            got = sorted(p.name for p in Path(tmp).iterdir())
            raise FetchError(f"`pip download {requirement}` gave {got}, not {filename}")
        actual = sha256_file(wheel)
        if actual != sha256:
            raise ChecksumError(
                f"{filename} from `pip download {requirement}` has sha256 {actual}, expected "
                f"{sha256}: it is not the wheel this code knows, so it was not kept"
            )
        os.replace(wheel, dest_dir / filename)
    return dest_dir / filename
