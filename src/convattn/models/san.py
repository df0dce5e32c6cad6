"""SAN (patchwise self-attention networks) and ACmix-SAN.

* SAN: Zhao, Jia, Koltun, "Exploring Self-attention for Image Recognition", CVPR 2020; official
  code hszhao/SAN (``model/san.py``, configurations ``config/imagenet/imagenet_san*_patchwise``).
  Patchwise variants SAN-10/15/19: 11.8 / 16.2 / 20.5 M parameters, 1.9 / 2.6 / 3.3 GFLOPs (the
  official counter's multiply-adds), 77.1 / 78.0 / 78.2 top-1 (official README table).
* ACmix-SAN: Pan et al., CVPR 2022, section 4.5: every patchwise attention module becomes
  :class:`~convattn.layers.san.ACmixPatchwiseAttention` (the shift-convolution path added on the
  shared projections). No official code; ``docs/operators/acmix-san.md`` is the reconstruction.

Layout (official, key names equal): a 1x1 stem ``conv_in``/``bn_in`` at the input resolution, then
five stages i = 0..4, each ``max-pool 2x2 -> conv_i (1x1, no bias) -> layer_i -> bn_i -> ReLU``,
widths 64, 256, 512, 1024, 2048, windows 3 (stage 0) and 7. A block is pre-activation:
``x + conv(relu(bn2(sam(relu(bn1(x))))))`` with ``sam`` the attention module (C -> C / 4, q and k of
C / 16 channels, 8 channels per weight group) and ``conv`` 1x1 (C / 4 -> C, with bias).
Blocks per stage: SAN-10 [2, 1, 2, 4, 1], SAN-15 [3, 2, 3, 5, 2], SAN-19 [3, 3, 4, 6, 3].

Official checkpoints load as they are (``module.`` prefixes are stripped by the builder; each
module stacks the official ``sam.conv1/conv2/conv3`` into ``sam.qkv``). One deliberate difference:
the max-pools round up (``ceil_mode``), so every input size works; on sizes divisible by 32 (224)
this is the official network exactly.

Deploy form (``reparameterize()`` / ``deploy=True``): the stem BN folds into ``conv_in``, every
weight MLP's inner BN into the convolution before it, ACmix's rates into its weights. The other
BNs stay: each block's ``bn1`` and the MLP's first BN precede a ReLU, and ``bn2`` / the stage
``bn_i`` follow a patchwise aggregation (no bias can pass through it) or a residual sum.

The file ends with the configuration table and the registered constructors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..layers import DropPath
from ..layers._checks import check_feature_map
from ..layers.conv_bn import fold_batch_norm_
from ..layers.san import ACmixPatchwiseAttention, PatchwiseSelfAttention
from ._features import resolve_out_indices
from ._helpers import make_cfg, stochastic_depth_rates
from ._registry import register_model

__all__ = ["SAN", "SANBottleneck"]

_OPERATORS = {"patchwise": PatchwiseSelfAttention, "acmix_patchwise": ACmixPatchwiseAttention}


class SANBottleneck(nn.Module):
    """Pre-activation SAN block: ``x + conv(relu(bn2(sam(relu(bn1(x))))))`` (official keys).

    Args:
        channels: block width C (input = output).
        kernel_size: attention window side.
        operator: ``"patchwise"`` (SAN) or ``"acmix_patchwise"`` (ACmix-SAN).
        share_planes: channels per weight group of the attention.
        drop_path: stochastic-depth probability of the residual branch.
        deploy: build the attention module's folded form.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 7,
        operator: str = "patchwise",
        share_planes: int = 8,
        drop_path: float = 0.0,
        deploy: bool = False,
    ) -> None:
        super().__init__()
        mid = channels // 4
        self.bn1 = nn.BatchNorm2d(channels)
        self.sam = _OPERATORS[operator](
            channels,
            mid,
            kernel_size=kernel_size,
            rel_channels=channels // 16,
            share_planes=share_planes,
            deploy=deploy,
        )
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv = nn.Conv2d(mid, channels, kernel_size=1)
        self.relu = nn.ReLU(inplace=True)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.sam(self.relu(self.bn1(x)))
        out = self.conv(self.relu(self.bn2(out)))
        return x + self.drop_path(out)


class SAN(nn.Module):
    """SAN backbone (patchwise), official layout and key names.

    Args:
        layers: blocks per stage (five stages).
        kernels: attention window side per stage.
        widths: stage widths (official: 64, 256, 512, 1024, 2048); multiples of 32 (q and k have
            width / 16 channels, v width / 4 in groups of ``share_planes``).
        operator: ``"patchwise"`` (SAN) or ``"acmix_patchwise"`` (ACmix-SAN).
        share_planes: channels per weight group (official: 8).
        num_classes: classifier outputs (0: no classifier, ``forward`` returns pooled features).
        in_chans: input channels.
        drop_path_rate: stochastic depth of the last block (linear schedule; official: 0).
        deploy: build the re-parameterised form directly.
    """

    def __init__(
        self,
        layers: Sequence[int] = (2, 1, 2, 4, 1),
        kernels: Sequence[int] = (3, 7, 7, 7, 7),
        widths: Sequence[int] = (64, 256, 512, 1024, 2048),
        operator: str = "patchwise",
        share_planes: int = 8,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_path_rate: float = 0.0,
        deploy: bool = False,
    ) -> None:
        super().__init__()
        if not (len(layers) == len(kernels) == len(widths)):
            raise ValueError(
                f"SAN: 'layers', 'kernels' and 'widths' need one entry per stage, got "
                f"{len(layers)}, {len(kernels)} and {len(widths)}"
            )
        if operator not in _OPERATORS:
            raise ValueError(f"SAN: 'operator' must be one of {list(_OPERATORS)}, got {operator!r}")
        bad = [w for w in widths if not isinstance(w, int) or w < 32 or w % 32]
        if bad:
            raise ValueError(f"SAN: 'widths' must be positive multiples of 32, got {list(widths)}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_stages = len(layers)
        self.conv_in = nn.Conv2d(in_chans, widths[0], kernel_size=1, bias=deploy)
        self.bn_in: nn.Module = nn.Identity() if deploy else nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)
        dpr = stochastic_depth_rates(drop_path_rate, list(layers))
        self.feature_info: list[dict] = []
        in_ch = widths[0]
        for i, (n, k, width) in enumerate(zip(layers, kernels, widths)):
            self.add_module(f"conv{i}", nn.Conv2d(in_ch, width, kernel_size=1, bias=False))
            blocks = [
                SANBottleneck(width, k, operator, share_planes, dpr[i][j], deploy) for j in range(n)
            ]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            self.add_module(f"bn{i}", nn.BatchNorm2d(width))
            self.feature_info.append(
                dict(num_chs=width, reduction=2 ** (i + 1), module=f"layer{i}", op=operator)
            )
            in_ch = width
        self.num_features = in_ch
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc: nn.Module = nn.Linear(in_ch, num_classes) if num_classes > 0 else nn.Identity()

    # --- timm-style API ---------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the stem BN into ``conv_in`` (idempotent); the attention modules fold themselves."""
        fold_batch_norm_(self, "conv_in", "bn_in")

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.in_chans, type(self).__name__)
        return self.relu(self.bn_in(self.conv_in(x)))

    def forward_stage(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """Stage i: max-pool, 1x1 ``conv_i``, the blocks, ``bn_i``, ReLU."""
        x = getattr(self, f"layer{i}")(getattr(self, f"conv{i}")(self.pool(x)))
        return self.relu(getattr(self, f"bn{i}")(x))

    def forward_intermediates(self, x: torch.Tensor, indices: Sequence[int] | int | None = None):
        """Outputs of the selected stages (NCHW), stopping after the last one needed."""
        wanted = resolve_out_indices(indices, self.num_stages)
        x = self.forward_stem(x)
        out = []
        for i in range(max(wanted) + 1):
            x = self.forward_stage(x, i)
            if i in wanted:
                out.append(x)
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        for i in range(self.num_stages):
            x = self.forward_stage(x, i)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.avgpool(x).flatten(1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --- configurations ------------------------------------------------------------------------------
_SAN_PAPER = "Zhao, Jia, Koltun, Exploring Self-attention for Image Recognition, CVPR 2020"
_ACMIX_PAPER = "Pan et al., On the Integration of Self-Attention and Convolution, CVPR 2022"
_SAN_CHECKPOINTS = "hszhao/SAN release (Google Drive, linked from its README)"
_SMALL = dict(
    input_size=(3, 32, 32), pool_size=(1, 1), crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3
)
_CFG = dict(first_conv="conv_in", classifier="fc")

default_cfgs = {
    "san10": make_cfg(
        **_CFG,
        paper=_SAN_PAPER,
        paper_top1=77.1,
        paper_params_m=11.8,
        paper_gmacs=1.9,
        official_checkpoint=_SAN_CHECKPOINTS,
    ),
    "san15": make_cfg(
        **_CFG,
        paper=_SAN_PAPER,
        paper_top1=78.0,
        paper_params_m=16.2,
        paper_gmacs=2.6,
        official_checkpoint=_SAN_CHECKPOINTS,
    ),
    "san19": make_cfg(
        **_CFG,
        paper=_SAN_PAPER,
        paper_top1=78.2,
        paper_params_m=20.5,
        paper_gmacs=3.3,
        official_checkpoint=_SAN_CHECKPOINTS,
    ),
    "acmix_san10": make_cfg(
        **_CFG,
        paper=_ACMIX_PAPER,
        paper_top1=77.6,
        paper_params_m=12.1,
        paper_gmacs=1.9,
        official_checkpoint="not released (LeapLabTHU/ACmix)",
    ),
    "acmix_san15": make_cfg(
        **_CFG,
        paper=_ACMIX_PAPER,
        paper_top1=78.4,
        paper_params_m=16.6,
        paper_gmacs=2.7,
        official_checkpoint="not released (LeapLabTHU/ACmix)",
    ),
    "acmix_san19": make_cfg(
        **_CFG,
        paper=_ACMIX_PAPER,
        paper_top1=78.7,
        paper_params_m=21.2,
        paper_gmacs=3.4,
        official_checkpoint="not released (LeapLabTHU/ACmix)",
    ),
    "san_nano": make_cfg(**_CFG, paper=_SAN_PAPER, **_SMALL),
    "acmix_san_nano": make_cfg(**_CFG, paper=_ACMIX_PAPER, **_SMALL),
}

_LAYERS = {10: (2, 1, 2, 4, 1), 15: (3, 2, 3, 5, 2), 19: (3, 3, 4, 6, 3)}
# Nano models: one block per stage, narrow stages, for 32x32 inputs (tests, CPU demos).
_NANO = dict(layers=(1, 1, 1, 1, 1), widths=(32, 64, 64, 128, 128))


@register_model
def san10(**kwargs) -> SAN:
    """SAN-10 patchwise ([2,1,2,4,1] blocks), 11.84 M params."""
    return SAN(**dict(layers=_LAYERS[10]) | kwargs)


@register_model
def san15(**kwargs) -> SAN:
    """SAN-15 patchwise ([3,2,3,5,2] blocks), 16.18 M params."""
    return SAN(**dict(layers=_LAYERS[15]) | kwargs)


@register_model
def san19(**kwargs) -> SAN:
    """SAN-19 patchwise ([3,3,4,6,3] blocks), 20.52 M params."""
    return SAN(**dict(layers=_LAYERS[19]) | kwargs)


@register_model
def acmix_san10(**kwargs) -> SAN:
    """ACmix-SAN-10: ``san10`` with ACmix's shift-convolution path in every attention module."""
    return san10(**dict(operator="acmix_patchwise") | kwargs)


@register_model
def acmix_san15(**kwargs) -> SAN:
    """ACmix-SAN-15: ``san15`` with ACmix's shift-convolution path in every attention module."""
    return san15(**dict(operator="acmix_patchwise") | kwargs)


@register_model
def acmix_san19(**kwargs) -> SAN:
    """ACmix-SAN-19: ``san19`` with ACmix's shift-convolution path in every attention module."""
    return san19(**dict(operator="acmix_patchwise") | kwargs)


@register_model
def san_nano(**kwargs) -> SAN:
    """SAN for 32x32 inputs: one block per stage, widths 32-128 (tests and CPU demos)."""
    return SAN(**_NANO | kwargs)


@register_model
def acmix_san_nano(**kwargs) -> SAN:
    """``san_nano`` with ACmix-SAN's attention modules."""
    return san_nano(**dict(operator="acmix_patchwise") | kwargs)
