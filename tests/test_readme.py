"""The README's Python examples run as written, and its two commands are the ones we test."""

import pathlib
import re

import pytest

README = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


def test_the_two_commands_are_in_the_readme():
    assert "pip install -r requirements.txt && python -m refimpl check" in README
    assert "pip install -r requirements.txt && python -m pytest" in README
    ci = (pathlib.Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert "\npython -m pytest\n" in ci


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_python_examples_run(block):
    if "torchrec" in block:
        pytest.importorskip("torchrec")
    exec(compile(block, "README.md", "exec"), {})
