"""ResNet (torchvision v1.5 layout) with one spatial operator per stage: X-volution, ACmix and more.

Every block's 3x3 position is built by the stage's *operator*, named in ``stage_ops`` (one name per
stage) and looked up in :data:`STAGE_OPS`; ``op_args`` (operator name -> options) is the one place
its options come from. ``create_model("resnet50", stage_ops=("conv", "conv", "xvolution",
"xvolution"))`` is the X-volution paper's stage-3-and-4 ablation. The registered hybrids are such
entries:

* ResNet: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016 (v1.5: the stride
  of a bottleneck sits in its 3x3 conv, as in torchvision). All stages ``"conv"``.
* X-volution ResNets (arXiv 2106.02253): stage 3 (``layer3``) ``"xvolution"`` (PSSA),
  ``"xvolution_sa"`` or ``"xvolution_inv"``; the operator's two branch BatchNorms replace the
  block's BN there. The attention branch's BN gamma starts at 0 (an optional stability knob, see
  ``docs/operators/xvolution.md``), so an untrained model behaves like the plain ResNet.
* ACmix ResNets (arXiv 2111.14556; official LeapLabTHU/ACmix ``ResNet/ResNet_ImageNet.py``): all
  stages ``"acmix"``, :class:`~convattn.layers.acmix.ACmix` (k_att 7, 4 heads, k_conv 3);
  the BN after it stays. Key names equal the official ones, so released weights load directly.
  Deliberate difference: the official builder re-initialises every Conv2d with Kaiming, which
  also overwrites ACmix's shift initialisation of ``dep_conv``; we keep the shift init, which is
  the paper's intent (it only matters when training from scratch).

Deploy form (``reparameterize()`` / ``deploy=True``, see :mod:`convattn.deploy.reparam`): every
conv + BN pair (stem ``conv1``/``bn1``, each block's pairs, ``downsample.0``/``.1``) becomes one
biased conv with the BN replaced by ``nn.Identity`` (keys ``conv*.bias`` appear, ``bn*`` keys go);
X-volution switches to its single dynamic convolution; ACmix folds its rates and keeps its BN;
Involution folds its kernel generator's BN; the BN after Involution, global attention and GLMix
stays (it follows a non-linear operator).

The file ends with the configuration table and the registered constructors.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from ..layers import DropPath, check_feature_map
from ..layers.conv_bn import ConvNormSequential, fold_batch_norm_
from ._features import resolve_out_indices
from ._helpers import make_cfg, stochastic_depth_rates
from ._registry import register_model

__all__ = ["STAGE_OPS", "BasicBlock", "Bottleneck", "ResNet", "StageOp", "resolve_stage_ops"]

# A "spatial conv" factory builds the 3x3 position of a block: (in, out, stride) -> (module, norm).
# The norm is the block's BN for plain convs and most operators, and Identity for X-volution (its
# branch BNs already normalise). Deploy models call it with ``deploy=True`` (the fused form).
SpatialConv = Callable[..., tuple[nn.Module, nn.Module]]


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


def _xvolution(in_ch: int, out_ch: int, stride: int, deploy: bool = False, **options):
    from ..layers.xvolution import XVolution

    return XVolution(in_ch, out_ch, stride, deploy=deploy, **options), nn.Identity()


def _acmix(in_ch: int, out_ch: int, stride: int, deploy: bool = False, **options):
    from ..layers.acmix import ACmix

    # ACmix's deploy form has the training form's structure (rates folded to 1), and the BN after
    # it stays (it cannot be folded into ACmix), so ``deploy`` changes nothing here.
    return ACmix(in_ch, out_ch, stride, **options), nn.BatchNorm2d(out_ch)


def _involution(in_ch: int, out_ch: int, stride: int, deploy: bool = False, **options):
    from ..layers.involution import Involution2d

    return Involution2d(in_ch, out_ch, stride, deploy=deploy, **options), nn.BatchNorm2d(out_ch)


def _attention(in_ch: int, out_ch: int, stride: int, deploy: bool = False, **options):
    from ..layers.attention import GlobalSelfAttention2d

    return GlobalSelfAttention2d(in_ch, out_ch, stride, **options), nn.BatchNorm2d(out_ch)


def _glmix(in_ch: int, out_ch: int, stride: int, deploy: bool = False, **options):
    from ..layers.glmix import GLMix

    return GLMix(in_ch, out_ch, stride, **options), nn.BatchNorm2d(out_ch)


def _operator_class(name: str) -> type[nn.Module]:
    from ..layers import ACmix, GLMix, GlobalSelfAttention2d, Involution2d, XVolution

    return dict(
        conv=nn.Conv2d,
        xvolution=XVolution,
        acmix=ACmix,
        involution=Involution2d,
        attention=GlobalSelfAttention2d,
        glmix=GLMix,
    )[name]


@dataclass(frozen=True)
class StageOp:
    """An entry of :data:`STAGE_OPS`: how one operator fills a block's 3x3 position.

    Attributes:
        build: ``(in_ch, out_ch, stride, deploy=False, **options) -> (module, norm)``.
        options: default options, overridden by ``op_args[name]``.
        kind: the operator family (``conv``, ``xvolution``, ``acmix``...), naming its class.
        summary: one line for docs and error messages.
    """

    build: SpatialConv
    options: Mapping[str, Any]
    kind: str
    summary: str

    def option_names(self) -> tuple[str, ...]:
        """The keyword options the operator's constructor accepts."""
        if self.kind == "conv":
            return ()
        params = inspect.signature(_operator_class(self.kind).__init__).parameters.values()
        skip = {"self", "in_channels", "out_channels", "stride", "deploy"}
        return tuple(p.name for p in params if p.name not in skip and p.kind is not p.VAR_KEYWORD)


# The X-volution ResNets start the attention branch's BN gamma at 0: with gamma = 1 the
# second-order PSSA products compound over a stage's stacked blocks and overflow float32 in eval
# mode at initialisation. Training learns gamma; op_args={"xvolution": {"attn_bn_zero_init":
# False}} disables it.
STAGE_OPS: dict[str, StageOp] = {
    "conv": StageOp(conv3x3_bn, {}, "conv", "3x3 convolution + BN (plain ResNet)"),
    "xvolution": StageOp(
        _xvolution,
        {"attention": "pssa", "attn_bn_zero_init": True},
        "xvolution",
        "X-volution, pixel-shift self-attention branch (merges into one dynamic conv)",
    ),
    "xvolution_sa": StageOp(
        _xvolution,
        {"attention": "sa", "attn_bn_zero_init": True},
        "xvolution",
        "X-volution(SA), global self-attention branch",
    ),
    "xvolution_inv": StageOp(
        _xvolution,
        {"attention": "involution", "attn_bn_zero_init": True},
        "xvolution",
        "X-volution, Involution branch (merges into one dynamic conv)",
    ),
    "acmix": StageOp(
        _acmix,
        {"kernel_att": 7, "num_heads": 4, "kernel_conv": 3},
        "acmix",
        "ACmix (7x7 window attention + shift conv) + BN",
    ),
    "involution": StageOp(
        _involution,
        {"kernel_size": 7, "group_channels": 16, "reduction": 4},
        "involution",
        "Involution 7x7 (RedNet) + BN",
    ),
    "attention": StageOp(
        _attention, {"head_dim": 64}, "attention", "global multi-head self-attention + BN"
    ),
    "glmix": StageOp(_glmix, {}, "glmix", "GLMix (slot attention + local conv) + BN"),
}
"""The operators a ResNet stage can use (``stage_ops`` names), with their default options."""


def resolve_stage_ops(
    stage_ops: Sequence[str] | str | None,
    num_stages: int,
    op_args: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[tuple[str, ...], list[SpatialConv]]:
    """Validate ``stage_ops`` and ``op_args``; return the names and one factory per stage.

    ``stage_ops`` is a sequence of :data:`STAGE_OPS` names, one per stage, or the same as one
    comma-separated string; None means all ``"conv"``. ``op_args[name]`` overrides the defaults
    of operator ``name`` wherever it is used.
    """
    valid = ", ".join(STAGE_OPS)
    if stage_ops is None:
        names: tuple[str, ...] = ("conv",) * num_stages
    else:
        items = stage_ops.split(",") if isinstance(stage_ops, str) else stage_ops
        if not isinstance(items, Sequence) or not all(isinstance(n, str) for n in items):
            raise ValueError(
                f"ResNet: 'stage_ops' must be a sequence of operator names (one of {valid}), "
                f"got {stage_ops!r}"
            )
        names = tuple(n.strip() for n in items)
    if len(names) != num_stages:
        raise ValueError(
            f"ResNet: 'stage_ops' needs one operator per stage ({num_stages} stages), got "
            f"{len(names)}: {list(names)}; valid operators: {valid}"
        )
    unknown = [n for n in names if n not in STAGE_OPS]
    if unknown:
        raise ValueError(
            f"ResNet: unknown operator(s) {unknown} in 'stage_ops'; valid operators: {valid}"
        )
    op_args = dict(op_args or {})
    bad = [n for n in op_args if n not in STAGE_OPS]
    if bad:
        raise ValueError(
            f"ResNet: unknown operator(s) {bad} in 'op_args'; valid operators: {valid}"
        )
    factories: list[SpatialConv] = []
    for name in names:
        op = STAGE_OPS[name]
        given = op_args.get(name) or {}
        if not isinstance(given, Mapping):
            raise ValueError(
                f"ResNet: op_args[{name!r}] must be a mapping of options, got {given!r}"
            )
        allowed = op.option_names()
        wrong = sorted(set(given) - set(allowed))
        if wrong:
            raise ValueError(
                f"ResNet: op_args[{name!r}] has unknown option(s) {wrong}; {name} accepts "
                f"{list(allowed) or 'no options'}"
            )
        factories.append(partial(op.build, **(dict(op.options) | dict(given))))
    return names, factories


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
        fold_batch_norm_(self, "conv1", "bn1")
        fold_batch_norm_(self, "conv2", "bn2")

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
        fold_batch_norm_(self, "conv1", "bn1")
        fold_batch_norm_(self, "conv2", "bn2")
        fold_batch_norm_(self, "conv3", "bn3")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(self.drop_path(out) + shortcut)


class ResNet(nn.Module):
    """ResNet v1.5 with one spatial operator per stage.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: number of blocks per stage.
        widths: bottleneck/basic widths per stage.
        stage_ops: the operator of every 3x3 position of each stage, names from
            :data:`STAGE_OPS` (one per stage, or one comma-separated string); None = all
            ``"conv"``.
        op_args: options per operator name, e.g. ``{"xvolution": {"pssa_weighting":
            "depthwise"}}``, over the defaults in :data:`STAGE_OPS`.
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
        stage_ops: Sequence[str] | str | None = None,
        op_args: Mapping[str, Mapping[str, Any]] | None = None,
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
        self.stage_ops, factories = resolve_stage_ops(stage_ops, len(layers), op_args)
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
            stage, in_ch = self._make_stage(
                block, in_ch, width, n, stride, factories[i], dpr[i], deploy
            )
            self.add_module(f"layer{i + 1}", stage)
            self.feature_info.append(
                dict(
                    num_chs=in_ch, reduction=reduction, module=f"layer{i + 1}", op=self.stage_ops[i]
                )
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
        fold_batch_norm_(self, "conv1", "bn1")

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
    "xvolution_inv_resnet50": make_cfg(
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


_LEGACY_OPTIONS = {"xvolution_args": "xvolution", "acmix_args": "acmix", "spatial_convs": None}


def _resnet(**kwargs) -> ResNet:
    for old, op in _LEGACY_OPTIONS.items():
        if old in kwargs:
            hint = f"op_args={{{op!r}: {{...}}}}" if op else "stage_ops=(...) with op_args"
            raise ValueError(f"ResNet: '{old}' was replaced by {hint} (see STAGE_OPS)")
    return ResNet(**kwargs)


def _stage3(op: str) -> tuple[str, ...]:
    return ("conv", "conv", op, "conv")


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
    """``resnet34`` with stage_ops conv, conv, xvolution, conv (PSSA), ~27.8 M params."""
    return resnet34(**dict(stage_ops=_stage3("xvolution")) | kwargs)


@register_model
def xvolution_resnet50(**kwargs) -> ResNet:
    """``resnet50`` with stage_ops conv, conv, xvolution, conv (PSSA), ~28.7 M params."""
    return resnet50(**dict(stage_ops=_stage3("xvolution")) | kwargs)


@register_model
def xvolution_sa_resnet50(**kwargs) -> ResNet:
    """``resnet50`` with stage_ops conv, conv, xvolution_sa, conv (global SA branch)."""
    return resnet50(**dict(stage_ops=_stage3("xvolution_sa")) | kwargs)


@register_model
def xvolution_inv_resnet50(**kwargs) -> ResNet:
    """``resnet50`` with stage_ops conv, conv, xvolution_inv, conv (Involution branch)."""
    return resnet50(**dict(stage_ops=_stage3("xvolution_inv")) | kwargs)


@register_model
def acmix_resnet26(**kwargs) -> ResNet:
    """ACmix-ResNet-26 (official layout): ``resnet26`` with acmix in every stage, 10.49 M params."""
    return resnet26(**dict(stage_ops=("acmix",) * 4) | kwargs)


@register_model
def acmix_resnet38(**kwargs) -> ResNet:
    """ACmix-ResNet-38 (official layout): ``resnet38`` with acmix in every stage, 14.41 M params."""
    return resnet38(**dict(stage_ops=("acmix",) * 4) | kwargs)


@register_model
def acmix_resnet50(**kwargs) -> ResNet:
    """ACmix-ResNet-50 (official layout): ``resnet50`` with acmix in every stage, 18.33 M params."""
    return resnet50(**dict(stage_ops=("acmix",) * 4) | kwargs)


@register_model
def resnet_nano(**kwargs) -> ResNet:
    """Basic-block ResNet for 32x32 inputs: [1,1,1,1] x widths 16-128, 3x3 stem (~0.33 M params)."""
    return _resnet(**dict(block=BasicBlock, **_NANO) | kwargs)


@register_model
def xvolution_resnet_nano(**kwargs) -> ResNet:
    """``resnet_nano`` with stage_ops conv, conv, xvolution, conv (PSSA)."""
    return resnet_nano(**dict(stage_ops=_stage3("xvolution")) | kwargs)


@register_model
def acmix_resnet_nano(**kwargs) -> ResNet:
    """Bottleneck ResNet for 32x32 inputs with ACmix (k_att 7, 4 heads) in every stage."""
    return _resnet(**dict(block=Bottleneck, stage_ops=("acmix",) * 4, **_NANO) | kwargs)
