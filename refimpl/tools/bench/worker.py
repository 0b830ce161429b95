"""One contender timing itself, in a process of its own: ``python -m refimpl.tools.bench.worker``.

The contenders are refimpl's layer, TorchRec's module, and the square GEMM of each library
(NumPy's OpenBLAS and torch's BLAS), which is what "peak" means for each. A worker serves one
contender for the whole run and answers the harness's requests, one JSON object per line on
stdin, one reply per line:

- ``prepare`` (refimpl only): build the case's layer and inputs from a fixed seed, run one
  forward to size the upstream gradient, describe the cache, count the FLOPs, and write
  weights, inputs and upstream gradient to the ``.npz`` file the other contenders load.
- ``load``: TorchRec builds its module and loads that file (same weights, same inputs); a
  GEMM contender loads its two matrices.
- ``run``: ``warmup`` untimed runs, then timed runs back to back, garbage collection off:
  ``repeats`` of them, and more while they add up to less than ``min_seconds`` (so that a
  layer that takes milliseconds is timed as many times as one that takes a second is
  timed); replies with every run's (forward s, total s).
- ``bandwidth`` (NumPy GEMM only): :func:`refimpl.tools.bench.machine.measure_bandwidth`.
- ``drop``: free the contender's arrays; ``quit``: exit.

The thread count comes from the environment the harness sets
(:func:`refimpl.tools.bench.machine.worker_env`). Anything a library prints goes to stderr:
stdout carries the replies alone.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import sys
import time

import numpy as np

from refimpl.tools.bench.caches import cache_bytes, describe_cache
from refimpl.tools.bench.cases import find_case
from refimpl.tools.bench.machine import measure_bandwidth, numpy_blas, torch_blas
from refimpl.tools.bench.spec import DTYPES, Sizes, normal

CONTENDERS = ("refimpl", "TorchRec", "NumPy GEMM", "torch GEMM")


MAX_RUNS = 500  # per round, however short a run is


def time_runs(
    run, warmup: int, repeats: int, min_seconds: float = 0.0, max_seconds: float = math.inf
) -> list[tuple[float, float]]:
    """``warmup`` untimed calls of ``run``, then timed ones back to back: ``repeats``, more (up
    to :data:`MAX_RUNS`) until their total time reaches ``min_seconds``, fewer (at least one)
    once it reaches ``max_seconds``.

    >>> len(time_runs(lambda: (0.0, 0.01), warmup=1, repeats=2, min_seconds=0.05))
    5
    >>> len(time_runs(lambda: (0.0, 0.01), warmup=0, repeats=3, max_seconds=0.015))
    2
    """
    gc.collect()
    gc.disable()
    try:
        for _ in range(warmup):
            run()
        times = [run()]
        while len(times) < MAX_RUNS and sum(t for _, t in times) < max_seconds:
            if len(times) >= repeats and sum(t for _, t in times) >= min_seconds:
                break
            times.append(run())
        return times
    finally:
        gc.enable()


def _case(request):
    sizes = Sizes.from_json(request["sizes"])
    dtype = DTYPES[request["dtype"]]
    return find_case(request["case"], sizes), sizes, dtype


def _error(exc: BaseException) -> dict:
    return {"ok": False, "status": f"error: {type(exc).__name__}: {exc}".splitlines()[0]}


class Contender:
    """What every contender does with a request; subclasses fill in ``prepare``/``load``."""

    def __init__(self):
        self.run = None  # the timed callable, once loaded

    def hello(self) -> dict:
        return {"ok": True, "threads": numpy_blas()}

    def handle(self, request: dict) -> dict:
        op = request["op"]
        try:
            if op == "run":
                times = time_runs(
                    self.run,
                    request["warmup"],
                    request["repeats"],
                    request["min_seconds"],
                    request.get("max_seconds", math.inf),
                )
                return {"ok": True, "times": times}
            if op == "drop":
                self.run = None
                gc.collect()
                return {"ok": True}
            if op in ("prepare", "load", "bandwidth"):
                return getattr(self, op)(request)
            return {"ok": False, "status": f"error: unknown op {op!r}"}
        except Exception as exc:  # reported, not raised: the harness goes on with the next row
            self.run = None
            return _error(exc)

    def prepare(self, request):
        return {"ok": False, "status": f"error: {type(self).__name__} cannot prepare"}

    load = bandwidth = prepare


class RefimplContender(Contender):
    def hello(self):
        from refimpl.fast.threads import num_threads

        return {"ok": True, "threads": {**numpy_blas(), "refimpl threads": str(num_threads())}}

    def prepare(self, request):
        case, sizes, dtype = _case(request)
        rng = np.random.default_rng(0)
        layer, inputs = case.build(sizes, dtype, rng)
        out, cache = layer.forward(*inputs)
        d_out = normal(rng, out.shape, dtype)
        input_arrays = case.arrays(inputs)
        entries = describe_cache(cache, sizes.batch, input_arrays)
        del out, cache
        flops = None if case.flops is None else list(case.flops(layer, *inputs))
        arrays = {f"param/{k}": v for k, v in layer.params.items()}
        arrays.update({f"input/{i}": x for i, x in enumerate(input_arrays)})
        np.savez(request["data"], d_out=d_out, **arrays)
        self.run = case.refimpl_step(layer, inputs, d_out)
        return {
            "ok": True,
            "flops": flops,
            "cache": [dataclasses.asdict(e) for e in entries],
            "cache_bytes": cache_bytes(entries),
        }


def read_case_file(path: str):
    """``(params, inputs, d_out)`` as written by ``prepare``."""
    with np.load(path) as data:
        params = {k.removeprefix("param/"): data[k] for k in data.files if k.startswith("param/")}
        count = sum(k.startswith("input/") for k in data.files)
        inputs = [data[f"input/{i}"] for i in range(count)]
        return params, inputs, data["d_out"]


def _set_torch_threads():
    import torch

    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit():
        torch.set_num_threads(int(threads))
    return torch


def torch_contender(case, sizes, dtype: str, path: str):
    """``(module, inputs, d_out)``: the case's TorchRec module in ``dtype`` with the weights
    refimpl wrote to ``path``, its arguments made from the same inputs, the upstream gradient."""
    import torch

    params, inputs, d_out = read_case_file(path)
    module = case.torchrec(sizes)
    module.to(getattr(torch, dtype))
    if params:  # the same weights, so ReLU patterns and so the work match too
        module.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
    return module, case.torch_inputs(inputs, sizes), torch.from_numpy(d_out)


class TorchRecContender(Contender):
    def __init__(self):
        super().__init__()
        self.torch = _set_torch_threads()
        import torchrec  # noqa: F401  # imported now, not inside the first timed row

    def hello(self):
        return {"ok": True, "threads": torch_blas()}

    def load(self, request):
        case, sizes, _ = _case(request)
        if case.torchrec is None:
            return {"ok": False, "status": "no TorchRec module"}
        module, inputs, d_out = torch_contender(case, sizes, request["dtype"], request["data"])
        self.run = case.torch_step(module, inputs, d_out)
        return {"ok": True}


class GemmContender(Contender):
    """``a @ b`` for the square matrices in the file: the library's matmul peak."""

    def __init__(self, library: str):
        super().__init__()
        self.torch = _set_torch_threads() if library == "torch" else None

    def hello(self):
        return {"ok": True, "threads": numpy_blas() if self.torch is None else torch_blas()}

    def load(self, request):
        with np.load(request["data"]) as data:
            a, b = data["a"], data["b"]
        if self.torch is None:

            def product():
                return a @ b

        else:
            a, b = self.torch.from_numpy(a), self.torch.from_numpy(b)

            def product():
                return self.torch.mm(a, b)

        def run():
            start = time.perf_counter()
            product()
            elapsed = time.perf_counter() - start
            return elapsed, elapsed

        self.run = run
        return {"ok": True}

    def bandwidth(self, request):
        return {"ok": True, "rates": measure_bandwidth(request["nbytes"])}


def make_contender(name: str) -> Contender:
    if name == "refimpl":
        return RefimplContender()
    if name == "TorchRec":
        return TorchRecContender()
    if name in ("NumPy GEMM", "torch GEMM"):
        return GemmContender(name.split()[0].lower())
    raise ValueError(f"contender: expected one of {CONTENDERS}, got {name!r}")


def _die_with_parent() -> None:
    """Ask Linux to kill this worker when the harness dies (it may be stopped then)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(argv: list[str]) -> int:
    replies = os.fdopen(os.dup(1), "w", buffering=1)  # the protocol's own copy of stdout
    os.dup2(2, 1)  # whatever a library prints goes to stderr
    _die_with_parent()
    try:
        contender = make_contender(argv[0])
        hello = contender.hello()
    except Exception as exc:
        replies.write(json.dumps(_error(exc)) + "\n")
        return 1
    replies.write(json.dumps(hello) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "quit":
            break
        replies.write(json.dumps(contender.handle(request)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
