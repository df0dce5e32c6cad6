"""Smoke test of benchmarks/bench_pairs.py: a tiny interleaved A/B run writes its files."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_pairs.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300, cwd=ROOT
    )


def test_tiny_pair_writes_ratio_json_and_table(tmp_path):
    pair = "acmix_san_nano:san_nano"
    result = _run("--pairs", pair, "--img-size", "32", "--batch-size", "2", "--rounds", "2",
                  "--threads", "1", "--out", str(tmp_path))  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    (row,) = report["rows"]
    assert (row["mixed"], row["base"], row["rounds"]) == ("acmix_san_nano", "san_nano", 2)
    assert row["ratio_iqr"][0] <= row["ratio_median"] <= row["ratio_iqr"][1]
    assert row["base_ms"] > 0 and row["mixed_ms"] > 0
    assert "| `acmix_san_nano` / `san_nano` |" in (tmp_path / "results.md").read_text()


def test_bad_pair_and_rounds_are_named(tmp_path):
    bad = _run("--pairs", "san10", "--out", str(tmp_path))
    assert bad.returncode == 2 and "MIXED:BASE" in bad.stderr
    few = _run("--rounds", "1", "--out", str(tmp_path))
    assert few.returncode == 2 and "--rounds must be at least 2" in few.stderr


def test_unknown_model_and_bad_sizes_are_named_before_any_work(tmp_path):
    unknown = _run("--pairs", "acmix_san10:san_100", "--out", str(tmp_path))
    assert unknown.returncode == 2 and "unknown model(s) ['san_100']" in unknown.stderr
    zero = _run("--batch-size", "0", "--out", str(tmp_path))
    assert zero.returncode == 2 and "--batch-size must be a positive integer" in zero.stderr
    assert not (tmp_path / "results.json").exists()
