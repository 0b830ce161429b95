"""python -m refimpl check: the table, the exit code, and that a failure shows as FAIL."""

import subprocess
import sys

import numpy as np
import pytest

from refimpl.tools import check
from refimpl.tools.check import Check, Outcome, Unavailable, format_table, run_check


@pytest.mark.slow
def test_check_runs_for_the_dot_interaction_and_passes():
    proc = subprocess.run(
        [sys.executable, "-m", "refimpl", "check", "--layer", "InteractionArch"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table, summary = proc.stdout.split("Summary")
    lines = table.strip().splitlines()
    assert lines[0].split() == [
        "layer",
        "configuration",
        "witness",
        "worst",
        "rel.",
        "error",
        "tolerance",
        "result",
    ]
    rows = [line for line in lines if line.startswith("InteractionArch")]
    witnesses = {line.split()[-4] for line in rows}
    assert {"finite-diff", "hand"} <= witnesses
    for option in ("triu", "tril", "triu +diag", "tril +diag"):
        assert any(f"{option} " in line and "finite-diff" in line for line in rows)
    assert all(line.split()[-1] in ("pass", "skipped") for line in rows)
    assert "0 failed" in proc.stdout
    summary_row = next(line for line in summary.splitlines() if line.startswith("InteractionArch"))
    assert "8/8 pass" in summary_row  # symbolic: four options at F = 2 and F = 3
    assert "[1/" in proc.stderr  # the progress line


def test_a_failing_check_is_reported_and_sets_the_exit_code(monkeypatch, capsys):
    def failing():
        yield Check("Toy", "broken", "finite-diff", lambda: 0.5, 1e-7)

    def skipped():
        def run():
            raise Unavailable("no torch here")

        yield Check("Toy", "absent", "parity", run, 1e-10)

    monkeypatch.setattr(check, "all_checks", lambda: [*failing(), *skipped()])
    assert check.main([]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "skipped" in out and "1 failed" in out and "no torch here" in out


def test_outcome_status_and_table():
    ok = run_check(Check("L", "c", "hand", lambda: 0.0, 1e-12))
    bad = Outcome(Check("L", "c", "hand", lambda: np.inf, 1e-12), float("inf"))
    assert (ok.status, bad.status) == ("pass", "FAIL")
    table = format_table([ok, bad])
    assert table.splitlines()[2].split()[-1] == "pass"
    assert table.splitlines()[3].split()[-1] == "FAIL"


def test_checks_come_in_lesson_order():
    # The families in the order the lessons teach them, whatever their file names.
    assert check.families()[:4] == ["embedding", "dot", "crossnet", "projection"]
    layers = list(dict.fromkeys(c.layer for c in check.all_checks(["dot", "crossnet"])))
    assert layers[0] == "InteractionArch" and layers[1] == "CrossNet"
