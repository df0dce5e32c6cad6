"""Numerical comparisons shared by the benchmarks, the demo and the export checks."""

from __future__ import annotations

import torch

__all__ = ["max_relative_deviation"]


def max_relative_deviation(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``max |actual - expected| / max |expected|``, computed in float64.

    The scale is clamped at 1e-12 so an all-zero ``expected`` gives the absolute deviation
    (times 1e12) instead of a division by zero. Half-precision inputs are measured exactly.
    """
    actual, expected = actual.detach().double(), expected.detach().double()
    scale = expected.abs().max().clamp_min(1e-12)
    return float((actual - expected).abs().max() / scale)
