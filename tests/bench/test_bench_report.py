"""Report helpers: the fitted exponent, derived rates, and the written files (synthetic data)."""

import csv
import json
import math
import random

import pytest

from convattn.bench import fit_exponent, scaling_exponents, write_outputs
from convattn.bench.report import CSV_COLUMNS, derive, render_markdown
from convattn.bench.runner import machine_warnings
from convattn.bench.timing import summarize


@pytest.mark.parametrize("exponent", [0.5, 1.0, 1.37, 2.0])
def test_fit_exponent_recovers_a_power_law(exponent):
    x = [224**2, 320**2, 448**2, 640**2]
    y = [3.5 * v**exponent for v in x]
    assert fit_exponent(x, y) == pytest.approx(exponent, abs=1e-12)


def test_fit_exponent_is_least_squares_under_noise():
    rng = random.Random(0)
    x = [2.0**i for i in range(1, 12)]
    y = [7 * v**1.3 * math.exp(rng.gauss(0, 0.05)) for v in x]
    # Closed-form least squares on the logs, computed independently.
    lx, ly = [math.log(v) for v in x], [math.log(v) for v in y]
    n = len(x)
    slope = (n * sum(a * b for a, b in zip(lx, ly)) - sum(lx) * sum(ly)) / (
        n * sum(a * a for a in lx) - sum(lx) ** 2
    )
    assert fit_exponent(x, y) == pytest.approx(slope, rel=1e-9)
    assert fit_exponent(x, y) == pytest.approx(1.3, abs=0.05)


@pytest.mark.parametrize(
    "x, y, match",
    [([1, 2], [1], "length"), ([4, 4], [1, 2], "two distinct"), ([0, 2], [1, 2], "positive")],
)
def test_fit_exponent_rejects_unusable_data(x, y, match):
    with pytest.raises(ValueError, match=match):
        fit_exponent(x, y)


def _row(model, size, ms=1.0, batch=2, mode="forward", deploy=False, macs=1e9, error=None):
    row = {
        "model": model,
        "mode": mode,
        "deploy": deploy,
        "img_size": size,
        "batch": batch,
        "device": "cpu",
        "threads": 1,
        "channels_last": False,
        "compile": False,
        "amp_dtype": None,
        "params": 1_000_000,
    }
    if error:
        return {**row, "error": error}
    row.update(
        macs_per_image=macs,
        step_macs=macs * batch,
        timing=summarize([ms / 1e3, ms / 1e3]),
        peak_memory_mib=12.5,
        first_call_s=0.1,
    )
    return derive(row, {"float32": 100.0})


def test_derive_throughput_rate_and_fraction_of_peak():
    row = _row("m", 224, ms=40.0, batch=8, macs=2e9)
    assert row["img_per_s"] == pytest.approx(8 / 0.04)
    assert row["achieved_gmacs_per_s"] == pytest.approx(16 / 0.04)
    assert row["fraction_of_peak"] == pytest.approx(400 / 100.0)
    assert derive(dict(row), None)["fraction_of_peak"] is None


def test_scaling_exponents_group_by_model_mode_form_and_batch():
    rows = [
        _row("a", 32, 1.0),
        _row("a", 64, 4.0),
        _row("a", 128, 16.0),
        _row("a", 32, 2.0, mode="train"),
        _row("a", 64, 16.0, mode="train"),
        _row("b", 32, 1.0),  # one size only: no exponent
        _row("c", 32, 1.0),
        _row("c", 64, error="ValueError: too small"),
    ]
    found = {(e["model"], e["mode"]): e for e in scaling_exponents(rows)}
    assert set(found) == {("a", "forward"), ("a", "train")}
    assert found["a", "forward"]["exponent"] == pytest.approx(1.0)  # time ~ pixels
    assert found["a", "train"]["exponent"] == pytest.approx(1.5)
    assert found["a", "forward"]["img_sizes"] == [32, 64, 128]


def _report(rows):
    env = {
        "date": "2026-01-01T00:00:00+00:00",
        "torch": "2.x",
        "device": "cpu",
        "cpu_model": "test cpu",
        "cpu_count": 2,
        "cpu_capability": "AVX2",
        "threads": 1,
        "git": {"commit": "0123456789abcdef", "dirty": False},
        "load_average_start": [0.1, 0.1, 0.1],
        "load_average_end": [0.2, 0.1, 0.1],
    }
    rate = {"size": 64, "median_ms": 1.0, "gflops_per_s": 200.0, "gmacs_per_s": 100.0}
    machine = {
        "matmul_start": {"matmul": {"float32": rate}},
        "matmul_end": {"matmul": {"float32": rate}},
        "peak": {"float32": 100.0},
    }
    config = {"warmup": 1, "repeats": 2, "channels_last": False, "compile": False, "amp": None}
    errors = [{"job": "c 64px", "error": r["error"]} for r in rows if r.get("error")]
    return {
        "environment": env,
        "config": config,
        "machine": machine,
        "rows": rows,
        "errors": errors,
        "warnings": [],
    }


def test_write_outputs_from_synthetic_report(tmp_path):
    rows = [_row("a", 32, 1.0), _row("a", 64, 4.0), _row("c", 64, error="ValueError: x | y")]
    paths = write_outputs(_report(rows), tmp_path)
    names = {p.name for p in paths}
    assert names == {
        "results.json",
        "results.csv",
        "results.md",
        "latency_vs_resolution.png",
        "latency_vs_macs.png",
    }
    for p in paths:
        assert p.stat().st_size > 0
    with open(tmp_path / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == CSV_COLUMNS
    assert [r["model"] for r in table] == ["a", "a", "c"]
    assert float(table[1]["median_ms"]) == pytest.approx(4.0)
    assert table[2]["error"] == "ValueError: x | y"
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["scaling"][0]["exponent"] == pytest.approx(1.0)

    md = (tmp_path / "results.md").read_text()
    table_lines = [line for line in md.splitlines() if line.startswith("| `")]
    # Every results row has as many cells as the header, the error row included.
    header = next(line for line in md.splitlines() if line.startswith("| model | mode | input"))
    assert {line.count("|") for line in table_lines[:3]} == {header.count("|")}
    assert "| `a` | forward | 2 | 1.00 | 4.00 | 1.000 |" in md


def test_markdown_without_scaling_or_errors_has_no_such_sections():
    md = render_markdown(_report([_row("a", 32, 1.0)]))
    assert "Resolution scaling" not in md and "## Errors" not in md
    assert "100.0 GMAC/s" in md


def test_machine_warnings_flag_load_and_drift():
    env = {"device": "cpu", "cpu_count": 2, "load_average_start": [3.0], "load_average_end": [0.1]}
    fast = {"matmul": {"float32": {"gmacs_per_s": 100.0}}}
    slow = {"matmul": {"float32": {"gmacs_per_s": 50.0}}}
    warnings = machine_warnings(env, {"matmul_start": fast, "matmul_end": slow}, threads=2)
    assert len(warnings) == 2
    assert "load average 3.00 at the start" in warnings[0]
    assert "changed by 50%" in warnings[1]
    quiet = {**env, "load_average_start": [0.2]}
    assert machine_warnings(quiet, {"matmul_start": fast, "matmul_end": fast}, threads=2) == []


def test_load_at_the_end_discounts_the_benchmarks_own_threads():
    fast = {"matmul": {"float32": {"gmacs_per_s": 100.0}}}
    machine = {"matmul_start": fast, "matmul_end": fast}
    env = {"device": "cpu", "cpu_count": 2, "load_average_start": [0.2], "load_average_end": [1.9]}
    assert machine_warnings(env, machine, threads=2) == []  # its own 2 threads
    busy = {**env, "load_average_end": [3.5]}
    (warning,) = machine_warnings(busy, machine, threads=2)
    assert "at the end" in warning and "2 of it the benchmark's own threads" in warning
    assert machine_warnings({**env, "load_average_end": [2.5]}, machine, threads=1)
