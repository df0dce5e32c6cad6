"""Operator benchmark: X-volution, ACmix, GLMix, global attention, involution vs a 3x3 conv.

Measures, in one run with a fixed intra-op thread count, for every operator of the table below:

* forward latency: eval mode under ``torch.inference_mode()``, deploy form where one exists;
* forward + backward latency: training mode, ``out.sum().backward()`` (input requires grad);
* peak memory: growth of the peak RSS (VmHWM, reset through /proc/self/clear_refs) of a fresh
  process per measurement, forked from a clean fork server, with glibc's mmap threshold at 64 KiB
  so freed blocks go back to the OS and the next measurement starts from a clean heap;
* parameters and MACs (``convattn.bench.count_macs``, attention products included);

at stage-like shapes (batch 8: 64ch@56x56, 128ch@28x28, 256ch@14x14, 512ch@7x7) and over a
resolution sweep of a 128-channel layer (14..112 px) with the fitted log-log exponent of forward time
vs pixels. Each operator is compared with the plain 3x3 convolution of the same width and with its
literal reference from ``tests/layers/ref_*.py`` (same weights; the maximum relative difference of
their outputs is reported as a sanity check). Operators whose module is missing or broken are
reported and skipped.

Run ``python benchmarks/bench_ops.py`` (several minutes) or ``--quick`` (tiny shapes, one repeat).
Outputs: ``benchmarks/results/ops.json``, ``ops.md`` and ``ops_*.png`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from convattn.bench import count_macs, count_params
from convattn.bench.machine import environment as machine_environment
from convattn.bench.memory import MMAP_THRESHOLD, peak_memory_mib, return_freed_memory_to_os
from convattn.bench.report import fit_exponent
from convattn.bench.timing import summarize

ROOT = Path(__file__).resolve().parents[1]
REF_DIR = ROOT / "tests" / "layers"
RESULTS = ROOT / "benchmarks" / "results"
if str(REF_DIR) not in sys.path:
    sys.path.insert(0, str(REF_DIR))  # the literal references live next to the tests

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
    """A literal reference sharing the weights of operator ``of``: ``wrap(prepared module)``."""

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
    module = _attr("convattn.layers.acmix", "ACmix")(c, c, 1, kernel_att=7, heads=4)
    # Official-layout weights, so the reference below can use the very same tensors.
    state = _attr("ref_acmix", "official_module_state_dict")(c, c, 4, dtype=torch.float32)
    module.load_state_dict(state)
    module._official_state = state  # read by the reference factory
    return module


def _glmix(c: int) -> nn.Module:
    return _attr("convattn.layers.glmix", "GLMix")(c, c, 1)


def _global_attention(c: int) -> nn.Module:
    return _attr("convattn.layers.attention", "GlobalSelfAttention2d")(c, c, 1)


def _involution(c: int) -> nn.Module:
    return _attr("convattn.layers.involution", "Involution2d")(c, c, 1)


def _ref_xvolution(m: nn.Module) -> nn.Module:
    ref = importlib.import_module("ref_xvolution")
    return ReferenceModule(lambda x: ref.training_forward(m, x), m)


def _ref_xvolution_deploy(m: nn.Module) -> nn.Module:
    ref = importlib.import_module("ref_xvolution")
    include_center = len(m.directions) == 9

    def forward(x):
        static, dynamic, bias = m.get_equivalent_kernel_bias()
        return ref.deploy_forward(x, static, dynamic, bias, m.stride, include_center)

    return ReferenceModule(forward, m)


def _ref_acmix(m: nn.Module) -> nn.Module:
    ref = importlib.import_module("ref_acmix")
    state = {k: nn.Parameter(v.clone()) for k, v in m._official_state.items()}
    return ReferenceModule(
        lambda x: ref.acmix_reference(x, state, m.heads, m.kernel_att, m.stride, m.kernel_conv),
        m,
        state,
    )


def _ref_glmix(m: nn.Module) -> nn.Module:
    ref = importlib.import_module("ref_glmix")
    state = dict(m.named_parameters())
    return ReferenceModule(
        lambda x: ref.glmix_operator(
            x, state, num_heads=m.num_heads, num_slots=m.num_slots, stride=m.stride
        ),
        m,
    )


def _ref_baseline(fn_name: str) -> Callable[[nn.Module], nn.Module]:
    def wrap(m: nn.Module) -> nn.Module:
        fn = getattr(importlib.import_module("ref_baselines"), fn_name)
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
    # The X-volution and GLMix oracles loop over pixels in Python: their backward times autograd's
    # bookkeeping of ~1e5 tiny ops (20-80x their forward), not a meaningful baseline.
    Reference(
        "xvolution_ref",
        "X-volution training form, literal (loops)",
        "xvolution",
        _ref_xvolution,
        train=False,
    ),
    Reference(
        "xvolution_deploy_ref",
        "X-volution deploy form, literal (loops)",
        "xvolution_deploy",
        _ref_xvolution_deploy,
        train=False,
    ),
    Reference("acmix_ref", "ACmix, literal (unfold)", "acmix", _ref_acmix, always_train=True),
    Reference("glmix_ref", "GLMix mixer, literal (loops)", "glmix", _ref_glmix, train=False),
    Reference(
        "global_attention_ref",
        "global attention, literal (N x N)",
        "global_attention",
        _ref_baseline("global_attention"),
    ),
    Reference(
        "involution_ref", "involution, literal (unfold)", "involution", _ref_baseline("involution")
    ),
]
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
    """Warm up, then time up to ``repeats`` calls within about ``budget_s`` (at least one).

    A first call slower than ``budget_s`` (the literal references at large shapes) is reported as
    the single sample (``"first_call_only": true``): its one-time costs are negligible next to it.
    """
    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    if first > budget_s > 0:
        return {**summarize([first]), "first_call_only": True}
    if first < 0.5:  # slower calls are their own warm-up
        for _ in range(warmup - 1):
            run()
    n = max(1, min(repeats, int(budget_s // max(first, 1e-9))))
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return summarize(samples)


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
        self.ctx.set_forkserver_preload(["__main__", "torch", "convattn.layers"])
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


def rel_diff(actual: torch.Tensor, expected: torch.Tensor) -> float:
    scale = expected.abs().max().clamp_min(1e-12)
    return float((actual.float() - expected.float()).abs().max() / scale)


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
    row["max_rel_diff_vs_op"] = rel_diff(fast, keep["out"])
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

    A difference of a few percent is below the drift of separate timing runs on a shared
    machine, so each round times A then B back to back (alternating which goes first) and the
    per-round ratio B/A is summarised: its median is robust to load that comes and goes.
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
            for run in runs.values():
                for _ in range(cfg.warmup):
                    run()
            times: dict[str, list[float]] = {a_name: [], b_name: []}
            for i in range(cfg.paired_rounds):
                for name in (a_name, b_name) if i % 2 == 0 else (b_name, a_name):
                    start = time.perf_counter()
                    runs[name]()
                    times[name].append(time.perf_counter() - start)
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
            f"fwd {_fmt(row['memory_forward_mib'])} MiB, fwd+bwd {_fmt(row['memory_train_mib'])} MiB"
        )


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return "error"
    return f"{value:.{digits}f}"


# --------------------------------------------------------------------------------------------------
# Targets, report, plots
# --------------------------------------------------------------------------------------------------


def _find(rows: list[dict], op: str, channels: int, size: int) -> dict | None:
    for row in rows:
        if (row["op"], row["channels"], row["size"]) == (op, channels, size):
            return row
    return None


def _ratio(a, b) -> float | None:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0:
        return a / b
    return None


def _median(row: dict | None, key: str) -> float | None:
    return row[key]["median_ms"] if row and row.get(key) else None


def _mem(row: dict | None, key: str):
    value = row.get(key) if row else None
    return value if isinstance(value, (int, float)) else None


def _check(name: str, ok: bool | None, detail: str) -> dict:
    status = "N/A" if ok is None else ("PASS" if ok else "FAIL")
    return {"name": name, "status": status, "detail": detail}


def _find_pair(paired: list[dict], a: str, b: str, channels: int, size: int) -> dict | None:
    for row in paired:
        if (row["a"], row["b"], row["channels"], row["size"]) == (a, b, channels, size):
            return row
    return None


def targets(
    stage: list[dict], scaling: dict, quick: bool, paired: list[dict] | None = None
) -> list[dict]:
    """The brief's acceptance targets, evaluated honestly on the measured numbers."""
    c1, s1 = (64, 56) if not quick else QUICK_STAGE_SHAPES[0]
    c3, s3 = (256, 14) if not quick else QUICK_STAGE_SHAPES[-1]
    out = []

    acmix, acmix_ref = _find(stage, "acmix", c1, s1), _find(stage, "acmix_ref", c1, s1)
    where = f"{c1}ch@{s1}x{s1}"
    speed = _ratio(_median(acmix_ref, "forward"), _median(acmix, "forward"))
    out.append(
        _check(
            f"ACmix forward >= 4x faster than its literal unfold reference at {where}",
            None if speed is None else speed >= 4,
            f"reference/fast = {_fmt(speed, 2)}x",
        )
    )
    mem = _ratio(_mem(acmix, "memory_forward_mib"), _mem(acmix_ref, "memory_forward_mib"))
    out.append(
        _check(
            f"ACmix forward peak memory <= 1/3 of the reference's at {where}",
            None if mem is None else mem <= 1 / 3,
            f"fast/reference = {_fmt(mem, 3)} (forward); fwd+bwd: "
            f"{_fmt(_ratio(_mem(acmix, 'memory_train_mib'), _mem(acmix_ref, 'memory_train_mib')), 3)}",
        )
    )
    speed_fb = _ratio(_median(acmix_ref, "forward_backward"), _median(acmix, "forward_backward"))
    out.append(
        _check(
            f"ACmix forward+backward >= 2x faster than the reference at {where}",
            None if speed_fb is None else speed_fb >= 2,
            f"reference/fast = {_fmt(speed_fb, 2)}x",
        )
    )

    where = f"{c3}ch@{s3}x{s3}"
    train_form = _median(_find(stage, "xvolution", c3, s3), "forward")
    deploy = _median(_find(stage, "xvolution_deploy", c3, s3), "forward")
    conv = _median(_find(stage, "conv3x3", c3, s3), "forward")
    pair = _find_pair(paired or [], "xvolution", "xvolution_deploy", c3, s3)
    if pair is not None:  # the interleaved measurement: the robust one for a close pair
        faster = pair["ratio_median"] < 1
        detail = (
            f"interleaved over {pair['rounds']} rounds: deploy/training = "
            f"{pair['ratio_median']:.3f} (quartiles {pair['ratio_q1']:.3f}-{pair['ratio_q3']:.3f}; "
            f"deploy faster in {pair['b_faster_rounds']}/{pair['rounds']} rounds), medians "
            f"{pair['b_forward']['median_ms']:.2f} vs {pair['a_forward']['median_ms']:.2f} ms"
        )
    else:
        faster = None if train_form is None or deploy is None else deploy < train_form
        detail = f"deploy {_fmt(deploy, 2)} ms vs training form {_fmt(train_form, 2)} ms"
    out.append(
        _check(
            f"X-volution deploy form faster than its training form (eval) at {where}",
            faster,
            detail,
        )
    )
    vs_conv = _ratio(deploy, conv)
    out.append(
        _check(
            f"X-volution deploy form within 2.5x of conv3x3 at {where}",
            None if vs_conv is None else vs_conv <= 2.5,
            f"deploy/conv3x3 = {_fmt(vs_conv, 2)}x ({_fmt(deploy, 2)} vs {_fmt(conv, 2)} ms)",
        )
    )

    exps = scaling.get("exponents", {})
    glmix_exp, gsa_exp = exps.get("glmix"), exps.get("global_attention")
    sizes = scaling.get("sizes", [])
    span = f"{sizes[0]}x{sizes[0]} to {sizes[-1]}x{sizes[-1]}" if sizes else ""
    out.append(
        _check(
            f"GLMix mixer time-vs-pixels exponent <= 1.15 ({span})",
            None if glmix_exp is None else glmix_exp <= 1.15,
            f"GLMix exponent = {_fmt(glmix_exp, 3)}",
        )
    )
    clearly = None if glmix_exp is None or gsa_exp is None else gsa_exp >= glmix_exp + 0.2
    out.append(
        _check(
            "global attention grows clearly faster than GLMix (exponent at least 0.2 higher)",
            clearly,
            f"global attention exponent = {_fmt(gsa_exp, 3)}, GLMix = {_fmt(glmix_exp, 3)}",
        )
    )
    return out


def _label(name: str) -> str:
    if name in OPS_BY_NAME:
        return OPS_BY_NAME[name].label
    return REFS_BY_NAME[name].label if name in REFS_BY_NAME else name


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
        conv = _find(stage, "conv3x3", channels, size)
        lines += [
            "",
            f"## {channels} channels @ {size}x{size}",
            "",
            "| operator | params | GMACs | fwd ms | x conv | ref / op | fwd+bwd ms | x conv | "
            "ref / op | mem fwd MiB | mem fwd+bwd MiB | rel diff |",
            "|---|---:|---:|---|---:|---:|---|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            is_ref = r["op"] in REFS_BY_NAME
            ref = None
            if not is_ref:
                ref = next(
                    (_find(stage, x.name, channels, size) for x in REFERENCES if x.of == r["op"]),
                    None,
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
                cells.append(_fmt(_ratio(stats["median_ms"], _median(conv, key)), 2))
                cells.append(
                    "" if is_ref else _fmt(_ratio(_median(ref, key), stats["median_ms"]), 2)
                )
            cells.append(_fmt(r.get("memory_forward_mib")))
            cells.append(_fmt(r.get("memory_train_mib")))
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
            mf = [_mem(r, "memory_forward_mib") or 0 for r in rows]
            mt = [_mem(r, "memory_train_mib") or 0 for r in rows]
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    args = p.parse_args(argv)
    if args.paired_rounds is not None and args.paired_rounds < 1:
        p.error(f"--paired-rounds must be at least 1, got {args.paired_rounds}")
    return args


def write_outputs(report: dict, out: Path, with_plots: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    report["plots"] = plots(report, out) if with_plots else []
    (out / "ops.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "ops.md").write_text(markdown(report))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.render is not None:
        report = json.loads(args.render.read_text())
        write_outputs(report, args.render.parent, not args.no_plots)
        return report
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
    all_names = [op.name for op in OPERATORS] + [ref.name for ref in REFERENCES]
    names = [n for n in all_names if args.ops is None or n in args.ops]
    if args.ops:
        unknown = sorted(set(args.ops) - set(all_names))
        if unknown:
            raise SystemExit(f"unknown operator names {unknown}; choose from {all_names}")

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
        Path(tempfile.gettempdir()) / "convattn_bench_ops_quick" if quick else RESULTS
    )
    write_outputs(report, out, not args.no_plots)
    for t in report["targets"]:
        log(f"{t['status']}: {t['name']} ({t['detail']})")
    log(f"wrote {out / 'ops.json'}, ops.md and {report['plots']}")
    return report


if __name__ == "__main__":
    main()
