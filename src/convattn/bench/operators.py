"""Operator benchmark: X-volution, ACmix, GLMix, global attention, involution vs a 3x3 conv.

Measures, in one run with a fixed intra-op thread count, for every operator of :data:`OPERATORS`:

* forward latency: eval mode under ``torch.inference_mode()``, deploy form where one exists;
* forward + backward latency: training mode, ``out.sum().backward()`` (input requires grad);
* peak memory: growth of the peak RSS (VmHWM, reset through /proc/self/clear_refs) of a fresh
  process per measurement, forked from a clean fork server, with glibc's mmap threshold at 64 KiB
  so freed blocks go back to the OS and the next measurement starts from a clean heap;
* parameters and MACs (:func:`~convattn.bench.count_macs`, attention products included);

at stage-like shapes (batch 8: 64ch@56x56, 128ch@28x28, 256ch@14x14, 512ch@7x7) and over a
resolution sweep of a 128-channel layer (14..112 px) with the fitted log-log exponent of forward time
vs pixels. Each operator is compared with the plain 3x3 convolution of the same width and, where
one exists, with its naive form from :mod:`.baselines` (same weights; the maximum relative
difference of their outputs is reported as a sanity check). Close pairs (X-volution's training and
deploy forms) are also timed in interleaved rounds. Operators whose module is missing or broken are
reported and skipped.

``benchmarks/bench_ops.py`` is the command-line front end (:func:`add_operator_arguments`,
:func:`run_operator_benchmark`); it also declares the targets the report judges.
"""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .._numerics import max_relative_deviation
from . import baselines
from .derived import fit_exponent
from .flops import count_macs, count_params
from .machine import environment as machine_environment
from .memory import MMAP_THRESHOLD, peak_memory_mib, return_freed_memory_to_os
from .timing import interleaved_samples, summarize, time_steps

__all__ = [
    "OPERATORS",
    "QUICK_STAGE_SHAPES",
    "REFERENCES",
    "STAGE_SHAPES",
    "Operator",
    "Reference",
    "add_operator_arguments",
    "check",
    "find_pair",
    "find_row",
    "fmt",
    "markdown",
    "median_ms",
    "memory_mib",
    "ratio",
    "run_operator_benchmark",
    "write_outputs",
]

STAGE_SHAPES = [(64, 56), (128, 28), (256, 14), (512, 7)]
SCALING_CHANNELS, SCALING_SIZES = 128, [14, 28, 56, 112]
QUICK_STAGE_SHAPES, QUICK_SCALING_CHANNELS, QUICK_SCALING_SIZES = [(32, 4)], 32, [4, 8]


# --------------------------------------------------------------------------------------------------
# The operator table: named factories, imported lazily so a missing module is reported, not fatal.
# --------------------------------------------------------------------------------------------------


def _attr(module: str, name: str):
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Operator:
    """A fast operator: ``build(channels)`` returns its training form (in == out, stride 1)."""

    name: str
    label: str
    build: Callable[[int], nn.Module]
    deploy: bool = False  # call .reparameterize() before forward (eval) measurements
    train: bool = True  # measure forward + backward
    scaling: bool = True  # include in the resolution sweep


@dataclass(frozen=True)
class Reference:
    """A naive form sharing the weights of operator ``of``: ``wrap(prepared module)``."""

    name: str
    label: str
    of: str
    wrap: Callable[[nn.Module], nn.Module]
    train: bool = True
    always_train: bool = False  # time forward+backward even when the forward is slow (a target)


class ReferenceModule(nn.Module):
    """Runs ``fn(x)``; owns ``module`` (and any extra tensors) so mode switches and grads reach them."""

    def __init__(self, fn: Callable, module: nn.Module, extra: dict | None = None) -> None:
        super().__init__()
        self.fn = fn
        self.owner = module
        self.extra = nn.ParameterList(list((extra or {}).values()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _conv3x3(c: int) -> nn.Module:
    return _attr("convattn.layers", "ConvBN")(c, c, 3)


def _xvolution(c: int) -> nn.Module:
    return _attr("convattn.layers.xvolution", "XVolution")(c, c, 1)


def _acmix(c: int) -> nn.Module:
    return _attr("convattn.layers.acmix", "ACmix")(c, c, 1, 7, 4)  # k_att 7, 4 heads


def _glmix(c: int) -> nn.Module:
    return _attr("convattn.layers.glmix", "GLMix")(c, c, 1)


def _global_attention(c: int) -> nn.Module:
    return _attr("convattn.layers.attention", "GlobalSelfAttention2d")(c, c, 1)


def _involution(c: int) -> nn.Module:
    return _attr("convattn.layers.involution", "Involution2d")(c, c, 1)


def _baseline(fn: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> Callable:
    def wrap(m: nn.Module) -> nn.Module:
        return ReferenceModule(lambda x: fn(m, x), m)

    return wrap


OPERATORS = [
    Operator("conv3x3", "conv 3x3 (+BN; fused for eval)", _conv3x3, deploy=True),
    Operator("xvolution", "X-volution, training form", _xvolution),
    Operator("xvolution_deploy", "X-volution, deploy form", _xvolution, deploy=True, train=False),
    Operator("acmix", "ACmix (k_att 7, 4 heads)", _acmix),
    Operator("glmix", "GLMix mixer (64 slots)", _glmix),
    Operator("global_attention", "global self-attention", _global_attention),
    Operator("involution", "involution (7x7, G=C/16)", _involution),
]
REFERENCES = [
    Reference(
        "acmix_ref",
        "ACmix, literal (unfold)",
        "acmix",
        _baseline(baselines.acmix_unfold),
        always_train=True,
    ),
    Reference(
        "global_attention_ref",
        "global attention, literal (N x N)",
        "global_attention",
        _baseline(baselines.global_attention_math),
    ),
    Reference(
        "involution_ref",
        "involution, literal (unfold)",
        "involution",
        _baseline(baselines.involution_unfold),
    ),
]
# Rows of reports written before the pixel-loop test oracles left the benchmark (issue 15): their
# names, labels and operators, so ``--render`` reproduces those reports.
EARLIER_REFERENCES = {
    "xvolution_ref": ("X-volution training form, literal (loops)", "xvolution"),
    "xvolution_deploy_ref": ("X-volution deploy form, literal (loops)", "xvolution_deploy"),
    "glmix_ref": ("GLMix mixer, literal (loops)", "glmix"),
}
OPS_BY_NAME = {op.name: op for op in OPERATORS}
REFS_BY_NAME = {ref.name: ref for ref in REFERENCES}


def build(name: str, channels: int, mode: str) -> nn.Module:
    """Module for ``name`` prepared for ``mode`` ("forward": eval/deploy form, or "train")."""
    op = OPS_BY_NAME[REFS_BY_NAME[name].of] if name in REFS_BY_NAME else OPS_BY_NAME[name]
    module = op.build(channels)
    if mode == "forward":
        module.eval()
        if op.deploy:
            module.reparameterize()
    else:
        module.train()
    return REFS_BY_NAME[name].wrap(module) if name in REFS_BY_NAME else module


def availability(names: list[str], channels: int) -> dict[str, str | None]:
    """None for every usable operator, else the reason it is skipped."""
    status: dict[str, str | None] = {}
    x = torch.randn(1, channels, 5, 5)
    for name in names:
        try:
            module = build(name, channels, "forward")
            with torch.inference_mode():
                module(x)
            status[name] = None
        except Exception as exc:  # a module being written can fail in any way: report and skip
            status[name] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    return status


# --------------------------------------------------------------------------------------------------
# Latency
# --------------------------------------------------------------------------------------------------


def runner(module: nn.Module, x: torch.Tensor, mode: str, keep: dict | None = None) -> Callable:
    """A closure running one forward (eval, inference mode) or forward + backward (train)."""
    if mode == "forward":
        module.eval()

        def run() -> None:
            with torch.inference_mode():
                out = module(x)
            if keep is not None:
                keep["out"] = out

        return run
    module.train()
    xg = x.detach().clone().requires_grad_(True)

    def run() -> None:
        module.zero_grad(set_to_none=True)
        xg.grad = None
        module(xg).sum().backward()

    return run


def time_it(run: Callable, warmup: int, repeats: int, budget_s: float) -> dict:
    """:func:`~convattn.bench.timing.time_steps` within ``budget_s`` seconds of timed calls."""
    return time_steps(run, warmup, repeats, budget_s=budget_s)


# --------------------------------------------------------------------------------------------------
# Peak memory in a fresh process
# --------------------------------------------------------------------------------------------------


def _memory_child(conn, name: str, channels: int, size: int, batch: int, mode: str, threads: int):
    try:
        return_freed_memory_to_os()
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        module = build(name, channels, mode)
        # Warm-up on a small map so thread pools and kernel caches exist before measuring.
        runner(module, torch.randn(batch, channels, 8, 8), mode)()
        module.zero_grad(set_to_none=True)
        x = torch.randn(batch, channels, size, size)
        conn.send(("ok", peak_memory_mib(runner(module, x, mode), "cpu")["peak_memory_mib"]))
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"[:300]))
    finally:
        conn.close()


class MemoryProbe:
    """Starts one child per measurement from a fork server that has torch and convattn imported."""

    def __init__(self, threads: int, timeout_s: float = 600.0) -> None:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)  # inherited by the server
        self.ctx = mp.get_context("forkserver")
        self.ctx.set_forkserver_preload(["torch", "convattn.layers", __name__])
        self.threads, self.timeout_s = threads, timeout_s

    def measure(self, name: str, channels: int, size: int, batch: int, mode: str) -> float | str:
        recv, send = self.ctx.Pipe(duplex=False)
        args = (send, name, channels, size, batch, mode, self.threads)
        proc = self.ctx.Process(target=_memory_child, args=args, daemon=True)
        proc.start()
        send.close()
        result: float | str = "timeout"
        if recv.poll(self.timeout_s):
            try:
                status, value = recv.recv()
                result = value if status == "ok" else str(value)
            except EOFError:
                result = f"child died (exit code {proc.exitcode})"
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()
        if isinstance(result, str) and proc.exitcode not in (0, None):
            result += f" (exit code {proc.exitcode})"
        return result


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


@dataclass
class Config:
    threads: int
    batch: int
    warmup: int
    repeats: int
    budget_s: float
    stage_shapes: list[tuple[int, int]]
    scaling_channels: int
    scaling_sizes: list[int]
    ref_train_limit_s: float
    memory: bool
    references: bool
    quick: bool
    paired_rounds: int = 30
    names: list[str] = field(default_factory=list)


def environment(threads: int) -> dict:
    """``convattn.bench.environment`` plus this benchmark's fixed settings."""
    return {
        **machine_environment(threads),
        "dtype": "float32",
        "memory_format": "contiguous (NCHW)",
    }


def stage_rows(cfg: Config, usable: list[str], log: Callable) -> list[dict]:
    """Latency, params and MACs of every usable operator and reference at the stage shapes."""
    rows = []
    for channels, size in cfg.stage_shapes:
        x = torch.randn(cfg.batch, channels, size, size)
        for op in OPERATORS:
            if op.name not in usable:
                continue
            torch.manual_seed(0)
            module = op.build(channels)
            row = {"op": op.name, "channels": channels, "size": size, "batch": cfg.batch}
            row["forward_backward"] = None
            if op.train:
                row["forward_backward"] = time_it(
                    runner(module, x, "train"), cfg.warmup, cfg.repeats, cfg.budget_s
                )
            module.eval()
            if op.deploy:
                module.reparameterize()
            row["forward"] = time_it(
                runner(module, x, "forward"), cfg.warmup, cfg.repeats, cfg.budget_s
            )
            row["params"] = count_params(module)
            row["macs"] = count_macs(module, (1, channels, size, size)) * cfg.batch
            rows.append(row)
            log(_row_line(row))
            for ref in REFERENCES:
                if ref.of != op.name or ref.name not in usable or not cfg.references:
                    continue
                rows.append(reference_row(cfg, ref, module, x, channels, size, log))
    return rows


def reference_row(cfg: Config, ref: Reference, module: nn.Module, x, channels, size, log) -> dict:
    wrapped = ref.wrap(module)
    row = {"op": ref.name, "channels": channels, "size": size, "batch": cfg.batch}
    with torch.inference_mode():
        fast = module.eval()(x)
    keep: dict = {}
    row["forward"] = time_it(
        runner(wrapped, x, "forward", keep), cfg.warmup, cfg.repeats, cfg.budget_s
    )
    row["max_rel_diff_vs_op"] = max_relative_deviation(fast, keep["out"])
    del keep, fast
    row["forward_backward"] = None
    too_slow = row["forward"]["median_ms"] > 1e3 * cfg.ref_train_limit_s
    if ref.train and too_slow and not ref.always_train:
        row["forward_backward_skipped"] = (
            f"forward took {row['forward']['median_ms'] / 1e3:.1f} s "
            f"> --ref-train-limit {cfg.ref_train_limit_s} s"
        )
    elif ref.train:
        row["forward_backward"] = time_it(
            runner(wrapped, x, "train"), cfg.warmup, cfg.repeats, cfg.budget_s
        )
    module.eval()
    log(_row_line(row))
    return row


PAIRS = [("xvolution", "xvolution_deploy"), ("conv3x3", "xvolution_deploy")]


def paired_rows(cfg: Config, usable: list[str], log: Callable) -> list[dict]:
    """Interleaved A/B forward timing of close pairs (X-volution training vs deploy form).

    Each round times A then B back to back (alternating which goes first; see
    :func:`~convattn.bench.timing.interleaved_samples`) and the per-round ratio B/A is summarised:
    its median is robust to load that comes and goes.
    """
    rows = []
    for channels, size in cfg.stage_shapes:
        x = torch.randn(cfg.batch, channels, size, size)
        for a_name, b_name in PAIRS:
            if a_name not in usable or b_name not in usable:
                continue
            runs = {}
            for name in (a_name, b_name):
                torch.manual_seed(0)
                module = OPS_BY_NAME[name].build(channels).eval()
                if OPS_BY_NAME[name].deploy:
                    module.reparameterize()
                runs[name] = runner(module, x, "forward")
            times = interleaved_samples(runs, cfg.paired_rounds, cfg.warmup)
            ratios = [b / a for a, b in zip(times[a_name], times[b_name], strict=True)]
            quartiles = (
                statistics.quantiles(ratios, n=4, method="inclusive")
                if len(ratios) > 1
                else ratios * 3
            )
            row = {
                "a": a_name,
                "b": b_name,
                "channels": channels,
                "size": size,
                "batch": cfg.batch,
                "rounds": cfg.paired_rounds,
                "a_forward": summarize(times[a_name]),
                "b_forward": summarize(times[b_name]),
                "ratio_median": statistics.median(ratios),
                "ratio_q1": quartiles[0],
                "ratio_q3": quartiles[2],
                "b_faster_rounds": sum(r < 1 for r in ratios),
            }
            rows.append(row)
            log(
                f"  paired {channels}ch@{size}: {b_name}/{a_name} = {row['ratio_median']:.3f} "
                f"(faster in {row['b_faster_rounds']}/{len(ratios)} rounds)"
            )
    return rows


def _row_line(row: dict) -> str:
    fb = row["forward_backward"]
    fb_text = f"{fb['median_ms']:9.2f} ms" if fb else "      n/a   "
    return (
        f"  {row['op']:<22} {row['channels']:>4}ch@{row['size']:<3} fwd "
        f"{row['forward']['median_ms']:9.2f} ms  fwd+bwd {fb_text}"
    )


def scaling_rows(cfg: Config, usable: list[str], log: Callable) -> dict:
    c = cfg.scaling_channels
    results, exponents = [], {}
    for op in OPERATORS:
        if op.name not in usable or not op.scaling:
            continue
        torch.manual_seed(0)
        module = op.build(c).eval()
        if op.deploy:
            module.reparameterize()
        times = []
        for size in cfg.scaling_sizes:
            x = torch.randn(cfg.batch, c, size, size)
            stats = time_it(runner(module, x, "forward"), cfg.warmup, cfg.repeats, cfg.budget_s)
            macs = count_macs(module, (1, c, size, size)) * cfg.batch
            results.append(
                {"op": op.name, "channels": c, "size": size, "forward": stats, "macs": macs}
            )
            times.append(stats["median_ms"])
            log(f"  {op.name:<22} {c:>4}ch@{size:<3} fwd {stats['median_ms']:9.2f} ms")
        if len(times) > 1:
            exponents[op.name] = fit_exponent([s * s for s in cfg.scaling_sizes], times)
    return {
        "channels": c,
        "batch": cfg.batch,
        "sizes": cfg.scaling_sizes,
        "results": results,
        "exponents": exponents,
    }


def memory_pass(cfg: Config, rows: list[dict], probe: MemoryProbe, log: Callable) -> None:
    for row in rows:
        for mode, key in (("forward", "memory_forward_mib"), ("train", "memory_train_mib")):
            trainable = row["forward_backward"] is not None
            if mode == "train" and not trainable:
                row[key] = None
                continue
            row[key] = probe.measure(row["op"], row["channels"], row["size"], cfg.batch, mode)
        log(
            f"  {row['op']:<22} {row['channels']:>4}ch@{row['size']:<3} peak RSS growth "
            f"fwd {fmt(row['memory_forward_mib'])} MiB, fwd+bwd {fmt(row['memory_train_mib'])} MiB"
        )


def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return "error"
    return f"{value:.{digits}f}"


# --------------------------------------------------------------------------------------------------
# Targets, report, plots
# --------------------------------------------------------------------------------------------------


def find_row(rows: list[dict], op: str, channels: int, size: int) -> dict | None:
    for row in rows:
        if (row["op"], row["channels"], row["size"]) == (op, channels, size):
            return row
    return None


def ratio(a, b) -> float | None:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0:
        return a / b
    return None


def median_ms(row: dict | None, key: str) -> float | None:
    return row[key]["median_ms"] if row and row.get(key) else None


def memory_mib(row: dict | None, key: str):
    value = row.get(key) if row else None
    return value if isinstance(value, (int, float)) else None


def check(name: str, ok: bool | None, detail: str) -> dict:
    status = "N/A" if ok is None else ("PASS" if ok else "FAIL")
    return {"name": name, "status": status, "detail": detail}


def find_pair(paired: list[dict], a: str, b: str, channels: int, size: int) -> dict | None:
    for row in paired:
        if (row["a"], row["b"], row["channels"], row["size"]) == (a, b, channels, size):
            return row
    return None


def _label(name: str) -> str:
    if name in OPS_BY_NAME:
        return OPS_BY_NAME[name].label
    if name in REFS_BY_NAME:
        return REFS_BY_NAME[name].label
    return EARLIER_REFERENCES.get(name, (name, None))[0]


def _reference_of(op: str) -> list[str]:
    """Names of the reference rows that measure operator ``op`` (earlier reports' included)."""
    names = [ref.name for ref in REFERENCES if ref.of == op]
    return names + [name for name, (_, of) in EARLIER_REFERENCES.items() if of == op]


def markdown(report: dict) -> str:
    env, cfg = report["environment"], report["config"]
    lines = [
        "# Operator benchmark (CPU)",
        "",
        f"Generated by `benchmarks/bench_ops.py` on {env['date']}: torch {env['torch']}, "
        f"intra-op threads: {env['threads']}, {env['cpu_model']} ({env['cpu_count']} cores, "
        f"{env['cpu_capability']}), float32, NCHW, batch {cfg['batch']}. Load average "
        f"{env['load_average_start'][0]:.2f} at start, {env['load_average_end'][0]:.2f} at end "
        "(other processes share the cores: treat ratios as more reliable than absolute times).",
        "",
        "Latency: median over repeats after warm-up [min-max]; forward in eval mode under "
        "`torch.inference_mode()` (deploy form where it exists), forward+backward in training mode "
        "(`out.sum().backward()`). Memory: peak RSS growth of a fresh process per measurement. "
        "`x conv` = time / conv3x3 time at the same shape; `ref / op` = reference time / operator "
        "time (the speed-up over the literal reference); `rel diff` = max |op - ref| / max |ref|. "
        "`(1 call)`: a reference slower than the time budget, timed once without warm-up; "
        "`(n=1)`: one timed call after warm-up.",
        "",
        "## Targets",
        "",
    ]
    for t in report["targets"]:
        lines.append(f"- **{t['status']}** {t['name']}: {t['detail']}")
    skipped = {k: v for k, v in report["availability"].items() if v}
    if skipped:
        lines += ["", "Skipped (missing or failing):", ""]
        lines += [f"- `{k}`: {v}" for k, v in skipped.items()]
    stage = report["stage"]
    for channels, size in cfg["stage_shapes"]:
        rows = [r for r in stage if (r["channels"], r["size"]) == (channels, size)]
        if not rows:
            continue
        conv = find_row(stage, "conv3x3", channels, size)
        lines += [
            "",
            f"## {channels} channels @ {size}x{size}",
            "",
            "| operator | params | GMACs | fwd ms | x conv | ref / op | fwd+bwd ms | x conv | "
            "ref / op | mem fwd MiB | mem fwd+bwd MiB | rel diff |",
            "|---|---:|---:|---|---:|---:|---|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            is_ref = r["op"] in REFS_BY_NAME or r["op"] in EARLIER_REFERENCES
            ref = None
            if not is_ref:
                ref = next(
                    (find_row(stage, x, channels, size) for x in _reference_of(r["op"])), None
                )
            cells = [f"{_label(r['op'])} (`{r['op']}`)"]
            cells.append(f"{r['params'] / 1e6:.3f} M" if "params" in r else "")
            cells.append(f"{r['macs'] / 1e9:.3f}" if "macs" in r else "")
            for key in ("forward", "forward_backward"):
                stats = r.get(key)
                if not stats:
                    cells += ["n/a", "", ""]
                    continue
                if stats.get("first_call_only"):
                    cells.append(f"{stats['median_ms']:.2f} (1 call)")
                elif stats["repeats"] == 1:
                    cells.append(f"{stats['median_ms']:.2f} (n=1)")
                else:
                    cells.append(
                        f"{stats['median_ms']:.2f} [{stats['min_ms']:.2f}-{stats['max_ms']:.2f}]"
                    )
                cells.append(fmt(ratio(stats["median_ms"], median_ms(conv, key)), 2))
                cells.append(
                    "" if is_ref else fmt(ratio(median_ms(ref, key), stats["median_ms"]), 2)
                )
            cells.append(fmt(r.get("memory_forward_mib")))
            cells.append(fmt(r.get("memory_train_mib")))
            diff = r.get("max_rel_diff_vs_op")
            cells.append(f"{diff:.1e}" if diff is not None else "")
            lines.append("| " + " | ".join(cells) + " |")
        notes = [r for r in rows if r.get("forward_backward_skipped")]
        if notes:
            lines.append("")
            lines += [
                f"`{r['op']}` forward+backward skipped: {r['forward_backward_skipped']}."
                for r in notes
            ]
    if report.get("paired"):
        lines += [
            "",
            "## Paired forward comparisons (interleaved A/B rounds)",
            "",
            "Each round times A and B back to back (order alternating); the ratio is B/A per "
            "round, summarised by its median and quartiles.",
            "",
            "| shape | A | B | A ms | B ms | B/A median [q1-q3] | B faster in |",
            "|---|---|---|---:|---:|---|---:|",
        ]
        for r in report["paired"]:
            lines.append(
                f"| {r['channels']}ch@{r['size']}x{r['size']} | `{r['a']}` | `{r['b']}` | "
                f"{r['a_forward']['median_ms']:.2f} | {r['b_forward']['median_ms']:.2f} | "
                f"{r['ratio_median']:.3f} [{r['ratio_q1']:.3f}-{r['ratio_q3']:.3f}] | "
                f"{r['b_faster_rounds']}/{r['rounds']} |"
            )
    sc = report["scaling"]
    if sc.get("results"):
        sizes = sc["sizes"]
        lines += [
            "",
            f"## Resolution scaling: {sc['channels']} channels, batch {sc['batch']}, forward ms",
            "",
            "| operator | " + " | ".join(f"{s}x{s}" for s in sizes) + " | exponent |",
            "|---|" + "---:|" * (len(sizes) + 1),
        ]
        for name, exp in sc["exponents"].items():
            times = {r["size"]: r["forward"]["median_ms"] for r in sc["results"] if r["op"] == name}
            cells = [f"{times[s]:.2f}" if s in times else "" for s in sizes]
            lines.append(f"| {_label(name)} | " + " | ".join(cells) + f" | {exp:.3f} |")
        lines += [
            "",
            "Exponent: least-squares slope of log(forward time) vs log(pixels) "
            "(1 = linear in pixels, 2 = quadratic).",
        ]
    return "\n".join(lines) + "\n"


def plots(report: dict, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    sc = report["scaling"]
    if sc.get("results"):
        fig, ax = plt.subplots(figsize=(7, 5))
        for name, exp in sc["exponents"].items():
            pts = [
                (r["size"] ** 2, r["forward"]["median_ms"])
                for r in sc["results"]
                if r["op"] == name
            ]
            ax.loglog(*zip(*pts), marker="o", label=f"{name} (exponent {exp:.2f})")
        ax.set_xlabel("pixels (H x W)")
        ax.set_ylabel("forward latency, ms (median)")
        ax.set_title(f"Resolution scaling, {sc['channels']} ch, batch {sc['batch']}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / "ops_scaling.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path.name)
    shapes = [
        s
        for s in report["config"]["stage_shapes"]
        if any((r["channels"], r["size"]) == tuple(s) for r in report["stage"])
    ]
    if shapes:
        fig, axes = plt.subplots(2, len(shapes), figsize=(4.2 * len(shapes), 8), squeeze=False)
        for col, (channels, size) in enumerate(shapes):
            rows = [r for r in report["stage"] if (r["channels"], r["size"]) == (channels, size)]
            names = [r["op"] for r in rows]
            pos = range(len(rows))
            fwd = [r["forward"]["median_ms"] for r in rows]
            fb = [r["forward_backward"]["median_ms"] if r["forward_backward"] else 0 for r in rows]
            ax = axes[0][col]
            ax.bar([p - 0.2 for p in pos], fwd, 0.4, label="forward")
            ax.bar([p + 0.2 for p in pos], fb, 0.4, label="forward+backward")
            ax.set_yscale("log")
            ax.set_title(f"{channels} ch @ {size}x{size}: latency (ms)")
            ax = axes[1][col]
            mf = [memory_mib(r, "memory_forward_mib") or 0 for r in rows]
            mt = [memory_mib(r, "memory_train_mib") or 0 for r in rows]
            ax.bar([p - 0.2 for p in pos], mf, 0.4, label="forward")
            ax.bar([p + 0.2 for p in pos], mt, 0.4, label="forward+backward")
            ax.set_title(f"{channels} ch @ {size}x{size}: peak RSS growth (MiB)")
            for ax in (axes[0][col], axes[1][col]):
                ax.set_xticks(list(pos), names, rotation=70, fontsize=7)
                ax.grid(True, axis="y", alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / "ops_stages.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path.name)
    return written


def add_operator_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The operator benchmark's command-line options (``benchmarks/bench_ops.py``)."""
    p.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    p.add_argument("--quick", action="store_true", help="smoke mode: tiny shapes, one repeat")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 8; quick 1)")
    p.add_argument("--repeats", type=int, default=None, help="max timed repeats (default 5)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls (default 2)")
    p.add_argument(
        "--budget", type=float, default=None, help="seconds of timed calls per measurement (4)"
    )
    p.add_argument(
        "--ref-train-limit",
        type=float,
        default=5.0,
        help="skip a loop reference's forward+backward when its forward takes longer (s, default "
        "5; never for acmix_ref, which a target needs)",
    )
    p.add_argument(
        "--paired-rounds",
        type=int,
        default=None,
        help="rounds of the interleaved A/B comparisons (default 30; quick 2)",
    )
    p.add_argument("--ops", nargs="*", default=None, help="subset of operator/reference names")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--no-references", action="store_true", help="skip the literal references")
    p.add_argument("--no-plots", action="store_true", help="do not write PNG plots")
    p.add_argument(
        "--render",
        type=Path,
        default=None,
        metavar="OPS_JSON",
        help="measure nothing: rewrite ops.md and the plots next to an existing ops.json",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default benchmarks/results; with --quick a temporary folder)",
    )
    return p


def write_outputs(report: dict, out: Path, with_plots: bool) -> None:
    """``ops.json``, ``ops.md`` and (if ``with_plots``) the ``ops_*.png`` plots in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    report["plots"] = plots(report, out) if with_plots else []
    (out / "ops.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "ops.md").write_text(markdown(report))


Targets = Callable[[list[dict], dict, bool, list[dict]], list[dict]]


def run_operator_benchmark(args: argparse.Namespace, targets: Targets, results: Path) -> dict:
    """Measure (or, with ``args.render``, re-render) and write the report; returns it.

    Args:
        args: the options of :func:`add_operator_arguments`.
        targets: ``targets(stage_rows, scaling, quick, paired_rows)`` -> the report's target rows
            (``{"name", "status", "detail"}``, see :func:`check`).
        results: the default output folder (``--out`` overrides it; ``--quick`` writes to a
            temporary folder unless ``--out`` is given).

    Raises:
        ValueError: ``--paired-rounds`` below 1 or an unknown name in ``--ops``.
    """
    if args.paired_rounds is not None and args.paired_rounds < 1:
        raise ValueError(f"--paired-rounds must be at least 1, got {args.paired_rounds}")
    if args.render is not None:
        report = json.loads(args.render.read_text())
        write_outputs(report, args.render.parent, not args.no_plots)
        return report
    all_names = [op.name for op in OPERATORS] + [ref.name for ref in REFERENCES]
    names = [n for n in all_names if args.ops is None or n in args.ops]
    if args.ops:
        unknown = sorted(set(args.ops) - set(all_names))
        if unknown:
            raise ValueError(f"--ops: unknown operator names {unknown}; choose from {all_names}")
    # Options are checked above: only a run that measures changes the process's thread count.
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    quick = args.quick
    cfg = Config(
        threads=args.threads,
        batch=args.batch or (1 if quick else 8),
        warmup=args.warmup if args.warmup is not None else (1 if quick else 2),
        repeats=args.repeats or (1 if quick else 5),
        budget_s=args.budget if args.budget is not None else (0.0 if quick else 4.0),
        stage_shapes=QUICK_STAGE_SHAPES if quick else STAGE_SHAPES,
        scaling_channels=QUICK_SCALING_CHANNELS if quick else SCALING_CHANNELS,
        scaling_sizes=QUICK_SCALING_SIZES if quick else SCALING_SIZES,
        ref_train_limit_s=args.ref_train_limit,
        memory=not args.no_memory,
        references=not args.no_references,
        quick=quick,
        paired_rounds=args.paired_rounds or (2 if quick else 30),
    )

    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f} s] {msg}", flush=True)

    report: dict = {"environment": environment(args.threads), "config": vars(cfg).copy()}
    report["config"]["names"] = names
    status = availability(names, min(c for c, _ in cfg.stage_shapes))
    report["availability"] = status
    usable = [n for n in names if status[n] is None]
    for name, reason in status.items():
        if reason:
            log(f"skipping {name}: {reason}")
    t0 = time.perf_counter()
    log(f"stage shapes (batch {cfg.batch}, {cfg.threads} threads):")
    report["stage"] = stage_rows(cfg, usable, log)
    log("paired forward comparisons (interleaved):")
    report["paired"] = paired_rows(cfg, usable, log)
    log("resolution scaling:")
    report["scaling"] = scaling_rows(cfg, usable, log)
    if cfg.memory:
        log("peak memory (fresh process per measurement):")
        memory_pass(cfg, report["stage"], MemoryProbe(cfg.threads), log)
    else:
        for row in report["stage"]:
            row["memory_forward_mib"] = row["memory_train_mib"] = None
    report["environment"]["load_average_end"] = list(os.getloadavg())
    report["environment"]["wall_time_s"] = round(time.perf_counter() - t0, 1)
    report["targets"] = targets(report["stage"], report["scaling"], quick, report["paired"])
    if quick:  # tiny shapes say nothing about the targets: keep the computation, not the verdict
        for t in report["targets"]:
            t["detail"] = f"quick mode, not evaluated (would be {t['status']}): {t['detail']}"
            t["status"] = "N/A"
    out = args.out or (
        Path(tempfile.gettempdir()) / "convattn_bench_ops_quick" if quick else results
    )
    write_outputs(report, out, not args.no_plots)
    for t in report["targets"]:
        log(f"{t['status']}: {t['name']} ({t['detail']})")
    log(f"wrote {out / 'ops.json'}, ops.md and {report['plots']}")
    return report
