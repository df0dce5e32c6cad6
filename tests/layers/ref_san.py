"""Literal references for SAN's patchwise attention and its ACmix form (test oracles).

Written from the SAN paper's patchwise equation, y_i = sum_{j in R(i)} alpha(x_R(i))_j * beta(x_j),
with the official code's concrete choices (documented in docs/operators/san.md): alpha is the
weight MLP (BN, ReLU, 1x1 conv, BN, ReLU, 1x1 conv) on [q_i, k_j for the k*k slots j], beta(x) = v,
channel c of v uses weight group c mod G, windows are reflect-padded (reflection repeated on tiny
maps). Slow on purpose: one output pixel at a time, explicit window index lists, BatchNorm written
out as its eval-mode formula. Inputs are official-layout state dicts (``conv1/conv2/conv3``,
``conv_w.*``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from ref_acmix import bounce


def official_sam_state_dict(
    in_channels: int,
    rel_channels: int,
    out_channels: int,
    share_planes: int = 8,
    kernel_size: int = 7,
    dtype: torch.dtype = torch.float64,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Random state dict with the official ``SAM`` (patchwise) keys and shapes, random BN stats."""
    g = generator or torch.Generator().manual_seed(0)
    hidden = rel_channels * (kernel_size**2 + 1)
    groups = out_channels // share_planes
    shapes = {
        "conv1.weight": (rel_channels, in_channels, 1, 1),
        "conv1.bias": (rel_channels,),
        "conv2.weight": (rel_channels, in_channels, 1, 1),
        "conv2.bias": (rel_channels,),
        "conv3.weight": (out_channels, in_channels, 1, 1),
        "conv3.bias": (out_channels,),
        "conv_w.2.weight": (groups, hidden, 1, 1),
        "conv_w.5.weight": (groups * kernel_size**2, groups, 1, 1),
        "conv_w.5.bias": (groups * kernel_size**2,),
    }
    sd = {k: (torch.randn(s, generator=g) * 0.5).to(dtype) for k, s in shapes.items()}
    for name, n in (("conv_w.0", hidden), ("conv_w.3", groups)):
        sd[f"{name}.weight"] = (torch.randn(n, generator=g) * 0.3 + 1).to(dtype)
        sd[f"{name}.bias"] = (torch.randn(n, generator=g) * 0.3).to(dtype)
        sd[f"{name}.running_mean"] = (torch.randn(n, generator=g) * 0.3).to(dtype)
        sd[f"{name}.running_var"] = (torch.rand(n, generator=g) + 0.5).to(dtype)
        sd[f"{name}.num_batches_tracked"] = torch.tensor(3)
    return sd


def _bn(x: torch.Tensor, sd: dict, name: str, eps: float = 1e-5) -> torch.Tensor:
    """Eval-mode BatchNorm on the last axis: (x - mean) / sqrt(var + eps) * weight + bias."""
    mean, var = sd[f"{name}.running_mean"], sd[f"{name}.running_var"]
    return (x - mean) / torch.sqrt(var + eps) * sd[f"{name}.weight"] + sd[f"{name}.bias"]


def san_reference(
    x: torch.Tensor,
    sd: dict[str, torch.Tensor],
    kernel_size: int = 7,
    share_planes: int = 8,
    stride: int = 1,
) -> torch.Tensor:
    """Patchwise self-attention, one output pixel at a time (eval-mode BatchNorms)."""
    b, _, h, w = x.shape
    q = F.conv2d(x, sd["conv1.weight"], sd["conv1.bias"])
    k = F.conv2d(x, sd["conv2.weight"], sd["conv2.bias"])
    v = F.conv2d(x, sd["conv3.weight"], sd["conv3.bias"])
    out_ch = v.shape[1]
    groups = out_ch // share_planes
    kk, pad = kernel_size * kernel_size, kernel_size // 2
    out_h, out_w = -(-h // stride), -(-w // stride)
    out = torch.zeros(b, out_ch, out_h, out_w, dtype=x.dtype)
    group_of = torch.tensor([c % groups for c in range(out_ch)])
    for y in range(out_h):
        for xx in range(out_w):
            cy, cx = stride * y, stride * xx
            window = [
                (bounce(cy + dy - pad, h), bounce(cx + dx - pad, w))
                for dy in range(kernel_size)
                for dx in range(kernel_size)
            ]
            keys = torch.stack([k[:, :, r, c] for r, c in window], dim=2)  # (b, rel, kk)
            # Feature vector [q_i, k_j1, ..., k_jK], the keys channel-major (rel, slot).
            feat = torch.cat([q[:, :, cy, cx], keys.reshape(b, -1)], dim=1)
            hid = torch.relu(_bn(feat, sd, "conv_w.0"))
            hid = hid @ sd["conv_w.2.weight"].flatten(1).T
            if "conv_w.2.bias" in sd:
                hid = hid + sd["conv_w.2.bias"]
            if "conv_w.3.running_mean" in sd:
                hid = _bn(hid, sd, "conv_w.3")
            hid = torch.relu(hid)
            weights = hid @ sd["conv_w.5.weight"].flatten(1).T + sd["conv_w.5.bias"]
            weights = weights.view(b, groups, kk)  # channel g * kk + j
            values = torch.stack([v[:, :, r, c] for r, c in window], dim=2)  # (b, C, kk)
            out[:, :, y, xx] = (weights[:, group_of] * values).sum(-1)
    return out


def acmix_san_reference(
    x: torch.Tensor,
    sd: dict[str, torch.Tensor],
    kernel_size: int = 7,
    share_planes: int = 8,
    stride: int = 1,
    kernel_conv: int = 3,
) -> torch.Tensor:
    """ACmix-SAN: rate1 * patchwise attention + rate2 * ACmix's shift-convolution path.

    The convolution path (see docs/operators/acmix-san.md): the projections cut into heads of
    ``rel`` channels, [q | k | v_1 .. v_N]; ``fc`` mixes those 2 + N maps into k_conv^2 maps for
    every channel-in-head d; the grouped conv ``dep_conv`` (groups = rel, zero padding) reads the
    k_conv^2 maps of group d (input channel d * k_conv^2 + i).
    """
    b, _, h, w = x.shape
    att = san_reference(x, sd, kernel_size, share_planes, stride)
    q = F.conv2d(x, sd["conv1.weight"], sd["conv1.bias"])
    k = F.conv2d(x, sd["conv2.weight"], sd["conv2.bias"])
    v = F.conv2d(x, sd["conv3.weight"], sd["conv3.bias"])
    rel = q.shape[1]
    heads = v.shape[1] // rel
    maps = torch.cat([q.unsqueeze(1), k.unsqueeze(1), v.view(b, heads, rel, h, w)], dim=1)
    fc = sd["conv_path.fc.weight"].flatten(1)  # (k_conv^2, 2 + heads)
    mixed = torch.einsum("im,bmdhw->bdihw", fc, maps)  # (b, rel, k_conv^2, h, w)
    mixed = mixed.reshape(b, rel * kernel_conv**2, h, w)
    conv = F.conv2d(
        mixed, sd["conv_path.dep_conv.weight"], stride=stride, padding=kernel_conv // 2, groups=rel
    )
    return sd["rate1"] * att + sd["rate2"] * conv
