"""BENCHMARKS.md is generated from the committed results by benchmarks/summarize.py."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _summarize():
    spec = importlib.util.spec_from_file_location("summarize", ROOT / "benchmarks" / "summarize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmarks_md_is_up_to_date():
    text = (ROOT / "BENCHMARKS.md").read_text()
    assert text == _summarize().render(), "BENCHMARKS.md is stale: run benchmarks/summarize.py"


def test_every_model_target_was_measured():
    """Each target row names a committed run and has a verdict, never NOT MEASURED."""
    for target, measured, verdict, run in _summarize().model_targets():
        assert verdict in {"PASS", "MISSED", "reported"}, (target, measured, verdict)
        assert (ROOT / "benchmarks" / "results" / "models" / run / "results.json").exists()
