"""``python -m refimpl bench``: the quick run as a smoke test of the table's structure.

Nothing here asserts a time: the machine is shared, so only the shape of the report is checked
(columns, one row per layer and dtype, numbers positive and finite where a layer exists).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pytest

import refimpl
from refimpl.__main__ import main as refimpl_main
from refimpl.tools import bench
from refimpl.tools.flops import FlopCount

NUMERIC = ("fwd ms", "fwd+bwd ms", "GFLOP/s", "% peak", "cache B/sample")
TORCH = ("TorchRec fwd ms", "TorchRec fwd+bwd ms", "ratio")


def _number(cell: str) -> float:
    return float(cell.rstrip("%").replace(",", ""))


def _markdown_rows(path) -> list[dict[str, str]]:
    lines = [line for line in path.read_text().splitlines() if line.startswith("| ")]
    header_at = next(i for i, line in enumerate(lines) if line.startswith("| layer |"))
    header = [c.strip() for c in lines[header_at].strip("|").split(" | ")]
    rows = []
    for line in lines[header_at + 1 :]:
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        assert len(cells) == len(header), line
        rows.append(dict(zip(header, cells, strict=True)))
    return header, rows


def _available(name: str) -> bool:
    return hasattr(refimpl, name)


def test_quick_bench_without_torch(tmp_path, capsys):
    markdown, chart = tmp_path / "bench.md", tmp_path / "bench.png"
    argv = ["bench", "--quick", "--no-torch", "--markdown", str(markdown), "--chart", str(chart)]
    assert refimpl_main(argv) == 0
    out = capsys.readouterr().out
    for column in bench.COLUMNS:
        assert column in out.splitlines()[3]  # the text table's header line
    assert "NumPy matmul peak" in out and "Cache contents" in out

    header, rows = _markdown_rows(markdown)
    assert tuple(header) == bench.COLUMNS
    cases = bench.select_cases(None)
    assert len(rows) == 2 * len(cases)  # every case, float32 then float64
    expected = [(c.name, c.config(bench.QUICK), d) for d in ("float32", "float64") for c in cases]
    assert [(r["layer"], r["configuration"], r["dtype"]) for r in rows] == expected
    for row in rows:
        if not _available(row["layer"]):
            assert row["fwd ms"] == "not available yet"
            continue
        for column in NUMERIC:
            value = _number(row[column])
            assert math.isfinite(value) and value > 0, (row["layer"], column, row[column])
        assert _number(row["fwd ms"]) <= _number(row["fwd+bwd ms"])
        assert all(row[c] == "-" for c in TORCH)  # --no-torch
        target = row["target"]
        if target != "-":
            assert target.endswith(("TorchRec", "peak"))
            assert row["met"].startswith(("yes", "NO", "n/a"))
    assert chart.stat().st_size > 10_000  # a PNG with bars in it
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parity
def test_quick_bench_with_torchrec(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("torchrec")
    markdown = tmp_path / "bench.md"
    argv = ["--quick", "--layer", "InteractionArch", "--dtype", "float32"]
    assert bench.main([*argv, "--markdown", str(markdown)]) == 0
    _, rows = _markdown_rows(markdown)
    assert len(rows) == 1
    for column in (*NUMERIC, *TORCH):
        value = _number(rows[0][column])
        assert math.isfinite(value) and value > 0, (column, rows[0][column])
    ratio = _number(rows[0]["fwd+bwd ms"]) / _number(rows[0]["TorchRec fwd+bwd ms"])
    assert ratio == pytest.approx(_number(rows[0]["ratio"]), rel=0.05, abs=0.01)
    assert rows[0]["met"].startswith(("yes", "NO"))
    assert "torch threads" in markdown.read_text()


def test_machine_report(capsys):
    assert refimpl_main(["bench", "--machine"]) == 0
    out = capsys.readouterr().out
    for key in ("CPU", "cores", "NumPy", "BLAS", "BLAS threads", "OPENBLAS_CORETYPE", "torch"):
        assert any(line.startswith(key) for line in out.splitlines()), key
    assert np.__version__ in out
    info = bench.machine_info()
    assert info["NumPy"] == np.__version__ and info["CPU"]


def _result(**kwargs):
    defaults = {"layer": "L", "config": "c", "dtype": "float32"}
    return bench.Result(**{**defaults, **kwargs})


def test_targets_are_judged_from_ratio_or_peak():
    ratio = bench.Target("ratio", 0.5)
    assert _result(target=ratio, fb_ms=4.0, torch_fb_ms=10.0).met is True
    assert _result(target=ratio, fb_ms=6.0, torch_fb_ms=10.0).met is False
    assert _result(target=ratio, fb_ms=6.0).met is None  # no TorchRec: not judged
    peak = bench.Target("peak", 0.7)
    assert _result(target=peak, peak_fraction=0.71).met is True
    assert _result(target=peak, peak_fraction=0.69).met is False
    assert _result(fb_ms=1.0).met is None  # no target
    assert str(ratio) == "<= 0.5x TorchRec" and str(peak) == ">= 70% peak"
    missed = _result(target=ratio, fb_ms=6.0, torch_fb_ms=10.0, flops=FlopCount(1, 2))
    assert "MISSED" in bench.format_targets([missed]) and "0.60x" in bench.format_targets([missed])
    cells = missed.cells()
    assert len(cells) == len(bench.COLUMNS) and cells[-1] == "NO (0.60x)"


class _Cache(NamedTuple):
    x: np.ndarray
    y: np.ndarray
    again: np.ndarray
    nested: tuple


def test_cache_description_counts_each_array_once():
    x = np.zeros((4, 3))
    y = np.zeros((2, 4, 5), np.float32)
    cache = _Cache(x, y, y.reshape(8, 5), ({"k": np.ones(4)}, None, y[1]))
    entries = bench.describe_cache(cache, batch=4, inputs=(x,))
    assert [(e.name, e.shape, e.note) for e in entries] == [
        ("x", "(B, 3)", "input"),
        ("y", "(2, B, 5)", ""),
        ("again", "(8, 5)", "view of y"),
        ("nested[0]['k']", "(B,)", ""),
        ("nested[2]", "(B, 5)", "view of y"),
    ]
    assert bench.cache_bytes(entries) == x.nbytes + y.nbytes + 32


def test_caches_hold_what_backward_needs_and_no_more():
    # The per-sample counts that BACKWARD_NEEDS states, against the bytes each cache holds.
    batch, n, num_layers, k, r = 8, 12, 3, 4, 2
    x = np.random.default_rng(0).standard_normal((batch, n))
    expected = {
        refimpl.CrossNet(n, num_layers): 2 * num_layers * n,  # x_l, c_l
        refimpl.LowRankCrossNet(n, num_layers, r): num_layers * (2 * n + r),  # x_l, V x_l, c_l
        refimpl.VectorCrossNet(n, num_layers): num_layers * (n + 1),  # x_l, s_l
        # x_l, h_l, h̃_l, m_l, p_l: no pre-activations, no (K, B, N) crosses
        refimpl.LowRankMixtureCrossNet(n, num_layers, k, r): num_layers * (2 * n + 2 * k * r + k),
        refimpl.MLP(n, [6, 5, 4]): n + 6 + 5 + 4,  # each layer's input and the output
        refimpl.DenseArch(n, [6, 5, 4]): n + 6 + 5 + 4,
        refimpl.OverArch(n, [6, 5, 1]): n + 6 + 5,  # the logits Linear reads the MLP's output
    }
    for layer, count in expected.items():
        _, cache = layer.forward(x)
        entries = bench.describe_cache(cache, batch, (x,))
        assert bench.cache_bytes(entries) == 8 * batch * count, type(layer).__name__


def test_a_layer_that_does_not_exist_yet_is_reported_not_crashed():
    def build(sizes, dtype, rng):
        return bench._layer("NoSuchLayer")(), ()

    case = bench.Case("NoSuchLayer", lambda s: "x", build, None)
    result = bench.run_case(case, bench.QUICK, np.float32, 64, 1, 0, use_torch=False)
    assert result.status == "not available yet"
    assert result.cells()[3] == "not available yet" and result.met is None


def test_a_failing_layer_is_reported_as_an_error():
    def build(sizes, dtype, rng):
        return refimpl.InteractionArch(2), (np.zeros((2, 3)), np.zeros((2, 5, 3)))  # wrong F

    case = bench.Case("InteractionArch", lambda s: "bad", build, None)
    result = bench.run_case(case, bench.QUICK, np.float32, 64, 1, 0, use_torch=False)
    assert result.status.startswith("error: ValueError: sparse")


def test_layer_selection():
    assert {c.name for c in bench.select_cases(["crossnet"])} == {"CrossNet"}
    assert len(bench.select_cases(["InteractionProjectionArch"])) == 3
    with pytest.raises(SystemExit, match="unknown layer"):
        bench.select_cases(["Transformer"])


def test_production_sizes_are_issue_5s():
    s = bench.PRODUCTION
    assert (s.batch, s.features, s.dim, s.n, s.layers) == (1024, 26, 128, 3456, 3)
    assert (s.low_rank, s.experts, s.expert_rank) == (512, 4, 128)
    assert s.seed_branches == ((256,), (512,)) and s.torchrec_branches == ((2048, 2048),) * 2
    assert s.over_arch_in == 479 and s.dense_arch == (13, (512, 256, 128))
