"""The wheel and the sdist hold every package of the source tree, so that ``python -m refimpl
check`` works outside an editable install (CI installs the wheel in a fresh environment and
runs it from another directory: .ci/run)."""

import pathlib
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

ROOT = pathlib.Path(__file__).parent.parent

pytestmark = pytest.mark.slow


def source_packages() -> set[str]:
    """Every folder of refimpl/ and derivations/ with an ``__init__.py``, as a dotted name."""
    found = set()
    for top in ("refimpl", "derivations"):
        for init in (ROOT / top).rglob("__init__.py"):
            found.add(".".join(init.parent.relative_to(ROOT).parts))
    return found


def packages_in(names: list[str], prefix: str = "") -> set[str]:
    return {
        ".".join(pathlib.PurePosixPath(n.removeprefix(prefix)).parent.parts)
        for n in names
        if n.endswith("/__init__.py")
        and n.removeprefix(prefix).startswith(("refimpl", "derivations"))
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A wheel and an sdist built from a clean copy of the sources (no stale build/ folder)."""
    work = tmp_path_factory.mktemp("build")
    for name in ("refimpl", "derivations"):
        shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, work / name)
    script = "from setuptools import build_meta as b; b.build_wheel('dist'); b.build_sdist('dist')"
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=work, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (work / "dist").glob("*.whl")
    (sdist,) = (work / "dist").glob("*.tar.gz")
    return wheel, sdist


def test_the_tree_has_the_packages_of_the_layout():
    expected = {"refimpl.layers", "refimpl.fast", "refimpl.tools.check.cases", "derivations"}
    assert expected <= source_packages()


def test_the_wheel_lists_every_package(built):
    wheel, _ = built
    assert packages_in(zipfile.ZipFile(wheel).namelist()) == source_packages()


def test_the_sdist_lists_every_package(built):
    _, sdist = built
    names = tarfile.open(sdist).getnames()
    top = names[0].split("/")[0] + "/"
    assert packages_in(names, top) == source_packages()
