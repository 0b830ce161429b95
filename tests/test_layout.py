"""The layout shows the architecture: what a learner reads imports none of the tools.

``refimpl/layers``, ``refimpl/models`` and ``refimpl/train`` are the lesson; ``refimpl/tools``
(check, gradcheck, parity, flops, bench), ``refimpl/fast`` and ``derivations`` prove, time or
speed it up. Reading every module's imports (its syntax tree, not by running it) shows no
arrow from the lesson to the tools, to ``derivations`` or to SymPy at module level.
"""

import ast
import pathlib

import pytest

import refimpl

ROOT = pathlib.Path(__file__).parent.parent
LESSON = ("refimpl/layers", "refimpl/models", "refimpl/train")
FORBIDDEN = ("refimpl.tools", "derivations", "sympy")


def module_level_imports(path: pathlib.Path) -> list[str]:
    """The modules ``path`` imports at module level (not inside a function or class)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.append(node.module)
    return names


def lesson_modules() -> list[pathlib.Path]:
    return sorted(
        p for folder in LESSON if (ROOT / folder).is_dir() for p in (ROOT / folder).rglob("*.py")
    )


def test_the_lesson_folders_exist():
    assert (ROOT / "refimpl/layers").is_dir()  # models and train arrive with their issues
    assert lesson_modules()


@pytest.mark.parametrize("path", lesson_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_lesson_imports_no_tools(path):
    for name in module_level_imports(path):
        assert not any(name == f or name.startswith(f + ".") for f in FORBIDDEN), (
            f"{path.relative_to(ROOT)} imports {name} at module level"
        )


def test_the_reader_finds_it(tmp_path):
    # The check works: a tools import at module level is seen, one inside a function is not.
    path = tmp_path / "probe.py"
    path.write_text(
        "import numpy\nfrom refimpl.tools.gradcheck import rel_error\n\n"
        "def f():\n    import sympy\n"
    )
    assert module_level_imports(path) == ["numpy", "refimpl.tools.gradcheck"]


def test_the_package_keeps_its_public_names():
    # ``import refimpl; refimpl.InteractionArch(...)`` whatever the folders inside.
    assert refimpl.InteractionArch(2).num_pairs == 3
    assert {"InteractionArch", "CrossNet", "MLP", "gradcheck"} <= set(refimpl.__all__)
