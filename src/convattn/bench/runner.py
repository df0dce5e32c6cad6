"""The model benchmark run: validate the request, run one fresh worker process per job, collect.

Every measurement runs in its own ``python -m convattn.bench.worker`` process with the same intra-op
thread count (also exported as ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``), so models do not disturb
each other and the CPU peak-RSS baseline is clean (the worker times first with the default
allocator, then measures memory with glibc's mmap threshold lowered). The dense
matmul rate is measured by a worker at the start and at the end of the run (its drift shows how
steady the machine was); each model's achieved MAC rate is reported as a fraction of the better of
the two.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .catalog import build_model, default_img_size, in_chans
from .machine import environment
from .worker import amp_dtype

__all__ = [
    "BenchConfig",
    "job_label",
    "machine_warnings",
    "plan_jobs",
    "run_benchmark",
    "validate_config",
]


@dataclass
class BenchConfig:
    """What to measure and how (see ``convattn bench --help`` for the meaning of each field)."""

    models: list[str]
    img_sizes: list[int] | None = None  # None: each model's default input size
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    threads: int | None = None  # None: this process's torch.get_num_threads()
    device: str = "cpu"
    deploy: str = "off"  # "off", "on" (deploy form only) or "both"
    channels_last: bool = False
    compile: bool = False
    amp: str | None = None  # None, "auto", "bf16" or "fp16"
    train: bool = False
    warmup: int = 10
    repeats: int = 10
    matmul_size: int = 2048
    timeout_s: float | None = 3600.0
    progress: bool = True


def _positive(values: Sequence[int], option: str) -> list[int]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{option}: expected positive integers, got {v!r}")
        out.append(v)
    if not out:
        raise ValueError(f"{option}: give at least one value")
    return out


def validate_config(cfg: BenchConfig) -> BenchConfig:
    """Check every option and each model's acceptance of each input size; fill in defaults.

    Input sizes are tried on the meta device (no memory, no compute) so that a size a model cannot
    take (e.g. GLNet below 32x32) fails before any measurement, with the model's own message.

    Raises:
        ValueError: a one-line message naming the option (and model) at fault.
    """
    if cfg.img_sizes is not None:
        cfg.img_sizes = _positive(cfg.img_sizes, "--img-size/--resolutions")
    cfg.batch_sizes = _positive(cfg.batch_sizes, "--batch-size")
    _positive([cfg.repeats], "--repeats")
    _positive([cfg.matmul_size], "--matmul-size")
    if isinstance(cfg.warmup, bool) or not isinstance(cfg.warmup, int) or cfg.warmup < 0:
        raise ValueError(f"--warmup: expected a non-negative integer, got {cfg.warmup!r}")
    if cfg.threads is None:
        cfg.threads = torch.get_num_threads()
    _positive([cfg.threads], "--threads")
    if cfg.deploy not in ("off", "on", "both"):
        raise ValueError(f"--deploy: expected 'on' or 'both', got {cfg.deploy!r}")
    if cfg.amp not in (None, "none", "auto", "bf16", "fp16"):
        raise ValueError(f"--amp: expected bf16 or fp16, got {cfg.amp!r}")
    _check_device(cfg.device)
    for name in cfg.models:
        _check_sizes(name, cfg.img_sizes or [default_img_size(name)])
    return cfg


def _check_device(device: str) -> None:
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"--device: expected cpu, cuda or cuda:N, got {device!r}") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {device}: CUDA is not available (torch {torch.__version__}, "
                "no GPU or a CPU-only build); use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible"
            )
    elif dev.type != "cpu":
        raise ValueError(f"--device: expected cpu, cuda or cuda:N, got {device!r}")


def _check_sizes(name: str, sizes: Sequence[int]) -> None:
    """Raise the model's own ValueError (reworded) for an input size it cannot take."""
    try:
        with torch.device("meta"):
            model = build_model(name).eval()
    except Exception:  # a model that cannot be built on meta is checked by its worker instead
        return
    chans = in_chans(name)
    for size in sizes:
        try:
            with torch.no_grad():
                model(torch.empty(1, chans, size, size, device="meta"))
        except ValueError as err:
            raise ValueError(f"model '{name}' cannot run at {size}x{size}: {err}") from err
        except Exception:  # e.g. an op without a meta kernel: leave it to the worker
            return


def plan_jobs(cfg: BenchConfig) -> list[dict]:
    """One job per (model, input size, batch, mode), in that nesting order."""
    modes = []
    if cfg.deploy in ("off", "both"):
        modes.append(("forward", False))
    if cfg.deploy in ("on", "both"):
        modes.append(("forward", True))
    if cfg.train:
        modes.append(("train", False))
    jobs = []
    for name in cfg.models:
        for size in cfg.img_sizes or [default_img_size(name)]:
            for batch in cfg.batch_sizes:
                for mode, deploy in modes:
                    jobs.append(
                        {
                            "kind": "model",
                            "model": name,
                            "mode": mode,
                            "deploy": deploy,
                            "img_size": size,
                            "batch": batch,
                            "device": cfg.device,
                            "threads": cfg.threads,
                            "channels_last": cfg.channels_last,
                            "compile": cfg.compile,
                            "amp": cfg.amp,
                            "warmup": cfg.warmup,
                            "repeats": cfg.repeats,
                            "seed": 0,
                        }
                    )
    return jobs


def job_label(job: dict) -> str:
    """Short human-readable name of a job, e.g. ``resnet50 forward(deploy) 224px b8``."""
    if job["kind"] == "matmul":
        return f"matmul {job['size']}x{job['size']}"
    mode = "train step" if job["mode"] == "train" else "forward"
    if job.get("deploy"):
        mode += " (deploy)"
    return f"{job['model']} {mode} {job['img_size']}px b{job['batch']}"


def _worker_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
    )
    src = str(Path(__file__).resolve().parents[2])  # so the worker imports this very package
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def run_worker(job: dict, workdir: Path, threads: int, timeout_s: float | None) -> dict:
    """Run ``job`` in a fresh worker process; its result, or ``{"error": ...}``."""
    index = len(list(workdir.glob("job_*.json")))
    job_path, result_path = workdir / f"job_{index}.json", workdir / f"result_{index}.json"
    job_path.write_text(json.dumps(job))
    cmd = [sys.executable, "-m", "convattn.bench.worker", str(job_path), str(result_path)]
    try:
        proc = subprocess.run(
            cmd, env=_worker_env(threads), capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        return {"error": f"TimeoutExpired: the worker ran longer than {timeout_s} s"}
    if result_path.is_file():
        return json.loads(result_path.read_text())
    tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or [""]
    how = (
        f"killed by signal {-proc.returncode} (out of memory?)"
        if proc.returncode < 0
        else f"exited with status {proc.returncode}"
    )
    return {"error": f"WorkerDied: the worker {how}: {tail[0][:300]}"}


def _matmul_job(cfg: BenchConfig) -> dict:
    dtypes = ["float32"]
    low = amp_dtype(cfg.amp, cfg.device)
    if low is not None:
        dtypes.append(str(low).removeprefix("torch."))
    return {
        "kind": "matmul",
        "size": cfg.matmul_size,
        "device": cfg.device,
        "threads": cfg.threads,
        "dtypes": dtypes,
    }


def _summary_line(row: dict) -> str:
    if row.get("error"):
        return f"  {job_label(row):<50} ERROR {row['error']}"
    t = row["timing"]
    return (
        f"  {job_label(row):<50} {t['median_ms']:10.2f} ms "
        f"[IQR {t['q1_ms']:.2f}-{t['q3_ms']:.2f}]  {row['img_per_s']:8.2f} img/s  "
        f"{row['peak_memory_mib']:8.1f} MiB"
    )


def run_benchmark(cfg: BenchConfig) -> dict:
    """Validate ``cfg``, run every job in a fresh process, and return the full report.

    Returns:
        ``{"environment", "config", "machine", "rows", "errors"}``; rows carry the job, the
        measurements and the derived throughput, MAC rate and fraction of the matmul peak.
    """
    from tqdm.auto import tqdm

    from .derived import derive

    cfg = validate_config(cfg)
    jobs = plan_jobs(cfg)
    env = environment(cfg.threads, cfg.device)
    rows: list[dict] = []
    machine: dict = {}
    matmul = _matmul_job(cfg)
    bar = tqdm(total=len(jobs) + 2, desc="convattn bench", unit="job", disable=not cfg.progress)
    with tempfile.TemporaryDirectory(prefix="convattn-bench-") as tmp:
        workdir = Path(tmp)
        bar.set_postfix_str(job_label(matmul))
        machine["matmul_start"] = run_worker(matmul, workdir, cfg.threads, cfg.timeout_s)
        bar.update()
        for job in jobs:
            bar.set_postfix_str(job_label(job))
            row = {**job, **run_worker(job, workdir, cfg.threads, cfg.timeout_s)}
            rows.append(row)
            bar.update()
            if not row.get("error"):
                derive(row, None)
            if cfg.progress:
                bar.write(_summary_line(row))
            else:
                print(_summary_line(row), flush=True)
        bar.set_postfix_str(job_label(matmul))
        machine["matmul_end"] = run_worker(matmul, workdir, cfg.threads, cfg.timeout_s)
        bar.update()
    bar.close()
    if hasattr(os, "getloadavg"):
        env["load_average_end"] = list(os.getloadavg())
    machine["peak"] = _peak(machine)
    for row in rows:
        if not row.get("error"):
            derive(row, machine["peak"])
    errors = [{"job": job_label(r), "error": r["error"]} for r in rows if r.get("error")]
    for key in ("matmul_start", "matmul_end"):
        if machine[key].get("error"):
            errors.append({"job": f"{key}", "error": machine[key]["error"]})
    report = {"environment": env, "config": asdict(cfg), "machine": machine, "rows": rows}
    report["errors"] = errors
    report["warnings"] = machine_warnings(env, machine, cfg.threads)
    for warning in report["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    return report


def machine_warnings(env: dict, machine: dict, threads: int) -> list[str]:
    """Signs that the timings are disturbed: a busy machine, or a matmul rate that drifted."""
    warnings = []
    cores = env.get("cpu_count") or 1
    for key in ("load_average_start", "load_average_end"):
        load = (env.get(key) or [0.0])[0]
        # At the end the 1-minute average still holds the benchmark's own busy threads.
        own = threads if key.endswith("end") else 0
        if env.get("device") == "cpu" and load - own > max(1.0, 0.25 * cores):
            hint = " (with several threads prefer --threads 1 on a busy machine)"
            mine = f", {own} of it the benchmark's own threads" if own else ""
            warnings.append(
                f"1-minute load average {load:.2f} at the {key.rsplit('_', 1)[-1]} of the run on "
                f"{cores} logical CPUs{mine}: other processes competed with the benchmark's "
                f"{threads} thread(s), so absolute times are unreliable"
                f"{hint if threads > 1 else ''}"
            )
    start = machine.get("matmul_start", {}).get("matmul", {}).get("float32")
    end = machine.get("matmul_end", {}).get("matmul", {}).get("float32")
    if start and end:
        drift = abs(start["gmacs_per_s"] - end["gmacs_per_s"]) / max(
            start["gmacs_per_s"], end["gmacs_per_s"]
        )
        if drift > 0.15:
            warnings.append(
                f"the matmul rate changed by {100 * drift:.0f}% between the start and the end of "
                "the run: the machine's speed was not steady"
            )
    return warnings


def _peak(machine: dict) -> dict[str, float]:
    """Best measured matmul GMAC/s per dtype over the start and end runs."""
    peak: dict[str, float] = {}
    for key in ("matmul_start", "matmul_end"):
        for dtype, rate in machine.get(key, {}).get("matmul", {}).items():
            peak[dtype] = max(peak.get(dtype, 0.0), rate["gmacs_per_s"])
    return peak
