"""GLNet: backbones built from GLMix blocks (convolution on the pixel grid, attention on slots).

Zhu, Wang, Zhang, Lau, "Revisiting the Integration of Convolution and Attention for Vision
Backbone", NeurIPS 2024, arXiv 2411.14429; official code ``rayleizhu/GLMix`` (``models/glnet.py``).
Module and parameter names equal the official ones, so the released checkpoints
(``{"model": sd}``, ``{"model_ema": sd}`` for glnet_16g) load without any remapping.

Macro-architecture: ``downsample_layers[i]`` then ``stages[i]`` for i = 0..3, BatchNorm2d, global
average pooling, Linear head. Heads = width / 32 everywhere. Stage kinds (``mixing_modes``, the
official strings):

* ``"glmix"``: :class:`~convattn.layers.glmix.GLMixBlock` only;
* ``"glmix.mha_nchw"``: hybrid, GLMix on even block indices, :class:`MHSANCHWBlock` on odd ones
  (stage 3 of the 4G family);
* ``"mha_nchw"``: full global MHSA in the NCHW block with CPE and conv MLP (4G-family stage 4);
* ``"mha"``: full global MHSA in the token-layout block :class:`MHSABlock` (STL stage 4).

Two downsampling styles: ``"overlapped"`` (4G family: a conv3x3/2-BN-GELU-conv3x3/2-BN stem and
conv3x3/2 -> BN transitions) and ``"non_overlapped"`` (STL: a 4x4/4 patch conv -> BN stem and
BN -> conv2x2/2 transitions). The model has no absolute position embedding, so any input size that
survives the downsampling works: every size >= 1 for ``"overlapped"`` (each stride-2 conv maps H to
ceil(H / 2)), and H, W >= 32 for ``"non_overlapped"`` (each patch conv floors).

Deploy form (``reparameterize()`` / ``deploy=True``, see :mod:`convattn.deploy.reparam`): every BN
of the downsampling layers is folded into its conv and replaced by ``nn.Identity`` (keys keep their
indices): conv -> BN pairs directly, the STL transitions' BN -> conv 2x2/2 as an input-side affine
(exact because that conv has no padding). Not folded: the pre-head ``norm`` (it follows a residual
sum, and ``forward_features`` returns its output) and the residual depthwise convs (``x + DW(x)``
could absorb the identity into the centre tap, but deploy and training state dicts would then have
the same keys with different meanings).

Deliberate differences from the official code: attention runs through
:class:`~convattn.layers.attention.MultiheadSelfAttention` (SDPA, O(N) memory on CPU, same keys as
``nn.MultiheadAttention``); the official eval-mode cast of the normed tokens back to the residual's
dtype (an AMP workaround) is not needed because our norms keep the input dtype; ``reset_classifier``
uses the last width (the official one passes the width list).

Token-labeling variants (``glnet_4g_tklb``, ``glnet_9g_tklb``, official ``models/glnet_tklb.py``,
trained with token labeling, Jiang et al., "All Tokens Matter", NeurIPS 2021):
:class:`GLNetTokenLabel` adds ``tklb_aux_head``, a Linear classifier applied to every final-stage
token. In training mode it mixes tokens (a CutMix box drawn on the final grid, pasted from the
reversed batch right after the stem) and returns ``(class logits, token logits, box)`` with the
token logits un-mixed; in eval mode it returns ``class logits + 0.5 * max over tokens of the token
logits``. See the class docstring and ``docs/operators/glmix.md``.

The file ends with the configuration table and the registered constructors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn

from ..layers import (
    DropPath,
    LayerNorm2d,
    MultiheadSelfAttention,
    check_choice,
    check_feature_map,
    check_positive_int,
)
from ..layers.conv_bn import ConvNormSequential
from ..layers.glmix import GLMixBlock, check_block_options
from ..layers.layer_scale import LayerScale, layer_scale
from ..layers.mlp import conv_mlp
from ._features import resolve_out_indices
from ._helpers import init_linear_and_layernorm, make_cfg, stochastic_depth_rates
from ._registry import register_model

__all__ = [
    "GLNet",
    "GLNetStage",
    "GLNetTokenLabel",
    "LayerScale",
    "MHSABlock",
    "MHSANCHWBlock",
    "conv_mlp",
]

MIXING_MODES = ("glmix", "glmix.mha_nchw", "mha_nchw", "mha")
DOWNSAMPLE_STYLES = ("overlapped", "non_overlapped")


class MHSANCHWBlock(nn.Module):
    """Full global MHSA block on NCHW maps (official ``MHSA_NCHW_Block``).

    ``x <- x + DWConv(x)`` (CPE, optional); tokens ``t <- t + DropPath(LS1(MHSA(LN(t))))`` with
    ``nn.LayerNorm`` (eps 1e-6) over the H*W tokens; back to NCHW;
    ``x <- x + DropPath(LS2(MLP(LayerNorm2d(x))))`` with the GLMix conv MLP.

    Args:
        dim: width C.
        num_heads: attention heads (official: C / 32).
        mlp_ratio: MLP hidden width ``int(mlp_ratio * dim)``.
        mlp_dw: residual depthwise 3x3 on the MLP hidden map.
        cpe_kernel: kernel of the conv position embedding, 0 = none.
        layerscale: initial LayerScale value, None = none (LS1 is (C,), LS2 is (1, C, 1, 1)).
        drop_path: stochastic-depth rate of both residual branches.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        mlp_dw: bool = False,
        cpe_kernel: int = 0,
        layerscale: float | None = None,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        check_block_options(type(self).__name__, dim, mlp_ratio, cpe_kernel, layerscale, drop_path)
        self.dim = dim
        self.pos_conv = (
            nn.Conv2d(dim, dim, cpe_kernel, padding=cpe_kernel // 2, groups=dim)
            if cpe_kernel
            else None
        )
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.mha_op = MultiheadSelfAttention(dim, num_heads)
        self.norm2 = LayerNorm2d(dim)
        self.mlp = conv_mlp(dim, int(mlp_ratio * dim), mlp_dw)
        self.ls1 = layer_scale(dim, layerscale, channels_last=True)
        self.ls2 = layer_scale(dim, layerscale, channels_last=False)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        if self.pos_conv is not None:
            x = x + self.pos_conv(x)
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        tokens = tokens + self.drop_path(self.ls1(self.mha_op(self.norm1(tokens))))
        x = tokens.transpose(1, 2).reshape(b, c, h, w)
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


class MHSABlock(nn.Module):
    """Full global MHSA block on tokens (official ``MHSA_Block``, GLNet-STL stage 4).

    ``t <- t + DropPath(LS1(MHSA(LN(t))))``; ``t <- t + DropPath(LS2(MLP(LN(t))))`` with
    MLP = Linear -> GELU -> Linear (keys ``mlp.0`` / ``mlp.2``) and ``nn.LayerNorm`` (eps 1e-6).

    Args:
        dim: width C.
        num_heads: attention heads (official: C / 32).
        mlp_ratio: MLP hidden width ``int(mlp_ratio * dim)``.
        layerscale: initial LayerScale value, None = none.
        drop_path: stochastic-depth rate of both residual branches.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        layerscale: float | None = None,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        hidden = check_block_options(type(self).__name__, dim, mlp_ratio, 0, layerscale, drop_path)
        self.dim = dim
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.mha_op = MultiheadSelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.ls1 = layer_scale(dim, layerscale, channels_last=True)
        self.ls2 = layer_scale(dim, layerscale, channels_last=True)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, N, C)."""
        tokens = tokens + self.drop_path(self.ls1(self.mha_op(self.norm1(tokens))))
        return tokens + self.drop_path(self.ls2(self.mlp(self.norm2(tokens))))


class GLNetStage(nn.Module):
    """A stage of blocks at one resolution; NCHW in and out.

    Args:
        dim: width C.
        depth: number of blocks.
        mixing_mode: one of ``"glmix"``, ``"glmix.mha_nchw"`` (GLMix on even indices, NCHW MHSA on
            odd ones), ``"mha_nchw"``, ``"mha"`` (token-layout MHSA blocks).
        num_heads: heads of every attention (slot MHSA and full MHSA).
        drop_path: per-block stochastic-depth rates (length ``depth``).
        mlp_ratio, mlp_dw, cpe_kernel, layerscale: block options (see the block classes).
        num_slots, slot_init, local_kernel: GLMix options (see ``GLMixBlock``).
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        mixing_mode: str,
        num_heads: int,
        drop_path: Sequence[float],
        mlp_ratio: float = 4.0,
        mlp_dw: bool = False,
        cpe_kernel: int = 0,
        layerscale: float | None = None,
        num_slots: int = 64,
        slot_init: str = "ada_avgpool",
        local_kernel: int = 5,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.mixing_mode = mixing_mode
        self.token_layout = mixing_mode == "mha"
        blocks: list[nn.Module] = []
        for i in range(depth):
            if mixing_mode == "glmix" or (mixing_mode == "glmix.mha_nchw" and i % 2 == 0):
                block: nn.Module = GLMixBlock(
                    dim,
                    num_heads=num_heads,
                    num_slots=num_slots,
                    slot_init=slot_init,
                    local_kernel=local_kernel,
                    mlp_ratio=mlp_ratio,
                    mlp_dw=mlp_dw,
                    cpe_kernel=cpe_kernel,
                    layerscale=layerscale,
                    drop_path=drop_path[i],
                )
            elif mixing_mode == "mha":
                block = MHSABlock(dim, num_heads, mlp_ratio, layerscale, drop_path[i])
            else:
                block = MHSANCHWBlock(
                    dim, num_heads, mlp_ratio, mlp_dw, cpe_kernel, layerscale, drop_path[i]
                )
            blocks.append(block)
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        if not self.token_layout:
            for block in self.blocks:
                x = block(x)
            return x
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        for block in self.blocks:
            tokens = block(tokens)
        return tokens.transpose(1, 2).reshape(b, c, h, w)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, depth={len(self.blocks)}, mixing_mode={self.mixing_mode!r}"


def _overlapped_stem(in_chans: int, width: int, stride: int, deploy: bool) -> nn.Sequential:
    # Index 0 is the official placeholder for an (unused) input LayerNorm; 3 is the GELU. A stem
    # stride of 2 (nano models) makes the first conv stride 1.
    return ConvNormSequential(
        nn.Identity(),
        nn.Conv2d(in_chans, width // 2, 3, stride=stride // 2, padding=1),
        _batch_norm(width // 2, deploy),
        nn.GELU(),
        nn.Conv2d(width // 2, width, 3, stride=2, padding=1),
        _batch_norm(width, deploy),
    )


def _batch_norm(channels: int, deploy: bool) -> nn.Module:
    # The deploy form keeps the position (and so the indices of the other layers) as an Identity.
    return nn.Identity() if deploy else nn.BatchNorm2d(channels)


def _downsample_layers(
    style: str, in_chans: int, widths: Sequence[int], stem_stride: int, deploy: bool = False
) -> nn.ModuleList:
    # ConvNormSequential: nn.Sequential keys, plus reparameterize() folding the BNs into the convs.
    if style == "overlapped":  # conv 3x3/2 -> BN ("proj.norm")
        layers = [_overlapped_stem(in_chans, widths[0], stem_stride, deploy)]
        layers += [
            ConvNormSequential(
                nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), _batch_norm(c_out, deploy)
            )
            for c_in, c_out in pairwise(widths)
        ]
    else:  # patch conv -> BN stem; BN -> conv 2x2/2 transitions ("norm.proj")
        layers = [
            ConvNormSequential(
                nn.Conv2d(in_chans, widths[0], stem_stride, stride=stem_stride),
                _batch_norm(widths[0], deploy),
            )
        ]
        layers += [
            ConvNormSequential(_batch_norm(c_in, deploy), nn.Conv2d(c_in, c_out, 2, stride=2))
            for c_in, c_out in pairwise(widths)
        ]
    return nn.ModuleList(layers)


class GLNet(nn.Module):
    """GLNet backbone: four stages of GLMix / full-MHSA blocks, BatchNorm2d, pooling, Linear head.

    Args:
        depths: blocks per stage.
        widths: channels per stage.
        mixing_modes: stage kinds (see the module docstring), one per stage.
        mlp_ratio: MLP expansion of every block (STL: 4, 4G family: 3).
        head_dim: channels per attention head (heads = width / head_dim).
        num_slots: GLMix slots (a perfect square for ``slot_init="ada_avgpool"``).
        slot_init: ``"ada_avgpool"`` or ``"param"`` (learned slots, ``glnet_stl_paramslot``).
        local_kernel: depthwise kernel of the GLMix local branch.
        cpe_kernel: conv position embedding kernel in every NCHW block, 0 = none.
        mlp_dw: residual depthwise 3x3 inside every conv MLP.
        layerscale: initial LayerScale value, None = none (glnet_16g: 1e-4).
        downsample_style: ``"overlapped"`` (4G family) or ``"non_overlapped"`` (STL).
        stem_stride: total stride of the stem, 4 (official) or 2 (nano models for 32x32 inputs).
        num_classes: classifier outputs (0: no classifier, ``forward`` returns pooled features).
        in_chans: input channels.
        drop_path_rate: stochastic depth of the last block (linear schedule over all blocks).
        deploy: build the re-parameterised form directly (BNs of the downsampling layers folded;
            loads state dicts of :func:`convattn.deploy.reparameterize_model` results).
    """

    def __init__(
        self,
        depths: Sequence[int] = (2, 2, 6, 2),
        widths: Sequence[int] = (96, 192, 384, 768),
        mixing_modes: Sequence[str] = ("glmix", "glmix", "glmix", "mha"),
        mlp_ratio: float = 4.0,
        head_dim: int = 32,
        num_slots: int = 64,
        slot_init: str = "ada_avgpool",
        local_kernel: int = 5,
        cpe_kernel: int = 0,
        mlp_dw: bool = False,
        layerscale: float | None = None,
        downsample_style: str = "non_overlapped",
        stem_stride: int = 4,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_path_rate: float = 0.0,
        deploy: bool = False,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        depths, widths, mixing_modes = list(depths), list(widths), list(mixing_modes)
        if not len(depths) == len(widths) == len(mixing_modes) == 4:
            raise ValueError(
                f"{owner}: 'depths', 'widths' and 'mixing_modes' must each have 4 entries, got "
                f"{len(depths)}, {len(widths)} and {len(mixing_modes)}"
            )
        for d in depths:
            check_positive_int(d, "depths", owner)
        check_positive_int(head_dim, "head_dim", owner)
        for w in widths:
            check_positive_int(w, "widths", owner)
            if w % head_dim:
                raise ValueError(
                    f"{owner}: 'widths' must be multiples of 'head_dim' ({head_dim}), got {widths}"
                )
        for mode in mixing_modes:
            check_choice(mode, "mixing_modes", MIXING_MODES, owner)
        check_choice(downsample_style, "downsample_style", DOWNSAMPLE_STYLES, owner)
        check_choice(stem_stride, "stem_stride", (2, 4), owner)  # type: ignore[arg-type]
        if downsample_style == "overlapped" and widths[0] % 2:
            raise ValueError(f"{owner}: 'widths'[0] must be even for the overlapped stem")
        check_positive_int(in_chans, "in_chans", owner)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"{owner}: 'num_classes' must be an int >= 0, got {num_classes!r}")
        # Block options (mlp_ratio, cpe_kernel, layerscale) are validated by the blocks themselves.
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"{owner}: 'drop_path_rate' must be in [0, 1), got {drop_path_rate}")

        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_stages = 4
        self.num_features = widths[-1]
        # Smallest input that survives the downsampling (patch convs floor, overlapped convs ceil).
        self.min_input_size = stem_stride * 8 if downsample_style == "non_overlapped" else 1

        self.downsample_layers = _downsample_layers(
            downsample_style, in_chans, widths, stem_stride, deploy
        )
        rates = stochastic_depth_rates(drop_path_rate, depths)
        self.stages = nn.ModuleList(
            GLNetStage(
                widths[i],
                depths[i],
                mixing_modes[i],
                widths[i] // head_dim,
                rates[i],
                mlp_ratio=mlp_ratio,
                mlp_dw=mlp_dw,
                cpe_kernel=cpe_kernel,
                layerscale=layerscale,
                num_slots=num_slots,
                slot_init=slot_init,
                local_kernel=local_kernel,
            )
            for i in range(4)
        )
        self.feature_info = [
            dict(num_chs=widths[i], reduction=stem_stride * 2**i, module=f"stages.{i}")
            for i in range(4)
        ]
        self.norm = nn.BatchNorm2d(widths[-1])
        self.head: nn.Module = (
            nn.Linear(widths[-1], num_classes) if num_classes > 0 else nn.Identity()
        )
        self.apply(init_linear_and_layernorm)

    # --- timm-style API ---------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            init_linear_and_layernorm(self.head)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        size = (self.min_input_size, self.min_input_size)
        check_feature_map(x, self.in_chans, type(self).__name__, min_size=size)
        # GLMix blocks compute in channels-last memory; keeping the whole network in it avoids two
        # layout copies per block (~5 % faster on CPU). Shapes and values are unchanged.
        return self.downsample_layers[0](x).contiguous(memory_format=torch.channels_last)

    def forward_intermediates(
        self, x: torch.Tensor, indices: Sequence[int] | int | None = None
    ) -> list[torch.Tensor]:
        """Outputs of the selected stages (NCHW), stopping after the last one needed."""
        wanted = resolve_out_indices(indices, self.num_stages)
        x = self.forward_stem(x)
        out = []
        for i in range(max(wanted) + 1):
            if i > 0:
                x = self.downsample_layers[i](x)
            x = self.stages[i](x)
            if i in wanted:
                out.append(x)
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Final NCHW map after the pre-head BatchNorm (as the official ``forward_features``)."""
        x = self.forward_stem(x)
        for i in range(self.num_stages):
            if i > 0:
                x = self.downsample_layers[i](x)
            x = self.stages[i](x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


TokenBox = tuple[int, int, int, int]
"""A box on the final token grid: (row0, col0, row1, col1), half-open."""


class GLNetTokenLabel(GLNet):
    """GLNet with the token-labeling auxiliary head (official ``GLNet_tklb``).

    Same backbone and keys as :class:`GLNet` plus ``tklb_aux_head`` (Linear, last width ->
    ``num_classes``) applied to every token of the final, normalised map.

    ``forward`` depends on the mode, as in the official model:

    * **training**: "MixToken". A box is drawn on the final token grid (``lam ~ Beta(beta, beta)``,
      side ``sqrt(1 - lam)`` of the grid, uniform centre, clipped), scaled by the stem-to-final
      reduction (8) onto the stem output, and that region of the stem output is replaced by the
      same region of the reversed batch (image ``b`` takes it from image ``B - 1 - b``). The token
      logits are then un-mixed with the same box, so token ``i`` of image ``b`` again describes
      image ``b``'s own content there. Returns ``(class_logits (B, K), token_logits (B, N, K),
      box)`` with ``box = (row0, col0, row1, col1)`` on the final grid (the official tuple
      ``(bbx1, bby1, bbx2, bby2)``, whose first coordinate runs along the height). The class
      target must then be mixed with ``lam = 1 - box area / N`` (see
      :func:`convattn.train.token_label.token_label_loss`).
    * **eval**: ``class_logits + 0.5 * token_logits.max(dim=1).values`` (B, K).

    With ``num_classes=0`` there is no head and no auxiliary head; ``forward`` returns the pooled
    features as :class:`GLNet` does.

    Args:
        mix_token: draw the MixToken box in training (official: always). False keeps the
            training output tuple with an empty box.
        mix_beta: Beta parameter of the box area (official 1.0: uniform).
        aux_weight: weight of the token logits' max in the eval output (official 0.5).
        **kwargs: :class:`GLNet` arguments.
    """

    def __init__(
        self,
        *,
        mix_token: bool = True,
        mix_beta: float = 1.0,
        aux_weight: float = 0.5,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        owner = type(self).__name__
        if not mix_beta > 0:
            raise ValueError(f"{owner}: 'mix_beta' must be > 0, got {mix_beta!r}")
        self.mix_token = bool(mix_token)
        self.mix_beta = float(mix_beta)
        self.aux_weight = float(aux_weight)
        reductions = [f["reduction"] for f in self.feature_info]
        self.token_pooling_scale = reductions[-1] // reductions[0]  # stem map -> final grid (8)
        self.tklb_aux_head: nn.Module | None = self._make_aux_head(self.num_classes)

    def _make_aux_head(self, num_classes: int) -> nn.Module | None:
        if num_classes <= 0:
            return None
        head = nn.Linear(self.num_features, num_classes)
        init_linear_and_layernorm(head)
        return head

    def reset_classifier(self, num_classes: int) -> None:
        super().reset_classifier(num_classes)
        self.tklb_aux_head = self._make_aux_head(num_classes)

    def sample_box(self, grid: tuple[int, int]) -> TokenBox:
        """Draw a MixToken box on a ``grid`` = (rows, cols) token grid (torch's global RNG)."""
        rows, cols = grid
        beta = torch.distributions.Beta(torch.tensor(self.mix_beta), torch.tensor(self.mix_beta))
        ratio = math.sqrt(1.0 - float(beta.sample()))
        cut_r, cut_c = int(rows * ratio), int(cols * ratio)
        cr = int(torch.randint(0, rows, ()).item())
        cc = int(torch.randint(0, cols, ()).item())
        r0, r1 = min(max(cr - cut_r // 2, 0), rows), min(max(cr + cut_r // 2, 0), rows)
        c0, c1 = min(max(cc - cut_c // 2, 0), cols), min(max(cc + cut_c // 2, 0), cols)
        return r0, c0, r1, c1

    def _sample_box_tensor(self, grid: tuple[int, int], device: torch.device) -> torch.Tensor:
        """:meth:`sample_box` in tensor operations (the same draws), for compiled graphs."""
        rows, cols = grid
        if not self.mix_token:
            return torch.zeros(4, dtype=torch.long, device=device)
        concentration = torch.full((2,), self.mix_beta)
        lam = torch._sample_dirichlet(concentration)[0]  # = Beta(beta, beta).sample()
        ratio = torch.sqrt(1.0 - lam)
        cut_r = torch.floor(rows * ratio).long() // 2
        cut_c = torch.floor(cols * ratio).long() // 2
        cr, cc = torch.randint(0, rows, ()), torch.randint(0, cols, ())
        box = [(cr - cut_r).clamp(0, rows), (cc - cut_c).clamp(0, cols)]
        box += [(cr + cut_r).clamp(0, rows), (cc + cut_c).clamp(0, cols)]
        return torch.stack(box).to(device)

    @staticmethod
    def _box_mask(box: torch.Tensor, height: int, width: int, scale: int) -> torch.Tensor:
        """(H, W) bool: pixel (y, x) lies in the token box scaled by ``scale``."""
        rows = torch.arange(height, device=box.device) // scale
        cols = torch.arange(width, device=box.device) // scale
        inside_r = (rows >= box[0]) & (rows < box[2])
        inside_c = (cols >= box[1]) & (cols < box[3])
        return inside_r.view(-1, 1) & inside_c.view(1, -1)

    def _forward_mixed_traced(self, x: torch.Tensor, final: tuple[int, int]) -> tuple:
        """MixToken with masks instead of Python slices: no data-dependent shapes in the graph."""
        box = self._sample_box_tensor(final, x.device)
        mask = self._box_mask(box, x.shape[-2], x.shape[-1], self.token_pooling_scale)
        x = torch.where(mask, x.flip(0), x)
        for i in range(self.num_stages):
            if i > 0:
                x = self.downsample_layers[i](x)
            x = self.stages[i](x)
        x = self.norm(x)
        rows, cols = x.shape[-2:]
        tokens = x.flatten(2).transpose(1, 2)
        cls_logits = self.head(tokens.mean(dim=1))
        aux = self.tklb_aux_head(tokens)
        inside = self._box_mask(box, rows, cols, 1).reshape(1, rows * cols, 1)
        return cls_logits, torch.where(inside, aux.flip(0), aux), box

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Final normalised map as tokens (B, N, C), N = rows * cols of the final grid."""
        return self.forward_features(x).flatten(2).transpose(1, 2)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Eval-mode output from the final map (B, C, h, w): class + 0.5 * max token logits."""
        pooled = x.mean(dim=(2, 3))
        if pre_logits or self.tklb_aux_head is None:
            return pooled if pre_logits else self.head(pooled)
        tokens = x.flatten(2).transpose(1, 2)
        return self.head(pooled) + self.aux_weight * self.tklb_aux_head(tokens).amax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple:
        if not self.training or self.tklb_aux_head is None:
            return self.forward_head(self.forward_features(x))
        x = self.forward_stem(x)
        # The final grid of this input: each later downsampling maps H to ceil(H / 2) (overlapped)
        # or floor(H / 2) (patch convs); the box is drawn there and scaled to the stem map.
        final = self._final_grid(x.shape[-2:])
        if torch.compiler.is_compiling():  # the box as tensors (compiled graphs have no .item())
            return self._forward_mixed_traced(x, final)
        box = self.sample_box(final) if self.mix_token else (0, 0, 0, 0)
        r0, c0, r1, c1 = box
        s = self.token_pooling_scale
        if r1 > r0 and c1 > c0:
            x = x.clone()
            region = (slice(None), slice(None), slice(s * r0, s * r1), slice(s * c0, s * c1))
            x[region] = x.flip(0)[region]
        for i in range(self.num_stages):
            if i > 0:
                x = self.downsample_layers[i](x)
            x = self.stages[i](x)
        x = self.norm(x)
        rows, cols = x.shape[-2:]
        tokens = x.flatten(2).transpose(1, 2)
        cls_logits = self.head(tokens.mean(dim=1))
        aux = self.tklb_aux_head(tokens)
        if r1 > r0 and c1 > c0:
            aux = aux.reshape(aux.shape[0], rows, cols, -1).clone()
            aux[:, r0:r1, c0:c1] = aux.flip(0)[:, r0:r1, c0:c1]
            aux = aux.reshape(aux.shape[0], rows * cols, -1)
        return cls_logits, aux, box

    def _final_grid(self, stem_hw: torch.Size) -> tuple[int, int]:
        h, w = int(stem_hw[0]), int(stem_hw[1])
        for _ in range(self.num_stages - 1):
            if self.min_input_size == 1:  # overlapped: conv 3x3/2, padding 1
                h, w = -(-h // 2), -(-w // 2)
            else:  # patch conv 2x2/2
                h, w = h // 2, w // 2
        return h, w


# --- configurations ------------------------------------------------------------------------------
_PAPER = (
    "Zhu et al., Revisiting the Integration of Convolution and Attention for Vision Backbone, "
    "NeurIPS 2024"
)
_RELEASE = "{}.pth (rayleizhu/GLMix README model card, OneDrive; manual download)"
_4G_CFG = dict(first_conv="downsample_layers.0.1", classifier="head", paper=_PAPER)
# Token labeling: both heads are classifiers (re-initialised together when num_classes changes).
_TKLB_CFG = dict(_4G_CFG, classifier=("head", "tklb_aux_head"))
_STL_CFG = dict(first_conv="downsample_layers.0.0", classifier="head", paper=_PAPER)

default_cfgs = {
    "glnet_4g": make_cfg(
        **_4G_CFG,
        paper_top1=83.7,
        paper_params_m=27.0,
        paper_gmacs=4.5,
        official_checkpoint=_RELEASE.format("glnet_4g"),
    ),
    "glnet_9g": make_cfg(
        **_4G_CFG,
        paper_top1=84.5,
        paper_params_m=60.0,
        paper_gmacs=9.7,
        official_checkpoint=_RELEASE.format("glnet_9g"),
    ),
    "glnet_16g": make_cfg(
        **_4G_CFG,
        paper_top1=85.0,
        paper_params_m=106.0,
        paper_gmacs=16.7,
        official_checkpoint=_RELEASE.format("glnet_16g"),
        checkpoint_key="model_ema",
    ),
    "glnet_stl": make_cfg(
        **_STL_CFG,
        paper_top1=82.5,
        paper_params_m=30.0,
        paper_gmacs=4.4,
        official_checkpoint=_RELEASE.format("glnet_stl"),
    ),
    "glnet_stl_paramslot": make_cfg(
        **_STL_CFG,
        paper_top1=82.1,
        paper_params_m=30.0,
        paper_gmacs=4.4,
        official_checkpoint=_RELEASE.format("glnet_stl_paramslot"),
    ),
    "glnet_4g_tklb": make_cfg(
        **_TKLB_CFG,
        paper_top1=84.4,
        paper_params_m=27.0,
        paper_gmacs=4.5,
        official_checkpoint=_RELEASE.format("glnet_4g_tklb"),
    ),
    "glnet_9g_tklb": make_cfg(
        **_TKLB_CFG,
        paper_top1=85.3,
        paper_params_m=61.0,
        paper_gmacs=9.7,
        official_checkpoint=_RELEASE.format("glnet_9g_tklb"),
    ),
    "glnet_nano": make_cfg(
        **_4G_CFG,
        input_size=(3, 32, 32),
        pool_size=(2, 2),
        crop_pct=1.0,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
    ),
}

# The 4G family: overlapped downsampling, CPE and MLP depthwise conv in every block, stage 3
# alternating GLMix / full MHSA, stage 4 full MHSA (NCHW blocks), MLP ratio 3.
_4G_FAMILY = dict(
    depths=(4, 4, 18, 4),
    mixing_modes=("glmix", "glmix", "glmix.mha_nchw", "mha_nchw"),
    mlp_ratio=3.0,
    cpe_kernel=3,
    mlp_dw=True,
    downsample_style="overlapped",
)
# Swin-Tiny layout: non-overlapped downsampling, no CPE, stage 4 token-layout MHSA, MLP ratio 4.
_STL = dict(
    depths=(2, 2, 6, 2),
    widths=(96, 192, 384, 768),
    mixing_modes=("glmix", "glmix", "glmix", "mha"),
    mlp_ratio=4.0,
    downsample_style="non_overlapped",
)
# Nano: the 4G-family design scaled down for 32x32 inputs (stem stride 2: stage maps 16/8/4/2).
_NANO = dict(
    _4G_FAMILY,
    depths=(1, 1, 2, 1),
    widths=(32, 64, 96, 128),
    num_slots=16,
    stem_stride=2,
)


@register_model
def glnet_4g(**kwargs) -> GLNet:
    """GLNet-4G: [4,4,18,4] x 64-128-256-512, 27,001,593 params, 4.48 GMACs."""
    return GLNet(**dict(_4G_FAMILY, widths=(64, 128, 256, 512)) | kwargs)


@register_model
def glnet_9g(**kwargs) -> GLNet:
    """GLNet-9G: [4,4,18,4] x 96-192-384-768, 60,010,617 params, 9.59 GMACs."""
    return GLNet(**dict(_4G_FAMILY, widths=(96, 192, 384, 768)) | kwargs)


@register_model
def glnet_16g(**kwargs) -> GLNet:
    """GLNet-16G: [4,4,18,4] x 128-256-512-1024, LayerScale 1e-4, 106,055,161 params, 16.6 GMACs."""
    return GLNet(**dict(_4G_FAMILY, widths=(128, 256, 512, 1024), layerscale=1e-4) | kwargs)


@register_model
def glnet_stl(**kwargs) -> GLNet:
    """GLNet-STL (Swin-Tiny layout), slots pooled from the input: 30,296,786 params, 4.35 GMACs."""
    return GLNet(**dict(_STL) | kwargs)


@register_model
def glnet_stl_paramslot(**kwargs) -> GLNet:
    """GLNet-STL with learned initial slots (``init_slots``): 30,481,106 params, 4.35 GMACs."""
    return GLNet(**dict(_STL, slot_init="param") | kwargs)


@register_model
def glnet_nano(**kwargs) -> GLNet:
    """GLNet for 32x32 inputs: 4G-family blocks, [1,1,2,1] x 32-64-96-128, 16 slots, stem stride 2.

    Stem conv3x3/1 -> BN -> GELU -> conv3x3/2 -> BN, so the four stages run at 16, 8, 4, 2 pixels
    for a 32x32 input (reductions 2/4/8/16); heads 1-2-3-4 (width / 32); MLP ratio 3 with the
    residual depthwise conv; CPE; stage 3 = one GLMix + one full-MHSA block.
    """
    return GLNet(**dict(_NANO) | kwargs)


@register_model
def glnet_4g_tklb(**kwargs) -> GLNetTokenLabel:
    """GLNet-4G with the token-labeling auxiliary head: 27,514,593 params, 4.51 GMACs."""
    return GLNetTokenLabel(**dict(_4G_FAMILY, widths=(64, 128, 256, 512)) | kwargs)


@register_model
def glnet_9g_tklb(**kwargs) -> GLNetTokenLabel:
    """GLNet-9G with the token-labeling auxiliary head: 60,779,617 params, 9.63 GMACs."""
    return GLNetTokenLabel(**dict(_4G_FAMILY, widths=(96, 192, 384, 768)) | kwargs)
