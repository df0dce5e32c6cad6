"""Swin window attention (Liu et al., ICCV 2021, arXiv 2103.14030), the base of ACmix-Swin.

Self-attention inside non-overlapping ``w x w`` windows with a learned relative position bias,
plus the pieces a Swin block needs around it: splitting a map into windows and back, the relative
position index, and the mask that keeps cyclically shifted windows from mixing regions that are not
neighbours in the original map. Parameter names follow the official Swin code (``qkv``, ``proj``,
``relative_position_bias_table`` and the ``relative_position_index`` buffer), so official Swin and
ACmix-Swin state dicts load unchanged (``docs/notes/acmix.md`` §3).
"""

from __future__ import annotations

import torch
from torch import nn

from ._checks import check_positive_int
from .attention import resolve_num_heads
from .fused_attention import scaled_dot_product_attention

__all__ = [
    "WindowAttention",
    "relative_position_index",
    "shifted_window_mask",
    "window_partition",
    "window_reverse",
]

# Additive logit for token pairs from different regions of a shifted window (official value).
MASK_VALUE = -100.0


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """Split a map into non-overlapping windows.

    Args:
        x: map of shape (B, H, W, C); H and W must be multiples of ``window_size``.
        window_size: side w of the square windows.

    Returns:
        Contiguous windows of shape (B * nW, w, w, C), ordered by image, then window row, then
        window column.
    """
    b, h, w, c = x.shape
    if h % window_size or w % window_size:
        raise ValueError(
            f"window_partition: map size {h}x{w} must be a multiple of window_size={window_size}"
        )
    x = x.view(b, h // window_size, window_size, w // window_size, window_size, c)
    # contiguous first: with one image and one window row a plain reshape returns a strided view
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, c)


def window_reverse(
    windows: torch.Tensor, window_size: int, height: int, width: int
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * nW, w, w, C) -> (B, H, W, C)."""
    nh, nw = height // window_size, width // window_size
    c = windows.shape[-1]
    x = windows.view(-1, nh, nw, window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, c)


def relative_position_index(window_size: int) -> torch.Tensor:
    """Index into the (2w-1)^2 bias table for every (query, key) pair of a window.

    Token t sits at (t // w, t % w). The pair (i, j) uses the row offset dy = y_i - y_j and column
    offset dx = x_i - x_j, both in [-(w-1), w-1], flattened as (dy + w - 1) * (2w - 1) + dx + w - 1.

    Returns:
        Long tensor of shape (w*w, w*w).
    """
    coords = torch.stack(
        torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    ).flatten(1)  # (2, N): row, column of each token
    offsets = coords[:, :, None] - coords[:, None, :] + (window_size - 1)  # (2, N, N), >= 0
    return offsets[0] * (2 * window_size - 1) + offsets[1]


def shifted_window_mask(height: int, width: int, window_size: int, shift: int) -> torch.Tensor:
    """Attention mask for windows of a map rolled by (-shift, -shift).

    After the roll, the last window row/column holds pixels from up to three regions of the
    original map (the body, the strip ``[-w, -shift)`` and the wrapped-around strip
    ``[-shift, end)``). Pairs of tokens from different regions get ``-100`` (official value), all
    others 0.

    Args:
        height: height of the (padded) map, a multiple of ``window_size``.
        width: width of the (padded) map, a multiple of ``window_size``.
        window_size: side w of the windows.
        shift: roll amount, 0 < shift < w.

    Returns:
        Float tensor of shape (nW, w*w, w*w), windows ordered as in :func:`window_partition`.
    """
    if not 0 < shift < window_size:
        raise ValueError(f"shifted_window_mask: 'shift' must be in (0, {window_size}), got {shift}")
    region = torch.zeros(1, height, width, 1)
    bands = (slice(0, -window_size), slice(-window_size, -shift), slice(-shift, None))
    label = 0
    for rows in bands:
        for cols in bands:
            region[:, rows, cols, :] = label
            label += 1
    region = window_partition(region, window_size).flatten(1)  # (nW, N)
    different = region[:, :, None] != region[:, None, :]
    return torch.zeros(different.shape).masked_fill_(different, MASK_VALUE)


class WindowAttention(nn.Module):
    """Multi-head self-attention within windows, with a learned relative position bias.

    Export: ``fixed_input_size_reason`` says why a graph holding it cannot take a dynamic input
    size (read by :func:`convattn.deploy.export.dynamic_size_blockers`).

    ``forward`` takes windows of tokens (B * nW, N = w*w, C) and an optional additive mask
    (nW, N, N) from :func:`shifted_window_mask`; logits are ``q k^T / sqrt(head_dim)`` plus
    ``relative_position_bias_table[relative_position_index]`` (per head) plus the mask. The
    ``relative_position_index`` buffer is persistent, as in the official code, so official state
    dicts load with ``strict=True`` and no key has to be dropped.

    Args:
        dim: token width C.
        window_size: side w of the square windows.
        num_heads: number of heads; ``dim`` must be divisible by it.
        qkv_bias: learn a bias in the packed q/k/v projection.
        attn_drop: dropout probability on the attention weights (training only).
        proj_drop: dropout probability after the output projection (training only).
    """

    fixed_input_size_reason = (
        "Swin window attention pads each map to a multiple of the window, clamps the window "
        "on small maps and builds its shift masks from the map size"
    )

    def __init__(
        self,
        dim: int,
        window_size: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        check_positive_int(dim, "dim", owner)
        check_positive_int(window_size, "window_size", owner)
        resolve_num_heads(dim, num_heads, 1, owner, "dim")
        for name, p in (("attn_drop", attn_drop), ("proj_drop", proj_drop)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{owner}: '{name}' must be in [0, 1), got {p!r}")
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.attn_drop = attn_drop

        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, num_heads)
        )
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self) -> torch.Tensor:
        """The bias added to the logits, shape (heads, N, N)."""
        n = self.window_size**2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)

    def _logit_bias(
        self, bw: int, n: int, mask: torch.Tensor | None, dtype: torch.dtype
    ) -> torch.Tensor:
        """Relative position bias plus the optional shift mask, (B * nW, heads, N, N)."""
        heads = self.num_heads
        attn_mask = self.relative_position_bias().to(dtype)  # (h, N, N)
        # The mask is given SDPA with the full batch dimension: its fused CPU kernel is then used,
        # about 2x faster than the unfused path it takes for a broadcast (h, N, N) mask.
        if mask is None:
            return attn_mask.expand(bw, -1, -1, -1)
        nw = mask.shape[0]
        if mask.shape != (nw, n, n) or bw % nw:
            raise ValueError(
                f"{type(self).__name__}: argument 'mask' must have shape (nW, {n}, {n}) with "
                f"nW dividing the number of windows {bw}, got {tuple(mask.shape)}"
            )
        attn_mask = attn_mask + mask.to(dtype).unsqueeze(1)  # (nW, h, N, N)
        # windows are image-major: window i of the batch uses mask i % nW
        return attn_mask.expand(bw // nw, -1, -1, -1, -1).reshape(bw, heads, n, n)

    def attention_weights(
        self, qkv: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The softmax weights :meth:`attend` applies to the values (the visualisation hook).

        Args:
            qkv: (B * nW, N, 3C) projected windows, as for :meth:`attend`.
            mask: optional (nW, N, N) additive mask.

        Returns:
            (B * nW, heads, N, N): row t holds query token t's weights over the window's tokens
            (row-major), summing to one.
        """
        bw, n, _ = qkv.shape
        q, k, _ = qkv.view(bw, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        logits = (q * self.scale) @ k.transpose(-2, -1)
        return (logits + self._logit_bias(bw, n, mask, logits.dtype)).softmax(dim=-1)

    def combine(self, attended: torch.Tensor, qkv: torch.Tensor) -> torch.Tensor:
        """The module's output from the projected attention map: ``proj_drop(attended)``.

        Args:
            attended: (B, H, W, C) ``proj`` of the window attention, windows put back in place.
            qkv: (B, H, W, 3C) the projections it came from (used by ACmix's convolution path).
        """
        return self.proj_drop(attended)

    def attend(self, qkv: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attention of already projected windows, before the output projection.

        Args:
            qkv: (B * nW, N, 3C), channels ordered [q | k | v], each head-major.
            mask: optional (nW, N, N) additive mask; B * nW must be a multiple of nW.

        Returns:
            (B * nW, N, C), heads concatenated head-major.
        """
        bw, n, _ = qkv.shape
        heads, hd = self.num_heads, self.head_dim
        q, k, v = qkv.view(bw, n, 3, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)  # (B*nW, h, N, d)
        attn_mask = self._logit_bias(bw, n, mask, q.dtype)
        out = scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.attn_drop if self.training else 0.0,
            scale=self.scale,
        )
        return out.transpose(1, 2).reshape(bw, n, self.dim)

    def forward(self, windows: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B * nW, N, C) windows -> (B * nW, N, C); ``mask`` as in :meth:`attend`."""
        if not isinstance(windows, torch.Tensor) or not windows.is_floating_point():
            raise TypeError(
                f"{type(self).__name__}: argument 'windows' must be a floating-point tensor"
            )
        if windows.dim() != 3 or windows.shape[1:] != (self.window_size**2, self.dim):
            raise ValueError(
                f"{type(self).__name__}: argument 'windows' must have shape "
                f"(B*nW, {self.window_size**2}, {self.dim}), got {tuple(windows.shape)}"
            )
        return self.proj_drop(self.proj(self.attend(self.qkv(windows), mask)))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}"
