"""Model benchmark outputs: derived rates, resolution-scaling exponents, JSON, CSV and Markdown.

Conventions: MACs are ``FlopCounterMode / 2`` with attention products counted (what papers call
"FLOPs"); a training step's MACs are forward + backward, counted the same way; throughput is
batch / median step time; "fraction of peak" is the achieved MAC rate over the dense matmul rate
measured in the same run (same dtype); the scaling exponent is the least-squares slope of
log(latency) against log(pixels), so 1 means linear in pixels and 2 quadratic.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "CSV_COLUMNS",
    "derive",
    "fit_exponent",
    "render_markdown",
    "scaling_exponents",
    "write_outputs",
]

CSV_COLUMNS = [
    "model",
    "mode",
    "deploy",
    "img_size",
    "batch",
    "device",
    "threads",
    "channels_last",
    "compile",
    "amp_dtype",
    "params",
    "gmacs_per_image",
    "step_gmacs",
    "median_ms",
    "q1_ms",
    "q3_ms",
    "iqr_ms",
    "min_ms",
    "max_ms",
    "repeats",
    "img_per_s",
    "achieved_gmacs_per_s",
    "fraction_of_peak",
    "peak_memory_mib",
    "first_call_s",
    "deploy_method",
    "error",
]


def fit_exponent(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of log(y) against log(x): ``y ~ c * x**exponent``.

    Raises:
        ValueError: fewer than two distinct positive x values, or a non-positive value.
    """
    if len(x) != len(y):
        raise ValueError(f"fit_exponent: x and y differ in length ({len(x)} vs {len(y)})")
    if any(v <= 0 for v in [*x, *y]):
        raise ValueError("fit_exponent: all values must be positive for a log-log fit")
    if len(set(x)) < 2:
        raise ValueError("fit_exponent: need at least two distinct x values")
    lx = [math.log(v) for v in x]
    ly = [math.log(v) for v in y]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def derive(row: dict, peak_gmacs_per_s: dict[str, float] | None) -> dict:
    """Add throughput, achieved GMAC/s and fraction of the matmul peak to a measured row."""
    seconds = row["timing"]["median_ms"] / 1e3
    row["gmacs_per_image"] = row["macs_per_image"] / 1e9
    row["step_gmacs"] = row["step_macs"] / 1e9
    row["img_per_s"] = row["batch"] / seconds
    row["achieved_gmacs_per_s"] = row["step_macs"] / seconds / 1e9
    peak = (peak_gmacs_per_s or {}).get(row.get("amp_dtype") or "float32")
    row["fraction_of_peak"] = row["achieved_gmacs_per_s"] / peak if peak else None
    return row


def scaling_exponents(rows: Sequence[dict]) -> list[dict]:
    """Latency-vs-pixels exponent of every (model, mode, form, batch) measured at >= 2 sizes."""
    series: dict[tuple, dict[int, float]] = {}
    for r in rows:
        if r.get("error"):
            continue
        key = (r["model"], r["mode"], bool(r.get("deploy")), r["batch"])
        series.setdefault(key, {})[r["img_size"]] = r["timing"]["median_ms"]
    out = []
    for (model, mode, deploy, batch), times in series.items():
        if len(times) < 2:
            continue
        sizes = sorted(times)
        out.append(
            {
                "model": model,
                "mode": mode,
                "deploy": deploy,
                "batch": batch,
                "img_sizes": sizes,
                "median_ms": [times[s] for s in sizes],
                "exponent": fit_exponent([s * s for s in sizes], [times[s] for s in sizes]),
            }
        )
    return out


def _flat(row: dict) -> dict:
    flat = {k: row.get(k) for k in CSV_COLUMNS}
    for key in ("median_ms", "q1_ms", "q3_ms", "iqr_ms", "min_ms", "max_ms", "repeats"):
        flat[key] = row.get("timing", {}).get(key)
    return flat


def _fmt(value, spec: str = ".2f", missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def _num(value: float | None) -> str:
    """About three significant digits without exponent notation (0.0286, 3.14, 42.1, 1234)."""
    if value is None:
        return "-"
    size = abs(value)
    if size >= 100:
        return f"{value:.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1 or size == 0:
        return f"{value:.2f}"
    return f"{value:.3g}"


def mode_label(row: dict) -> str:
    mode = "train step" if row["mode"] == "train" else "forward"
    return mode + (" (deploy)" if row.get("deploy") else "")


def render_markdown(report: dict) -> str:
    """The results as a Markdown page: environment, machine peak, main table, scaling table."""
    env, cfg, machine = report["environment"], report["config"], report["machine"]
    git = env.get("git") or {}
    commit = f"{git['commit'][:10]}{' (dirty)' if git.get('dirty') else ''}" if git else "unknown"
    hw = env.get("gpu") or f"{env['cpu_model']} ({env['cpu_count']} logical CPUs)"
    load = env.get("load_average_start"), env.get("load_average_end")
    lines = [
        "# Model benchmark",
        "",
        f"Generated by `convattn bench` on {env['date']} (git {commit}): torch {env['torch']}, "
        f"device {env['device']} ({hw}, {env['cpu_capability']}), intra-op threads "
        f"{env['threads']}, warm-up {cfg['warmup']}, repeats {cfg['repeats']}, "
        f"channels_last {cfg['channels_last']}, compile {cfg['compile']}, amp {cfg['amp']}.",
    ]
    if load[0] and load[1]:
        lines.append(
            f"Load average {load[0][0]:.2f} at start, {load[1][0]:.2f} at end "
            "(other processes on the machine change absolute times; ratios measured in one "
            "run are more robust)."
        )
    if report.get("warnings"):
        lines += [""] + [f"**Warning:** {w}." for w in report["warnings"]]
    lines += ["", "## Dense matmul rate (the yardstick for 'fraction of peak')", ""]
    for key in ("matmul_start", "matmul_end"):
        entry = machine.get(key, {})
        if entry.get("error"):
            lines.append(f"- {key}: error: {entry['error']}")
            continue
        for dtype, rate in entry.get("matmul", {}).items():
            method = rate.get("method", "mm")
            others = ", ".join(
                f"{m}: {r:.1f}" for m, r in rate.get("gmacs_per_s_by_method", {}).items()
            )
            lines.append(
                f"- {key.replace('matmul_', '')} of run: {rate['size']}x{rate['size']} {dtype} "
                f"matmul as {method}, {rate['median_ms']:.2f} ms median -> "
                f"{rate['gflops_per_s']:.1f} GFLOP/s = {rate['gmacs_per_s']:.1f} GMAC/s"
                + (f" (GMAC/s by method: {others})" if others else "")
            )
    peaks = ", ".join(f"{d}: {v:.1f} GMAC/s" for d, v in machine.get("peak", {}).items())
    lines += [f"- peak used (best of both): {peaks or 'n/a'}", ""]
    lines += [
        "## Results",
        "",
        "| model | mode | input | batch | params (M) | GMACs/img | median ms | IQR ms | "
        "min-max ms | img/s | GMAC/s | % of matmul peak | peak mem MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        cells = [f"`{r['model']}`", mode_label(r), f"{r['img_size']}²", str(r["batch"])]
        if r.get("error"):
            error = r["error"].replace("|", "/")
            lines.append("| " + " | ".join(cells) + f" | error: {error} |" + " |" * 8)
            continue
        t = r["timing"]
        params = r.get("params_deploy", r["params"])
        frac = r.get("fraction_of_peak")
        cells += [
            f"{params / 1e6:.2f}",
            _num(r["gmacs_per_image"]),
            f"{t['median_ms']:.2f}",
            f"{t['q1_ms']:.2f}-{t['q3_ms']:.2f}",
            f"{t['min_ms']:.2f}-{t['max_ms']:.2f}",
            _num(r["img_per_s"]),
            _num(r["achieved_gmacs_per_s"]),
            _num(None if frac is None else 100 * frac),
            f"{r['peak_memory_mib']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    scaling = scaling_exponents(report["rows"])
    if scaling:
        sizes = sorted({s for entry in scaling for s in entry["img_sizes"]})
        lines += [
            "",
            "## Resolution scaling (median ms)",
            "",
            "| model | mode | batch | " + " | ".join(f"{s}²" for s in sizes) + " | exponent |",
            "|---|---|---:|" + "---:|" * (len(sizes) + 1),
        ]
        for entry in scaling:
            times = dict(zip(entry["img_sizes"], entry["median_ms"]))
            cells = [_fmt(times.get(s)) for s in sizes]
            lines.append(
                f"| `{entry['model']}` | {mode_label(entry)} | {entry['batch']} | "
                + " | ".join(cells)
                + f" | {entry['exponent']:.3f} |"
            )
        lines += [
            "",
            "Exponent: least-squares slope of log(latency) against log(pixels) (1 = linear in "
            "pixels, 2 = quadratic).",
        ]
    lines += [
        "",
        "## Method",
        "",
        "One fresh process per row, same thread count. Forward: eval mode under "
        "`torch.inference_mode()` (deploy: re-parameterised first). Train step: forward, "
        "cross-entropy on random labels, backward, SGD (momentum 0.9) step. Latency: median over "
        "the repeats after the warm-up, quartiles as IQR. GMACs/img: FlopCounterMode / 2 of one "
        "forward at batch 1 with the math SDPA backend (attention products included); the GMAC/s "
        "of a train step counts its forward + backward MACs. Peak memory: growth over the state "
        "before one step (CPU: peak RSS with VmHWM reset; CUDA: allocator peak).",
    ]
    if report.get("errors"):
        lines += ["", "## Errors", ""]
        lines += [f"- {e['job']}: {e['error']}" for e in report["errors"]]
    return "\n".join(lines) + "\n"


def write_outputs(report: dict, out_dir: str | Path, plots: bool = True) -> list[Path]:
    """Write results.json, results.csv, results.md and (if ``plots``) the PNG plots."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {**report, "scaling": scaling_exponents(report["rows"])}
    paths = [out / "results.json", out / "results.csv", out / "results.md"]
    paths[0].write_text(json.dumps(report, indent=2, default=str) + "\n")
    with open(paths[1], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in report["rows"]:
            writer.writerow(_flat(row))
    paths[2].write_text(render_markdown(report))
    if plots:
        from .plots import write_plots

        paths += write_plots(report, out)
    return paths
