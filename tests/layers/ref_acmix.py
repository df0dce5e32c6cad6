"""Literal references for ACmix, written from docs/notes/acmix.md (§1.1-§1.5, §3).

Slow on purpose: every step is the official maths as written there, on official-layout state
dicts (``conv1/conv2/conv3``, ``conv_p``, ``fc``, ``dep_conv``), with ``nn.Unfold``,
``ReflectionPad2d``, the coordinate grid through ``conv_p`` and explicit k_att^2-sized tensors.
Used only as test oracles.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def official_module_state_dict(
    in_channels: int,
    out_channels: int,
    heads: int,
    kernel_conv: int = 3,
    dtype: torch.dtype = torch.float64,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Random state dict with the official ACmix module's keys and shapes (docs/notes/acmix.md §4(a))."""
    g = generator or torch.Generator().manual_seed(0)
    hd = out_channels // heads
    k2 = kernel_conv * kernel_conv
    shapes = {
        "rate1": (1,),
        "rate2": (1,),
        "conv1.weight": (out_channels, in_channels, 1, 1),
        "conv1.bias": (out_channels,),
        "conv2.weight": (out_channels, in_channels, 1, 1),
        "conv2.bias": (out_channels,),
        "conv3.weight": (out_channels, in_channels, 1, 1),
        "conv3.bias": (out_channels,),
        "conv_p.weight": (hd, 2, 1, 1),
        "conv_p.bias": (hd,),
        "fc.weight": (k2, 3 * heads, 1, 1),
        "dep_conv.weight": (out_channels, k2, kernel_conv, kernel_conv),
    }
    return {key: (torch.randn(shape, generator=g) * 0.5).to(dtype) for key, shape in shapes.items()}


def position(height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    """Official coordinate grid (1, 2, H, W): channel 0 = x (linspace over W), channel 1 = y."""
    loc_w = torch.linspace(-1.0, 1.0, width, dtype=dtype).unsqueeze(0).repeat(height, 1)
    loc_h = torch.linspace(-1.0, 1.0, height, dtype=dtype).unsqueeze(1).repeat(1, width)
    return torch.cat([loc_w.unsqueeze(0), loc_h.unsqueeze(0)], 0).unsqueeze(0)


def bounce(i: int, n: int) -> int:
    """Reflect index i into [0, n) about the edge pixels, as many times as needed."""
    if n == 1:
        return 0
    while i < 0 or i >= n:
        i = -i if i < 0 else 2 * (n - 1) - i
    return i


def repeated_reflection_pad(t: torch.Tensor, pad: int) -> torch.Tensor:
    """Reflection padding that keeps reflecting when pad >= size (else equals ReflectionPad2d)."""
    h, w = t.shape[-2:]
    rows = [bounce(i, h) for i in range(-pad, h + pad)]
    cols = [bounce(j, w) for j in range(-pad, w + pad)]
    return t[..., rows, :][..., :, cols]


def acmix_reference(
    x: torch.Tensor,
    sd: dict[str, torch.Tensor],
    heads: int,
    kernel_att: int = 7,
    stride: int = 1,
    kernel_conv: int = 3,
) -> torch.Tensor:
    """The official ACmix forward (§1.1-§1.5), literally.

    The output size is the unfold's, (H + 2p - k)//s + 1 = ceil(H/s): for even H with stride 2 (and
    any H with stride 1) this is the official H//s. ReflectionPad2d is used where it is defined,
    otherwise :func:`repeated_reflection_pad` (our documented border rule).
    """
    b, _, h, w = x.shape
    out_planes = sd["conv1.weight"].shape[0]
    head_dim = out_planes // heads
    # 1.1 shared projections
    q = F.conv2d(x, sd["conv1.weight"], sd["conv1.bias"])
    k = F.conv2d(x, sd["conv2.weight"], sd["conv2.bias"])
    v = F.conv2d(x, sd["conv3.weight"], sd["conv3.bias"])
    scaling = float(head_dim) ** -0.5

    # 1.2 attention path
    pad = (kernel_att - 1 + 1) // 2
    if pad < h and pad < w:
        pad_att = nn.ReflectionPad2d(pad)
    else:

        def pad_att(t):
            return repeated_reflection_pad(t, pad)

    unfold = nn.Unfold(kernel_size=kernel_att, padding=0, stride=stride)
    h_out = (h + 2 * pad - kernel_att) // stride + 1
    w_out = (w + 2 * pad - kernel_att) // stride + 1
    pe = F.conv2d(position(h, w, x.dtype), sd["conv_p.weight"], sd["conv_p.bias"])
    q_att = q.view(b * heads, head_dim, h, w) * scaling
    k_att = k.view(b * heads, head_dim, h, w)
    v_att = v.view(b * heads, head_dim, h, w)
    if stride > 1:
        q_att = q_att[:, :, ::stride, ::stride]
        q_pe = pe[:, :, ::stride, ::stride]
    else:
        q_pe = pe
    k2 = kernel_att * kernel_att
    unfold_k = unfold(pad_att(k_att)).view(b * heads, head_dim, k2, h_out, w_out)
    unfold_rpe = unfold(pad_att(pe)).view(1, head_dim, k2, h_out, w_out)
    att = (q_att.unsqueeze(2) * (unfold_k + q_pe.unsqueeze(2) - unfold_rpe)).sum(1)
    att = torch.softmax(att, dim=1)
    out_att = unfold(pad_att(v_att)).view(b * heads, head_dim, k2, h_out, w_out)
    out_att = (att.unsqueeze(1) * out_att).sum(2).view(b, out_planes, h_out, w_out)

    # 1.3 convolution path
    f_all = F.conv2d(
        torch.cat(
            [
                q.view(b, heads, head_dim, h * w),
                k.view(b, heads, head_dim, h * w),
                v.view(b, heads, head_dim, h * w),
            ],
            1,
        ),
        sd["fc.weight"],
    )
    f_conv = f_all.permute(0, 2, 1, 3).reshape(b, -1, h, w)
    out_conv = F.conv2d(
        f_conv,
        sd["dep_conv.weight"],
        None,
        stride=stride,
        padding=kernel_conv // 2,
        groups=head_dim,
    )
    # 1.4 combination
    return sd["rate1"] * out_att + sd["rate2"] * out_conv


def acmix_pixel_reference(
    x: torch.Tensor,
    sd: dict[str, torch.Tensor],
    heads: int,
    kernel_att: int = 7,
    stride: int = 1,
    kernel_conv: int = 3,
) -> torch.Tensor:
    """Second oracle: attention path by explicit per-pixel loops with :func:`bounce` (tiny maps).

    For query centre (s*y, s*x) and window slot (dy, dx), the neighbour is the pixel
    (bounce(s*y + dy - p, H), bounce(s*x + dx - p, W)) and the logit is
    q_c . (k_j + pe_c - pe_j) with pe = conv_p(grid). The conv path is computed as in
    :func:`acmix_reference` (it does not depend on the border rule).
    """
    b, _, h, w = x.shape
    out_planes = sd["conv1.weight"].shape[0]
    hd = out_planes // heads
    q = F.conv2d(x, sd["conv1.weight"], sd["conv1.bias"]) * hd**-0.5
    k = F.conv2d(x, sd["conv2.weight"], sd["conv2.bias"])
    v = F.conv2d(x, sd["conv3.weight"], sd["conv3.bias"])
    pe = F.conv2d(position(h, w, x.dtype), sd["conv_p.weight"], sd["conv_p.bias"])[0]
    p = kernel_att // 2
    h_out, w_out = -(-h // stride), -(-w // stride)
    out_att = x.new_zeros(b, out_planes, h_out, w_out)
    for n in range(b):
        for head in range(heads):
            ch = slice(head * hd, (head + 1) * hd)
            for y in range(h_out):
                for xx in range(w_out):
                    cy, cx = stride * y, stride * xx
                    qc = q[n, ch, cy, cx]
                    logits, values = [], []
                    for dy in range(kernel_att):
                        for dx in range(kernel_att):
                            jy = bounce(cy + dy - p, h)
                            jx = bounce(cx + dx - p, w)
                            rel = k[n, ch, jy, jx] + pe[:, cy, cx] - pe[:, jy, jx]
                            logits.append((qc * rel).sum())
                            values.append(v[n, ch, jy, jx])
                    a = torch.softmax(torch.stack(logits), 0)
                    out_att[n, ch, y, xx] = (a[:, None] * torch.stack(values)).sum(0)
    f_all = F.conv2d(
        torch.cat([t.view(b, heads, hd, h * w) for t in (q / hd**-0.5, k, v)], 1), sd["fc.weight"]
    )
    f_conv = f_all.permute(0, 2, 1, 3).reshape(b, -1, h, w)
    out_conv = F.conv2d(
        f_conv, sd["dep_conv.weight"], None, stride=stride, padding=kernel_conv // 2, groups=hd
    )
    return sd["rate1"] * out_att + sd["rate2"] * out_conv


# --------------------------------------------------------------------------------------------------
# ACmix-Swin (§3)
# --------------------------------------------------------------------------------------------------


def official_window_state_dict(
    dim: int,
    heads: int,
    window: int,
    dtype: torch.dtype = torch.float64,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Random state dict with the official ``WindowAttention_acmix`` keys (under ``attn.``)."""
    g = generator or torch.Generator().manual_seed(0)
    shapes = {
        "relative_position_bias_table": ((2 * window - 1) ** 2, heads),
        "rate1": (1,),
        "rate2": (1,),
        "qkv.weight": (3 * dim, dim),
        "qkv.bias": (3 * dim,),
        "proj.weight": (dim, dim),
        "proj.bias": (dim,),
        "fc.weight": (9, 3 * heads, 1, 1),
        "fc.bias": (9,),
        "dep_conv.weight": (dim, 9, 3, 3),
    }
    sd = {key: (torch.randn(shape, generator=g) * 0.5).to(dtype) for key, shape in shapes.items()}
    sd["relative_position_index"] = relative_index_loops(window)
    return sd


def relative_index_loops(window: int) -> torch.Tensor:
    """Relative position index by explicit loops over token pairs."""
    n = window * window
    index = torch.empty(n, n, dtype=torch.long)
    for i in range(n):
        for j in range(n):
            dy = i // window - j // window + window - 1
            dx = i % window - j % window + window - 1
            index[i, j] = dy * (2 * window - 1) + dx
    return index


def shifted_mask_loops(height: int, width: int, window: int, shift: int) -> torch.Tensor:
    """Shifted-window mask by explicit loops: region label of every pixel, -100 across regions."""

    def band(i: int, size: int) -> int:
        return 0 if i < size - window else (1 if i < size - shift else 2)

    nh, nw = height // window, width // window
    mask = torch.zeros(nh * nw, window * window, window * window)
    for wy in range(nh):
        for wx in range(nw):
            labels = [
                3 * band(wy * window + t // window, height) + band(wx * window + t % window, width)
                for t in range(window * window)
            ]
            for i in range(window * window):
                for j in range(window * window):
                    if labels[i] != labels[j]:
                        mask[wy * nw + wx, i, j] = -100.0
    return mask


def acmix_window_reference(
    x: torch.Tensor,
    sd: dict[str, torch.Tensor],
    heads: int,
    window: int,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Official ``WindowAttention_acmix.forward`` on a (B, H, W, C) map, explicit window loops."""
    b, h, w, c = x.shape
    hd = c // heads
    qkv = x @ sd["qkv.weight"].T + sd["qkv.bias"]  # (B, H, W, 3C)

    # convolution path on the full map
    f_all = qkv.reshape(b, h * w, 3 * heads, hd).permute(0, 2, 1, 3)  # (B, 3N, HW, d)
    f_conv = F.conv2d(f_all, sd["fc.weight"], sd["fc.bias"])  # (B, 9, HW, d)
    f_conv = f_conv.permute(0, 3, 1, 2).reshape(b, 9 * hd, h, w)
    out_conv = F.conv2d(f_conv, sd["dep_conv.weight"], None, padding=1, groups=hd)
    out_conv = out_conv.permute(0, 2, 3, 1)

    # window attention, one window and one head at a time
    index = relative_index_loops(window)
    table = sd["relative_position_bias_table"]
    n = window * window
    out_att = torch.empty(b, h, w, c, dtype=x.dtype)
    nw = w // window
    for bi in range(b):
        for wy in range(h // window):
            for wx in range(nw):
                rows = slice(wy * window, (wy + 1) * window)
                cols = slice(wx * window, (wx + 1) * window)
                tokens = qkv[bi, rows, cols].reshape(n, 3 * c)
                heads_out = []
                for head in range(heads):
                    q = tokens[:, head * hd : (head + 1) * hd] * hd**-0.5
                    k = tokens[:, c + head * hd : c + (head + 1) * hd]
                    v = tokens[:, 2 * c + head * hd : 2 * c + (head + 1) * hd]
                    logits = q @ k.T + table[index.view(-1), head].view(n, n)
                    if mask is not None:
                        logits = logits + mask[wy * nw + wx]
                    heads_out.append(torch.softmax(logits, -1) @ v)
                y = torch.cat(heads_out, -1) @ sd["proj.weight"].T + sd["proj.bias"]
                out_att[bi, rows, cols] = y.view(window, window, c)
    return sd["rate1"] * out_att + sd["rate2"] * out_conv
