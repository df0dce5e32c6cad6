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

The fusion maths, the one module-level fold (``fold_batch_norm_``) and ``ConvNormSequential`` live
with the operators in :mod:`convattn.layers.conv_bn`; this module walks models and re-exports them.
"""

from __future__ import annotations

import copy

from torch import nn

from ..layers.conv_bn import ConvNormSequential, fold_batch_norm_

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


# --- compatibility names ----------------------------------------------------------------------
# The fold itself is :func:`convattn.layers.conv_bn.fold_batch_norm_` (one entry point, used by
# every model); these keep the earlier order-specific spellings of this module working.


def fuse_bn_conv(bn: nn.BatchNorm2d, conv: nn.Conv2d) -> nn.Conv2d:
    """Return one biased Conv2d equal to ``conv(bn(x))`` in eval mode (BN folded input-side).

    Raises:
        ValueError: if ``conv`` pads its input (the fold would change the border outputs).
    """
    parent = nn.Module()
    parent.bn, parent.conv = bn, conv
    if not fold_batch_norm_(parent, "bn", "conv"):
        raise ValueError(
            f"fuse_bn_conv: the convolution pads its input (padding={conv.padding}); folding the "
            "BatchNorm before it would change the border outputs"
        )
    return parent.conv


def fold_conv_bn_(parent: nn.Module, conv_name: str, bn_name: str) -> bool:
    """:func:`fold_batch_norm_` for a ``conv -> BN`` pair only (False for any other pair)."""
    bn = getattr(parent, bn_name)
    return isinstance(bn, nn.BatchNorm2d) and fold_batch_norm_(parent, conv_name, bn_name)


def fold_bn_conv_(parent: nn.Module, bn_name: str, conv_name: str) -> bool:
    """:func:`fold_batch_norm_` for a ``BN -> unpadded conv`` pair only (False otherwise)."""
    bn = getattr(parent, bn_name)
    return isinstance(bn, nn.BatchNorm2d) and fold_batch_norm_(parent, bn_name, conv_name)
