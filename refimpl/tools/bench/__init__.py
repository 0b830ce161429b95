"""``python -m refimpl bench``: every layer's forward and backward timed beside TorchRec's, fairly.

Each contender — refimpl's layer, TorchRec's module, and the square GEMM of NumPy and of
torch, which define "peak" — runs in a worker process of its own with the same thread count
and the same weights and inputs, handed over in a file. The parent stops every worker but the
one being timed, alternates their order over rounds, and reports per contender the median
and the spread across rounds, and the ratio of medians with its range. At production sizes
(B=1024, F=26, D=128, so N=3456) in float32 and float64 the table gives forward and
forward+backward times, GFLOP/s and the fraction of the library's own GEMM rate, the cache's
bytes per sample, and each layer's target with whether this run met it.

The jobs, one module each:

- :mod:`~refimpl.tools.bench.spec`: what a row is: the sizes, the ``Case`` and ``Target``
  records, one timed run of each side.
- :mod:`~refimpl.tools.bench.cases`: what is measured. One declarative ``Case`` per row;
  adding a row is one entry there (its docstring shows one). Whole models and training steps
  are built in :mod:`~refimpl.tools.bench.dlrm_cases`.
- :mod:`~refimpl.tools.bench.worker`: one contender timing itself in its own process.
- :mod:`~refimpl.tools.bench.harness`: the parent that alternates the workers over rounds.
- :mod:`~refimpl.tools.bench.machine`: the machine, the BLAS libraries, threads, bandwidth.
- :mod:`~refimpl.tools.bench.caches`: what each layer's cache holds.
- :mod:`~refimpl.tools.bench.report`: tables, targets, Markdown, the README table, the chart.
- :mod:`~refimpl.tools.bench.cli`: the command's options.

``--quick`` runs tiny sizes in two short rounds: a smoke test of the whole pipeline in
seconds, not a measurement.
"""


def main(argv: list[str] | None = None) -> int:
    """``python -m refimpl bench`` (see :mod:`refimpl.tools.bench.cli`)."""
    from refimpl.tools.bench.cli import main as cli_main

    return cli_main(argv)
