"""``python -m refimpl check``: every available gradient witness for every layer, as a table.

Each layer family lists its checks in ``refimpl/tools/check/cases/<family>.py`` (every module
there is found and run, in the order of the lessons that teach them: each module's ``LESSON``):
a :class:`Check` names the layer, a configuration, the witness (symbolic, finite differences,
TorchRec parity or hand values) and a function that runs it and returns the worst relative
error. A witness whose optional dependency is missing (SymPy for "symbolic",
TorchRec for "parity") raises :class:`Unavailable` and is shown as skipped, not passed.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import pkgutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from refimpl.tools.gradcheck import DEFAULT_TOL, gradcheck, rel_error
from refimpl.tools.parity import ParityUnavailable, compare_with_torch, require_torchrec

WITNESSES = ("symbolic", "finite-diff", "parity", "hand")
PARITY_TOL = 1e-10
HAND_TOL = 1e-12


class Unavailable(Exception):
    """The witness cannot run here (an optional dependency is missing)."""


@dataclass(frozen=True)
class Check:
    layer: str
    config: str
    witness: str
    run: Callable[[], float]  # the worst relative error; raises Unavailable if it cannot run
    tol: float


@dataclass(frozen=True)
class Outcome:
    check: Check
    error: float | None  # None when skipped
    note: str = ""

    @property
    def status(self) -> str:
        if self.error is None:
            return "skipped"
        return "pass" if self.error < self.check.tol else "FAIL"


def families() -> list[str]:
    """The modules of :mod:`refimpl.tools.check.cases`, one per layer family, in the order of
    the lessons that teach them (each module's ``LESSON``, a notebook number; then by name).

    >>> families()[:3]
    ['embedding', 'dot', 'crossnet']
    """
    from refimpl.tools.check import cases

    names = [m.name for m in pkgutil.iter_modules(cases.__path__)]

    def lesson(name: str) -> tuple[int, str]:
        module = importlib.import_module(f"refimpl.tools.check.cases.{name}")
        return getattr(module, "LESSON", 99), name

    return sorted(names, key=lesson)


def all_checks(names: Iterable[str] | None = None) -> Iterator[Check]:
    for family in families() if names is None else names:
        yield from importlib.import_module(f"refimpl.tools.check.cases.{family}").checks()


def finite_difference_check(layer: str, config: str, build) -> Check:
    """``build(rng) -> (layer, inputs)``, checked by :func:`refimpl.tools.gradcheck.gradcheck`."""

    def run() -> float:
        net, inputs = build(np.random.default_rng(0))
        return gradcheck(net, inputs, seed=1).worst.rel_error

    return Check(layer, config, "finite-diff", run, DEFAULT_TOL)


def needs_torchrec():
    """:func:`~refimpl.tools.parity.require_torchrec`'s modules; :class:`Unavailable` (the row
    is reported as skipped, with the install hint) when the parity extra is not installed."""
    try:
        return require_torchrec()
    except ParityUnavailable as exc:
        raise Unavailable(str(exc)) from exc


def parity_check(
    layer: str, config: str, build, torch_module, compare: Callable | None = None
) -> Check:
    """``torch_module(layer)`` builds the matching TorchRec module (torch imported inside);
    ``compare(net, module, inputs) -> {name: error}`` defaults to
    :func:`~refimpl.tools.parity.compare_with_torch` with upstream seed 1."""

    def run() -> float:
        torch, _ = needs_torchrec()
        net, inputs = build(np.random.default_rng(0))
        torch.manual_seed(0)  # the module's initial draw, loaded into net: the same every run
        module = torch_module(net)
        if compare is None:
            return max(compare_with_torch(net, module, inputs, seed=1).values())
        return max(compare(net, module, inputs).values())

    return Check(layer, config, "parity", run, PARITY_TOL)


def hand_check(layer: str, config: str, compute: Callable[[], tuple]) -> Check:
    """``compute() -> (ours, expected)``: refimpl's forward against hand or loop values."""

    def run() -> float:
        ours, expected = compute()
        return rel_error(ours, expected)

    return Check(layer, config, "hand", run, HAND_TOL)


def symbolic_check(layer: str, config: str, witness: Callable[[], float]) -> Check:
    """``witness()`` lives in ``derivations`` (SymPy): it proves the closed form exactly and
    returns the worst relative error of refimpl against the lambdified symbolic gradient."""

    def run() -> float:
        if importlib.util.find_spec("sympy") is None:
            raise Unavailable("the symbolic witness needs SymPy: pip install -r requirements.txt")
        return witness()

    return Check(layer, config, "symbolic", run, DEFAULT_TOL)


def run_check(check: Check) -> Outcome:
    """Run one check. A witness that raises (a failed proof, a crash) is a failure, shown with
    its error; only :class:`Unavailable` counts as skipped."""
    try:
        return Outcome(check, float(check.run()))
    except Unavailable as exc:
        return Outcome(check, None, str(exc).splitlines()[0])
    except Exception as exc:
        first_line = (str(exc).splitlines() or [""])[0]
        return Outcome(
            check,
            float("inf"),
            f"{check.layer} {check.config} {check.witness}: {type(exc).__name__}: {first_line}",
        )


def _align(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*header), line.format(*("-" * w for w in widths))]
    out += [line.format(*r) for r in rows]
    return "\n".join(line.rstrip() for line in out)


def format_table(outcomes: list[Outcome]) -> str:
    """One row per check: layer, configuration, witness, worst error, tolerance, result."""
    header = ("layer", "configuration", "witness", "worst rel. error", "tolerance", "result")
    rows = [
        (
            o.check.layer,
            o.check.config,
            o.check.witness,
            "-" if o.error is None else f"{o.error:.1e}",
            f"{o.check.tol:.0e}",
            o.status,
        )
        for o in outcomes
    ]
    return _align(header, rows)


def format_summary(outcomes: list[Outcome]) -> str:
    """One row per layer, one column per witness: checks passed / run, and the worst error."""
    layers = list(dict.fromkeys(o.check.layer for o in outcomes))
    rows = []
    for layer in layers:
        cells = [layer]
        for witness in WITNESSES:
            mine = [o for o in outcomes if o.check.layer == layer and o.check.witness == witness]
            ran = [o for o in mine if o.error is not None]
            if not mine:
                cells.append("")
            elif not ran:
                cells.append("skipped")
            else:
                passed = sum(o.status == "pass" for o in ran)
                worst = max(o.error for o in ran)
                cells.append(f"{passed}/{len(ran)} pass, worst {worst:.0e}")
        rows.append(tuple(cells))
    return _align(("layer", *WITNESSES), rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m refimpl check",
        description="Run every available gradient witness for every layer and print a table.",
    )
    parser.add_argument("--layer", action="append", help="only layers with this name (repeatable)")
    parser.add_argument(
        "--witness", action="append", choices=WITNESSES, help="only this witness (repeatable)"
    )
    args = parser.parse_args(argv)
    checks = [
        c
        for c in all_checks()
        if (not args.layer or c.layer in args.layer)
        and (not args.witness or c.witness in args.witness)
    ]
    if not checks:
        print("no checks match", file=sys.stderr)
        return 2
    outcomes = []
    start = time.perf_counter()
    progress = sys.stderr
    for i, check in enumerate(checks, 1):
        label = f"[{i}/{len(checks)}] {check.layer} {check.config} {check.witness}"
        if progress.isatty():
            print(f"\r\033[K{label[:100]}", end="", file=progress, flush=True)
        else:
            print(label, file=progress, flush=True)
        outcomes.append(run_check(check))
    if progress.isatty():
        print("\r\033[K", end="", file=progress, flush=True)
    print(format_table(outcomes))
    print("\nSummary (checks passed / run, worst relative error)\n")
    print(format_summary(outcomes))
    counts = {s: sum(o.status == s for o in outcomes) for s in ("pass", "FAIL", "skipped")}
    print(
        f"\n{counts['pass']} passed, {counts['FAIL']} failed, {counts['skipped']} skipped "
        f"in {time.perf_counter() - start:.1f} s"
    )
    for note in sorted({o.note for o in outcomes if o.error is None}):
        print(f"skipped: {note}")
    for o in outcomes:
        if o.note and o.error is not None:
            print(f"error: {o.note}")
    return 1 if counts["FAIL"] else 0
