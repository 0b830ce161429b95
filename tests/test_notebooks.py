"""The stored notebooks are clean top-to-bottom runs that import, never redefine, the layers.

pytest also re-executes every notebook (nbmake, configured in pyproject.toml).
"""

import json
import pathlib
import re

import pytest

import refimpl

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert any(p.name.startswith("01_") for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_as_one_clean_run(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, "a lesson with no code"
    counts = [c.get("execution_count") for c in code]
    assert counts == list(range(1, len(code) + 1)), f"execution counts {counts}"
    for cell in code:
        for output in cell.get("outputs", []):
            assert output["output_type"] != "error", output.get("ename")
            text = "".join(output.get("text", []))
            assert "Traceback" not in text and "Warning" not in text, text[:200]
    assert nb["metadata"]["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_layers_are_imported_not_redefined(path):
    nb = json.loads(path.read_text())
    source = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    layer_names = [n for n in refimpl.__all__ if isinstance(getattr(refimpl, n), type)]
    for name in layer_names:
        assert not re.search(rf"^\s*class\s+{name}\b", source, re.M), f"{name} redefined"
    assert "import refimpl" in source or "from refimpl" in source
