"""``python -m refimpl bench``: the options, the progress line, and what is written where."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from refimpl.tools.bench.cases import select_cases
from refimpl.tools.bench.harness import Schedule, run_bench
from refimpl.tools.bench.machine import format_machine, machine_info
from refimpl.tools.bench.report import write_chart
from refimpl.tools.bench.spec import DTYPES, PRODUCTION, QUICK

DEFAULTS = {"rounds": 4, "repeats": 3, "min_seconds": 0.25, "max_seconds": 20.0}
QUICK_DEFAULTS = {"rounds": 2, "repeats": 2, "min_seconds": 0.0, "max_seconds": 20.0}


def _progress_printer(stream):
    tty = stream.isatty()

    def show(message: str) -> None:
        if tty:
            print(f"\r\033[K{message[:120]}", end="", file=stream, flush=True)
        else:
            print(message, file=stream, flush=True)

    def done() -> None:
        if tty:
            print("\r\033[K", end="", file=stream, flush=True)

    return show, done


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m refimpl bench",
        description=(
            "Time every layer's forward and forward+backward beside TorchRec's, each contender "
            "alone in its own worker process, alternated over rounds."
        ),
    )
    p.add_argument(
        "--layer",
        action="append",
        help="only the rows of this layer or model class, or train_step (repeatable)",
    )
    p.add_argument("--batch", type=int, help="batch size B (default 1024; quick 64)")
    p.add_argument("--dtype", choices=[*DTYPES, "both"], default="both")
    p.add_argument("--rounds", type=int, help="rounds of alternating contenders (default 4)")
    p.add_argument(
        "--repeats", type=int, help="timed runs per contender per round, at least (default 3)"
    )
    p.add_argument(
        "--min-seconds",
        type=float,
        help="keep timing a contender in a round until its runs add up to this (default 0.25)",
    )
    p.add_argument(
        "--max-seconds",
        type=float,
        help="time fewer runs (at least one) once a contender's runs in a round add up to this; "
        "a contender whose runs each take longer skips the next round's warm-up (default 20)",
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first in each round")
    p.add_argument(
        "--quick", action="store_true", help="tiny sizes, 2 rounds, 1 thread: a smoke test"
    )
    p.add_argument("--no-torch", action="store_true", help="skip TorchRec and torch's GEMM")
    p.add_argument(
        "--threads", type=int, help="threads of every contender (default: the usable cores)"
    )
    p.add_argument("--markdown", metavar="PATH", help="also write the report as Markdown")
    p.add_argument("--chart", metavar="PATH", help="also write a bar chart (PNG)")
    p.add_argument("--machine", action="store_true", help="print the machine and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.machine:
        print(format_machine(machine_info()))
        return 0
    sizes = QUICK if args.quick else PRODUCTION
    if args.batch is not None:
        if args.batch < 1:
            p.error("--batch must be >= 1")
        sizes = dataclasses.replace(sizes, batch=args.batch)
    defaults = QUICK_DEFAULTS if args.quick else DEFAULTS
    rounds = args.rounds or defaults["rounds"]
    repeats = args.repeats or defaults["repeats"]
    min_seconds = defaults["min_seconds"] if args.min_seconds is None else args.min_seconds
    max_seconds = defaults["max_seconds"] if args.max_seconds is None else args.max_seconds
    if rounds < 1 or repeats < 1 or args.warmup < 0 or min_seconds < 0:
        p.error("--rounds and --repeats must be >= 1, --warmup and --min-seconds >= 0")
    if not max_seconds > 0:
        p.error("--max-seconds must be > 0")
    schedule = Schedule(rounds, args.warmup, repeats, min_seconds, max_seconds)
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    # One thread in the smoke test: on a loaded machine, threads that wait for each other at
    # every parallel region turn microseconds into scheduler ticks.
    threads = args.threads or (1 if args.quick else None)
    dtypes = list(DTYPES) if args.dtype == "both" else [args.dtype]
    cases = select_cases(args.layer)
    show, done = _progress_printer(sys.stderr)
    try:
        report = run_bench(sizes, cases, dtypes, schedule, not args.no_torch, threads, show)
    finally:
        done()
    print(report.text())
    print(f"\n{len(report.results)} rows in {report.seconds:.0f} s")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(report.markdown() + "\n")
        print("\nREADME table:\n\n" + report.readme_table())
    if args.chart:
        write_chart(report.results, args.chart, sizes.batch)
    return 0
