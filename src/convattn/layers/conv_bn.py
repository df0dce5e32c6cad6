"""Convolution + BatchNorm: the fusion maths and the one module-level fold every model uses.

Pure maths on tensors (DiverseBranchBlock's ``dbb_transforms`` style, unit-testable and
differentiable): :func:`bn_scale_shift` and :func:`fuse_conv_bn` (a BN after a convolution).

One fold entry point, :func:`fold_batch_norm_`: it replaces a BatchNorm next to a ``Conv2d`` in a
parent module by folding it into that convolution, whichever side it sits on (output side:
``conv -> BN``; input side: ``BN -> conv`` when the convolution does not pad, the only case where
the fold is exact). :class:`ConvBN` and :class:`ConvNormSequential` are built on it, and the model
families call it for their named pairs (RepVGG-style ``reparameterize()``).
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn

__all__ = [
    "ConvBN",
    "ConvNormSequential",
    "biased_conv_like",
    "bn_scale_shift",
    "fold_batch_norm_",
    "fuse_conv_bn",
    "fuse_conv_bn_module",
]


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


def _fuse_bn_into_input(
    bn: nn.BatchNorm2d, weight: torch.Tensor, bias: torch.Tensor | None, groups: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of ``conv(bn(x))`` for an unpadded conv, BN folded on the input side.

    With ``bn(x) = s * x + t`` per input channel: ``W'[o, c] = W[o, c] * s[c]`` and
    ``b' = b + sum_{c, taps} W[o, c] * t[c]``.
    """
    scale, shift = bn_scale_shift(bn)
    out_ch, in_per_group = weight.shape[:2]
    grouped = weight.reshape(groups, out_ch // groups, in_per_group, -1)
    fused_w = grouped * scale.view(groups, 1, in_per_group, 1)
    through = (grouped * shift.view(groups, 1, in_per_group, 1)).sum(dim=(2, 3)).flatten()
    return fused_w.reshape_as(weight), through if bias is None else bias + through


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


def _pads(conv: nn.Conv2d) -> bool:
    if isinstance(conv.padding, str):  # 'same' pads whenever the kernel is larger than 1
        return conv.padding != "valid" and max(conv.kernel_size) > 1
    return any(p != 0 for p in conv.padding)


@torch.no_grad()
def _fused(first: nn.Module, second: nn.Module) -> nn.Conv2d | None:
    """The biased conv equal to ``second(first(x))`` in eval mode, or None if not foldable."""
    if type(first) is nn.Conv2d and isinstance(second, nn.BatchNorm2d):
        conv, (weight, bias) = first, fuse_conv_bn(first.weight, first.bias, second)
    elif isinstance(first, nn.BatchNorm2d) and type(second) is nn.Conv2d and not _pads(second):
        conv = second
        weight, bias = _fuse_bn_into_input(first, second.weight, second.bias, second.groups)
    else:
        return None
    fused = biased_conv_like(conv)
    fused.weight.copy_(weight)
    fused.bias.copy_(bias)
    return fused


def fold_batch_norm_(parent: nn.Module, first: str, second: str) -> bool:
    """Fold the BatchNorm of the consecutive pair ``parent.<first>``, ``parent.<second>`` in place.

    ``Conv2d -> BatchNorm2d``: the BN is folded into the conv's output. ``BatchNorm2d -> Conv2d``
    with an unpadded conv: the BN is folded into the conv's input side (a padded conv would pad
    ``x`` instead of ``bn(x)`` with zeros, so that pair is left alone). The conv becomes biased
    and the BN an ``nn.Identity``, so the other state-dict keys do not move. Idempotent.

    Returns:
        True if a pair was folded; False if it is no foldable (conv, BN) pair (e.g. already folded,
        or a non-linear operator in the conv position).
    """
    a, b = getattr(parent, first), getattr(parent, second)
    fused = _fused(a, b)
    if fused is None:
        return False
    conv_name, bn_name = (first, second) if isinstance(b, nn.BatchNorm2d) else (second, first)
    setattr(parent, conv_name, fused)
    setattr(parent, bn_name, nn.Identity())
    return True


def fuse_conv_bn_module(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Return a new biased Conv2d equal to ``bn(conv(x))`` in eval mode."""
    fused = _fused(conv, bn)
    if fused is None:
        raise TypeError("fuse_conv_bn_module: expected an nn.Conv2d and an nn.BatchNorm2d")
    return fused


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

    def reparameterize(self) -> None:
        """Fold ``bn`` into ``conv`` in place (idempotent); the deploy form has no ``bn`` key."""
        if not self.deployed and fold_batch_norm_(self, "conv", "bn"):
            del self.bn


class ConvNormSequential(nn.Sequential):
    """An ``nn.Sequential`` (same keys) whose ``reparameterize()`` folds its BatchNorms.

    Every consecutive pair goes through :func:`fold_batch_norm_`: a BatchNorm2d directly after a
    Conv2d is folded into it, one directly before an unpadded Conv2d into that one's input side.
    Folded BNs become ``nn.Identity`` so the indices (state-dict keys) of the other layers do not
    move.
    """

    def reparameterize(self) -> None:
        """Fold the foldable BatchNorms in place (idempotent)."""
        for first, second in pairwise(list(self._modules)):
            fold_batch_norm_(self, first, second)

    switch_to_deploy = reparameterize
