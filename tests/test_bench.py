"""``python -m refimpl bench``: the harness's parts, and the quick run as a smoke test.

Nothing here asserts a time: the machine is shared. What is checked is what the numbers rest
on: every case builds and hands its data over, workers are stopped while another is timed,
rounds alternate, medians, spreads and ratios are computed as the report says, targets are
judged from them, and the whole pipeline writes its table, Markdown and chart.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

import refimpl
from refimpl.__main__ import main as refimpl_main
from refimpl.tools.bench import cases as bench_cases
from refimpl.tools.bench import dlrm_cases
from refimpl.tools.bench import main as bench_main
from refimpl.tools.bench.caches import CacheEntry, cache_bytes, describe_cache, summarize
from refimpl.tools.bench.cases import select_cases
from refimpl.tools.bench.harness import Schedule, WorkerProcess, run_rounds
from refimpl.tools.bench.report import (
    COLUMNS,
    README_COLUMNS,
    BenchReport,
    Result,
    Timing,
    format_targets,
)
from refimpl.tools.bench.spec import DTYPES, PRODUCTION, QUICK, Sizes, Target
from refimpl.tools.bench.worker import RefimplContender, read_case_file, torch_contender
from refimpl.tools.flops import FlopCount

# ----------------------------------------------------------------------------- the cases


def test_every_case_builds_at_quick_sizes_with_a_unique_label():
    labels = [c.label(QUICK) for c in select_cases(None)]
    assert len(labels) == len(set(labels))
    for case in select_cases(None):
        layer, inputs = case.build(QUICK, np.float32, np.random.default_rng(0))
        out = layer(*inputs)
        assert out.shape[0] == QUICK.batch and out.dtype == np.float32, case.label(QUICK)
        if case.flops is not None:
            assert case.flops(layer, *inputs).total > 0
        assert bench_cases.find_case(case.label(QUICK), QUICK).label(QUICK) == case.label(QUICK)


def test_sizes_survive_the_trip_to_a_worker():
    assert Sizes.from_json(QUICK.to_json()) == QUICK
    assert Sizes.from_json(PRODUCTION.to_json()) == PRODUCTION


def test_layer_selection():
    assert {c.name for c in select_cases(["crossnet"])} == {"CrossNet"}
    assert len(select_cases(["InteractionProjectionArch"])) == 3
    with pytest.raises(SystemExit, match="unknown layer"):
        select_cases(["Transformer"])


def test_matmul_bound_rows_are_judged_against_the_peak():
    kinds = {c.label(QUICK): c.target and c.target.kind for c in select_cases(None)}
    peak = ("CrossNet", "LowRankCrossNet", "InteractionDCNArch", "MLP", "DenseArch")
    peak += ("FMInteractionArch", "InteractionTransformerArch")
    for name in peak:
        assert all(k == "peak" for label, k in kinds.items() if label.startswith(name + " "))
    ratio = ("InteractionArch", "VectorCrossNet", "LowRankMixtureCrossNet")
    ratio += ("FactorizationMachine", "EmbeddingBagCollection", "DLRM_DCN", "train_step")
    for name in ratio:
        assert all(k == "ratio" for label, k in kinds.items() if label.startswith(name + " "))


def test_sizes_give_every_sparse_feature_its_bag_size_and_table():
    assert len(PRODUCTION.multi_hot) == PRODUCTION.features == 26
    assert sum(PRODUCTION.multi_hot) == 214  # MLPerf DLRM-DCNv2's ids per sample
    assert max(PRODUCTION.table_rows) == 100_000
    assert min(PRODUCTION.table_rows) == 3
    with pytest.raises(ValueError, match="multi_hot: expected one entry per sparse feature"):
        dataclasses.replace(QUICK, multi_hot=(1, 2))


def test_sparse_features_follow_the_sizes():
    features = dlrm_cases.sparse_features(QUICK, np.random.default_rng(0))
    assert list(features.keys) == [f"cat_{i}" for i in range(QUICK.features)]
    for key, rows, ids_per_bag in zip(
        features.keys, QUICK.table_rows, QUICK.multi_hot, strict=True
    ):
        ids, lengths, _ = features.feature(key)
        assert (lengths == ids_per_bag).all() and len(lengths) == QUICK.batch
        assert ids.min() >= 0 and ids.max() < rows
    # The smallest table (3 rows) is hit on every row: the ids are not all the same number.
    assert len(np.unique(features.feature("cat_1")[0])) == 3


def test_expected_distinct_rows_of_uniform_ids():
    rng = np.random.default_rng(0)
    rows, draws, trials = 50, 40, 4000
    distinct = [len(np.unique(rng.integers(0, rows, draws))) for _ in range(trials)]
    assert dlrm_cases.expected_distinct(rows, draws) == pytest.approx(np.mean(distinct), rel=0.01)
    assert dlrm_cases.expected_distinct(3, 1024) == pytest.approx(3)


def test_least_traffic_of_the_embedding_bags():
    d, b = QUICK.dim, QUICK.batch
    distinct = sum(
        dlrm_cases.expected_distinct(n, b * h)
        for n, h in zip(QUICK.table_rows, QUICK.multi_hot, strict=True)
    )
    ids, pooled = b * sum(QUICK.multi_hot), b * QUICK.features * d
    expected = 8 * (ids + b * QUICK.features + distinct) + 4 * (2 * distinct * d + 2 * pooled)
    assert dlrm_cases.collection_traffic(QUICK, 4) == int(expected)


# ----------------------------------------------------------------------------- the worker


def test_refimpl_prepares_the_file_every_contender_loads(tmp_path):
    case = select_cases(["VectorCrossNet"])[0]
    contender = RefimplContender()
    data = tmp_path / "case.npz"
    request = {"case": case.label(QUICK), "sizes": QUICK.to_json(), "dtype": "float64"}
    reply = contender.handle({"op": "prepare", "data": str(data), **request})
    assert reply["ok"] and reply["flops"][0] > 0 and reply["cache_bytes"] > 0
    params, inputs, d_out = read_case_file(str(data))
    layer, _ = case.build(QUICK, np.float64, np.random.default_rng(0))
    assert list(params) == list(layer.params)
    assert [x.shape for x in inputs] == [(QUICK.batch, QUICK.n)] and d_out.shape == inputs[0].shape
    run = {"op": "run", "warmup": 1, "repeats": 3, "min_seconds": 0}
    times = contender.handle(run)["times"]
    assert len(times) == 3 and all(0 < f <= t for f, t in times)
    assert contender.handle({"op": "drop"}) == {"ok": True} and contender.run is None
    # A failing step is reported, not raised: the harness goes on with the next row.
    assert contender.handle(run)["ok"] is False


def _prepared(case, dtype: str, path: Path):
    """refimpl's layer and inputs for ``case`` at QUICK sizes as its worker builds them, and
    the file it writes for the other contenders."""
    request = {"case": case.label(QUICK), "sizes": QUICK.to_json(), "dtype": dtype}
    assert RefimplContender().handle({"op": "prepare", "data": str(path), **request})["ok"]
    return case.build(QUICK, DTYPES[dtype], np.random.default_rng(0))


@pytest.mark.parity
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torchrec_computes_what_refimpl_computes_from_the_file(tmp_path, dtype):
    # Every row compares like with like: TorchRec's module, given refimpl's weights and inputs
    # through the file, gives refimpl's output; and each row's two timed steps run.
    pytest.importorskip("torch")
    pytest.importorskip("torchrec")
    tolerance = {"float32": 2e-4, "float64": 1e-6}[dtype]  # TorchRec's bags pool to float32
    for case in select_cases(None):
        if case.torchrec is None or dtype not in case.torch_dtypes:
            continue
        layer, inputs = _prepared(case, dtype, tmp_path / "case.npz")
        module, torch_inputs, d_out = torch_contender(case, QUICK, dtype, tmp_path / "case.npz")
        theirs = module(*torch_inputs)
        theirs = theirs if hasattr(theirs, "detach") else theirs.values()  # a KeyedTensor
        ours = layer(*inputs)
        np.testing.assert_allclose(
            theirs.detach().numpy(), ours, rtol=tolerance, atol=tolerance, err_msg=case.label(QUICK)
        )
        for run in (case.refimpl_step(layer, inputs, d_out.numpy()),
                    case.torch_step(module, torch_inputs, d_out)):  # fmt: skip
            forward, total = run()
            assert total > 0 and (math.isnan(forward) or 0 < forward <= total)


@pytest.mark.parity
def test_both_sides_of_a_training_row_take_the_same_steps(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("torchrec")
    for case in select_cases(["train_step"]):
        model, inputs = _prepared(case, "float32", tmp_path / "case.npz")
        start = {k: v.copy() for k, v in model.params.items()}
        module, torch_inputs, d_out = torch_contender(case, QUICK, "float32", tmp_path / "case.npz")
        ours = case.refimpl_step(model, inputs, d_out.numpy())
        theirs = case.torch_step(module, torch_inputs, d_out)
        for _ in range(2):
            ours(), theirs()
        trained = module.state_dict()
        for key, value in model.params.items():
            assert not np.array_equal(value, start[key]), (case.label(QUICK), key)
            np.testing.assert_allclose(
                trained[key].numpy(), value, rtol=1e-4, atol=1e-6, err_msg=case.label(QUICK)
            )


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_worker_is_stopped_except_while_it_answers(tmp_path):
    worker = WorkerProcess("NumPy GEMM", threads=1, log_dir=tmp_path)
    try:
        assert _state(worker.proc.pid) == "T"  # stopped after starting up
        rng = np.random.default_rng(0)
        np.savez(tmp_path / "g.npz", a=rng.standard_normal((8, 8)), b=rng.standard_normal((8, 8)))
        assert worker.request("load", data=str(tmp_path / "g.npz"))["ok"]
        assert _state(worker.proc.pid) == "T"
        reply = worker.request("run", warmup=1, repeats=2, min_seconds=0)
        assert reply["ok"] and len(reply["times"]) == 2 and _state(worker.proc.pid) == "T"
        assert worker.hello["threads"]["NumPy BLAS threads"] in ("1", "?")
    finally:
        worker.close()
    assert worker.proc.returncode == 0


def test_a_worker_that_dies_answers_with_an_error(tmp_path):
    worker = WorkerProcess("NumPy GEMM", threads=1, log_dir=tmp_path)
    try:
        worker.proc.kill()
        worker.proc.wait()
        reply = worker.request("run", warmup=0, repeats=1, min_seconds=0)
        assert reply["ok"] is False and "stopped answering" in reply["status"]
        assert worker.alive is False
        assert worker.request("drop")["ok"] is False  # and keeps doing so
    finally:
        worker.close()


class _Recorder:
    """A stand-in worker that records the order it is asked to run in."""

    def __init__(self, name, log, seconds):
        self.name, self.log, self.seconds = name, log, seconds

    def request(self, op, **fields):
        self.log.append(self.name)
        return {"ok": True, "times": [(s / 2, s) for s in self.seconds.pop(0)]}


def test_runs_longer_than_the_maximum_skip_the_next_warm_up():
    asked = []

    class Slow:
        def request(self, op, **fields):
            asked.append((fields["warmup"], fields["max_seconds"]))
            return {"ok": True, "times": [(1.0, 30.0)]}

    class Quick(Slow):
        def request(self, op, **fields):
            super().request(op, **fields)
            return {"ok": True, "times": [(0.1, 0.2)] * 3}

    schedule = Schedule(rounds=3, warmup=1, repeats=3, max_seconds=20)
    timings, _ = run_rounds({"slow": Slow(), "quick": Quick()}, schedule)
    # slow: warmed up in round 1 only; quick: every round
    assert asked == [(1, 20), (1, 20), (1, 20), (0, 20), (0, 20), (1, 20)]
    assert timings["slow"].total == 30.0
    assert "fewer from 20 s" in schedule.describe()


def test_rounds_alternate_the_order_and_keep_every_round():
    log = []
    workers = {
        "A": _Recorder("A", log, [[1, 2, 9], [4, 4, 4], [3, 3, 3]]),
        "B": _Recorder("B", log, [[2, 2, 2], [4, 4, 4], [5, 6, 7]]),
    }
    timings, errors = run_rounds(workers, Schedule(rounds=3, warmup=1, repeats=3))
    assert log == ["A", "B", "B", "A", "A", "B"] and errors == {}
    assert timings["A"].rounds == [(1.0, 2.0), (2.0, 4.0), (1.5, 3.0)]
    assert (timings["A"].total, timings["A"].low, timings["A"].high) == (3.0, 2.0, 4.0)
    assert timings["B"].total == 4.0


# ----------------------------------------------------------------------------- the report


def _result(**kwargs) -> Result:
    defaults = {"layer": "L", "config": "c", "dtype": "float32"}
    return Result(**{**defaults, **kwargs})


def test_ratio_is_the_ratio_of_medians_with_the_per_round_range():
    ours = Timing([(0, 4.0), (0, 6.0), (0, 5.0)])
    theirs = Timing([(0, 10.0), (0, 10.0), (0, 8.0)])
    r = _result(refimpl=ours, torch=theirs, target=Target("ratio", 0.5))
    assert r.ratios == pytest.approx((0.5, 0.4, 0.625))
    assert r.met is True  # judged on the medians
    assert "the range crosses the target" in format_targets([r])
    assert r.cells()["ratio"] == "0.50 (0.40–0.62)"
    assert r.cells()["fwd+bwd ms"] == "5000 (4000–6000)"
    assert _result(refimpl=ours, target=Target("ratio", 0.5)).met is None  # no TorchRec


def test_peak_uses_the_rows_own_gemm_when_it_was_timed_beside_it():
    flops = FlopCount(10**9, 10**9)  # 2 GFLOP
    ours = Timing([(0, 0.02)])  # 100 GFLOP/s
    gemm = Timing([(0, 2 * 64**3 / 125e9)])  # 125 GFLOP/s
    r = _result(refimpl=ours, flops=flops, target=Target("peak", 0.7), start_peaks=(200.0, 1.0))
    assert r.peak_fraction == pytest.approx(0.5) and r.met is False  # the start's 200
    r.numpy_gemm, r.torch_gemm, r.gemm_size = gemm, gemm, 64
    assert r.peak_fraction == pytest.approx(0.8) and r.met is True  # its own 125
    assert r.cells()["GEMM GFLOP/s NumPy / torch"] == "125 / 125"
    r.torch = Timing([(0, 0.04)])
    assert r.torch_peak_fraction == pytest.approx(0.4)
    assert "which runs at 40% of torch's GEMM" in format_targets([r])


def test_bandwidth_bound_is_stated_where_a_case_gives_its_traffic():
    r = _result(refimpl=Timing([(0, 0.004)]), torch=Timing([(0, 0.01)]), target=Target("ratio", 1))
    r.traffic, r.bandwidth = 20_000_000, 10.0  # 20 MB at 10 GB/s: 2 ms
    assert r.bound_ms == pytest.approx(2.0)
    assert "bandwidth bound 2.00 ms (20 MB at 10.0 GB/s), measured 2.0x the bound" in (
        format_targets([r])
    )


def test_least_traffic_of_the_memory_bound_layers():
    b, n = QUICK.batch, QUICK.n  # n = (F+1)·D: the two inputs of the dot interaction
    out = b * (QUICK.dim + QUICK.features * (QUICK.features + 1) // 2)
    vector, dot = select_cases(["VectorCrossNet"])[0], select_cases(["InteractionArch"])[0]
    assert vector.traffic(QUICK, 8) == 5 * b * n * 8  # x̂, out; x̂, G, d_x
    assert dot.traffic(QUICK, 4) == 4 * (3 * b * n + 2 * out)  # in, out; d_out, C, d_in


def test_report_has_every_column_and_the_readme_table(tmp_path):
    ok = _result(refimpl=Timing([(0.001, 0.003)]), torch=Timing([(0.002, 0.004)]))
    failed = _result(layer="M", status="error: boom")
    report = BenchReport(QUICK, [ok, failed], {}, {}, {"CPU": "x"}, {"B": "64"})
    md = report.markdown()
    assert "| " + " | ".join(COLUMNS) + " |" in md and "## Method" in md
    assert report.readme_table().splitlines()[0] == "| " + " | ".join(README_COLUMNS) + " |"
    assert "error: boom" in report.text() and "0.75 (0.75–0.75)" in report.text()


class _Cache(NamedTuple):
    x: np.ndarray
    y: np.ndarray
    again: np.ndarray
    nested: tuple


def test_cache_description_counts_each_array_once():
    x = np.zeros((4, 3))
    y = np.zeros((2, 4, 5), np.float32)
    cache = _Cache(x, y, y.reshape(8, 5), ({"k": np.ones(4)}, None, y[1]))
    entries = describe_cache(cache, batch=4, inputs=(x,))
    assert [(e.name, e.shape, e.note) for e in entries] == [
        ("x", "(B, 3)", "input"),
        ("y", "(2, B, 5)", ""),
        ("again", "(8, 5)", "view of y"),
        ("nested[0]['k']", "(B,)", ""),
        ("nested[2]", "(B, 5)", "view of y"),
    ]
    assert cache_bytes(entries) == x.nbytes + y.nbytes + 32


def test_cache_summary_groups_per_layer_entries_and_keeps_what_differs():
    def entry(name, shape, note=""):
        return CacheEntry(name, shape, "float32", 4, note)

    entries = [entry(f"layers[{i}].q", "(B, 8)") for i in range(4)]
    entries += [entry("f[0][1]", "(192,)", "input"), entry("f[0][2]", "(B,)", "input")]
    entries += [entry("f[1][1]", "(B,)", "input"), entry("f[1][2]", "(B,)", "input")]
    entries += [entry("f[3][2]", "(B,)", "input"), entry("out", "(B, 1)")]
    assert summarize(entries) == [
        "layers[0–3].q (B, 8)",
        "f[0][1] (192,) [input]",
        "f[0–1, 3][2] (B,) [input]",  # only the first index varies within a group
        "f[1][1] (B,) [input]",
        "out (B, 1)",
    ]


def test_caches_hold_what_backward_needs_and_no_more():
    # The per-sample counts that BACKWARD_NEEDS states, against the bytes each cache holds.
    batch, n, num_layers, k, r = 8, 12, 3, 4, 2
    x = np.random.default_rng(0).standard_normal((batch, n))
    expected = {
        refimpl.CrossNet(n, num_layers): 2 * num_layers * n,  # x_l, c_l
        refimpl.LowRankCrossNet(n, num_layers, r): num_layers * (2 * n + r),  # x_l, V x_l, c_l
        refimpl.VectorCrossNet(n, num_layers): n + 2 * num_layers,  # x̂ (the input), s_l, x̂·w_l
        # x_l, h_l, h̃_l, m_l, p_l: no pre-activations, no (K, B, N) crosses
        refimpl.LowRankMixtureCrossNet(n, num_layers, k, r): num_layers * (2 * n + 2 * k * r + k),
        refimpl.MLP(n, [6, 5, 4]): n + 6 + 5 + 4,  # each layer's input and the output
        refimpl.DenseArch(n, [6, 5, 4]): n + 6 + 5 + 4,
        refimpl.OverArch(n, [6, 5, 1]): n + 6 + 5,  # the logits Linear reads the MLP's output
    }
    for layer, count in expected.items():
        _, cache = layer.forward(x)
        entries = describe_cache(cache, batch, (x,))
        assert cache_bytes(entries) == 8 * batch * count, type(layer).__name__


def test_machine_report(capsys):
    assert refimpl_main(["bench", "--machine"]) == 0
    out = capsys.readouterr().out
    for key in ("CPU", "cores", "NumPy", "NumPy BLAS", "NumPy BLAS threads", "torch"):
        assert any(line.startswith(key + " ") for line in out.splitlines()), key
    assert np.__version__ in out


# ----------------------------------------------------------------------------- smoke tests


def _markdown_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    lines = [line for line in path.read_text().splitlines() if line.startswith("| ")]
    header_at = next(i for i, line in enumerate(lines) if line.startswith("| layer |"))
    header = [c.strip() for c in lines[header_at].strip("|").split(" | ")]
    rows = []
    for line in lines[header_at + 1 :]:
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        assert len(cells) == len(header), line
        rows.append(dict(zip(header, cells, strict=True)))
    return header, rows


def _number(cell: str) -> float:
    return float(cell.split(" (")[0].rstrip("%").replace(",", ""))


@pytest.mark.slow
def test_quick_bench_without_torch(tmp_path, capsys):
    markdown, chart = tmp_path / "bench.md", tmp_path / "bench.png"
    argv = ["bench", "--quick", "--no-torch", "--markdown", str(markdown), "--chart", str(chart)]
    assert refimpl_main(argv) == 0
    out = capsys.readouterr().out
    assert "GEMM at the start" in out and "Memory bandwidth" in out and "README table" in out
    header, rows = _markdown_rows(markdown)
    assert tuple(header) == COLUMNS
    cases = select_cases(None)
    expected = [
        (c.name, c.config(QUICK), d) for d in ("float32", "float64") for c in cases if d in c.dtypes
    ]
    assert [(r["layer"], r["configuration"], r["dtype"]) for r in rows] == expected
    counted = {(c.name, c.config(QUICK)) for c in cases if c.flops is not None}
    for row in rows:
        step = row["layer"] == "train_step"  # one call: no forward time of its own
        columns = ["fwd+bwd ms", "cache B/sample"] + ["fwd ms"] * (not step)
        if (row["layer"], row["configuration"]) in counted:
            columns += ["GFLOP/s", "% peak"]
        else:
            assert row["GFLOP/s"] == row["% peak"] == "-"
        for column in columns:
            value = _number(row[column])
            assert math.isfinite(value) and value > 0, (row["layer"], column, row[column])
        if not step:
            assert _number(row["fwd ms"]) <= _number(row["fwd+bwd ms"])
        assert row["TorchRec fwd+bwd ms"] == row["ratio"] == "-"  # --no-torch
        assert row["met"] in ("yes", "NO", "n/a")
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.parity
def test_quick_bench_with_torchrec(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("torchrec")
    markdown = tmp_path / "bench.md"
    argv = ["--quick", "--layer", "InteractionArch", "--layer", "MLP", "--dtype", "float32"]
    assert bench_main([*argv, "--markdown", str(markdown)]) == 0
    _, rows = _markdown_rows(markdown)
    assert [r["layer"] for r in rows] == ["InteractionArch", "MLP"]
    for row in rows:
        for column in ("fwd+bwd ms", "TorchRec fwd+bwd ms", "ratio"):
            assert _number(row[column]) > 0, (column, row[column])
        ratio = _number(row["fwd+bwd ms"]) / _number(row["TorchRec fwd+bwd ms"])
        assert ratio == pytest.approx(_number(row["ratio"]), rel=0.05, abs=0.01)
        assert row["met"] in ("yes", "NO")
    numpy_gemm, torch_gemm = rows[1]["GEMM GFLOP/s NumPy / torch"].split(" / ")
    assert float(numpy_gemm) > 0 and float(torch_gemm) > 0  # the MLP's GEMMs, beside it
    text = markdown.read_text()
    assert "torch threads 1" in text and "NumPy BLAS threads 1" in text  # --quick: one thread
