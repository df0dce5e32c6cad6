"""The worker's measurements (run in-process here), deploy form, timing, memory and matmul rate."""

import json
import sys
import types

import pytest
import torch
from torch import nn

import convattn
from convattn.bench import count_macs, deploy_form, environment, matmul_rate
from convattn.bench.machine import matmul_as_conv1x1
from convattn.bench.memory import peak_memory_mib
from convattn.bench.timing import summarize, time_steps
from convattn.bench.worker import amp_dtype, main, run_model_job

from helpers import randomize_bn


@pytest.fixture(autouse=True)
def _one_thread():
    # Nano models at batch 2: one thread is faster, and immune to OpenMP stalls on a busy machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _job(**kw):
    job = {
        "kind": "model",
        "model": "resnet_nano",
        "mode": "forward",
        "deploy": False,
        "img_size": 32,
        "batch": 2,
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "channels_last": False,
        "compile": False,
        "amp": None,
        "warmup": 1,
        "repeats": 2,
        "seed": 0,
    }
    job.update(kw)
    return job


def test_forward_job_measures_macs_timing_and_memory():
    result = run_model_job(_job())
    model = convattn.create_model("resnet_nano")
    assert result["params"] == sum(p.numel() for p in model.parameters())
    assert result["macs_per_image"] == count_macs(model, (1, 3, 32, 32))
    assert result["step_macs"] == 2 * result["macs_per_image"]
    timing = result["timing"]
    assert timing["repeats"] == 2
    assert 0 < timing["min_ms"] <= timing["median_ms"] <= timing["max_ms"]
    assert result["peak_memory_mib"] >= 0 and "memory_method" in result
    assert result["amp_dtype"] is None and "deploy_method" not in result


def test_train_job_counts_forward_and_backward_macs():
    result = run_model_job(_job(mode="train", channels_last=True))
    ratio = result["train_macs_per_image"] / result["macs_per_image"]
    assert 2.0 < ratio < 3.0  # backward ~2x forward, minus the stem's unneeded input gradient
    assert result["step_macs"] == 2 * result["train_macs_per_image"]
    assert result["timing"]["median_ms"] > 0


def test_deploy_job_and_amp_record_how_they_ran():
    result = run_model_job(_job(model="xvolution_resnet_nano", deploy=True, amp="bf16"))
    assert result["deploy_method"]
    assert result["amp_dtype"] == "bfloat16"


def test_deploy_form_keeps_the_function():
    torch.manual_seed(0)
    model = convattn.create_model("xvolution_resnet_nano").double().eval()
    randomize_bn(model)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        before = model(x)
        deployed, method = deploy_form(model)
        after = deployed(x)
    assert method
    torch.testing.assert_close(after, before, rtol=1e-9, atol=1e-9)


class _Leaf(nn.Module):
    def __init__(self, log):
        super().__init__()
        self.log = log

    def reparameterize(self):
        self.log.append("leaf")


class _Parent(nn.Module):
    def __init__(self, log):
        super().__init__()
        self.log, self.child = log, _Leaf(log)

    def reparameterize(self):
        self.log.append("parent")


def test_deploy_form_fallback_calls_outermost_reparameterize(monkeypatch):
    monkeypatch.setitem(sys.modules, "convattn.deploy.reparam", None)  # force the fallback
    log = []
    model = nn.Sequential(_Parent(log), _Leaf(log), nn.Linear(2, 2))
    out, method = deploy_form(model)
    assert out is model
    assert sorted(log) == ["leaf", "parent"]  # the parent's child is left to the parent
    assert method == "reparameterize() on 2 module(s)"


def test_deploy_form_prefers_the_deploy_package(monkeypatch):
    replacement, calls = nn.Identity(), []

    def reparameterize_model(model, inplace=False):
        calls.append(inplace)
        return replacement

    fake = types.SimpleNamespace(reparameterize_model=reparameterize_model)
    monkeypatch.setitem(sys.modules, "convattn.deploy.reparam", fake)
    out, method = deploy_form(nn.Linear(2, 2))
    assert out is replacement and method == "reparameterize_model"
    assert calls == [True]  # in place: no deep copy of the weights in the worker
    fake.reparameterize_model = lambda model: replacement  # an older signature still works
    assert deploy_form(nn.Linear(2, 2))[0] is replacement


def test_amp_dtype_defaults_per_device():
    assert amp_dtype(None, "cpu") is None
    assert amp_dtype("auto", "cpu") is torch.bfloat16
    assert amp_dtype("auto", "cuda") is torch.float16
    assert amp_dtype("fp16", "cpu") is torch.float16


def test_worker_main_reports_errors_as_json(tmp_path):
    job, result = tmp_path / "job.json", tmp_path / "result.json"
    job.write_text(json.dumps(_job(model="no_such_model")))
    assert main([str(job), str(result)]) == 1
    out = json.loads(result.read_text())
    assert out["error"].startswith("ValueError: Unknown model 'no_such_model'")
    assert main(["only-one-argument"]) == 2


def test_summarize_and_time_steps():
    stats = summarize([0.004, 0.001, 0.003, 0.002, 0.005])
    assert stats["median_ms"] == pytest.approx(3.0)
    assert (stats["q1_ms"], stats["q3_ms"]) == (pytest.approx(2.0), pytest.approx(4.0))
    assert (stats["min_ms"], stats["max_ms"], stats["repeats"]) == (1.0, 5.0, 5)
    assert summarize([0.002])["iqr_ms"] == 0
    calls = []
    stats = time_steps(lambda: calls.append(1), warmup=3, repeats=4)
    assert len(calls) == 7 and stats["repeats"] == 4
    with pytest.raises(ValueError, match="repeats"):
        time_steps(lambda: None, 0, 0)


def test_peak_memory_sees_a_64_mib_temporary():
    def step():
        buf = torch.ones(16 * 2**20)  # 64 MiB, touched
        return float(buf[-1])

    measured = peak_memory_mib(step, "cpu")["peak_memory_mib"]
    assert 60 <= measured <= 200


def test_matmul_rate_and_environment():
    rate = matmul_rate(64, repeats=3, warmup=1)
    assert rate["gflops_per_s"] == pytest.approx(2 * rate["gmacs_per_s"])
    assert rate["gmacs_per_s"] == pytest.approx(64**3 / (rate["median_ms"] / 1e3) / 1e9)
    by_method = rate["gmacs_per_s_by_method"]
    assert set(by_method) == {"mm", "conv1x1"} and rate["method"] in by_method
    assert rate["gmacs_per_s"] == max(by_method.values())
    env = environment(threads=1)
    assert {"torch", "threads", "cpu_model", "date", "git", "device"} <= env.keys()


def test_the_conv1x1_yardstick_computes_the_matmul():
    a, b = torch.randn(5, 3, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    pixels, weight = matmul_as_conv1x1(a, b)
    out = torch.nn.functional.conv2d(pixels, weight)
    torch.testing.assert_close(out.permute(0, 2, 3, 1).reshape(5, 4), a @ b)


@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_matmul_rate_rejects_a_bad_size(size):
    with pytest.raises(ValueError, match="'size' must be a positive int"):
        matmul_rate(size)
