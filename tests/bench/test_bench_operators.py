"""The operator-benchmark library: shared timing loops, naive baselines, report rendering."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from convattn._numerics import max_relative_deviation
from convattn.bench import baselines
from convattn.bench import operators as ops
from convattn.bench.timing import interleaved_samples, time_steps
from convattn.layers import ACmix, GlobalSelfAttention2d, Involution2d

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "layers"))  # the tests' own ACmix oracle

import ref_acmix  # noqa: E402


class Clock:
    """A fake ``time.perf_counter`` whose step advances it by a scripted duration per call."""

    def __init__(self, durations):
        self.now, self.durations, self.calls = 0.0, list(durations), 0

    def perf_counter(self):
        return self.now

    def step(self):
        self.now += self.durations[min(self.calls, len(self.durations) - 1)]
        self.calls += 1


def test_budgeted_timing_cuts_repeats_to_the_budget(monkeypatch):
    clock = Clock([0.125])
    monkeypatch.setattr("convattn.bench.timing.time.perf_counter", clock.perf_counter)
    stats = time_steps(clock.step, warmup=3, repeats=50, budget_s=1.0)
    # The first call is one of the 3 warm-ups; 1.0 s of budget holds 8 calls of 0.125 s.
    assert stats["repeats"] == 8 and clock.calls == 1 + 2 + 8
    assert stats["median_ms"] == pytest.approx(125.0)


def test_budgeted_timing_reports_a_slow_first_call_alone(monkeypatch):
    clock = Clock([5.0, 0.1])
    monkeypatch.setattr("convattn.bench.timing.time.perf_counter", clock.perf_counter)
    stats = time_steps(clock.step, warmup=2, repeats=5, budget_s=4.0)
    assert stats["first_call_only"] is True and stats["repeats"] == 1 and clock.calls == 1
    assert stats["median_ms"] == pytest.approx(5000.0)


def test_budgeted_timing_with_no_budget_times_once_after_warmup(monkeypatch):
    clock = Clock([0.2])
    monkeypatch.setattr("convattn.bench.timing.time.perf_counter", clock.perf_counter)
    stats = time_steps(clock.step, warmup=2, repeats=5, budget_s=0.0)  # the --quick setting
    assert stats["repeats"] == 1 and "first_call_only" not in stats and clock.calls == 3


def test_interleaved_rounds_alternate_the_order():
    order = []
    steps = {name: (lambda name=name: order.append(name)) for name in "abc"}
    times = interleaved_samples(steps, rounds=3, warmup=1)
    assert order == list("abc") + list("abc") + list("cba") + list("abc")
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    with pytest.raises(ValueError, match="rounds"):
        interleaved_samples(steps, rounds=0)


def test_max_relative_deviation():
    expected = torch.tensor([1.0, -4.0, 2.0])
    assert max_relative_deviation(expected + torch.tensor([0.0, 0.0, 0.5]), expected) == 0.125
    assert max_relative_deviation(torch.zeros(2), torch.zeros(2)) == 0.0
    half = torch.tensor([1.0, 2.0], dtype=torch.float16)
    assert max_relative_deviation(half, half.double() + 1e-3) == pytest.approx(5e-4, rel=1e-3)


@pytest.mark.parametrize(
    ("stride", "size"), [(1, (12, 12)), (2, (12, 10)), (1, (3, 5)), (2, (7, 9))]
)
def test_acmix_baseline_computes_the_module_and_the_tests_oracle(stride, size):
    torch.manual_seed(0)
    state = ref_acmix.official_module_state_dict(16, 16, 4, dtype=torch.float64)
    module = ACmix(16, 16, stride).double().eval()
    module.load_state_dict(dict(state))
    x = torch.randn(2, 16, *size, dtype=torch.float64)
    with torch.no_grad():
        naive = baselines.acmix_unfold(module, x)
        assert max_relative_deviation(naive, module(x)) < 1e-10
        if size[0] % stride == 0 and size[1] % stride == 0 and min(size) > 3:
            oracle = ref_acmix.acmix_reference(x, state, 4, 7, stride)
            assert max_relative_deviation(naive, oracle) < 1e-10


def test_attention_and_involution_baselines_compute_their_modules():
    torch.manual_seed(0)
    x = torch.randn(2, 32, 9, 7)
    for module, naive in [
        (GlobalSelfAttention2d(32, 48, 2), baselines.global_attention_math),
        (Involution2d(32, 48, 2), baselines.involution_unfold),
    ]:
        with torch.no_grad():
            assert max_relative_deviation(naive(module.eval(), x), module(x)) < 1e-5


def test_render_reproduces_the_committed_operator_report(tmp_path):
    """``--render`` of the committed ops.json gives the committed ops.md, byte for byte."""
    shutil.copy(ROOT / "benchmarks" / "results" / "ops.json", tmp_path / "ops.json")
    parser = ops.add_operator_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--render", str(tmp_path / "ops.json"), "--no-plots"])
    committed = json.loads((tmp_path / "ops.json").read_text())
    report = ops.run_operator_benchmark(args, targets=None, results=tmp_path)
    assert report["targets"] == committed["targets"]
    expected = (ROOT / "benchmarks" / "results" / "ops.md").read_text()
    assert (tmp_path / "ops.md").read_text() == expected


def test_bad_options_are_named():
    """Rejected before anything global changes (the thread count stays the test process's)."""
    threads = torch.get_num_threads()
    parser = ops.add_operator_arguments(argparse.ArgumentParser())
    with pytest.raises(ValueError, match="--paired-rounds"):
        ops.run_operator_benchmark(parser.parse_args(["--paired-rounds", "0"]), None, Path("."))
    with pytest.raises(ValueError, match="--ops: unknown operator names \\['nope'\\]"):
        ops.run_operator_benchmark(parser.parse_args(["--ops", "nope"]), None, Path("."))
    assert torch.get_num_threads() == threads
