"""Literal reference forward of Swin / ACmix-Swin on official-layout state dicts (test oracle).

Written from the papers and docs/notes/acmix.md §3, not from the
model code: explicit loops over patch offsets, windows and kernel taps; the shifted-window rule is
"a token attends only to tokens of its own region of the rolled map" (the official -100 logit
offset is the same thing up to exp(-100), far below float64 precision); relative offsets (dy, dx)
index the (2w-1)^2 table directly. The size rules for inputs the official classification code
rejects are those documented in convattn.models.swin: zero-pad to the patch size, the window or
an even size on the right/bottom; a map no larger than the window uses one clamped window of its
shorter side and no shift. Slow on purpose; float64 recommended.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def layer_norm(x: Tensor, sd: dict, prefix: str, eps: float = 1e-5) -> Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * sd[prefix + ".weight"] + sd[prefix + ".bias"]


def linear(x: Tensor, sd: dict, prefix: str) -> Tensor:
    out = x @ sd[prefix + ".weight"].T
    bias = sd.get(prefix + ".bias")
    return out if bias is None else out + bias


def gelu(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def pad_bottom_right(x: Tensor, multiple: int) -> Tensor:
    """Zero-pad a (B, H, W, C) map so H and W are multiples of ``multiple``."""
    b, h, w, c = x.shape
    hp, wp = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    out = x.new_zeros(b, hp, wp, c)
    out[:, :h, :w] = x
    return out


def patch_embed(img: Tensor, sd: dict, patch: int, norm: bool = True) -> Tensor:
    """(B, C_in, H, W) image -> (B, H/p, W/p, C) tokens: sum over the p x p taps of each patch."""
    x = pad_bottom_right(img.permute(0, 2, 3, 1), patch)  # (B, Hp, Wp, C_in)
    weight = sd["patch_embed.proj.weight"]  # (C, C_in, p, p)
    out = sd["patch_embed.proj.bias"]
    for dy in range(patch):
        for dx in range(patch):
            out = out + x[:, dy::patch, dx::patch] @ weight[:, :, dy, dx].T
    return layer_norm(out, sd, "patch_embed.norm") if norm else out


def patch_merging(x: Tensor, sd: dict, prefix: str) -> Tensor:
    x = pad_bottom_right(x, 2)
    x0 = x[:, 0::2, 0::2]  # (row, col) offset (0, 0)
    x1 = x[:, 1::2, 0::2]  # (1, 0)
    x2 = x[:, 0::2, 1::2]  # (0, 1)
    x3 = x[:, 1::2, 1::2]  # (1, 1)
    x = torch.cat([x0, x1, x2, x3], dim=-1)
    return linear(layer_norm(x, sd, prefix + ".norm"), sd, prefix + ".reduction")


def _band(i: int, size: int, window: int, shift: int) -> int:
    """Region of row/column i of a map rolled by -shift: body, [-window, -shift) or [-shift, end)."""
    if i < size - window:
        return 0
    return 1 if i < size - shift else 2


def window_attention(
    y: Tensor, sd: dict, prefix: str, heads: int, window: int, table_window: int, shift: int
) -> Tensor:
    """Window MHSA (with ``proj``) of a padded, rolled (B, H, W, C) map; ``table_window`` sizes the table."""
    b, h, w, c = y.shape
    d = c // heads
    qkv = linear(y, sd, prefix + ".qkv")
    q, k, v = qkv[..., :c], qkv[..., c : 2 * c], qkv[..., 2 * c :]
    table = sd[prefix + ".relative_position_bias_table"]  # ((2W-1)^2, heads)
    # The bias only depends on the offsets inside a window, the same for every window.
    offsets = [(r, s) for r in range(window) for s in range(window)]
    n = len(offsets)
    bias = y.new_zeros(heads, n, n)
    for i, (ri, ci) in enumerate(offsets):
        for j, (rj, cj) in enumerate(offsets):
            dy, dx = ri - rj, ci - cj
            bias[:, i, j] = table[
                (dy + table_window - 1) * (2 * table_window - 1) + dx + table_window - 1
            ]
    out = torch.zeros_like(y)
    for wy in range(0, h, window):
        for wx in range(0, w, window):
            cells = [(wy + r, wx + s) for r, s in offsets]
            # Shifted windows: attend only within the same region of the rolled map.
            region = torch.tensor(
                [3 * _band(r, h, window, shift) + _band(s, w, window, shift) for r, s in cells]
            )
            allowed = (
                region[:, None] == region[None, :] if shift else torch.ones(n, n, dtype=torch.bool)
            )
            rows = torch.tensor([r for r, _ in cells])
            cols = torch.tensor([s for _, s in cells])
            qw, kw, vw = (t[:, rows, cols].view(b, n, heads, d) for t in (q, k, v))
            logits = torch.einsum("bihd,bjhd->bhij", qw, kw) / math.sqrt(d) + bias
            logits = logits.masked_fill(~allowed, float("-inf"))
            o = torch.einsum("bhij,bjhd->bihd", logits.softmax(-1), vw).reshape(b, n, c)
            out[:, rows, cols] = o
    return linear(out, sd, prefix + ".proj")


def acmix_conv_path(y: Tensor, sd: dict, prefix: str, heads: int) -> Tensor:
    """docs/notes/acmix.md §1.3 and §3: fc over the 3*heads maps per channel-in-head d, then the grouped 3x3 conv."""
    b, h, w, c = y.shape
    d = c // heads
    qkv = linear(y, sd, prefix + ".qkv")  # channels [q heads | k heads | v heads], head-major
    f = qkv.view(b, h, w, 3 * heads, d).permute(0, 3, 4, 1, 2)  # (B, 3N, d, H, W)
    fc_w = sd[prefix + ".fc.weight"].flatten(1)  # (9, 3N)
    g = torch.einsum("im,bmdhw->bidhw", fc_w, f) + sd[prefix + ".fc.bias"].view(1, 9, 1, 1, 1)
    gp = F.pad(g, (1, 1, 1, 1))  # zero padding 1 of the 3x3 conv
    # dep_conv output channel o = d * heads + j reads group d, i.e. input channels d*9 .. d*9+8.
    dep = sd[prefix + ".dep_conv.weight"].view(d, heads, 9, 3, 3)
    out = y.new_zeros(b, d, heads, h, w)
    for ky in range(3):
        for kx in range(3):
            out += torch.einsum(
                "dji,bidhw->bdjhw", dep[..., ky, kx], gp[..., ky : ky + h, kx : kx + w]
            )
    return out.reshape(b, c, h, w).permute(0, 2, 3, 1)


def swin_block(
    x: Tensor,
    sd: dict,
    prefix: str,
    heads: int,
    window: int,
    shifted: bool,
    acmix: bool,
    conv_on_rolled_map: bool = True,
) -> Tensor:
    """One pre-norm (S)W-MSA block on (B, H, W, C); ``conv_on_rolled_map=False`` is the WRONG
    variant (conv path on the un-rolled map), kept to show the tests can tell them apart."""
    h, w = x.shape[1:3]
    win, shift = window, (window // 2 if shifted else 0)
    if min(h, w) <= window:
        win, shift = min(h, w), 0
    y = pad_bottom_right(layer_norm(x, sd, prefix + ".norm1"), win)
    rolled = torch.roll(y, (-shift, -shift), dims=(1, 2))
    a = window_attention(rolled, sd, prefix + ".attn", heads, win, window, shift)
    if acmix:
        conv_in = rolled if conv_on_rolled_map else y
        conv = acmix_conv_path(conv_in, sd, prefix + ".attn", heads)
        if not conv_on_rolled_map:
            conv = torch.roll(conv, (-shift, -shift), dims=(1, 2))
        a = sd[prefix + ".attn.rate1"] * a + sd[prefix + ".attn.rate2"] * conv
    a = torch.roll(a, (shift, shift), dims=(1, 2))[:, :h, :w]
    x = x + a
    hidden = gelu(linear(layer_norm(x, sd, prefix + ".norm2"), sd, prefix + ".mlp.fc1"))
    return x + linear(hidden, sd, prefix + ".mlp.fc2")


def swin_forward(
    img: Tensor,
    sd: dict,
    *,
    patch: int,
    depths: list[int],
    heads: list[int],
    window: int,
    acmix: bool,
    stages_out: list | None = None,
) -> Tensor:
    """Logits of the whole model; appends each stage's pre-merging NCHW map to ``stages_out``."""
    x = patch_embed(img, sd, patch, norm="patch_embed.norm.weight" in sd)
    for i, depth in enumerate(depths):
        for j in range(depth):
            x = swin_block(x, sd, f"layers.{i}.blocks.{j}", heads[i], window, j % 2 == 1, acmix)
        if stages_out is not None:
            stages_out.append(x.permute(0, 3, 1, 2))
        if i < len(depths) - 1:
            x = patch_merging(x, sd, f"layers.{i}.downsample")
    x = layer_norm(x, sd, "norm").mean(dim=(1, 2))
    return linear(x, sd, "head")
