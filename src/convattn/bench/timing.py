"""Wall-clock timing of a repeated step: warm-up, then median and spread over repeats.

Convention: warm-up calls are discarded, every timed call is one step (a batch), the device is
synchronised before and after each step on CUDA, and the summary is the median with quartiles and
extremes in milliseconds. :func:`time_steps` times one step (optionally within a time budget);
:func:`interleaved_samples` times several steps in alternating rounds, for ratios that must not
drift with the machine's load. Every benchmark of the repository (``convattn bench``, the operator
and ACmix benchmarks, the demo) times through these two functions.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch

__all__ = ["interleaved_samples", "summarize", "synchronizer", "time_steps"]


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


def _timed(step: Callable[[], object], sync: Callable[[], None]) -> float:
    start = time.perf_counter()
    step()
    sync()
    return time.perf_counter() - start


def time_steps(
    step: Callable[[], object],
    warmup: int,
    repeats: int,
    sync: Callable[[], None] = lambda: None,
    budget_s: float | None = None,
) -> dict[str, float | int]:
    """Run ``step`` ``warmup`` times untimed, then ``repeats`` times timed; see :func:`summarize`.

    With ``budget_s`` the first call is timed and counts as a warm-up call; calls slower than half
    a second are their own warm-up (no further ones), and the number of timed calls is cut to what
    fits in about ``budget_s`` (at least one). A first call slower than a positive ``budget_s``
    is the only sample and the summary says ``"first_call_only": True``: its one-time costs are
    negligible next to it.

    Args:
        step: one measured unit of work (e.g. a forward pass over a batch).
        warmup: discarded calls (thread pools, allocator, kernel selection, compilation).
        repeats: timed calls (at least one; the most with ``budget_s``).
        sync: waits for asynchronous work (see :func:`synchronizer`).
        budget_s: seconds of timed calls per measurement (None: no budget).
    """
    if repeats < 1:
        raise ValueError(f"time_steps: 'repeats' must be at least 1, got {repeats}")
    if budget_s is not None:
        sync()
        first = _timed(step, sync)
        if first > budget_s > 0:
            return {**summarize([first]), "first_call_only": True}
        warmup = warmup - 1 if first < 0.5 else 0
        repeats = max(1, min(repeats, int(budget_s // max(first, 1e-9))))
    for _ in range(max(0, warmup)):
        step()
    sync()
    return summarize([_timed(step, sync) for _ in range(repeats)])


def interleaved_samples(
    steps: dict[str, Callable[[], object]],
    rounds: int,
    warmup: int = 1,
    sync: Callable[[], None] = lambda: None,
) -> dict[str, list[float]]:
    """Seconds per call of every step, timed in alternating rounds (A, B, ... then ..., B, A).

    Each step is first called ``warmup`` times. A difference of a few percent is below the drift
    of separate timing runs on a shared machine; timing the steps back to back, in alternating
    order, makes per-round ratios robust to load that comes and goes.
    """
    if rounds < 1:
        raise ValueError(f"interleaved_samples: 'rounds' must be at least 1, got {rounds}")
    names = list(steps)
    for step in steps.values():
        for _ in range(max(0, warmup)):
            step()
    sync()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            times[name].append(_timed(steps[name], sync))
    return times
