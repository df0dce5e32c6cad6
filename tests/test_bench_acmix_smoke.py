"""Smoke test of benchmarks/bench_acmix.py: --quick runs end to end and writes its files."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_mode_writes_targets_profiles_and_plot(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_acmix.py"), "--quick"]
    result = subprocess.run(
        [*cmd, "--threads", "1", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["environment"]["threads"] == 1
    assert len(report["targets"]) == 7
    assert all(isinstance(t["pass"], bool) and t["value"] for t in report["targets"])
    assert report["module"]["max_rel_difference"] < 1e-4  # the fast path matches the oracle
    assert all(p["total_ms"] > 0 and p["top"] for p in report["profiles"].values())
    assert "| target | measured | goal | verdict |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "tiles.png").stat().st_size > 0
