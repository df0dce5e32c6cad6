"""Wall-clock timing of a repeated step: warm-up, then median and spread over repeats.

Convention (spec ``ecosystem.md`` section 5): warm-up calls are discarded, every timed call is one
step (a batch), the device is synchronised before and after each step on CUDA, and the summary is
the median with quartiles and extremes in milliseconds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch

__all__ = ["summarize", "synchronizer", "time_steps"]


def summarize(samples_s: Sequence[float]) -> dict[str, float | int]:
    """Median, quartiles (inclusive method), min and max of ``samples_s``, in milliseconds.

    Args:
        samples_s: step times in seconds (at least one).

    Returns:
        ``median_ms``, ``q1_ms``, ``q3_ms``, ``iqr_ms``, ``min_ms``, ``max_ms`` and ``repeats``.
    """
    if not samples_s:
        raise ValueError("summarize: 'samples_s' is empty")
    ms = sorted(t * 1e3 for t in samples_s)
    if len(ms) > 1:
        q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive")
    else:
        q1 = q3 = ms[0]
    return {
        "median_ms": statistics.median(ms),
        "q1_ms": q1,
        "q3_ms": q3,
        "iqr_ms": q3 - q1,
        "min_ms": ms[0],
        "max_ms": ms[-1],
        "repeats": len(ms),
    }


def synchronizer(device: torch.device | str) -> Callable[[], None]:
    """A function that waits for ``device``'s queued work (a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_steps(
    step: Callable[[], object],
    warmup: int,
    repeats: int,
    sync: Callable[[], None] = lambda: None,
) -> dict[str, float | int]:
    """Run ``step`` ``warmup`` times untimed, then ``repeats`` times timed; see :func:`summarize`.

    Args:
        step: one measured unit of work (e.g. a forward pass over a batch).
        warmup: discarded calls (thread pools, allocator, kernel selection, compilation).
        repeats: timed calls (at least one).
        sync: waits for asynchronous work (see :func:`synchronizer`).
    """
    if repeats < 1:
        raise ValueError(f"time_steps: 'repeats' must be at least 1, got {repeats}")
    for _ in range(max(0, warmup)):
        step()
    sync()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync()
        samples.append(time.perf_counter() - start)
    return summarize(samples)
