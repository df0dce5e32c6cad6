"""Smoke test of benchmarks/bench_ops.py: --quick runs end to end and writes the documented files."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATS = {"median_ms", "min_ms", "max_ms", "q1_ms", "q3_ms", "repeats"}


def test_quick_mode_writes_json_markdown_and_plots(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_ops.py"), "--quick", "--threads", "1"]
    result = subprocess.run(
        [*cmd, "--out", str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "ops.json").read_text())

    env = report["environment"]
    assert {"torch", "threads", "cpu_model", "date", "load_average_start"} <= env.keys()
    assert env["threads"] == 1
    # The baselines owned by this project always exist; other operators may be skipped, with a reason.
    usable = [name for name, reason in report["availability"].items() if reason is None]
    assert {"conv3x3", "global_attention", "involution", "involution_ref"} <= set(usable)
    for reason in report["availability"].values():
        assert reason is None or (isinstance(reason, str) and reason)

    measured = {row["op"] for row in report["stage"]}
    assert measured == set(usable)
    for row in report["stage"]:
        assert row["forward"].keys() >= STATS
        assert row["forward"]["median_ms"] > 0
        if row["forward_backward"] is not None:
            assert row["forward_backward"].keys() >= STATS
        assert isinstance(row["memory_forward_mib"], float), row
        if not row["op"].endswith("_ref"):
            assert row["params"] > 0 and row["macs"] > 0
        else:
            assert row["max_rel_diff_vs_op"] < 1e-3, row  # same weights, same maths

    scaling = report["scaling"]
    assert scaling["sizes"] == sorted(scaling["sizes"])
    assert "global_attention" in scaling["exponents"]
    assert all(isinstance(v, float) for v in scaling["exponents"].values())

    pairs = {(r["a"], r["b"]) for r in report["paired"]}
    assert pairs == {("xvolution", "xvolution_deploy"), ("conv3x3", "xvolution_deploy")}
    for row in report["paired"]:
        assert row["rounds"] == 2
        assert row["a_forward"]["repeats"] == row["b_forward"]["repeats"] == 2
        assert row["a_forward"].keys() >= STATS and row["b_forward"].keys() >= STATS
        assert row["ratio_q1"] <= row["ratio_median"] <= row["ratio_q3"]
        assert 0 <= row["b_faster_rounds"] <= row["rounds"]

    assert len(report["targets"]) == 7
    assert all(t["status"] == "N/A" for t in report["targets"])  # quick mode does not judge
    md = (tmp_path / "ops.md").read_text()
    assert "## Targets" in md and "Resolution scaling" in md and "## Paired forward" in md
    assert {p.name for p in tmp_path.glob("ops_*.png")} == {"ops_scaling.png", "ops_stages.png"}
