"""Convolution + BatchNorm pairs and the pure fusion maths used by every re-parameterisation.

The fusion functions take and return plain tensors (DiverseBranchBlock's ``dbb_transforms`` style)
so they are unit-testable on their own and differentiable.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ConvBN", "biased_conv_like", "bn_scale_shift", "fuse_conv_bn", "fuse_conv_bn_module"]


def bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (scale, shift) such that ``bn(y) == y * scale + shift`` per channel in eval mode."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("bn_scale_shift: BatchNorm must track running statistics to be folded")
    std = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(std)
    scale = gamma / std
    shift = beta - bn.running_mean * scale
    return scale, shift


def fuse_conv_bn(
    weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm into the preceding convolution's (weight, bias).

    ``weight`` has output channels in dim 0 (any number of trailing dims).
    """
    scale, shift = bn_scale_shift(bn)
    fused_w = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    fused_b = shift if bias is None else bias * scale + shift
    return fused_w, fused_b


def biased_conv_like(conv: nn.Conv2d) -> nn.Conv2d:
    """A new biased Conv2d with ``conv``'s geometry, device, dtype and training mode."""
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    )
    return fused.to(device=conv.weight.device, dtype=conv.weight.dtype).train(conv.training)


class ConvBN(nn.Sequential):
    """``Conv2d(bias=False) -> BatchNorm2d`` with ``conv``/``bn`` children (keys ``conv.*``, ``bn.*``).

    ``reparameterize()`` replaces the pair by one biased convolution in place; ``deploy=True`` builds
    that fused form directly so deploy checkpoints load into it.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        dilation: int = 1,
        deploy: bool = False,
    ) -> None:
        super().__init__()
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2
        conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            groups=groups,
            dilation=dilation,
            bias=deploy,
        )
        self.add_module("conv", conv)
        if not deploy:
            self.add_module("bn", nn.BatchNorm2d(out_channels))

    @property
    def deployed(self) -> bool:
        return "bn" not in self._modules

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold ``bn`` into ``conv`` in place (idempotent)."""
        if self.deployed:
            return
        conv = self.conv
        w, b = fuse_conv_bn(conv.weight, conv.bias, self.bn)
        fused = biased_conv_like(conv)
        fused.weight.copy_(w)
        fused.bias.copy_(b)
        self.conv = fused
        del self.bn


@torch.no_grad()
def fuse_conv_bn_module(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Return a new biased Conv2d equal to ``bn(conv(x))`` in eval mode."""
    w, b = fuse_conv_bn(conv.weight, conv.bias, bn)
    fused = biased_conv_like(conv)
    fused.weight.copy_(w)
    fused.bias.copy_(b)
    return fused
