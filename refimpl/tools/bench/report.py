"""The report: per-row results, targets, the text and Markdown tables, the README table, the chart.

Every time shown is a median over rounds of each round's median run, with the spread across
rounds beside it; a ratio is the ratio of the two medians, with the range of the per-round
ratios (each round times both contenders within seconds of each other).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import numpy as np

from refimpl.tools.bench.caches import BACKWARD_NEEDS, CacheEntry, summarize
from refimpl.tools.bench.spec import DTYPES, Sizes, Target
from refimpl.tools.flops import FlopCount, matmul_flops

COLUMNS = (
    "layer",
    "configuration",
    "dtype",
    "fwd ms",
    "fwd+bwd ms",
    "TorchRec fwd ms",
    "TorchRec fwd+bwd ms",
    "ratio",
    "GFLOP/s",
    "% peak",
    "TorchRec % peak",
    "GEMM GFLOP/s NumPy / torch",
    "cache B/sample",
    "target",
    "met",
)
README_COLUMNS = (
    "layer",
    "configuration",
    "dtype",
    "fwd+bwd ms",
    "TorchRec fwd+bwd ms",
    "ratio",
    "% peak",
    "GEMM GFLOP/s NumPy / torch",
    "target",
    "met",
)

METHOD = """\
Each contender (refimpl's layer, TorchRec's module, NumPy's and torch's square GEMM) runs in a
worker process of its own, with the same thread count (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS,
MKL_NUM_THREADS and torch.set_num_threads), on the same weights, inputs and upstream gradient,
handed over in an .npz file. A worker that is not being timed is stopped (SIGSTOP), so nothing of
one contender, not even a spinning BLAS thread, runs while another is timed. In each round every
contender warms up, then times its runs back to back (a contender whose runs take longer than the
schedule's maximum times one and skips later warm-ups); the order of the contenders alternates from
round to round (A B, B A, ...). A contender's time is the median over rounds of each round's median
run; the spread is the lowest and highest round median. A ratio is the ratio of the medians, with
the range of the per-round ratios. One run is forward then backward on the fixed upstream gradient,
the forward time read inside the same run; TorchRec's forward records autograd, as in training. A
train_step row times one whole training step (forward, loss, backward, optimizer update) instead,
with no forward time of its own. FLOPs are refimpl.tools.flops' analytic counts of the layer's
formulas (2 per multiply-add, 1 per other + − × ÷ exp; selections and copies free), so GFLOP/s
rewards doing less redundant work. "% peak" divides by the GEMM rate of the same library: for
matmul-bound rows, the GEMMs measured in the same rounds as the row; otherwise the GEMMs measured
at the start. A bandwidth bound is the least traffic a run must move over the copy bandwidth NumPy
sees on arrays of the layer's size. Cache bytes count each distinct array in the cache once,
including inputs the cache refers to (marked [input])."""


@dataclass
class Timing:
    """One contender's times in one row: per round, the median forward and total of its runs."""

    rounds: list[tuple[float, float]]

    @classmethod
    def from_runs(cls, runs_per_round: list[list[tuple[float, float]]]) -> Timing:
        """From every round's runs, each (forward s, total s).

        >>> t = Timing.from_runs([[(1, 3), (1, 5)], [(2, 8), (2, 6), (2, 100)]])
        >>> t.rounds, t.total, t.low, t.high
        ([(1.0, 4.0), (2.0, 8.0)], 6.0, 4.0, 8.0)
        """

        def median(values) -> float:
            return float(statistics.median(values))

        return cls(
            [(median(f for f, _ in runs), median(t for _, t in runs)) for runs in runs_per_round]
        )

    @property
    def forward(self) -> float:
        return statistics.median(f for f, _ in self.rounds)

    @property
    def total(self) -> float:
        return statistics.median(t for _, t in self.rounds)

    @property
    def low(self) -> float:
        return min(t for _, t in self.rounds)

    @property
    def high(self) -> float:
        return max(t for _, t in self.rounds)


def ratio_range(ours: Timing, theirs: Timing) -> tuple[float, float, float]:
    """``(ratio of medians, lowest, highest per-round ratio)`` of the totals.

    >>> ratio_range(Timing([(0, 2), (0, 3)]), Timing([(0, 4), (0, 4)]))
    (0.625, 0.5, 0.75)
    """
    per_round = [a / b for (_, a), (_, b) in zip(ours.rounds, theirs.rounds, strict=True)]
    return ours.total / theirs.total, min(per_round), max(per_round)


def gemm_rate(timing: Timing | None, size: int) -> float:
    """GFLOP/s of the n×n×n GEMM whose times ``timing`` holds (nan if not measured)."""
    return math.nan if timing is None else matmul_flops(size, size, size) / timing.total / 1e9


@dataclass
class Result:
    layer: str
    config: str
    dtype: str
    status: str = "ok"  # "ok", or "error: …"
    target: Target | None = None
    refimpl: Timing | None = None
    torch: Timing | None = None
    numpy_gemm: Timing | None = None  # the GEMMs timed in this row's rounds (matmul-bound rows)
    torch_gemm: Timing | None = None
    gemm_size: int = 0
    start_peaks: tuple[float, float] = (math.nan, math.nan)  # NumPy, torch GFLOP/s at the start
    flops: FlopCount | None = None
    traffic: int | None = None  # least bytes per run, when the case states it
    bandwidth: float = math.nan  # copy GB/s NumPy sees on arrays of this row's size
    cache: list[CacheEntry] = field(default_factory=list)
    cache_per_sample: float = math.nan
    torch_note: str = ""  # why there is no TorchRec column, when there is none
    note: str = ""  # what the row compares (its case's note)

    @property
    def fwd_ms(self) -> float:
        return math.nan if self.refimpl is None else 1e3 * self.refimpl.forward

    @property
    def fb_ms(self) -> float:
        return math.nan if self.refimpl is None else 1e3 * self.refimpl.total

    @property
    def torch_fb_ms(self) -> float:
        return math.nan if self.torch is None else 1e3 * self.torch.total

    @property
    def ratios(self) -> tuple[float, float, float]:
        if self.refimpl is None or self.torch is None:
            return math.nan, math.nan, math.nan
        return ratio_range(self.refimpl, self.torch)

    @property
    def ratio(self) -> float:
        return self.ratios[0]

    def _rate(self, timing: Timing | None) -> float:
        if self.flops is None or timing is None:
            return math.nan
        return self.flops.total / timing.total / 1e9

    @property
    def gflops(self) -> float:
        return self._rate(self.refimpl)

    @property
    def peaks(self) -> tuple[float, float]:
        """NumPy's and torch's GEMM GFLOP/s: this row's own if measured, else the start's."""
        if self.numpy_gemm is not None:
            return gemm_rate(self.numpy_gemm, self.gemm_size), gemm_rate(
                self.torch_gemm, self.gemm_size
            )
        return self.start_peaks

    @property
    def peak_fraction(self) -> float:
        return self.gflops / self.peaks[0]

    @property
    def torch_peak_fraction(self) -> float:
        return self._rate(self.torch) / self.peaks[1]

    @property
    def bound_ms(self) -> float:
        """The bandwidth bound: least traffic over the copy bandwidth (nan if not stated)."""
        if self.traffic is None:
            return math.nan
        return 1e3 * self.traffic / (self.bandwidth * 1e9)

    @property
    def met(self) -> bool | None:
        """Whether the target is met on the medians; None when it cannot be judged."""
        if self.target is None or self.status != "ok":
            return None
        value = self.ratio if self.target.kind == "ratio" else self.peak_fraction
        if math.isnan(value):
            return None
        if self.target.kind == "ratio":
            return bool(value <= self.target.value)
        return bool(value >= self.target.value)

    def cells(self) -> dict[str, str]:
        if self.status != "ok":
            status = self.status if len(self.status) <= 20 else "error (see below)"
            cells = dict.fromkeys(COLUMNS, "-")
            cells.update(layer=self.layer, configuration=self.config, dtype=self.dtype)
            cells["fwd ms"] = status
            return cells
        met = {True: "yes", False: "NO", None: "-"}[self.met]
        if self.met is None and self.target is not None:
            met = "n/a"
        ratio, low, high = self.ratios
        numpy_peak, torch_peak = self.peaks
        return {
            "layer": self.layer,
            "configuration": self.config,
            "dtype": self.dtype,
            "fwd ms": ms_text(self.fwd_ms),
            "fwd+bwd ms": timing_text(self.refimpl),
            "TorchRec fwd ms": ms_text(self.torch.forward * 1e3 if self.torch else math.nan),
            "TorchRec fwd+bwd ms": timing_text(self.torch),
            "ratio": ratio_text(ratio) + ("" if math.isnan(ratio) else f" ({low:.2f}–{high:.2f})"),
            "GFLOP/s": rate_text(self.gflops),
            "% peak": percent_text(self.peak_fraction),
            "TorchRec % peak": percent_text(self.torch_peak_fraction),
            "GEMM GFLOP/s NumPy / torch": (
                f"{number_text(numpy_peak, '{:.0f}')} / {number_text(torch_peak, '{:.0f}')}"
                if self.numpy_gemm is not None
                else "-"
            ),
            "cache B/sample": number_text(self.cache_per_sample, "{:,.0f}"),
            "target": "-" if self.target is None else str(self.target),
            "met": met,
        }


def number_text(x: float, fmt: str = "{:.1f}") -> str:
    return "-" if x is None or math.isnan(x) else fmt.format(x)


def rate_text(x: float) -> str:
    """GFLOP/s: one decimal, two significant digits below 1 (the embedding bags' 0.07).

    >>> rate_text(39.04), rate_text(0.0712)
    ('39.0', '0.071')
    """
    return number_text(x, "{:.1f}" if x >= 1 else "{:.2g}")


def percent_text(x: float) -> str:
    if math.isnan(x):
        return "-"
    return f"{100 * x:.0f}%" if x >= 0.01 else f"{100 * x:.1g}%"


def ratio_text(x: float) -> str:
    if math.isnan(x):
        return "-"
    return f"{x:.2f}" if x >= 0.01 else f"{x:.2g}"


def ms_text(x: float) -> str:
    if math.isnan(x):
        return "-"
    return ("{:.3f}" if x < 1 else "{:.2f}" if x < 100 else "{:.0f}").format(x)


def timing_text(timing: Timing | None) -> str:
    """``median (lowest–highest)`` in ms."""
    if timing is None:
        return "-"
    low, high = ms_text(1e3 * timing.low), ms_text(1e3 * timing.high)
    return f"{ms_text(1e3 * timing.total)} ({low}–{high})"


def format_table(results: list[Result], markdown: bool = False, columns=COLUMNS) -> str:
    rows = [[r.cells()[c] for c in columns] for r in results]
    if markdown:
        lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(r[i]) for r in [columns, *rows]) for i in range(len(columns))]
    left = {"layer", "configuration", "dtype", "target", "met"}

    def line(cells):
        return "  ".join(
            f"{c:<{w}}" if name in left else f"{c:>{w}}"
            for name, c, w in zip(columns, cells, widths, strict=True)
        ).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, rows)])


def format_targets(results: list[Result]) -> str:
    """One line per judged target: verdict, the measured value and its range, and for rows
    with a stated traffic, the bandwidth bound."""
    lines = []
    for r in results:
        if r.target is None or r.status != "ok":
            continue
        ratio, low, high = r.ratios
        if r.target.kind == "ratio":
            if math.isnan(ratio):
                measured = "no TorchRec"
            else:
                measured = f"{ratio_text(ratio)}x TorchRec (rounds {low:.2f}–{high:.2f})"
                if low <= r.target.value < high:
                    measured += ", the range crosses the target"
        else:
            numpy_peak, torch_peak = r.peaks
            measured = (
                f"{percent_text(r.peak_fraction)} of NumPy's GEMM "
                f"({r.gflops:.1f} of {numpy_peak:.1f} GFLOP/s)"
            )
            if not math.isnan(ratio):
                measured += (
                    f"; {ratio_text(ratio)}x TorchRec (rounds {low:.2f}–{high:.2f}), which runs "
                    f"at {percent_text(r.torch_peak_fraction)} of torch's GEMM "
                    f"({torch_peak:.1f} GFLOP/s)"
                )
        if not math.isnan(r.bound_ms):
            measured += (
                f"; bandwidth bound {ms_text(r.bound_ms)} ms ({r.traffic / 1e6:.0f} MB at "
                f"{r.bandwidth:.1f} GB/s), measured {r.fb_ms / r.bound_ms:.1f}x the bound"
            )
        verdict = {True: "met", False: "MISSED", None: "not judged"}[r.met]
        row = f"{r.layer} {r.config} {r.dtype}"
        lines.append(f"{verdict:<10} {row}: {r.target}, measured {measured}")
    return "\n".join(lines)


def format_caches(results: list[Result], markdown: bool = False) -> str:
    """What each layer's cache holds (first dtype measured), per sample; a cache listed
    already (the same model in another row) is referred to, not repeated."""
    seen, lines, listed = set(), [], {}
    for r in results:
        key = (r.layer, r.config)
        if r.status != "ok" or key in seen:
            continue
        seen.add(key)
        parts = summarize(r.cache)
        text = ", ".join(parts) if parts else "nothing"
        if parts and text in listed:
            text = f"as {listed[text]}'s"
        else:
            listed[text] = f"{r.layer} {r.config}"
        per_sample = f"{r.cache_per_sample:,.0f} B/sample in {r.dtype}"
        needs = BACKWARD_NEEDS.get(r.layer, "?")
        lines.append(
            f"{'- ' if markdown else ''}{r.layer} {r.config}: {text} ({per_sample}). "
            f"Backward needs: {needs}."
        )
    return "\n".join(lines)


def format_notes(results: list[Result], markdown: bool = False) -> str:
    """What each row compares (its case's note, once per row), then why rows have no TorchRec
    column where a reason was given (one line per reason)."""
    lines, seen = [], set()
    for r in results:
        if r.note and (r.layer, r.config) not in seen:
            seen.add((r.layer, r.config))
            lines.append(f"{r.layer} {r.config}: {r.note}")
    rows_by_note: dict[str, list[str]] = {}
    for r in results:
        if r.torch_note:
            rows_by_note.setdefault(r.torch_note, []).append(f"{r.layer} {r.config} {r.dtype}")
    for note, rows in rows_by_note.items():
        where = "every row" if len(rows) == len(results) else "; ".join(rows)
        lines.append(f"No TorchRec column for {where}: {note}")
    return "\n".join(("- " if markdown else "") + line for line in lines)


@dataclass
class BenchReport:
    sizes: Sizes
    results: list[Result]
    peaks: dict[str, tuple[Timing | None, Timing | None]]  # dtype -> NumPy, torch GEMM at start
    bandwidth: dict[str, dict[str, float]]  # dtype -> {"copy": GB/s, "read": GB/s}
    machine: dict[str, str]
    settings: dict[str, str]
    seconds: float = 0.0

    def header(self) -> str:
        n = self.sizes.peak_size
        lines = []
        for dtype, (numpy_gemm, torch_gemm) in self.peaks.items():
            text = f"{dtype}: NumPy {timing_rate_text(numpy_gemm, n)}"
            if torch_gemm is not None:
                text += f", torch {timing_rate_text(torch_gemm, n)}"
            lines.append(text)
        bandwidth = "; ".join(
            f"{dtype} (B·N arrays): copy {r['copy']:.1f} GB/s, read {r['read']:.1f} GB/s"
            for dtype, r in self.bandwidth.items()
        )
        settings = ", ".join(f"{k} {v}" for k, v in self.settings.items())
        return "\n".join(
            [
                f"{n}^3 GEMM at the start, GFLOP/s (median, spread over rounds): "
                + "; ".join(lines),
                f"Memory bandwidth of one NumPy pass: {bandwidth}",
                settings,
            ]
        )

    def problems(self) -> str:
        return "\n".join(
            f"{r.layer} {r.config} {r.dtype}: {r.status}"
            for r in self.results
            if r.status.startswith("error")
        )

    def text(self) -> str:
        return "\n\n".join(
            [
                self.header(),
                format_table(self.results),
                *(["Errors:\n" + self.problems()] if self.problems() else []),
                "Targets:\n" + (format_targets(self.results) or "none measured"),
                *(["Notes:\n" + format_notes(self.results)] if format_notes(self.results) else []),
                "Cache contents (per sample):\n" + format_caches(self.results),
            ]
        )

    def readme_table(self) -> str:
        return format_table(self.results, markdown=True, columns=README_COLUMNS)

    def markdown(self) -> str:
        machine = "\n".join(f"| {k} | {v} |" for k, v in self.machine.items())
        return "\n\n".join(
            [
                "# refimpl benchmark",
                "## Machine\n\n| | |\n|---|---|\n" + machine,
                "## Settings\n\n" + self.header().replace("\n", "  \n"),
                "## Results\n\n" + format_table(self.results, markdown=True),
                "## Targets\n\n"
                + "\n".join(f"- {line}" for line in format_targets(self.results).splitlines()),
                "## Notes\n\n" + (format_notes(self.results, markdown=True) or "None."),
                "## Cache contents\n\n" + format_caches(self.results, markdown=True),
                "## Method\n\n" + METHOD,
            ]
        )


def timing_rate_text(timing: Timing | None, size: int) -> str:
    """``rate (low–high)`` GFLOP/s of an n³ GEMM's times."""
    if timing is None:
        return "-"
    flops = matmul_flops(size, size, size) / 1e9
    return f"{flops / timing.total:.1f} ({flops / timing.high:.1f}–{flops / timing.low:.1f})"


def write_chart(results: list[Result], path: str, batch: int | None = None) -> None:
    """Forward+backward time per layer, refimpl beside TorchRec with the spread over rounds as
    error bars, one panel per dtype, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if r.status == "ok"]
    dtypes = sorted({r.dtype for r in ok}, key=list(DTYPES).index)
    labels = list(dict.fromkeys(f"{r.layer}\n{r.config}" for r in ok))
    panels = max(len(dtypes), 1)
    fig, axes = plt.subplots(
        1, panels, figsize=(7 * panels, 0.55 * len(labels) + 2.2), sharey=True, squeeze=False
    )
    y = np.arange(len(labels))
    for ax, dtype in zip(axes[0], dtypes, strict=False):
        by_label = {f"{r.layer}\n{r.config}": r for r in ok if r.dtype == dtype}
        for offset, attr, name, color in (
            (-0.2, "refimpl", "refimpl (NumPy)", "tab:blue"),
            (0.2, "torch", "TorchRec (torch autograd)", "tab:orange"),
        ):
            timings = [getattr(by_label[k], attr) if k in by_label else None for k in labels]
            mid = np.array([np.nan if t is None else 1e3 * t.total for t in timings])
            low = np.array([0 if t is None else 1e3 * (t.total - t.low) for t in timings])
            high = np.array([0 if t is None else 1e3 * (t.high - t.total) for t in timings])
            ax.barh(y + offset, mid, height=0.4, label=name, color=color)
            ax.errorbar(mid, y + offset, xerr=[low, high], fmt="none", ecolor="black", lw=0.8)
        for i, k in enumerate(labels):
            r = by_label.get(k)
            if r is not None and not math.isnan(r.ratio):  # refimpl / TorchRec beside the pair
                ax.annotate(
                    f"{ratio_text(r.ratio)}x",
                    (max(r.fb_ms, r.torch_fb_ms), i),
                    xytext=(6, 0),
                    textcoords="offset points",
                    va="center",
                    fontsize=7,
                )
        ax.set_xscale("log")
        ax.set_xlabel("forward + backward time, ms (log scale; bars: median, lines: spread)")
        ax.set_title(dtype + (f", B={batch}" if batch else "") + ": refimpl / TorchRec ratios")
        ax.grid(axis="x", which="both", alpha=0.3)
        ax.margins(x=0.15)
    axes[0][0].set_yticks(y, labels, fontsize=8)
    axes[0][0].invert_yaxis()  # the y axis is shared: invert it once, first case on top
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=2, fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
