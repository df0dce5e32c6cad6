"""Re-parameterisation: fold every training-time structure that is linear at inference into weights.

``reparameterize_model`` walks a model and calls each module's ``reparameterize()`` (alias
``switch_to_deploy``), with the semantics of timm's ``timm.utils.reparameterize_model`` (a deep copy
unless ``inplace``; idempotent), so timm users' tooling and ours agree. What each family folds:

* X-volution (arXiv 2106.02253): both branch BNs and, for PSSA, both branches into one dynamic
  convolution (:meth:`~convattn.layers.xvolution.XVolution.reparameterize`).
* ResNet families: every convolution + BatchNorm pair (stem, blocks, downsample) becomes one biased
  convolution; the BN after an ACmix module stays (ACmix is not linear in its output channels'
  inputs, see :meth:`~convattn.layers.acmix.ACmix.reparameterize`).
* ACmix (arXiv 2111.14556): ``rate2`` into ``dep_conv`` and ``rate1`` into the value projection
  (compensated in ``fc``) or into ``proj`` (Swin variant); both rates then read 1.
* GLNet (arXiv 2411.14429): conv -> BN pairs of the stems and transitions; the STL transitions'
  BN -> conv 2x2/2 pairs as an input-side affine (exact because that conv has no padding).

The pure fusion maths (``fuse_conv_bn``, ``bn_scale_shift``) is in :mod:`convattn.layers.conv_bn`.
"""

from __future__ import annotations

import copy
from itertools import pairwise

import torch
from torch import nn

from ..layers.conv_bn import biased_conv_like, bn_scale_shift, fuse_conv_bn_module

__all__ = [
    "ConvNormSequential",
    "fold_bn_conv_",
    "fold_conv_bn_",
    "fuse_bn_conv",
    "reparameterize_model",
]


def reparameterize_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Switch every module of ``model`` that can be re-parameterised to its deploy form.

    Calls ``reparameterize()`` (or, failing that, ``switch_to_deploy()``) on ``model`` itself and on
    every submodule, parents before children, as timm's ``reparameterize_model`` does for the
    submodules. BatchNorms are folded with their running statistics, so the result equals the
    input model in eval mode. Calling it again changes nothing.

    Args:
        model: any module (a registered model, a ``features_only`` wrapper, a single operator).
        inplace: modify ``model`` itself instead of a deep copy.

    Returns:
        The re-parameterised model (``model`` itself when ``inplace``).
    """
    if not inplace:
        model = copy.deepcopy(model)
    # Collected first: re-parameterising a module replaces some of its children.
    for module in list(model.modules()):
        switch = getattr(module, "reparameterize", None)
        if not callable(switch):
            switch = getattr(module, "switch_to_deploy", None)
        if callable(switch):
            switch()
    return model


@torch.no_grad()
def fuse_bn_conv(bn: nn.BatchNorm2d, conv: nn.Conv2d) -> nn.Conv2d:
    """Return one biased Conv2d equal to ``conv(bn(x))`` in eval mode (BN folded input-side).

    With ``bn(x) = s * x + t`` per input channel: ``W'[o, c] = W[o, c] * s[c]`` and
    ``b' = b + sum_{c, taps} W[o, c] * t[c]``. Only exact without padding: the original pads
    ``bn(x)`` with zeros, a folded conv would pad ``x`` with zeros, i.e. ``bn(x)`` with ``t``.

    Raises:
        ValueError: if ``conv`` pads its input.
    """
    if any(p != 0 for p in _padding(conv)):
        raise ValueError(
            f"fuse_bn_conv: the convolution pads its input (padding={conv.padding}); folding the "
            "BatchNorm before it would change the border outputs"
        )
    scale, shift = bn_scale_shift(bn)
    g = conv.groups
    out_ch, in_per_group = conv.weight.shape[:2]
    weight = conv.weight.reshape(g, out_ch // g, in_per_group, -1)
    fused_w = weight * scale.view(g, 1, in_per_group, 1)
    through = (weight * shift.view(g, 1, in_per_group, 1)).sum(dim=(2, 3)).flatten()
    bias = through if conv.bias is None else conv.bias + through
    fused = biased_conv_like(conv)
    fused.weight.copy_(fused_w.reshape_as(conv.weight))
    fused.bias.copy_(bias)
    return fused


def _padding(conv: nn.Conv2d) -> tuple[int, ...]:
    if isinstance(conv.padding, str):  # 'same' pads whenever the kernel is larger than 1
        return (0,) if conv.padding == "valid" or max(conv.kernel_size) == 1 else (1,)
    return tuple(conv.padding)


def fold_conv_bn_(parent: nn.Module, conv_name: str, bn_name: str) -> bool:
    """Fold ``parent.<bn_name>`` into the preceding ``parent.<conv_name>`` in place.

    The conv becomes biased and the BN an ``nn.Identity``, so the state-dict keys of the fused
    form are the conv's ``weight``/``bias`` at the same place.

    Returns:
        True if a pair was folded, False if it is not a (Conv2d, BatchNorm2d) pair (e.g. already
        folded, or a non-linear operator in the conv position).
    """
    conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
    if type(conv) is not nn.Conv2d or not isinstance(bn, nn.BatchNorm2d):
        return False
    fused = fuse_conv_bn_module(conv, bn)
    setattr(parent, conv_name, fused)
    setattr(parent, bn_name, nn.Identity())
    return True


def fold_bn_conv_(parent: nn.Module, bn_name: str, conv_name: str) -> bool:
    """Fold ``parent.<bn_name>`` into the following, unpadded ``parent.<conv_name>`` in place.

    Returns:
        True if folded; False if the pair is not (BatchNorm2d, Conv2d) or the conv pads (inexact).
    """
    bn, conv = getattr(parent, bn_name), getattr(parent, conv_name)
    if not isinstance(bn, nn.BatchNorm2d) or type(conv) is not nn.Conv2d:
        return False
    if any(p != 0 for p in _padding(conv)):
        return False
    setattr(parent, conv_name, fuse_bn_conv(bn, conv))
    setattr(parent, bn_name, nn.Identity())
    return True


class ConvNormSequential(nn.Sequential):
    """An ``nn.Sequential`` (same keys) whose ``reparameterize()`` folds its BatchNorms.

    Every BatchNorm2d directly after a Conv2d is folded into it; every BatchNorm2d directly before
    an unpadded Conv2d is folded into that one's input side. Folded BNs become ``nn.Identity`` so
    the indices (state-dict keys) of the other layers do not move.
    """

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the foldable BatchNorms in place (idempotent)."""
        names = list(self._modules)
        for first, second in pairwise(names):
            if not fold_conv_bn_(self, first, second):
                fold_bn_conv_(self, first, second)

    switch_to_deploy = reparameterize
