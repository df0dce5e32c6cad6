"""ResNet (torchvision v1.5 layout) and its hybrid variants: X-volution and ACmix.

* ResNet: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016 (v1.5: the stride
  of a bottleneck sits in its 3x3 conv, as in torchvision).
* X-volution ResNets (arXiv 2106.02253; ``../shared/specs/xvolution.md`` section 4): every 3x3
  conv of stage 3 (``layer3``) becomes an :class:`~convattn.layers.xvolution.XVolution`, whose two
  branch BatchNorms replace the block's BN there. The attention branch's BN gamma starts at 0 (the
  spec's optional stability knob, section 2), so an untrained model behaves like the plain ResNet.
* ACmix ResNets (arXiv 2111.14556; official LeapLabTHU/ACmix ``ResNet/ResNet_ImageNet.py``): every
  bottleneck 3x3 conv becomes :class:`~convattn.layers.acmix.ACmix` (k_att 7, 4 heads, k_conv 3);
  the BN after it stays. Key names equal the official ones, so released weights load directly.
  Deliberate difference: the official builder re-initialises every Conv2d with Kaiming, which
  also overwrites ACmix's shift initialisation of ``dep_conv``; we keep the shift init, which is
  the paper's intent (it only matters when training from scratch).

Deploy form (``reparameterize()`` / ``deploy=True``, see :mod:`convattn.deploy.reparam`): every
conv + BN pair (stem ``conv1``/``bn1``, each block's pairs, ``downsample.0``/``.1``) becomes one
biased conv with the BN replaced by ``nn.Identity`` (keys ``conv*.bias`` appear, ``bn*`` keys go);
X-volution switches to its single dynamic convolution; ACmix folds its rates and keeps its BN.

The file ends with the configuration table and the registered constructors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import nn

from ..deploy.reparam import ConvNormSequential, fold_conv_bn_
from ..layers import DropPath
from ..layers._checks import check_feature_map
from ._features import resolve_out_indices
from ._helpers import make_cfg, stochastic_depth_rates
from ._registry import register_model

__all__ = ["BasicBlock", "Bottleneck", "ResNet"]

# A "spatial conv" factory builds the 3x3 position of a block: (in, out, stride) -> (module, norm).
# The norm is the block's BN for plain/ACmix convs, and Identity for X-volution (its branch BNs
# already normalise). Deploy models call it with ``deploy=True`` (the fused form).
SpatialConv = Callable[[int, int, int], tuple[nn.Module, nn.Module]]


def conv_bn(
    in_ch: int, out_ch: int, kernel_size: int = 1, stride: int = 1, deploy: bool = False
) -> tuple[nn.Conv2d, nn.Module]:
    """A conv and its BN, or (deploy) the biased conv they fold into and an Identity."""
    conv = nn.Conv2d(
        in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2, bias=deploy
    )
    return conv, nn.Identity() if deploy else nn.BatchNorm2d(out_ch)


def conv3x3_bn(
    in_ch: int, out_ch: int, stride: int, deploy: bool = False
) -> tuple[nn.Module, nn.Module]:
    return conv_bn(in_ch, out_ch, 3, stride, deploy)


def xvolution_conv(
    in_ch: int, out_ch: int, stride: int, deploy: bool = False, **kwargs
) -> tuple[nn.Module, nn.Module]:
    from ..layers.xvolution import XVolution

    # The attention branch's BN starts at gamma = 0 (spec section 2, optional knob): with gamma = 1
    # the second-order PSSA products compound over stage 3's stacked blocks and overflow float32 in
    # eval mode at initialisation. Training learns gamma; pass attn_bn_zero_init=False to disable.
    kwargs.setdefault("attn_bn_zero_init", True)
    return XVolution(in_ch, out_ch, stride, deploy=deploy, **kwargs), nn.Identity()


def acmix_conv(
    in_ch: int, out_ch: int, stride: int, deploy: bool = False, **kwargs
) -> tuple[nn.Module, nn.Module]:
    from ..layers.acmix import ACmix

    # ACmix's deploy form has the training form's structure (rates folded to 1), and the BN after
    # it stays (it cannot be folded into ACmix), so ``deploy`` changes nothing here.
    return ACmix(in_ch, out_ch, stride, **kwargs), nn.BatchNorm2d(out_ch)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(
        self,
        in_ch: int,
        width: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        spatial_conv: SpatialConv = conv3x3_bn,
        drop_path: float = 0.0,
        deploy: bool = False,
    ) -> None:
        super().__init__()
        if deploy:
            spatial_conv = partial(spatial_conv, deploy=True)
        self.conv1, self.bn1 = spatial_conv(in_ch, width, stride)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = spatial_conv(width, width, 1)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def zero_init_last(self) -> None:
        if isinstance(self.bn2, nn.BatchNorm2d):
            nn.init.zeros_(self.bn2.weight)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold each plain conv + BN pair into a biased conv (idempotent); operators fold themselves."""
        fold_conv_bn_(self, "conv1", "bn1")
        fold_conv_bn_(self, "conv2", "bn2")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(self.drop_path(out) + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride, v1.5) -> 1x1 expand x4, with a residual connection."""

    expansion = 4

    def __init__(
        self,
        in_ch: int,
        width: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        spatial_conv: SpatialConv = conv3x3_bn,
        drop_path: float = 0.0,
        deploy: bool = False,
    ) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1, self.bn1 = conv_bn(in_ch, width, 1, deploy=deploy)
        if deploy:
            spatial_conv = partial(spatial_conv, deploy=True)
        self.conv2, self.bn2 = spatial_conv(width, width, stride)
        self.conv3, self.bn3 = conv_bn(width, out_ch, 1, deploy=deploy)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def zero_init_last(self) -> None:
        if isinstance(self.bn3, nn.BatchNorm2d):
            nn.init.zeros_(self.bn3.weight)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold each plain conv + BN pair into a biased conv (idempotent); operators fold themselves."""
        fold_conv_bn_(self, "conv1", "bn1")
        fold_conv_bn_(self, "conv2", "bn2")
        fold_conv_bn_(self, "conv3", "bn3")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(self.drop_path(out) + shortcut)


class ResNet(nn.Module):
    """ResNet v1.5 with a pluggable spatial convolution per stage.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: number of blocks per stage.
        widths: bottleneck/basic widths per stage.
        spatial_convs: per-stage factory for the 3x3 position (None = plain conv + BN).
        num_classes: classifier outputs (0: no classifier, ``forward`` returns pooled features).
        in_chans: input channels.
        stem: ``"imagenet"`` (7x7/2 conv + 3x3/2 max-pool, stride 4) or ``"small"`` (3x3/1 conv, no
            pool; for 32x32 inputs).
        first_stride: stride of stage 1 (1 for both stems, as in torchvision).
        drop_path_rate: stochastic depth of the last block (linear schedule).
        zero_init_last: zero-initialise each block's last BN gamma.
        deploy: build the re-parameterised form directly (loads deploy checkpoints, i.e. state
            dicts of :func:`convattn.deploy.reparameterize_model` results).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        widths: Sequence[int] = (64, 128, 256, 512),
        spatial_convs: Sequence[SpatialConv | None] | None = None,
        num_classes: int = 1000,
        in_chans: int = 3,
        stem: str = "imagenet",
        stem_width: int = 64,
        drop_path_rate: float = 0.0,
        zero_init_last: bool = False,
        deploy: bool = False,
    ) -> None:
        super().__init__()
        if len(layers) != len(widths):
            raise ValueError("ResNet: 'layers' and 'widths' must have the same length")
        if stem not in ("imagenet", "small"):
            raise ValueError(f"ResNet: 'stem' must be 'imagenet' or 'small', got {stem!r}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        spatial_convs = list(spatial_convs or [None] * len(layers))
        if stem == "imagenet":
            self.conv1, self.bn1 = conv_bn(in_chans, stem_width, 7, stride=2, deploy=deploy)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
            reduction = 4
        else:
            self.conv1, self.bn1 = conv_bn(in_chans, stem_width, 3, deploy=deploy)
            self.maxpool = nn.Identity()
            reduction = 1
        self.relu = nn.ReLU(inplace=True)

        dpr = stochastic_depth_rates(drop_path_rate, layers)
        in_ch = stem_width
        self.feature_info: list[dict] = []
        for i, (n, width) in enumerate(zip(layers, widths)):
            stride = 1 if i == 0 else 2
            reduction *= stride
            factory = spatial_convs[i] or conv3x3_bn
            stage, in_ch = self._make_stage(block, in_ch, width, n, stride, factory, dpr[i], deploy)
            self.add_module(f"layer{i + 1}", stage)
            self.feature_info.append(
                dict(num_chs=in_ch, reduction=reduction, module=f"layer{i + 1}")
            )
        self.num_stages = len(layers)
        self.num_features = in_ch
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc: nn.Module = nn.Linear(in_ch, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights(zero_init_last)

    @staticmethod
    def _make_stage(block, in_ch, width, n, stride, factory, rates, deploy):
        out_ch = width * block.expansion
        downsample = None
        if stride != 1 or in_ch != out_ch:
            # Keys downsample.0 (conv) / downsample.1 (BN, Identity once folded).
            downsample = ConvNormSequential(*conv_bn(in_ch, out_ch, 1, stride, deploy))
        blocks = [block(in_ch, width, stride, downsample, factory, rates[0], deploy)]
        blocks += [block(out_ch, width, 1, None, factory, r, deploy) for r in rates[1:]]
        return nn.Sequential(*blocks), out_ch

    def _init_weights(self, zero_init_last: bool) -> None:
        # torchvision's scheme for the plain parts; hybrid operators (convattn.layers modules with
        # parameters) keep their own, paper-specific initialisation.
        operators = [m for m in self.modules() if type(m).__module__.startswith("convattn.layers.")]
        keep = {id(sub) for op in operators for sub in op.modules()}
        for m in self.modules():
            if id(m) in keep:
                continue
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:  # deploy form: the folded BN's shift, 0 at init
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                if hasattr(m, "zero_init_last"):
                    m.zero_init_last()

    # --- timm-style API ---------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the stem BN into ``conv1`` (idempotent); blocks and operators fold themselves."""
        fold_conv_bn_(self, "conv1", "bn1")

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.in_chans, type(self).__name__)
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward_intermediates(self, x: torch.Tensor, indices: Sequence[int] | int | None = None):
        """Outputs of the selected stages (NCHW), stopping after the last one needed."""
        wanted = resolve_out_indices(indices, self.num_stages)
        x = self.forward_stem(x)
        out = []
        for i in range(max(wanted) + 1):
            x = getattr(self, f"layer{i + 1}")(x)
            if i in wanted:
                out.append(x)
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x).flatten(1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """Official ACmix-ResNet checkpoints use torchvision names, which are ours: pass through."""
    return state_dict


# --- configurations ------------------------------------------------------------------------------
_ACMIX_PAPER = "Pan et al., On the Integration of Self-Attention and Convolution, CVPR 2022"
_XVOL_PAPER = "Chen et al., X-volution: On the Unification of Convolution and Self-attention, 2021"
_RESNET_PAPER = "He et al., Deep Residual Learning for Image Recognition, CVPR 2016"
_SMALL = dict(
    input_size=(3, 32, 32), pool_size=(4, 4), crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3
)

default_cfgs = {
    "resnet26": make_cfg(first_conv="conv1", classifier="fc", paper=_RESNET_PAPER),
    "resnet34": make_cfg(first_conv="conv1", classifier="fc", paper=_RESNET_PAPER),
    "resnet38": make_cfg(first_conv="conv1", classifier="fc", paper=_RESNET_PAPER),
    "resnet50": make_cfg(
        first_conv="conv1",
        classifier="fc",
        paper=_RESNET_PAPER,
        paper_params_m=25.56,
        paper_gmacs=4.09,
    ),
    "xvolution_resnet34": make_cfg(
        first_conv="conv1", classifier="fc", paper=_XVOL_PAPER, official_checkpoint=None
    ),
    "xvolution_resnet50": make_cfg(
        first_conv="conv1", classifier="fc", paper=_XVOL_PAPER, official_checkpoint=None
    ),
    "xvolution_sa_resnet50": make_cfg(
        first_conv="conv1", classifier="fc", paper=_XVOL_PAPER, official_checkpoint=None
    ),
    "acmix_resnet26": make_cfg(
        first_conv="conv1",
        classifier="fc",
        paper=_ACMIX_PAPER,
        paper_top1=76.1,
        paper_params_m=10.6,
        paper_gmacs=2.3,
        official_checkpoint="not released (LeapLabTHU/ACmix)",
    ),
    "acmix_resnet38": make_cfg(
        first_conv="conv1",
        classifier="fc",
        paper=_ACMIX_PAPER,
        paper_top1=77.4,
        paper_params_m=14.6,
        paper_gmacs=2.9,
        official_checkpoint="not released (LeapLabTHU/ACmix)",
    ),
    "acmix_resnet50": make_cfg(
        first_conv="conv1",
        classifier="fc",
        paper=_ACMIX_PAPER,
        paper_top1=77.8,
        paper_params_m=18.6,
        paper_gmacs=3.6,
        official_checkpoint="not released (LeapLabTHU/ACmix)",
    ),
    "resnet_nano": make_cfg(first_conv="conv1", classifier="fc", paper=_RESNET_PAPER, **_SMALL),
    "xvolution_resnet_nano": make_cfg(
        first_conv="conv1", classifier="fc", paper=_XVOL_PAPER, **_SMALL
    ),
    "acmix_resnet_nano": make_cfg(
        first_conv="conv1", classifier="fc", paper=_ACMIX_PAPER, **_SMALL
    ),
}

_DEPTHS = {26: [1, 2, 4, 1], 34: [3, 4, 6, 3], 38: [2, 3, 5, 2], 50: [3, 4, 6, 3]}
# Nano models: one block per stage, widths /4, a 3x3 stride-1 stem for 32x32 inputs.
_NANO = dict(layers=[1, 1, 1, 1], widths=(16, 32, 64, 128), stem="small", stem_width=16)


def _resnet(**kwargs) -> ResNet:
    kwargs.pop("pretrained", None)
    return ResNet(**kwargs)


def _stage3(factory: SpatialConv) -> list[SpatialConv | None]:
    return [None, None, factory, None]


@register_model
def resnet26(**kwargs) -> ResNet:
    """ResNet-26 (bottleneck [1,2,4,1]), the conv baseline of ACmix-ResNet-26."""
    return _resnet(**dict(block=Bottleneck, layers=_DEPTHS[26]) | kwargs)


@register_model
def resnet34(**kwargs) -> ResNet:
    """ResNet-34 (basic blocks [3,4,6,3]), X-volution's other baseline."""
    return _resnet(**dict(block=BasicBlock, layers=_DEPTHS[34]) | kwargs)


@register_model
def resnet38(**kwargs) -> ResNet:
    """ResNet-38 (bottleneck [2,3,5,2]), the conv baseline of ACmix-ResNet-38."""
    return _resnet(**dict(block=Bottleneck, layers=_DEPTHS[38]) | kwargs)


@register_model
def resnet50(**kwargs) -> ResNet:
    """ResNet-50 v1.5 (bottleneck [3,4,6,3]), 25.56 M params, 4.09 GMACs."""
    return _resnet(**dict(block=Bottleneck, layers=_DEPTHS[50]) | kwargs)


@register_model
def xvolution_resnet34(**kwargs) -> ResNet:
    """ResNet-34 with every 3x3 conv of stage 3 replaced by X-volution (PSSA), ~27.8 M params."""
    xvol = partial(xvolution_conv, **kwargs.pop("xvolution_args", {}))
    return _resnet(
        **dict(block=BasicBlock, layers=_DEPTHS[34], spatial_convs=_stage3(xvol)) | kwargs
    )


@register_model
def xvolution_resnet50(**kwargs) -> ResNet:
    """ResNet-50 with every 3x3 conv of stage 3 replaced by X-volution (PSSA), ~28.7 M params."""
    xvol = partial(xvolution_conv, **kwargs.pop("xvolution_args", {}))
    return _resnet(
        **dict(block=Bottleneck, layers=_DEPTHS[50], spatial_convs=_stage3(xvol)) | kwargs
    )


@register_model
def xvolution_sa_resnet50(**kwargs) -> ResNet:
    """ResNet-50 with stage-3 3x3 convs replaced by X-volution with the global SA branch."""
    xvol = partial(xvolution_conv, attention="sa", **kwargs.pop("xvolution_args", {}))
    return _resnet(
        **dict(block=Bottleneck, layers=_DEPTHS[50], spatial_convs=_stage3(xvol)) | kwargs
    )


def _acmix_resnet(depth: int, **kwargs) -> ResNet:
    acmix = partial(acmix_conv, **kwargs.pop("acmix_args", {}))
    convs = [acmix] * 4
    return _resnet(**dict(block=Bottleneck, layers=_DEPTHS[depth], spatial_convs=convs) | kwargs)


@register_model
def acmix_resnet26(**kwargs) -> ResNet:
    """ACmix-ResNet-26 (official layout), 10.49 M params."""
    return _acmix_resnet(26, **kwargs)


@register_model
def acmix_resnet38(**kwargs) -> ResNet:
    """ACmix-ResNet-38 (official layout), 14.41 M params."""
    return _acmix_resnet(38, **kwargs)


@register_model
def acmix_resnet50(**kwargs) -> ResNet:
    """ACmix-ResNet-50 (official layout), 18.33 M params."""
    return _acmix_resnet(50, **kwargs)


@register_model
def resnet_nano(**kwargs) -> ResNet:
    """Basic-block ResNet for 32x32 inputs: [1,1,1,1] x widths 16-128, 3x3 stem (~0.33 M params)."""
    return _resnet(**dict(block=BasicBlock, **_NANO) | kwargs)


@register_model
def xvolution_resnet_nano(**kwargs) -> ResNet:
    """``resnet_nano`` with stage 3's 3x3 convs replaced by X-volution (PSSA)."""
    xvol = partial(xvolution_conv, **kwargs.pop("xvolution_args", {}))
    return _resnet(**dict(block=BasicBlock, spatial_convs=_stage3(xvol), **_NANO) | kwargs)


@register_model
def acmix_resnet_nano(**kwargs) -> ResNet:
    """Bottleneck ResNet for 32x32 inputs with ACmix (k_att 7, 4 heads) in every block."""
    acmix = partial(acmix_conv, **kwargs.pop("acmix_args", {}))
    return _resnet(**dict(block=Bottleneck, spatial_convs=[acmix] * 4, **_NANO) | kwargs)
