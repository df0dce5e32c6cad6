"""LayerScale (Touvron et al., "Going deeper with Image Transformers", ICCV 2021)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LayerScale", "layer_scale"]


class LayerScale(nn.Module):
    """Per-channel residual-branch scale ``gamma``, shaped (C,) for tokens or (1, C, 1, 1) for NCHW.

    Args:
        dim: channels C.
        init_value: initial value of every entry.
        channels_last: True for (B, N, C) tokens, False for NCHW maps (the official key shapes).
    """

    def __init__(self, dim: int, init_value: float, channels_last: bool) -> None:
        super().__init__()
        shape = (dim,) if channels_last else (1, dim, 1, 1)
        self.gamma = nn.Parameter(torch.full(shape, float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


def layer_scale(dim: int, init_value: float | None, channels_last: bool) -> nn.Module:
    """A :class:`LayerScale`, or ``nn.Identity`` when ``init_value`` is None (no LayerScale)."""
    return nn.Identity() if init_value is None else LayerScale(dim, init_value, channels_last)
