"""Helpers shared by the tests (import as ``from helpers import ...``)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

OFFICIAL_KEYS = Path(__file__).resolve().parent / "official_keys"
"""Key -> shape maps of the official ACmix and GLNet models (see official_keys/README.md)."""


@torch.no_grad()
def randomize_bn(module: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Give every BatchNorm random running statistics and affine parameters (non-trivial folds)."""
    g = generator or torch.Generator().manual_seed(1234)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            dev, dt = m.running_mean.device, m.running_mean.dtype
            m.running_mean.copy_((torch.randn(n, generator=g) * 0.5).to(dev, dt))
            m.running_var.copy_((torch.rand(n, generator=g) * 1.5 + 0.25).to(dev, dt))
            if m.affine:
                m.weight.copy_((torch.randn(n, generator=g) * 0.5 + 1.0).to(dev, dt))
                m.bias.copy_((torch.randn(n, generator=g) * 0.5).to(dev, dt))
    return module


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5) -> None:
    """assert_close with an absolute tolerance relative to the output's scale (max |expected|)."""
    scale = expected.detach().abs().max().clamp_min(1e-12).item()
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale)
