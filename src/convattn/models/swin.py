"""Swin Transformer and ACmix-Swin.

* Swin: Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows",
  ICCV 2021 (arXiv 2103.14030); official code microsoft/Swin-Transformer
  ``models/swin_transformer.py`` (classification) and SwinTransformer/Swin-Transformer-Object-
  Detection (the padding rules used here for arbitrary input sizes).
* ACmix-Swin: Pan et al., "On the Integration of Self-Attention and Convolution", CVPR 2022
  (arXiv 2111.14556); official code LeapLabTHU/ACmix ``Swin-Transformer/models/
  swin_transformer_acmix.py``; ``docs/notes/acmix.md`` §3 and §4(b). Only the window
  attention changes (:class:`~convattn.layers.acmix.ACmixWindowAttention`); everything else is Swin.

Layout and names follow the official code, so official checkpoints (``{"model": state_dict}``)
load strictly through :func:`checkpoint_filter_fn` (the model's ``checkpoint_filter``): ``patch_embed.{proj,norm}``,
``layers.{i}.blocks.{j}.{norm1,attn,norm2,mlp.fc1,mlp.fc2}``, ``layers.{i}.downsample.{norm,
reduction}`` (patch merging at the *end* of stages 0-2), ``norm``, ``head``. The deterministic
buffers are not read from files: ``attn_mask`` is dropped (we compute masks per input size) and
``relative_position_index`` is replaced by the model's own; the ACmix keys ``attn.fc.*`` /
``attn.dep_conv.weight`` are renamed to ``attn.conv_path.*`` by the attention module itself.
Internally maps are channels-last (B, H, W, C); every public output is NCHW (a permuted view,
i.e. channels_last memory).

Arbitrary input sizes (the official classification code only accepts its training size):

* the patch embedding zero-pads the image on the right/bottom to a multiple of the patch size;
* each block zero-pads its normalised map on the right/bottom to a multiple of the window, runs
  (shifted) window attention on the padded map and crops back (as the official detection code;
  padded tokens are not masked, only the shifted-window regions are);
* a map no larger than the window gets a window clamped to its shorter side and no shift (the
  official classification rule). The official code then builds a smaller bias table at
  construction; we keep the (2w-1)^2 table and use the entries of the offsets the clamped window
  can reach, so parameter shapes never depend on the input size;
* patch merging zero-pads odd heights/widths by one row/column (as the detection code).

Where the official classification code runs (even maps that are multiples of the window, e.g.
Swin-T/S at 224) these rules reduce to it exactly. In ACmix-Swin the attention module receives the
padded, cyclically rolled map, so its convolution path runs on that map and is rolled back with
the attention output, exactly as in the official code (``docs/notes/acmix.md`` §3).

``features_only`` / ``forward_intermediates`` return the output of each stage's blocks *before*
its patch merging (strides 4/8/16/32 for patch 4), without normalisation, as timm's Swin does;
``forward_features`` returns the last stage after the final ``norm``.

The file ends with the configuration table and the registered constructors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import DropPath, check_choice, check_feature_map, check_positive_int
from ..layers.acmix import ACmixWindowAttention
from ..layers.tracing import cached_in_eager
from ..layers.window_attention import (
    WindowAttention,
    shifted_window_mask,
    window_partition,
    window_reverse,
)
from ._features import resolve_out_indices
from ._helpers import init_linear_and_layernorm, make_cfg, stochastic_depth_rates
from ._registry import register_model

__all__ = [
    "Mlp",
    "PatchEmbed",
    "PatchMerging",
    "SwinStage",
    "SwinTransformer",
    "SwinTransformerBlock",
    "SwinWindowWeights",
    "checkpoint_filter_fn",
    "window_attention_map",
]

ATTN_LAYERS = ("window", "acmix")


class PatchEmbed(nn.Module):
    """Non-overlapping patch x patch convolution (+ LayerNorm): NCHW image -> (B, H', W', C) tokens.

    The image is zero-padded on the right/bottom to a multiple of ``patch_size``.
    """

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, norm: bool = True) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        pad_h, pad_w = -x.shape[-2] % p, -x.shape[-1] % p
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PatchMerging(nn.Module):
    """2x2 neighbours concatenated (4C) -> LayerNorm -> Linear(4C, 2C): halves H and W.

    The concatenation order is the official one: (row, col) offsets (0,0), (1,0), (0,1), (1,1).
    Odd heights/widths are zero-padded by one row/column at the bottom/right.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
            h, w = h + h % 2, w + w % 2
        # (B, H/2, dh, W/2, dw, C) -> (B, H/2, W/2, dw, dh, C): flattening (dw, dh) yields the
        # official order x0=(0,0), x1=(1,0), x2=(0,1), x3=(1,1) in one copy.
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.reduction(self.norm(x))

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Mlp(nn.Module):
    """Linear -> GELU -> Dropout -> Linear -> Dropout (the transformer feed-forward)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


# --- window attention on a (padded, rolled) map ------------------------------------------------------
# WindowAttention works on windows of its construction-time side w and ACmixWindowAttention on maps
# that tile into them. A map smaller than w gets a clamped window w' < w (official rule); such
# windows are embedded into w x w windows whose extra keys are masked, so the shared ``attend`` (and
# the bias table) serve them too: token pairs then use exactly the (dy, dx) entries of the table.


@cached_in_eager(maxsize=64)
def _shift_mask(height: int, width: int, window: int, shift: int, device: torch.device) -> Tensor:
    with torch.inference_mode(False):  # cached across calls, so never an inference tensor
        return shifted_window_mask(height, width, window, shift).to(device)


@cached_in_eager(maxsize=16)
def _embedding_mask(inner: int, window: int, device: torch.device) -> Tensor:
    """(1, w*w, w*w) mask hiding the keys of a w x w window outside its top-left inner x inner part."""
    with torch.inference_mode(False):
        # Comparisons and masked_fill only (no boolean index_put), so ONNX export translates it.
        inside = torch.arange(window, device=device) < inner
        outside = ~(inside[:, None] & inside[None, :]).flatten()
        row = torch.zeros(window * window, device=device).masked_fill(outside, float("-inf"))
        return row.expand(window * window, -1).unsqueeze(0)


def _clamped_window_attention(attn: WindowAttention, qkv: Tensor, window: int) -> Tensor:
    """Attention (before ``proj``) of a projected (B, H, W, 3C) map in windows of side ``window``.

    ``window`` < ``attn.window_size``; each window is zero-padded to the module's size and the
    padding keys are masked, so the result is attention among the window's own tokens.
    """
    _, h, w, c3 = qkv.shape
    full = attn.window_size
    windows = window_partition(qkv, window)  # (B*nW, w', w', 3C)
    windows = F.pad(windows, (0, 0, 0, full - window, 0, full - window))
    mask = _embedding_mask(window, full, qkv.device)
    out = attn.attend(windows.reshape(-1, full * full, c3), mask)  # (B*nW, N, C)
    out = out.view(-1, full, full, c3 // 3)[:, :window, :window]
    return window_reverse(out, window, h, w)


def window_attention_map(
    attn: WindowAttention, x: Tensor, window: int, mask: Tensor | None = None
) -> Tensor:
    """Run a (ACmix) window attention module on a (B, H, W, C) map tiled by ``window``-side windows.

    Args:
        attn: :class:`WindowAttention` or :class:`ACmixWindowAttention`.
        x: the normalised, padded and (in shifted blocks) rolled map; H and W multiples of ``window``.
        window: window side, at most ``attn.window_size`` (smaller only for clamped windows).
        mask: shifted-window mask (only with ``window == attn.window_size``).

    Returns:
        (B, H, W, C).
    """
    _, h, w, c = x.shape
    if window == attn.window_size:
        if isinstance(attn, ACmixWindowAttention):
            return attn(x, mask)
        out = attn(window_partition(x, window).reshape(-1, window * window, c), mask)
        return window_reverse(out.view(-1, window, window, c), window, h, w)
    # Clamped window (the map is smaller than the module's window): same maths from its pieces.
    qkv = attn.qkv(x)
    return attn.combine(attn.proj(_clamped_window_attention(attn, qkv, window)), qkv)


class SwinWindowWeights(NamedTuple):
    """Window attention weights of a Swin block on its padded, cyclically rolled map.

    ``weights[b, i, j, h, t, u]``: head h, window (i, j) of the rolled map, query token t, key
    token u (tokens row-major in the window); sums to one over u. The rolled map is the block's
    map zero-padded to ``padded_size`` and rolled by ``(-shift, -shift)``: rolled pixel (r, c) is
    pixel ``((r + shift) % Hp, (c + shift) % Wp)`` of the padded map.
    """

    weights: Tensor  # (B, nH, nW, heads, w*w, w*w)
    window: int
    shift: int
    padded_size: tuple[int, int]
    size: tuple[int, int]

    def of_query(self, row: int, col: int) -> tuple[Tensor, Tensor]:
        """Where the query at pixel (row, col) of the block's map attends, undoing roll and padding.

        Returns:
            ``(weights, map)``: its (B, heads, w*w) weights over its window's tokens, and the same
            weights placed on the block's (B, heads, H, W) map (mass on the zero padding beyond
            the map is left out, so a map may sum to less than one).
        """
        (hp, wp), (h, w), ws, shift = self.padded_size, self.size, self.window, self.shift
        ry, rx = (row - shift) % hp, (col - shift) % wp  # position on the rolled map
        i, j = ry // ws, rx // ws
        weights = self.weights[:, i, j, :, (ry % ws) * ws + rx % ws]  # (B, heads, n)
        tokens = torch.arange(ws * ws, device=weights.device)
        key_y = (i * ws + tokens // ws + shift) % hp
        key_x = (j * ws + tokens % ws + shift) % wp
        index = (key_y * wp + key_x).expand_as(weights)
        full = weights.new_zeros(*weights.shape[:-1], hp * wp).scatter_add_(-1, index, weights)
        return weights, full.view(*weights.shape[:-1], hp, wp)[..., :h, :w]


class SwinTransformerBlock(nn.Module):
    """Pre-norm block: x + DropPath(W-MSA or SW-MSA(LN(x))), then x + DropPath(MLP(LN(x))).

    Odd blocks of a stage are shifted: the map is rolled by (-shift, -shift) before the window
    attention (with a mask between regions that are not neighbours) and rolled back afterwards.

    Args:
        dim: channels C.
        num_heads: attention heads.
        window_size: window side w.
        shifted: roll by ``window_size // 2`` (odd blocks of a stage).
        mlp_ratio: MLP hidden width / C.
        qkv_bias: learn a bias in the q/k/v projection.
        drop: dropout after the MLP layers and the attention output.
        attn_drop: dropout on the attention weights.
        drop_path: stochastic-depth probability of both residual branches.
        attn_layer: ``"window"`` (Swin) or ``"acmix"`` (ACmix-Swin).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int = 7,
        shifted: bool = False,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        attn_layer: str = "window",
    ) -> None:
        super().__init__()
        check_choice(attn_layer, "attn_layer", ATTN_LAYERS, type(self).__name__)
        self.dim = dim
        self.window_size = window_size
        self.shift_size = window_size // 2 if shifted else 0
        attn_cls = ACmixWindowAttention if attn_layer == "acmix" else WindowAttention
        self.norm1 = nn.LayerNorm(dim)
        self.attn = attn_cls(dim, window_size, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def window_and_shift(self, height: int, width: int) -> tuple[int, int]:
        """Window side and shift used on an H x W map (official clamp for small maps)."""
        if min(height, width) <= self.window_size:
            return min(height, width), 0
        return self.window_size, self.shift_size

    def window_input(self, x: Tensor) -> tuple[Tensor, int, int, Tensor | None]:
        """The map the window attention sees: ``norm1(x)`` zero-padded to the window, then rolled.

        Returns:
            ``(map, window, shift, mask)``: the (B, Hp, Wp, C) map (rolled by (-shift, -shift) in
            shifted blocks), the window side and shift used (see :meth:`window_and_shift`) and the
            shifted-window mask (None without shift).
        """
        _, h, w, _ = x.shape
        window, shift = self.window_and_shift(h, w)
        y = self.norm1(x)
        pad_h, pad_w = -h % window, -w % window
        if pad_h or pad_w:
            y = F.pad(y, (0, 0, 0, pad_w, 0, pad_h))
        mask = None
        if shift:
            y = torch.roll(y, (-shift, -shift), dims=(1, 2))
            mask = _shift_mask(h + pad_h, w + pad_w, window, shift, x.device)
        return y, window, shift, mask

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        _, h, w, _ = x.shape
        y, window, shift, mask = self.window_input(x)
        y = window_attention_map(self.attn, y, window, mask)
        if shift:
            y = torch.roll(y, (shift, shift), dims=(1, 2))
        if y.shape[1:3] != (h, w):
            y = y[:, :h, :w]
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))

    @torch.no_grad()
    def attention_weights(self, x: Tensor) -> SwinWindowWeights:
        """The window attention weights this block applies to ``x`` (the visualisation hook).

        The block's own preparation (:meth:`window_input`) and the attention module's own logits
        (:meth:`WindowAttention.attention_weights`); a window clamped to a small map is embedded in
        the module's window with its outer keys masked, exactly as the forward pass does.

        Args:
            x: (B, H, W, C), the block's input.
        """
        attn = self.attn
        b, h, w, _ = x.shape
        y, window, shift, mask = self.window_input(x)
        hp, wp = y.shape[1:3]
        n, full = window * window, attn.window_size
        windows = window_partition(attn.qkv(y), window)  # (B*nW, w', w', 3C)
        if window == full:
            weights = attn.attention_weights(windows.flatten(1, 2), mask)
        else:  # token t of the w' x w' window is token (t // w') * w + t % w' of the w x w one
            windows = F.pad(windows, (0, 0, 0, full - window, 0, full - window)).flatten(1, 2)
            embedded = attn.attention_weights(windows, _embedding_mask(window, full, x.device))
            inner = torch.arange(n, device=x.device)
            inner = (inner // window) * full + inner % window
            weights = embedded[:, :, inner][:, :, :, inner]
        weights = weights.reshape(b, hp // window, wp // window, attn.num_heads, n, n)
        return SwinWindowWeights(weights, window, shift, (hp, wp), (h, w))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window_size={self.window_size}, shift_size={self.shift_size}"


class SwinStage(nn.Module):
    """``depth`` blocks (alternating plain / shifted windows), then optional patch merging.

    The official name is ``BasicLayer``; parameter names (``blocks``, ``downsample``) are the same.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        drop_path: Sequence[float],
        downsample: bool,
        **block_kwargs,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                dim,
                num_heads,
                window_size,
                shifted=j % 2 == 1,
                drop_path=drop_path[j],
                **block_kwargs,
            )
            for j in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward_blocks(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_blocks(x)
        return x if self.downsample is None else self.downsample(x)


class SwinTransformer(nn.Module):
    """Swin Transformer (optionally with ACmix window attention) on NCHW images of any size.

    Args:
        patch_size: side of the non-overlapping patches of the stem.
        in_chans: input channels.
        num_classes: classifier outputs (0: ``forward`` returns pooled features).
        embed_dim: channels of stage 0 (doubled at every patch merging).
        depths: blocks per stage.
        num_heads: attention heads per stage.
        window_size: window side w (the shift of odd blocks is w // 2).
        mlp_ratio: MLP hidden width / channels.
        qkv_bias: learn biases in the q/k/v projections.
        drop_rate: dropout after the patch embedding, the MLP layers and the attention outputs.
        attn_drop_rate: dropout on the attention weights.
        drop_path_rate: stochastic depth of the last block (linear schedule from 0).
        patch_norm: LayerNorm after the patch embedding.
        attn_layer: ``"window"`` (Swin) or ``"acmix"`` (ACmix-Swin).
        deploy: accepted for API symmetry with the other families: Swin has nothing to fold, and
            ACmix-Swin's deploy form (rates folded into ``proj`` / ``dep_conv``, then 1) has the
            training form's structure and keys, so both forms build the same modules.
    """

    def __init__(
        self,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        patch_norm: bool = True,
        attn_layer: str = "window",
        deploy: bool = False,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        for name, value in (
            ("patch_size", patch_size),
            ("in_chans", in_chans),
            ("embed_dim", embed_dim),
            ("window_size", window_size),
        ):
            check_positive_int(value, name, owner)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"{owner}: 'num_classes' must be an integer >= 0, got {num_classes!r}")
        check_choice(attn_layer, "attn_layer", ATTN_LAYERS, owner)
        if len(depths) == 0 or len(depths) != len(num_heads):
            raise ValueError(
                f"{owner}: 'depths' and 'num_heads' must be non-empty and of equal length, "
                f"got {list(depths)} and {list(num_heads)}"
            )
        for i, (d, n) in enumerate(zip(depths, num_heads)):
            check_positive_int(d, f"depths[{i}]", owner)
            check_positive_int(n, f"num_heads[{i}]", owner)
            if (embed_dim * 2**i) % n:
                raise ValueError(
                    f"{owner}: stage {i} width {embed_dim * 2**i} must be divisible by "
                    f"num_heads[{i}]={n}"
                )
        for name, p in (("drop_rate", drop_rate), ("attn_drop_rate", attn_drop_rate)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{owner}: '{name}' must be in [0, 1), got {p!r}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"{owner}: 'drop_path_rate' must be in [0, 1), got {drop_path_rate!r}")
        if mlp_ratio <= 0:
            raise ValueError(f"{owner}: 'mlp_ratio' must be positive, got {mlp_ratio!r}")

        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_stages = len(depths)
        self.num_features = embed_dim * 2 ** (self.num_stages - 1)
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, patch_norm)
        self.pos_drop = nn.Dropout(drop_rate)

        rates = stochastic_depth_rates(drop_path_rate, list(depths))
        self.layers = nn.ModuleList()
        self.feature_info: list[dict] = []
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            dim = embed_dim * 2**i
            self.layers.append(
                SwinStage(
                    dim,
                    depth,
                    heads,
                    window_size,
                    rates[i],
                    downsample=i < self.num_stages - 1,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    drop=drop_rate,
                    attn_drop=attn_drop_rate,
                    attn_layer=attn_layer,
                )
            )
            self.feature_info.append(
                dict(num_chs=dim, reduction=patch_size * 2**i, module=f"layers.{i}")
            )
        self.norm = nn.LayerNorm(self.num_features)
        self.head: nn.Module = (
            nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
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

    def no_weight_decay_keywords(self) -> set[str]:
        """Parameter-name fragments the official recipe exempts from weight decay."""
        return {"relative_position_bias_table", "rate1", "rate2"}

    def forward_stem(self, x: Tensor) -> Tensor:
        """NCHW image -> (B, H/p, W/p, C) tokens."""
        check_feature_map(x, self.in_chans, type(self).__name__)
        return self.pos_drop(self.patch_embed(x))

    def forward_intermediates(
        self, x: Tensor, indices: Sequence[int] | int | None = None
    ) -> list[Tensor]:
        """NCHW outputs of the selected stages' blocks (before patch merging, not normalised)."""
        wanted = resolve_out_indices(indices, self.num_stages)
        x = self.forward_stem(x)
        out = []
        for i in range(max(wanted) + 1):
            stage = self.layers[i]
            x = stage.forward_blocks(x)
            if i in wanted:
                out.append(x.permute(0, 3, 1, 2))
            if stage.downsample is not None:
                x = stage.downsample(x)
        return out

    def forward_features(self, x: Tensor) -> Tensor:
        """Last stage after the final LayerNorm, NCHW."""
        x = self.forward_stem(x)
        for stage in self.layers:
            x = stage(x)
        return self.norm(x).permute(0, 3, 1, 2)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def checkpoint_filter(self, state_dict: dict) -> dict:
        """An official Swin / ACmix-Swin state dict in this model's layout (:func:`checkpoint_filter_fn`)."""
        return checkpoint_filter_fn(state_dict, self)


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """Official Swin / ACmix-Swin state dicts -> ours.

    Names are the official ones (the ACmix conv-path keys ``fc.*``/``dep_conv.*`` are renamed by
    :class:`ACmixWindowAttention` itself). The deterministic buffers are not taken from the file:
    ``attn_mask`` is dropped (recomputed per input size) and ``relative_position_index`` is replaced
    by the model's own.
    """
    own = model.state_dict()
    out = {}
    for key, value in state_dict.items():
        if key.endswith("attn_mask"):
            continue
        if key.endswith("relative_position_index"):
            if key not in own:
                continue
            value = own[key]
        out[key] = value
    return out


# --- configurations ------------------------------------------------------------------------------
_SWIN_PAPER = (
    "Liu et al., Swin Transformer: Hierarchical Vision Transformer using Shifted Windows, ICCV 2021"
)
_ACMIX_PAPER = "Pan et al., On the Integration of Self-Attention and Convolution, CVPR 2022"
_ACMIX_WEIGHTS = "released for Swin-T/S (LeapLabTHU/ACmix README: Tsinghua Cloud / Google Drive)"
_COMMON = dict(first_conv="patch_embed.proj", classifier="head", crop_pct=0.875)

# Official configurations (Swin configs/swin_*_patch4_window7_224.yaml and ACmix's copies).
_TINY = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2)
_SMALL = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.3)
# Nano (ours, for 32x32 inputs; 0.96 M params): patch 2, widths 24-192 (head_dim 24), window 4.
# Maps 16/8/4/2: stages 0-1 alternate plain and shifted 4x4 windows (shift 2), stage 2 is one 4x4
# window, stage 3 a window clamped to its 2x2 map. One block suffices where the map fits a window.
_NANO = dict(
    patch_size=2,
    embed_dim=24,
    depths=(2, 2, 1, 1),
    num_heads=(1, 2, 4, 8),
    window_size=4,
    drop_path_rate=0.1,
)
_SMALL_INPUT = dict(
    input_size=(3, 32, 32), pool_size=(2, 2), crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3
)

default_cfgs = {
    "swin_tiny": make_cfg(
        **_COMMON,
        paper=_SWIN_PAPER,
        paper_top1=81.2,
        paper_params_m=28.3,
        paper_gmacs=4.5,
        official_checkpoint="swin_tiny_patch4_window7_224.pth (microsoft/Swin-Transformer)",
    ),
    "swin_small": make_cfg(
        **_COMMON,
        paper=_SWIN_PAPER,
        paper_top1=83.2,
        paper_params_m=50.0,
        paper_gmacs=8.7,
        official_checkpoint="swin_small_patch4_window7_224.pth (microsoft/Swin-Transformer)",
    ),
    "acmix_swin_tiny": make_cfg(
        **_COMMON,
        paper=_ACMIX_PAPER,
        paper_top1=81.9,
        paper_params_m=30.0,
        paper_gmacs=4.6,
        official_checkpoint=_ACMIX_WEIGHTS,
    ),
    "acmix_swin_small": make_cfg(
        **_COMMON,
        paper=_ACMIX_PAPER,
        paper_top1=83.5,
        paper_params_m=51.0,
        paper_gmacs=9.0,
        official_checkpoint=_ACMIX_WEIGHTS,
    ),
    "acmix_swin_nano": make_cfg(
        **(_COMMON | _SMALL_INPUT), paper=_ACMIX_PAPER, model_args=dict(_NANO, attn_layer="acmix")
    ),
}


@register_model
def swin_tiny(**kwargs) -> SwinTransformer:
    """Swin-T: embed 96, depths [2,2,6,2], window 7, 28.29 M params, 4.49 GMACs at 224."""
    return SwinTransformer(**_TINY | kwargs)


@register_model
def swin_small(**kwargs) -> SwinTransformer:
    """Swin-S: embed 96, depths [2,2,18,2], window 7, 49.61 M params, 8.74 GMACs at 224."""
    return SwinTransformer(**_SMALL | kwargs)


@register_model
def acmix_swin_tiny(**kwargs) -> SwinTransformer:
    """ACmix-Swin-T (official layout): Swin-T with ACmix window attention, 28.65 M params."""
    return SwinTransformer(**_TINY | dict(attn_layer="acmix") | kwargs)


@register_model
def acmix_swin_small(**kwargs) -> SwinTransformer:
    """ACmix-Swin-S (official layout): Swin-S with ACmix window attention, 50.35 M params."""
    return SwinTransformer(**_SMALL | dict(attn_layer="acmix") | kwargs)


@register_model
def acmix_swin_nano(**kwargs) -> SwinTransformer:
    """ACmix-Swin for 32x32 inputs (0.96 M params, 14.7 MMACs at 32x32).

    Patch 2, embed 24, depths [2,2,1,1], heads [1,2,4,8] (head_dim 24), window 4, mlp 4. Stage maps
    are 16/8/4/2 at 32x32: plain + shifted (by 2) 4x4 windows in stages 0-1, one 4x4 window in
    stage 2 and a window clamped to the 2x2 map in stage 3.
    """
    return SwinTransformer(**default_cfgs["acmix_swin_nano"]["model_args"] | kwargs)
