"""One benchmark job in a fresh process: ``python -m convattn.bench.worker JOB.json RESULT.json``.

The parent (:mod:`convattn.bench.runner`) starts one worker per (model, input size, batch, mode)
with the same thread count and allocator settings, so that models cannot disturb each other
(thread pools, allocator caches, oneDNN primitive caches, peak RSS). A job is a JSON object:

* ``{"kind": "matmul", "size", "device", "threads", "dtypes"}``: the dense matmul rate;
* ``{"kind": "model", "model", "mode": "forward" | "train", "deploy", "img_size", "batch",
  "device", "threads", "channels_last", "compile", "amp", "warmup", "repeats", "seed"}``.

The result file holds the measurements, or ``{"error": "Type: message"}`` (exit status 1).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .catalog import build_model, deploy_form, in_chans
from .flops import count_macs, count_params, count_train_macs
from .machine import matmul_rate
from .memory import peak_memory_mib, return_freed_memory_to_os
from .timing import synchronizer, time_steps

__all__ = ["amp_dtype", "main", "run_job"]


def amp_dtype(amp: str | None, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of ``--amp`` on ``device``: bf16 on CPU and fp16 on CUDA by default."""
    if amp in (None, "none"):
        return None
    if amp == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.bfloat16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Callable:
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def _forward_step(model: Callable, x: torch.Tensor, autocast: Callable) -> Callable[[], None]:
    def step() -> None:
        with torch.inference_mode(), autocast():
            model(x)

    return step


def _train_step(
    model: Callable, params: nn.Module, x: torch.Tensor, autocast: Callable
) -> tuple[Callable[[], None], torch.optim.Optimizer]:
    """Forward + backward + SGD(momentum) step on random labels (cross-entropy on logits)."""
    optimizer = torch.optim.SGD(params.parameters(), lr=1e-4, momentum=0.9)
    targets: dict[int, torch.Tensor] = {}

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            out = model(x)
        if out.ndim == 2:
            classes = out.shape[1]
            if classes not in targets:
                targets[classes] = torch.randint(0, classes, (out.shape[0],), device=out.device)
            loss = F.cross_entropy(out.float(), targets[classes])
        else:
            loss = out.float().mean()
        loss.backward()
        optimizer.step()

    return step, optimizer


def run_model_job(job: dict) -> dict:
    """Build, measure and describe one model in one mode (see the module docstring)."""
    device = torch.device(job["device"])
    torch.manual_seed(job.get("seed", 0))
    name, size, batch, mode = job["model"], job["img_size"], job["batch"], job["mode"]
    model = build_model(name).eval()
    result: dict = {"params": count_params(model)}
    if job.get("deploy"):
        model, result["deploy_method"] = deploy_form(model)
        result["params_deploy"] = count_params(model)
    model = model.to(device)
    memory_format = torch.channels_last if job.get("channels_last") else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    chans = in_chans(name)

    # MACs per image (batch 1), on the measured form; the step's MACs scale with the batch.
    result["macs_per_image"] = count_macs(model, (1, chans, size, size))
    if mode == "train":
        result["train_macs_per_image"] = count_train_macs(model, (1, chans, size, size))
    per_image = result["train_macs_per_image" if mode == "train" else "macs_per_image"]
    result["step_macs"] = per_image * batch

    runnable: Callable = torch.compile(model) if job.get("compile") else model
    dtype = amp_dtype(job.get("amp"), device)
    autocast = _autocast(device, dtype)
    x = torch.randn(batch, chans, size, size, device=device).contiguous(memory_format=memory_format)
    if mode == "train":
        model.train()
        step, optimizer = _train_step(runnable, model, x, autocast)
    else:
        step, optimizer = _forward_step(runnable, x, autocast), None

    sync = synchronizer(device)
    warmup = max(job["warmup"], 3 if job.get("compile") else 0)
    start = time.perf_counter()
    if warmup:
        step()
        sync()
    result["first_call_s"] = time.perf_counter() - start
    for _ in range(warmup - 1):
        step()
    # Timing first, with the allocator as users have it; memory afterwards (see bench.memory).
    result["timing"] = time_steps(step, 0, job["repeats"], sync)
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)  # the measured step allocates its gradients
    if device.type == "cpu":
        return_freed_memory_to_os()
    result.update(peak_memory_mib(step, device))
    result["threads"] = torch.get_num_threads()
    result["amp_dtype"] = None if dtype is None else str(dtype).removeprefix("torch.")
    return result


def run_matmul_job(job: dict) -> dict:
    """Dense matmul rate for each dtype in ``job["dtypes"]``."""
    rates = {}
    for name in job.get("dtypes", ["float32"]):
        dtype = getattr(torch, name)
        rates[name] = matmul_rate(job["size"], job["device"], dtype)
    return {"matmul": rates, "threads": torch.get_num_threads()}


def run_job(job: dict) -> dict:
    """Apply the job's thread count and run it (the worker process's whole life)."""
    torch.set_num_threads(int(job["threads"]))
    with contextlib.suppress(RuntimeError):  # only settable before any inter-op work
        torch.set_num_interop_threads(1)
    if job["kind"] == "matmul":
        return run_matmul_job(job)
    return run_model_job(job)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m convattn.bench.worker JOB.json RESULT.json", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[0]).read_text())
    try:
        result, status = run_job(job), 0
    except Exception as exc:  # reported to the parent as a row, not as a crash
        message = " ".join(str(exc).split())[:500]
        result = {"error": f"{type(exc).__name__}: {message}", "traceback": traceback.format_exc()}
        status = 1
    Path(argv[1]).write_text(json.dumps(result))
    return status


if __name__ == "__main__":
    sys.exit(main())
