"""The convolutional MLP of GLNet's NCHW blocks (GLMix blocks and full-MHSA NCHW blocks)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ResidualDepthwiseConv", "conv_mlp"]


class ResidualDepthwiseConv(nn.Conv2d):
    """``h + DWConv_kxk(h)`` with bias: the optional positional conv inside the GLNet-4G MLP."""

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__(
            channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=True
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


def conv_mlp(dim: int, hidden: int, mlp_dw: bool) -> nn.Sequential:
    """The GLNet conv MLP: 1x1 -> [h + DW3x3(h)] -> GELU -> 1x1 (keys ``0``, ``1``, ``3``).

    Index 1 is an identity placeholder when ``mlp_dw`` is False, as in the official code, so the
    keys are the same with and without the depthwise conv.
    """
    return nn.Sequential(
        nn.Conv2d(dim, hidden, 1),
        ResidualDepthwiseConv(hidden, 3) if mlp_dw else nn.Identity(),
        nn.GELU(),
        nn.Conv2d(hidden, dim, 1),
    )
