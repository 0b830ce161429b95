"""The parent: it starts one worker process per contender, hands each row's data over in a file,
and alternates the workers over rounds, each alone on the machine while it is timed.

Why not time everything in one process: on a small machine the libraries get in each other's
way. OpenBLAS's and OpenMP's worker threads keep spinning after each call, so whichever
contender runs next is slowed by the one before it; in one process, with a NumPy GEMM and a
pause between the runs, TorchRec's dot interaction (B = 1024, float32, 2 threads) measured
63.5 ms, against 14–19 ms alone in its own process.
Here a worker that is not being timed is stopped (SIGSTOP) until its turn, and each contender
warms up and times its runs back to back, as a user of that library would see it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from refimpl.tools.bench.caches import CacheEntry
from refimpl.tools.bench.machine import machine_info, usable_cores, worker_env
from refimpl.tools.bench.report import BenchReport, Result, Timing, gemm_rate
from refimpl.tools.bench.spec import DTYPES, Case, Sizes
from refimpl.tools.flops import FlopCount

CAN_STOP = hasattr(signal, "SIGSTOP")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How every contender of a row is timed: ``rounds`` turns each, and in every turn
    ``warmup`` untimed runs, then ``repeats`` timed runs, more while they add up to less than
    ``min_seconds``, fewer (down to one) once they add up to ``max_seconds``.

    A contender whose runs each took longer than ``max_seconds`` in a round skips the warm-up
    in the next: a run of minutes allocates and touches all its memory afresh, so the one
    before it warms nothing the run reuses, and a warm-up would double the row's time.
    """

    rounds: int
    warmup: int = 1
    repeats: int = 3
    min_seconds: float = 0.0
    max_seconds: float = math.inf

    def describe(self) -> str:
        more = f", more up to {self.min_seconds:g} s" if self.min_seconds else ""
        if math.isfinite(self.max_seconds):
            more += f", fewer from {self.max_seconds:g} s"
        return f"{self.rounds} rounds of {self.repeats}{more} runs (+{self.warmup} warm-up)"

    def warmup_after(self, runs: list[tuple[float, float]] | None) -> int:
        """The warm-up runs of a round that follows one with these ``runs`` (None: none)."""
        if runs and min(total for _, total in runs) > self.max_seconds:
            return 0
        return self.warmup


class WorkerError(RuntimeError):
    """A worker process died or could not start."""


class WorkerProcess:
    """One contender in its own process, stopped except while it answers a request.

    A worker that dies (a crash, or the kernel's out-of-memory killer) answers every request
    from then on with an error reply, and ``alive`` turns False, so the harness can start a
    new one for the next row.
    """

    def __init__(self, contender: str, threads: int, log_dir: Path):
        self.contender = contender
        self.log_path = log_dir / (contender.replace(" ", "-") + ".log")
        self._log = open(self.log_path, "w")  # closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "refimpl.tools.bench.worker", contender],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=worker_env(threads),
            text=True,
            bufsize=1,
        )
        self._stopped = False
        self.alive = True
        try:
            self.hello = self._read()  # the imports run now, while nothing is being timed
            if not self.hello.get("ok"):
                raise WorkerError(f"{contender} worker: {self.hello.get('status')}")
        except (WorkerError, ValueError):
            self.close()
            raise
        self._stop()

    def request(self, op: str, **fields) -> dict:
        """Send one request and wait for the reply; the worker runs only meanwhile."""
        if not self.alive:
            return {"ok": False, "status": f"error: the {self.contender} worker died"}
        self._resume()
        try:
            try:
                self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
                self.proc.stdin.flush()
            except BrokenPipeError as exc:
                raise WorkerError(self._died()) from exc
            reply = self._read()
        except WorkerError as exc:
            self.alive = False
            return {"ok": False, "status": "error: " + str(exc).replace("\n", " | ")}
        self._stop()
        return reply

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise WorkerError(self._died())
        return json.loads(line)

    def _died(self) -> str:
        self._log.flush()
        tail = Path(self.log_path).read_text().strip().splitlines()[-5:]
        return f"the {self.contender} worker stopped answering; its log ends:\n" + "\n".join(tail)

    def _stop(self) -> None:
        if CAN_STOP and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGSTOP)
            os.waitpid(self.proc.pid, os.WUNTRACED)  # returns once every thread is stopped
            self._stopped = True

    def _resume(self) -> None:
        if self._stopped and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
        self._stopped = False

    def close(self) -> None:
        if self.proc.poll() is None:
            self._resume()
            try:
                self.proc.stdin.write('{"op": "quit"}\n')
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def run_rounds(
    workers: dict[str, WorkerProcess],
    schedule: Schedule,
    progress: Callable[[str], None] = lambda s: None,
) -> tuple[dict[str, Timing], dict[str, str]]:
    """Every worker's runs over the schedule's rounds, the order reversed every other round.

    Returns each contender's :class:`Timing` and, for contenders whose run failed, the error.
    """
    names = list(workers)
    runs: dict[str, list] = {name: [] for name in names}
    errors: dict[str, str] = {}
    for r in range(schedule.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            if name in errors:
                continue
            progress(f"round {r + 1}/{schedule.rounds}: {name}")
            reply = workers[name].request(
                "run",
                warmup=schedule.warmup_after(runs[name][-1] if runs[name] else None),
                repeats=schedule.repeats,
                min_seconds=schedule.min_seconds,
                max_seconds=schedule.max_seconds,
            )
            if reply["ok"]:
                runs[name].append([tuple(t) for t in reply["times"]])
            else:
                errors[name] = reply["status"]
    timings = {name: Timing.from_runs(runs[name]) for name in names if name not in errors}
    return timings, errors


def _torch_installed() -> tuple[bool, str]:
    import importlib.util

    missing = [m for m in ("torch", "torchrec") if importlib.util.find_spec(m) is None]
    if missing:
        return False, f"TorchRec columns empty: {' and '.join(missing)} not installed"
    return True, ""


class Bench:
    """The workers of one run and the temporary directory their files go through."""

    def __init__(self, threads: int, use_torch: bool, progress: Callable[[str], None]):
        self.threads, self.progress = threads, progress
        self._tmp = tempfile.TemporaryDirectory(prefix="refimpl-bench-")
        self.dir = Path(self._tmp.name)
        self.workers: dict[str, WorkerProcess] = {}
        self.notes: dict[str, str] = {}
        self.use_torch = use_torch

    def __enter__(self):
        wanted = ["refimpl", "NumPy GEMM"]
        if self.use_torch:
            installed, note = _torch_installed()
            if installed:
                wanted += ["TorchRec", "torch GEMM"]
            else:
                self.notes["TorchRec"] = note
        try:
            for name in wanted:  # one at a time: a starting worker disturbs no timing
                self.progress(f"starting the {name} worker")
                try:
                    self.workers[name] = WorkerProcess(name, self.threads, self.dir)
                except WorkerError as exc:
                    if name in ("refimpl", "NumPy GEMM"):
                        raise
                    self.notes[name] = str(exc).splitlines()[0]
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        for worker in self.workers.values():
            worker.close()
        self._tmp.cleanup()

    def gemm_file(self, dtype: str, size: int) -> str:
        """Two n×n matrices for both GEMM contenders (written once per dtype)."""
        path = self.dir / f"gemm-{dtype}-{size}.npz"
        if not path.exists():
            rng = np.random.default_rng(0)
            a, b = (rng.standard_normal((size, size)).astype(DTYPES[dtype]) for _ in range(2))
            np.savez(path, a=a, b=b)
        return str(path)

    def _gemm_workers(self, dtype: str, size: int) -> dict[str, WorkerProcess]:
        loaded = {}
        for name in ("NumPy GEMM", "torch GEMM"):
            if name in self.workers:
                reply = self.workers[name].request("load", data=self.gemm_file(dtype, size))
                if reply["ok"]:
                    loaded[name] = self.workers[name]
        return loaded

    def _drop(self, workers) -> None:
        for worker in workers.values():
            worker.request("drop")

    def measure_peaks(self, dtype: str, size: int, schedule: Schedule):
        """NumPy's and torch's n×n×n GEMM, alternated like any row."""
        workers = self._gemm_workers(dtype, size)
        timings, _ = run_rounds(workers, schedule, self.progress)
        self._drop(workers)
        return timings.get("NumPy GEMM"), timings.get("torch GEMM")

    def measure_bandwidth(self, nbytes: int) -> dict[str, float]:
        reply = self.workers["NumPy GEMM"].request("bandwidth", nbytes=nbytes)
        return reply["rates"] if reply["ok"] else {"copy": float("nan"), "read": float("nan")}

    def _restart_dead(self) -> None:
        for name, worker in list(self.workers.items()):
            if not worker.alive:
                worker.close()
                self.progress(f"restarting the {name} worker")
                self.workers[name] = WorkerProcess(name, self.threads, self.dir)

    def measure_case(self, case: Case, sizes: Sizes, dtype: str, schedule: Schedule) -> Result:
        """One row: refimpl prepares the data, the others load it, then the rounds."""
        self._restart_dead()
        result = Result(case.name, case.config(sizes), dtype, target=case.target, note=case.note)
        request = {"case": case.label(sizes), "sizes": sizes.to_json(), "dtype": dtype}
        data = self.dir / "case.npz"
        reply = self.workers["refimpl"].request("prepare", data=str(data), **request)
        if not reply["ok"]:
            result.status = reply["status"]
            return result
        result.flops = None if reply["flops"] is None else FlopCount(*reply["flops"])
        result.cache = [CacheEntry(**e) for e in reply["cache"]]
        result.cache_per_sample = reply["cache_bytes"] / sizes.batch
        workers = {"refimpl": self.workers["refimpl"]}
        if case.torchrec is not None and dtype not in case.torch_dtypes:
            result.torch_note = f"TorchRec's module runs in {', '.join(case.torch_dtypes)} only"
        elif "TorchRec" in self.workers and case.torchrec is not None:
            reply = self.workers["TorchRec"].request("load", data=str(data), **request)
            if reply["ok"]:
                workers["TorchRec"] = self.workers["TorchRec"]
            else:
                result.torch_note = reply["status"]
        else:
            result.torch_note = self.notes.get("TorchRec", "")
        data.unlink()
        matmul_bound = case.target is not None and case.target.kind == "peak"
        if matmul_bound:  # the GEMMs in the same rounds: the peak under the same conditions
            workers.update(self._gemm_workers(dtype, sizes.peak_size))
        try:
            timings, errors = run_rounds(workers, schedule, self.progress)
        finally:
            self._drop(workers)
        if "refimpl" in errors:
            result.status = errors["refimpl"]
            return result
        result.torch_note = errors.get("TorchRec", result.torch_note)
        result.refimpl, result.torch = timings["refimpl"], timings.get("TorchRec")
        if matmul_bound:
            result.numpy_gemm = timings.get("NumPy GEMM")
            result.torch_gemm = timings.get("torch GEMM")
            result.gemm_size = sizes.peak_size
        return result


def run_bench(
    sizes: Sizes,
    cases: list[Case],
    dtypes: list[str],
    schedule: Schedule,
    use_torch: bool,
    threads: int | None = None,
    progress: Callable[[str], None] = lambda s: None,
) -> BenchReport:
    """Measure every case in every dtype: the report the command prints."""
    start, load_at_start = time.perf_counter(), _load_average()
    machine = machine_info()
    threads = threads or usable_cores()
    settings = {
        "B": str(sizes.batch),
        "schedule": schedule.describe(),
        "threads": str(threads),
    }
    results, peaks, bandwidth = [], {}, {}
    with Bench(threads, use_torch, progress) as bench:
        for worker in bench.workers.values():
            settings.update(worker.hello["threads"])
        settings.update(bench.notes)
        for dtype in dtypes:
            progress(f"{dtype}: the {sizes.peak_size}^3 GEMMs and the memory bandwidth")
            peaks[dtype] = bench.measure_peaks(dtype, sizes.peak_size, schedule)
            itemsize = np.dtype(DTYPES[dtype]).itemsize
            bandwidth[dtype] = bench.measure_bandwidth(sizes.batch * sizes.n * itemsize)
        total, i = sum(d in c.dtypes for c in cases for d in dtypes), 0
        for dtype in dtypes:
            start_peaks = tuple(gemm_rate(t, sizes.peak_size) for t in peaks[dtype])
            for case in cases:
                if dtype not in case.dtypes:  # the case's note says why
                    continue
                i += 1
                label = f"[{i}/{total}] {case.label(sizes)} {dtype}"
                bench.progress = lambda step, label=label: progress(f"{label}: {step}")
                result = bench.measure_case(case, sizes, dtype, schedule)
                result.start_peaks = start_peaks
                if case.traffic is not None:
                    result.traffic = case.traffic(sizes, np.dtype(DTYPES[dtype]).itemsize)
                    result.bandwidth = bandwidth[dtype]["copy"]
                results.append(result)
    # Other programs running meanwhile show in the spreads; say how busy the machine was.
    settings["load average (1 min) at start, end"] = f"{load_at_start}, {_load_average()}"
    return BenchReport(
        sizes, results, peaks, bandwidth, machine, settings, time.perf_counter() - start
    )


def _load_average() -> str:
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "?"
