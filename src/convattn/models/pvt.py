"""Pyramid Vision Transformer (PVT v1) and ACmix-PVT.

* PVT: Wang et al., "Pyramid Vision Transformer: A Versatile Backbone for Dense Prediction without
  Convolutions", ICCV 2021 (arXiv 2102.12122); official code whai362/PVT ``classification/pvt.py``
  (``PyramidVisionTransformer``, ``pvt_tiny``, ``pvt_small``).
* ACmix-PVT: Pan et al., "On the Integration of Self-Attention and Convolution", CVPR 2022, section
  4.5 (no official code); the attention of every block becomes
  :class:`~convattn.layers.sr_attention.ACmixSpatialReductionAttention`. ``docs/operators/acmix-pvt.md``
  records the reconstruction.

Architecture (official): four stages; stage i embeds its input with a non-overlapping patch
convolution (patch 4, then 2) + LayerNorm, adds a learned position embedding, prepends the class
token in the last stage (with its own position entry), and runs ``depths[i]`` pre-norm blocks
``x + attn(LN(x))``, ``x + MLP(LN(x))`` with spatial-reduction attention (ratios 8/4/2/1). The
classifier reads the class token after the final LayerNorm. LayerNorm eps: 1e-6 in the blocks and
the final norm, 1e-5 in the patch embeddings and after ``sr`` (as the official code builds them).

Layout: ``stages.{i}.{patch_embed.{proj,norm}, pos_embed, blocks.{j}.{norm1, attn.{q,kv,sr,norm,
proj}, norm2, mlp.{fc1,fc2}}}``, ``cls_token``, ``norm``, ``head``. Official checkpoints (flat
``patch_embed{i}``, ``pos_embed{i}``, ``block{i}``) load through :func:`checkpoint_filter_fn` (the model's ``checkpoint_filter``).
The position embeddings keep the official shapes (stage 4's holds the class token's entry first).

Input sizes: the official code accepts any size and floors at every patch embedding. Here each
patch embedding zero-pads its input on the right/bottom to a multiple of its patch (as the Swin
family does), so no pixel is dropped; the position embeddings are resized bilinearly to the map
(the official rule) whenever the map differs from the training grid. Where the official code runs
without dropping pixels (sides divisible by 32) both agree exactly. Each stage's map must be at
least ``sr_ratio`` on both sides (e.g. 32 x 32 inputs for PVT-T/S).

The file ends with the configuration table and the registered constructors.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import DropPath
from ..layers._checks import check_choice, check_feature_map, check_positive_int
from ..layers.sr_attention import ACmixSpatialReductionAttention, SpatialReductionAttention
from ._features import resolve_out_indices
from ._helpers import init_linear_and_layernorm, make_cfg, stochastic_depth_rates
from ._registry import register_model
from .swin import Mlp

__all__ = [
    "PVTBlock",
    "PVTPatchEmbed",
    "PVTStage",
    "PyramidVisionTransformer",
    "checkpoint_filter_fn",
]

ATTN_LAYERS = ("sra", "acmix")


class PVTPatchEmbed(nn.Module):
    """patch x patch convolution (stride patch) + LayerNorm: NCHW map -> (B, H'W', C) tokens.

    The input is zero-padded on the right/bottom to a multiple of ``patch_size``.
    """

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        p = self.patch_size
        pad_h, pad_w = -x.shape[-2] % p, -x.shape[-1] % p
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), (h, w)


class PVTBlock(nn.Module):
    """Pre-norm transformer block with (ACmix) spatial-reduction attention (official ``Block``)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        sr_ratio: int,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        attn_layer: str = "sra",
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        attn_cls = (
            ACmixSpatialReductionAttention if attn_layer == "acmix" else SpatialReductionAttention
        )
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = attn_cls(dim, num_heads, sr_ratio, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), size))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PVTStage(nn.Module):
    """Patch embedding, position embedding (+ class token), blocks: NCHW map -> tokens."""

    def __init__(
        self,
        in_chans: int,
        dim: int,
        patch_size: int,
        grid: int,
        depth: int,
        num_prefix_tokens: int,
        drop_path: Sequence[float],
        drop_rate: float = 0.0,
        **block_kwargs,
    ) -> None:
        super().__init__()
        self.grid = grid
        self.num_prefix_tokens = num_prefix_tokens
        self.patch_embed = PVTPatchEmbed(patch_size, in_chans, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_prefix_tokens + grid * grid, dim))
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = nn.ModuleList(
            PVTBlock(dim, drop_path=drop_path[j], drop=drop_rate, **block_kwargs)
            for j in range(depth)
        )

    def position_embedding(self, height: int, width: int) -> Tensor:
        """(1, H*W, C) map part of the position embedding, resized bilinearly if H x W differs."""
        pos = self.pos_embed[:, self.num_prefix_tokens :]
        if (height, width) == (self.grid, self.grid):
            return pos
        grid = pos.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)
        return grid.flatten(2).transpose(1, 2)

    def embed(self, x: Tensor, cls_token: Tensor | None = None) -> tuple[Tensor, tuple[int, int]]:
        """Patch embedding + position embedding (class token first where the stage has one)."""
        tokens, (h, w) = self.patch_embed(x)
        pos = self.position_embedding(h, w)
        if self.num_prefix_tokens:
            if cls_token is None:
                raise ValueError("PVTStage: this stage needs 'cls_token' (1, 1, C)")
            tokens = torch.cat([cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
            pos = torch.cat([self.pos_embed[:, : self.num_prefix_tokens], pos], dim=1)
        return self.pos_drop(tokens + pos), (h, w)

    def forward(self, x: Tensor, cls_token: Tensor | None = None) -> tuple[Tensor, tuple[int, int]]:
        """NCHW input -> ((B, prefix + H*W, C) tokens, (H, W))."""
        x, size = self.embed(x, cls_token)
        for block in self.blocks:
            x = block(x, size)
        return x, size


def _to_map(tokens: Tensor, size: tuple[int, int], prefix: int) -> Tensor:
    """(B, prefix + H*W, C) tokens -> NCHW map of the H*W part."""
    h, w = size
    return tokens[:, prefix:].transpose(1, 2).reshape(tokens.shape[0], -1, h, w)


class PyramidVisionTransformer(nn.Module):
    """PVT v1 (optionally with ACmix spatial-reduction attention) on NCHW images.

    Args:
        img_size: training image side; sets the stored position-embedding grids
            (img_size / (patch_size * 2^i)).
        patch_size: patch of the first stage (later stages use 2).
        in_chans: input channels.
        num_classes: classifier outputs (0: ``forward`` returns the class token's features).
        embed_dims: channels per stage.
        num_heads: attention heads per stage.
        mlp_ratios: MLP hidden width / channels, per stage.
        depths: blocks per stage.
        sr_ratios: spatial-reduction ratio per stage.
        qkv_bias: learn biases in the q / kv projections (PVT: True).
        drop_rate: dropout after the position embedding, the MLP layers and the attention output.
        attn_drop_rate: dropout on the attention weights.
        drop_path_rate: stochastic depth of the last block (linear schedule from 0).
        attn_layer: ``"sra"`` (PVT) or ``"acmix"`` (ACmix-PVT).
        deploy: accepted for API symmetry: ACmix-PVT's deploy form (rates folded into ``proj`` and
            ``dep_conv``, then 1) has the same modules and keys.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dims: Sequence[int] = (64, 128, 320, 512),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        depths: Sequence[int] = (2, 2, 2, 2),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        attn_layer: str = "sra",
        deploy: bool = False,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        for name, value in (
            ("img_size", img_size),
            ("patch_size", patch_size),
            ("in_chans", in_chans),
        ):
            check_positive_int(value, name, owner)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"{owner}: 'num_classes' must be an integer >= 0, got {num_classes!r}")
        check_choice(attn_layer, "attn_layer", ATTN_LAYERS, owner)
        lists = dict(
            embed_dims=embed_dims,
            num_heads=num_heads,
            mlp_ratios=mlp_ratios,
            depths=depths,
            sr_ratios=sr_ratios,
        )
        n = len(embed_dims)
        if n == 0 or any(len(v) != n for v in lists.values()):
            raise ValueError(
                f"{owner}: {', '.join(repr(k) for k in lists)} must be non-empty and of equal "
                f"length, got {', '.join(str(list(v)) for v in lists.values())}"
            )
        for i in range(n):
            for name in ("embed_dims", "num_heads", "depths", "sr_ratios"):
                check_positive_int(lists[name][i], f"{name}[{i}]", owner)
            if embed_dims[i] % num_heads[i]:
                raise ValueError(
                    f"{owner}: embed_dims[{i}]={embed_dims[i]} must be divisible by "
                    f"num_heads[{i}]={num_heads[i]}"
                )
            if not mlp_ratios[i] > 0:
                raise ValueError(
                    f"{owner}: mlp_ratios[{i}] must be positive, got {mlp_ratios[i]!r}"
                )
        reduction = patch_size * 2 ** (n - 1)
        if img_size % reduction:
            raise ValueError(
                f"{owner}: 'img_size' ({img_size}) must be divisible by the total stride "
                f"patch_size * 2^(stages-1) = {reduction}"
            )
        for name, p in (("drop_rate", drop_rate), ("attn_drop_rate", attn_drop_rate)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{owner}: '{name}' must be in [0, 1), got {p!r}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"{owner}: 'drop_path_rate' must be in [0, 1), got {drop_path_rate!r}")

        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_stages = n
        self.num_features = embed_dims[-1]
        self.sr_ratios = tuple(sr_ratios)
        rates = stochastic_depth_rates(drop_path_rate, list(depths))
        self.stages = nn.ModuleList()
        self.feature_info: list[dict] = []
        for i in range(n):
            patch = patch_size if i == 0 else 2
            stride = patch_size * 2**i
            self.stages.append(
                PVTStage(
                    in_chans if i == 0 else embed_dims[i - 1],
                    embed_dims[i],
                    patch,
                    img_size // stride,
                    depths[i],
                    num_prefix_tokens=1 if i == n - 1 else 0,
                    drop_path=rates[i],
                    drop_rate=drop_rate,
                    num_heads=num_heads[i],
                    mlp_ratio=mlp_ratios[i],
                    sr_ratio=sr_ratios[i],
                    qkv_bias=qkv_bias,
                    attn_drop=attn_drop_rate,
                    attn_layer=attn_layer,
                )
            )
            self.feature_info.append(
                dict(num_chs=embed_dims[i], reduction=stride, module=f"stages.{i}")
            )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dims[-1]))
        self.norm = nn.LayerNorm(embed_dims[-1], eps=1e-6)
        self.head: nn.Module = (
            nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        )
        for stage in self.stages:
            nn.init.trunc_normal_(stage.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_linear_and_layernorm)

    # --- timm-style API ---------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            init_linear_and_layernorm(self.head)

    def no_weight_decay(self) -> set[str]:
        """Parameters the official recipe exempts from weight decay (plus ACmix's rates)."""
        return {"cls_token"}

    def no_weight_decay_keywords(self) -> set[str]:
        return {"rate1", "rate2"}

    def _check_input(self, x: Tensor) -> None:
        check_feature_map(x, self.in_chans, type(self).__name__)
        h, w = x.shape[-2:]
        # The smallest side whose every stage map is at least its sr_ratio (after padding).
        for i, r in enumerate(self.sr_ratios):
            stride = self.feature_info[i]["reduction"]
            if -(-h // stride) < r or -(-w // stride) < r:
                raise ValueError(
                    f"{type(self).__name__}: argument 'x' ({h}x{w}) is too small: stage {i} "
                    f"(stride {stride}) needs a map of at least sr_ratio={r} per side, i.e. an "
                    f"input of at least {stride * (r - 1) + 1} pixels per side"
                )

    def _run(self, x: Tensor, upto: int) -> tuple[list[Tensor], Tensor]:
        """Stages 0..upto: their NCHW outputs and the last stage's tokens."""
        self._check_input(x)
        maps = []
        tokens = x
        for i in range(upto + 1):
            stage = self.stages[i]
            # The stage's pieces are called here rather than the stage itself: a parameter (the
            # class token) passed as a module argument breaks the module-input hooks of the MAC
            # counters (FlopCounterMode's module tracker).
            tokens, size = stage.embed(x, self.cls_token if stage.num_prefix_tokens else None)
            tokens = self._run_blocks(stage.blocks, tokens, size)
            x = _to_map(tokens, size, stage.num_prefix_tokens)
            maps.append(x)
        return maps, tokens

    def _run_blocks(self, blocks: nn.ModuleList, x: Tensor, size: tuple[int, int]) -> Tensor:
        """A stage's blocks on its tokens (the timm adapter checkpoints them here)."""
        for block in blocks:
            x = block(x, size)
        return x

    def forward_intermediates(
        self, x: Tensor, indices: Sequence[int] | int | None = None
    ) -> list[Tensor]:
        """NCHW outputs of the selected stages (class token left out, not normalised)."""
        wanted = resolve_out_indices(indices, self.num_stages)
        maps, _ = self._run(x, max(wanted))
        return [maps[i] for i in wanted]

    def forward_features(self, x: Tensor) -> Tensor:
        """Last stage's tokens (class token first) after the final LayerNorm: (B, 1 + H*W, C)."""
        _, tokens = self._run(x, self.num_stages - 1)
        return self.norm(tokens)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x[:, 0]
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def checkpoint_filter(self, state_dict: dict) -> dict:
        """An official PVT state dict in this model's layout (:func:`checkpoint_filter_fn`)."""
        return checkpoint_filter_fn(state_dict, self)


_OFFICIAL = re.compile(r"^(patch_embed|pos_embed|block)([1-9])(.*)$")


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """Official PVT state dicts (``patch_embed{i}``, ``pos_embed{i}``, ``block{i}``) -> ours.

    ``patch_embed{i}.*`` -> ``stages.{i-1}.patch_embed.*``, ``pos_embed{i}`` ->
    ``stages.{i-1}.pos_embed``, ``block{i}.{j}.*`` -> ``stages.{i-1}.blocks.{j}.*``; ``cls_token``,
    ``norm.*``, ``head.*`` keep their names. The ACmix names ``attn.fc.*`` / ``attn.dep_conv.weight``
    are renamed by the attention module itself. Our own state dicts pass through unchanged.
    """
    out = {}
    for key, value in state_dict.items():
        match = _OFFICIAL.match(key)
        if match:
            kind, stage, rest = match.groups()
            name = {"patch_embed": "patch_embed", "pos_embed": "pos_embed", "block": "blocks"}[kind]
            key = f"stages.{int(stage) - 1}.{name}{rest}"
        out[key] = value
    return out


# --- configurations ------------------------------------------------------------------------------
_PVT_PAPER = (
    "Wang et al., Pyramid Vision Transformer: A Versatile Backbone for Dense Prediction without "
    "Convolutions, ICCV 2021"
)
_ACMIX_PAPER = "Pan et al., On the Integration of Self-Attention and Convolution, CVPR 2022"
_ACMIX_WEIGHTS = "not released (no official ACmix-PVT code)"
_COMMON = dict(first_conv="stages.0.patch_embed.proj", classifier="head", crop_pct=0.875)

# Official configurations (whai362/PVT classification/pvt.py: pvt_tiny, pvt_small).
_BASE = dict(
    patch_size=4,
    embed_dims=(64, 128, 320, 512),
    num_heads=(1, 2, 5, 8),
    mlp_ratios=(8, 8, 4, 4),
    sr_ratios=(8, 4, 2, 1),
    qkv_bias=True,
)
_TINY = dict(_BASE, depths=(2, 2, 2, 2), drop_path_rate=0.1)
_SMALL = dict(_BASE, depths=(3, 4, 6, 3), drop_path_rate=0.1)
# Nano (ours, for 32x32 inputs): patch 2, widths 16-128, one block per stage, maps 16/8/4/2 with
# sr_ratios 4/2/2/1 (reduced maps 4/4/2/2).
_NANO = dict(
    img_size=32,
    patch_size=2,
    embed_dims=(16, 32, 64, 128),
    num_heads=(1, 1, 2, 4),
    mlp_ratios=(4, 4, 2, 2),
    depths=(1, 1, 1, 1),
    sr_ratios=(4, 2, 2, 1),
    drop_path_rate=0.1,
)
# pool_size: the last stage's map at the default input (32 / 16 = 2 for the nano models).
_SMALL_INPUT = dict(
    input_size=(3, 32, 32), pool_size=(2, 2), crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3
)

default_cfgs = {
    "pvt_tiny": make_cfg(
        **_COMMON,
        paper=_PVT_PAPER,
        paper_top1=75.1,
        paper_params_m=13.2,
        paper_gmacs=1.9,
        official_checkpoint="pvt_tiny.pth (whai362/PVT release v2)",
    ),
    "pvt_small": make_cfg(
        **_COMMON,
        paper=_PVT_PAPER,
        paper_top1=79.8,
        paper_params_m=24.5,
        paper_gmacs=3.8,
        official_checkpoint="pvt_small.pth (whai362/PVT release v2)",
    ),
    "acmix_pvt_tiny": make_cfg(
        **_COMMON,
        paper=_ACMIX_PAPER,
        paper_top1=78.0,
        paper_params_m=13.0,
        paper_gmacs=2.0,
        official_checkpoint=_ACMIX_WEIGHTS,
    ),
    "acmix_pvt_small": make_cfg(
        **_COMMON,
        paper=_ACMIX_PAPER,
        paper_top1=81.7,
        paper_params_m=25.0,
        paper_gmacs=3.9,
        official_checkpoint=_ACMIX_WEIGHTS,
    ),
    "pvt_nano": make_cfg(**(_COMMON | _SMALL_INPUT), paper=_PVT_PAPER, model_args=dict(_NANO)),
    "acmix_pvt_nano": make_cfg(
        **(_COMMON | _SMALL_INPUT), paper=_ACMIX_PAPER, model_args=dict(_NANO, attn_layer="acmix")
    ),
}


@register_model
def pvt_tiny(**kwargs) -> PyramidVisionTransformer:
    """PVT-Tiny: widths 64/128/320/512, depths [2,2,2,2], sr 8/4/2/1; 13.23 M params, 1.93 GMACs."""
    return PyramidVisionTransformer(**_TINY | kwargs)


@register_model
def pvt_small(**kwargs) -> PyramidVisionTransformer:
    """PVT-Small: widths 64/128/320/512, depths [3,4,6,3], sr 8/4/2/1; 24.49 M params, 3.82 GMACs."""
    return PyramidVisionTransformer(**_SMALL | kwargs)


@register_model
def acmix_pvt_tiny(**kwargs) -> PyramidVisionTransformer:
    """ACmix-PVT-T: PVT-Tiny with ACmix spatial-reduction attention."""
    return PyramidVisionTransformer(**_TINY | dict(attn_layer="acmix") | kwargs)


@register_model
def acmix_pvt_small(**kwargs) -> PyramidVisionTransformer:
    """ACmix-PVT-S: PVT-Small with ACmix spatial-reduction attention."""
    return PyramidVisionTransformer(**_SMALL | dict(attn_layer="acmix") | kwargs)


@register_model
def pvt_nano(**kwargs) -> PyramidVisionTransformer:
    """PVT for 32x32 inputs (tests): patch 2, widths 16-128, one block per stage, sr 4/2/2/1."""
    return PyramidVisionTransformer(**_NANO | kwargs)


@register_model
def acmix_pvt_nano(**kwargs) -> PyramidVisionTransformer:
    """ACmix-PVT for 32x32 inputs (tests): :func:`pvt_nano` with ACmix attention."""
    return PyramidVisionTransformer(**_NANO | dict(attn_layer="acmix") | kwargs)
