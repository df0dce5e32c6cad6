"""The machine a benchmark ran on: environment record and dense matmul rate.

The matmul rate (a square fp32 GEMM, the best case for the BLAS/oneDNN/cuBLAS kernels) is the
yardstick for each model's achieved MAC rate: "fraction of peak" = model MAC/s / matmul MAC/s.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

import torch
import torch.nn.functional as F

from .timing import synchronizer, time_steps

__all__ = ["cpu_model", "environment", "git_commit", "matmul_rate"]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git(where: Path, *args: str) -> str:
    # --no-optional-locks: never take the index lock, so a concurrent `git add` cannot fail.
    cmd = ["git", "--no-optional-locks", "-C", str(where), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=True).stdout


def git_commit(path: str | Path | None = None) -> dict[str, object] | None:
    """``{"commit", "dirty"}`` of the git checkout holding ``path`` (this package), or None."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        commit = _git(where, "rev-parse", "HEAD").strip()
        dirty = bool(_git(where, "status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty} if commit else None


def environment(threads: int, device: str = "cpu") -> dict[str, object]:
    """What a result depends on: versions, threads, CPU/GPU, date, git commit, load average."""
    env: dict[str, object] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": threads,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "mkl": torch.backends.mkl.is_available(),
        "device": device,
        "git": git_commit(),
    }
    if hasattr(os, "getloadavg"):
        env["load_average_start"] = list(os.getloadavg())
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        index = torch.device(device).index or 0
        env["gpu"] = torch.cuda.get_device_name(index)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        env["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    return env


def matmul_as_conv1x1(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Operands of ``conv2d(pixels, weight)`` computing ``a @ b`` (rows of ``a`` as the pixels of a
    channels-last 1 x M map, its columns as channels); the output, permuted to NHWC, is ``a @ b``.
    """
    m, k = a.shape
    pixels = a.view(1, 1, m, k).permute(0, 3, 1, 2)  # (1, K, 1, M), channels contiguous
    return pixels, b.t().contiguous().view(b.shape[1], k, 1, 1)


@torch.inference_mode()
def matmul_rate(
    size: int = 2048,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    warmup: int = 3,
    repeats: int = 10,
) -> dict[str, object]:
    """Dense ``size x size`` matmul rate on ``device``: median time, GFLOP/s and GMAC/s.

    On the CPU the same product is also timed as a channels-last 1x1 convolution, which PyTorch
    runs through oneDNN, and the faster of the two is the rate: ``torch.mm`` goes to MKL, which
    on some CPUs (AMD's among them) takes a path about half as fast as oneDNN's, so it would
    understate what the hardware does for convolutions. Both rates are reported.

    Args:
        size: matrix side; the product costs ``size**3`` MACs.
        device: where to run (the thread count is the caller's).
        dtype: element type (float32 unless autocast models are compared).
        warmup: discarded calls.
        repeats: timed calls.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"matmul_rate: 'size' must be a positive int, got {size!r}")
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    sync = synchronizer(device)
    macs = float(size) ** 3
    candidates = {"mm": time_steps(lambda: torch.mm(a, b, out=out), warmup, repeats, sync)}
    if torch.device(device).type == "cpu":
        pixels, weight = matmul_as_conv1x1(a, b)
        candidates["conv1x1"] = time_steps(lambda: F.conv2d(pixels, weight), warmup, repeats, sync)
    rates = {name: macs / (st["median_ms"] / 1e3) / 1e9 for name, st in candidates.items()}
    best = max(rates, key=rates.get)
    return {
        "size": size,
        "dtype": str(dtype).removeprefix("torch."),
        "device": str(device),
        **candidates[best],
        "method": best,
        "gmacs_per_s_by_method": rates,
        "gmacs_per_s": rates[best],
        "gflops_per_s": 2 * rates[best],
    }
