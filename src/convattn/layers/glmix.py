"""GLMix: a global slot-attention branch and a local convolution branch, summed.

Zhu, Wang, Zhang, Lau, "Revisiting the Integration of Convolution and Attention for Vision
Backbone", NeurIPS 2024, arXiv 2411.14429. Behaviour follows the official code as
``docs/notes/glmix.md`` describes it: §1 (block steps 1-13) and the §5 checklist.

With ``z`` the (normalised) features as pixel tokens (B, N, C), N = H*W pixels and S slots:

    (1) initial slots  s0 = AdaAvgPool_{sqrt(S) x sqrt(S)}(x_raw)   or a learned (1, S, C) table
    (4) logits         A  = tau * l2norm(s0) @ l2norm(z)^T           (B, S, N), tau = slot_scale
    (5) clustering     slots = softmax_over_pixels(A) @ z            (B, S, C)
    (6) relation       slots = MHSA(slots)                           no residual, no norm
    (7) dispatch       g  = softmax_over_slots(A)^T @ slots          (B, N, C), same logits
    (8) local          l  = Conv1x1(DWConv_kxk(Conv1x1(z)))          biases, no activation
    (9) fusion         GLMix(z) = g + l

Every product is a ``matmul``/``baddbmm`` (linear in N, and visible to ``FlopCounterMode``). The
mixer and block compute in channels-last memory: the pixels are then a (B, N, C) token *view*, the
CPU depthwise convolution takes its fast path and LayerNorm2d permutes without copying. Results
come back in the input's memory format, so a channels-last network pays no layout copy at all and an
NCHW-contiguous input pays one conversion in and one out.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_choice, check_feature_map, check_positive_int
from .attention import MultiheadSelfAttention, resolve_num_heads
from .drop import DropPath
from .layer_scale import layer_scale
from .mlp import conv_mlp
from .norm import LayerNorm2d
from .pooling import adaptive_avg_pool2d

__all__ = ["GLMix", "GLMixBlock", "check_block_options"]

SLOT_INITS = ("ada_avgpool", "param")


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """The layout to return ``x``'s result in: channels-last only if ``x`` is (strictly) so."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _check_odd_kernel(value: object, name: str, owner: str) -> int:
    check_positive_int(value, name, owner)
    if value % 2 == 0:  # type: ignore[operator]
        raise ValueError(f"{owner}: '{name}' must be odd ('same' padding), got {value}")
    return value  # type: ignore[return-value]


class GLMix(nn.Module):
    """GLMix token mixer, usable as a drop-in replacement for a k x k convolution.

    Soft-clusters all pixels into ``num_slots`` semantic slots, runs multi-head self-attention among
    the slots, dispatches them back to the pixels with the same logits, and adds a local
    1x1 -> depthwise k x k -> 1x1 convolution branch. Cost is linear in the number of pixels.

    Drop-in extras (not in the paper, which only uses ``in == out`` and stride 1): with
    ``stride > 1`` the input is first average-pooled by ``stride`` (``ceil_mode``, so the output is
    ``ceil(H / stride) x ceil(W / stride)``) and the mixer runs on the pooled map; with
    ``out_channels != in_channels`` a final biased 1x1 convolution ``proj`` maps the result. With
    ``in == out`` and stride 1 the parameters are exactly the official block's mixer parameters
    (``slot_scale``, ``init_slots``, ``relation_mha.*``, ``feature_conv.{0,1,2}.*``).

    Visualisation: the (B, S, N) logits pass through the identity module ``vis_proxy``; a forward
    hook on it captures them (softmax over dim 1 gives the per-pixel slot assignment maps).

    Args:
        in_channels: input width C; the mixer works at this width.
        out_channels: output width (default ``in_channels``).
        stride: spatial stride (average pooling before mixing).
        num_slots: number of slots S; a perfect square for ``slot_init="ada_avgpool"``.
        head_dim: channels per head of the slot MHSA (heads = C / head_dim) when ``num_heads`` is None.
        num_heads: heads of the slot MHSA (overrides ``head_dim``).
        local_kernel: odd kernel size of the depthwise convolution in the local branch.
        slot_init: ``"ada_avgpool"`` (adaptive average pool of ``slot_source`` to a
            sqrt(S) x sqrt(S) grid, row-major) or ``"param"`` (learned (1, S, C) table, N(0, 0.02^2)).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        stride: int = 1,
        *,
        num_slots: int = 64,
        head_dim: int = 32,
        num_heads: int | None = None,
        local_kernel: int = 5,
        slot_init: str = "ada_avgpool",
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        check_positive_int(in_channels, "in_channels", owner)
        out_channels = in_channels if out_channels is None else out_channels
        check_positive_int(out_channels, "out_channels", owner)
        check_positive_int(stride, "stride", owner)
        check_positive_int(num_slots, "num_slots", owner)
        _check_odd_kernel(local_kernel, "local_kernel", owner)
        check_choice(slot_init, "slot_init", SLOT_INITS, owner)
        heads = resolve_num_heads(in_channels, num_heads, head_dim, owner, "in_channels")
        grid = math.isqrt(num_slots)
        if slot_init == "ada_avgpool" and grid * grid != num_slots:
            raise ValueError(
                f"{owner}: 'num_slots' must be a perfect square for slot_init='ada_avgpool' "
                f"(slots come from a sqrt(S) x sqrt(S) pooling grid), got {num_slots}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.num_slots = num_slots
        self.num_heads = heads
        self.slot_init = slot_init
        self.slot_grid = grid

        # Temperature of the cosine logits (learnable 0-dim, init C^-1/2).
        self.slot_scale = nn.Parameter(torch.tensor(in_channels**-0.5))
        if slot_init == "param":
            self.init_slots = nn.Parameter(torch.empty(1, num_slots, in_channels))
            nn.init.normal_(self.init_slots, std=0.02)
        self.relation_mha = MultiheadSelfAttention(in_channels, heads)
        self.feature_conv = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 1),
            nn.Conv2d(
                in_channels,
                in_channels,
                local_kernel,
                padding=local_kernel // 2,
                groups=in_channels,
            ),
            nn.Conv2d(in_channels, in_channels, 1),
        )
        self.vis_proxy = nn.Identity()
        self.proj = nn.Conv2d(in_channels, out_channels, 1) if out_channels != in_channels else None

    def forward(self, x: torch.Tensor, slot_source: torch.Tensor | None = None) -> torch.Tensor:
        """Mix ``x``.

        Args:
            x: (B, C_in, H, W) features to cluster and convolve.
            slot_source: (B, C_in, H', W') map the initial slots are pooled from (any H', W');
                defaults to ``x`` (before the stride pooling). Ignored with ``slot_init="param"``.

        Returns:
            (B, C_out, ceil(H / stride), ceil(W / stride)).
        """
        owner = type(self).__name__
        check_feature_map(x, self.in_channels, owner)
        if slot_source is None:
            slot_source = x
        else:
            check_feature_map(slot_source, self.in_channels, owner, name="slot_source")
            if slot_source.shape[0] != x.shape[0]:
                raise ValueError(
                    f"{owner}: argument 'slot_source' must have the batch size of 'x' "
                    f"({x.shape[0]}), got {slot_source.shape[0]}"
                )
        layout = _memory_format(x)
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride, self.stride, ceil_mode=True)
        out = self._mix(x, slot_source)
        if self.proj is not None:
            out = self.proj(out)
        return out.contiguous(memory_format=layout)

    def _initial_slots(self, slot_source: torch.Tensor) -> torch.Tensor:
        """Step 1: (B, S, C) pooled slots or the (1, S, C) learned table."""
        if self.slot_init == "param":
            return self.init_slots
        pooled = adaptive_avg_pool2d(slot_source, (self.slot_grid, self.slot_grid))  # (B, C, g, g)
        return pooled.flatten(2).transpose(1, 2)  # row-major grid cells -> (B, S, C)

    def _mix(self, z: torch.Tensor, slot_source: torch.Tensor) -> torch.Tensor:
        """Steps 1 and 4-9 on the map ``z`` (B, C, H, W) -> channels-last (B, C, H, W)."""
        b, c, h, w = z.shape
        # One layout for everything: NHWC memory makes the pixels a (B, N, C) token view and is
        # the fast path of the CPU depthwise convolution. No-op for channels-last input.
        z = z.contiguous(memory_format=torch.channels_last)
        tokens = z.permute(0, 2, 3, 1).reshape(b, h * w, c)  # (B, N, C), a view
        # (4) Cosine logits; the temperature scales the S slot vectors rather than N pixels.
        slot_dirs = F.normalize(self._initial_slots(slot_source), dim=-1) * self.slot_scale
        logits = torch.matmul(slot_dirs, F.normalize(tokens, dim=-1).transpose(1, 2))  # (B, S, N)
        logits = self.vis_proxy(logits)
        # (5) Clustering: each slot is a convex combination of pixels (softmax over pixels).
        slots = torch.matmul(logits.softmax(dim=-1), tokens)  # (B, S, C)
        # (6) Relation among slots; its output replaces the slots.
        slots = self.relation_mha(slots)
        # (8) Local branch, channels-last in and out.
        local = self.feature_conv(z).permute(0, 2, 3, 1).reshape(b, h * w, c)
        # (7, 9) Dispatch with the same logits (softmax over slots), fused with the sum.
        fused = torch.baddbmm(local, logits.softmax(dim=1).transpose(1, 2), slots)  # (B, N, C)
        return fused.view(b, h, w, c).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, stride={self.stride}, "
            f"num_slots={self.num_slots}, num_heads={self.num_heads}, slot_init={self.slot_init!r}"
        )


def check_block_options(
    owner: str,
    dim: int,
    mlp_ratio: float,
    cpe_kernel: int,
    layerscale: float | None,
    drop_path: float,
) -> int:
    """Validate the options every GLNet block shares; return the MLP hidden width.

    Args:
        owner: the class named in error messages.
        dim: block width C.
        mlp_ratio: MLP hidden width ``int(mlp_ratio * dim)``, at least 1.
        cpe_kernel: 0 (no conv position embedding) or an odd kernel.
        layerscale: None or a positive initial LayerScale value.
        drop_path: stochastic-depth rate in [0, 1).
    """
    if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)):
        raise ValueError(f"{owner}: 'mlp_ratio' must be a positive number, got {mlp_ratio!r}")
    hidden = int(mlp_ratio * dim)
    if hidden < 1:
        raise ValueError(f"{owner}: 'mlp_ratio' must give >= 1 hidden channel, got {mlp_ratio!r}")
    if cpe_kernel != 0:
        _check_odd_kernel(cpe_kernel, "cpe_kernel", owner)
    if layerscale is not None and (
        isinstance(layerscale, bool)
        or not isinstance(layerscale, (int, float))
        or not layerscale > 0
    ):
        raise ValueError(f"{owner}: 'layerscale' must be None or > 0, got {layerscale!r}")
    if (
        isinstance(drop_path, bool)
        or not isinstance(drop_path, (int, float))
        or not (0.0 <= drop_path < 1.0)
    ):
        raise ValueError(f"{owner}: 'drop_path' must be in [0, 1), got {drop_path!r}")
    return hidden


class GLMixBlock(GLMix):
    """GLNet block: optional CPE, pre-norm GLMix mixer and a conv MLP, each with a residual.

    ``x <- x + DWConv(x)`` (CPE, optional); ``x <- x + DropPath(LS1(GLMix(norm1(x))))`` with the
    initial slots pooled from the block's raw input; ``x <- x + DropPath(LS2(MLP(norm2(x))))`` with
    MLP = 1x1 -> [h + DW3x3(h)] -> GELU -> 1x1.

    The block *is* a :class:`GLMix` (subclass), so the mixer's parameters sit directly on the block
    under the official names and official GLNet block state dicts load unchanged: ``slot_scale``,
    ``init_slots``, ``pos_conv.*``, ``norm1.*``, ``relation_mha.*``, ``feature_conv.{0,1,2}.*``,
    ``norm2.*``, ``mlp.{0,1,3}.*`` and ``ls1.gamma`` / ``ls2.gamma``.

    Args:
        dim: width C (input = output, stride 1).
        num_heads: heads of the slot MHSA (overrides ``head_dim``).
        head_dim: channels per head when ``num_heads`` is None (official: 32).
        num_slots: number of slots (official: 64).
        slot_init: ``"ada_avgpool"`` or ``"param"`` (see :class:`GLMix`).
        local_kernel: depthwise kernel of the local branch (official: 5).
        mlp_ratio: MLP hidden width ``int(mlp_ratio * dim)`` (STL: 4, 4G family: 3).
        mlp_dw: add the residual depthwise 3x3 on the MLP hidden map (4G family).
        cpe_kernel: kernel of the conv position embedding, 0 = none (4G family: 3).
        layerscale: initial LayerScale value, None = no LayerScale (glnet_16g: 1e-4).
        drop_path: stochastic-depth rate of both residual branches.
    """

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int | None = None,
        head_dim: int = 32,
        num_slots: int = 64,
        slot_init: str = "ada_avgpool",
        local_kernel: int = 5,
        mlp_ratio: float = 4.0,
        mlp_dw: bool = False,
        cpe_kernel: int = 0,
        layerscale: float | None = None,
        drop_path: float = 0.0,
    ) -> None:
        owner = type(self).__name__
        check_positive_int(dim, "dim", owner)
        resolve_num_heads(dim, num_heads, head_dim, owner, "dim")
        hidden = check_block_options(owner, dim, mlp_ratio, cpe_kernel, layerscale, drop_path)
        super().__init__(
            dim,
            dim,
            1,
            num_slots=num_slots,
            head_dim=head_dim,
            num_heads=num_heads,
            local_kernel=local_kernel,
            slot_init=slot_init,
        )
        self.dim = dim
        self.pos_conv = (
            nn.Conv2d(dim, dim, cpe_kernel, padding=cpe_kernel // 2, groups=dim)
            if cpe_kernel
            else None
        )
        self.norm1 = LayerNorm2d(dim)
        self.norm2 = LayerNorm2d(dim)
        self.mlp = conv_mlp(dim, hidden, mlp_dw)
        self.ls1 = layer_scale(dim, layerscale, channels_last=False)
        self.ls2 = layer_scale(dim, layerscale, channels_last=False)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """(B, C, H, W) -> (B, C, H, W)."""
        check_feature_map(x, self.dim, type(self).__name__)
        layout = _memory_format(x)
        slot_source = x  # (1) slots are pooled from the raw input, before CPE and norm1
        # The block runs channels-last (see GLMix._mix); LayerNorm2d then permutes without copies.
        x = x.contiguous(memory_format=torch.channels_last)
        if self.pos_conv is not None:
            x = x + self.pos_conv(x)  # (2) the CPE output is the residual shortcut
        x = x + self.drop_path(self.ls1(self._mix(self.norm1(x), slot_source)))
        x = x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))
        return x.contiguous(memory_format=layout)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_slots={self.num_slots}, num_heads={self.num_heads}, "
            f"slot_init={self.slot_init!r}"
        )
