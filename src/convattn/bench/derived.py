"""Quantities derived from measured benchmark rows, shared by the report and the plots.

Conventions: throughput is batch / median step time; "fraction of peak" is the achieved MAC rate
over the dense matmul rate measured in the same run (same dtype); the scaling exponent is the
least-squares slope of log(latency) against log(pixels), so 1 means linear in pixels and 2
quadratic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["derive", "fit_exponent", "mode_label", "scaling_exponents"]


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


def mode_label(row: dict) -> str:
    mode = "train step" if row["mode"] == "train" else "forward"
    return mode + (" (deploy)" if row.get("deploy") else "")
