"""Literal references for PVT's spatial-reduction attention, its ACmix form and the PVT model.

Written from the equations (PVT paper section 3.3, eqs. 2-4; docs/operators/pvt.md and
docs/operators/acmix-pvt.md), one head and one patch at a time, with no code of the library:

    SR(x)    = LN(Reshape(x, R) W^S)   (each R x R patch flattened (dy, dx, c) and projected)
    head_j   = softmax(Q_j K_j^T / sqrt(d)) V_j,  Q_j = x W^Q_j,  K_j, V_j = SR(x) W^K_j, SR(x) W^V_j
    SRA(x)   = Concat(head_1..head_N) W^O
    ACmix:   out = rate1 * SRA(x) + rate2 * sum_{i, taps} w * shift(fc-mixed maps)

The state dicts use the official key names (``q``, ``kv``, ``sr``, ``norm``, ``proj``; ACmix's
``fc``, ``dep_conv``, ``rate1``, ``rate2``; the model's ``patch_embed{i}``, ``pos_embed{i}``,
``block{i}``).
"""

from __future__ import annotations

import math

import torch


def layer_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def linear(x: torch.Tensor, sd: dict, name: str) -> torch.Tensor:
    out = x @ sd[f"{name}.weight"].T
    bias = sd.get(f"{name}.bias")
    return out if bias is None else out + bias


def gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def patch_projection(
    grid: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, r: int
) -> torch.Tensor:
    """(H, W, C_in) map -> (floor(H/r), floor(W/r), C_out): every r x r patch flattened, projected."""
    h, w, c = grid.shape
    hr, wr = h // r, w // r
    w_flat = weight.permute(0, 2, 3, 1).reshape(weight.shape[0], r * r * c)  # (C_out, (dy,dx,c))
    out = torch.empty(hr, wr, weight.shape[0], dtype=grid.dtype)
    for y in range(hr):
        for x in range(wr):
            patch = grid[y * r : (y + 1) * r, x * r : (x + 1) * r].reshape(-1)
            out[y, x] = w_flat @ patch + bias
    return out


def sra_reference(
    x: torch.Tensor, size: tuple[int, int], sd: dict, num_heads: int, sr_ratio: int, eps=1e-5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SRA on (B, L, C) tokens: (output, queries (B, L, C), reduced keys/values (B, m, 2C))."""
    b, length, c = x.shape
    h, w = size
    prefix = length - h * w
    d = c // num_heads
    outs, qs, kvs = [], [], []
    for bi in range(b):
        tokens = x[bi]
        if sr_ratio > 1:
            grid = tokens[prefix:].reshape(h, w, c)
            reduced = patch_projection(grid, sd["sr.weight"], sd["sr.bias"], sr_ratio)
            reduced = layer_norm(reduced.reshape(-1, c), sd["norm.weight"], sd["norm.bias"], eps)
        else:
            reduced = tokens
        q = linear(tokens, sd, "q")
        kv = linear(reduced, sd, "kv")
        heads = []
        for j in range(num_heads):
            qj = q[:, j * d : (j + 1) * d]
            kj = kv[:, j * d : (j + 1) * d]
            vj = kv[:, c + j * d : c + (j + 1) * d]
            heads.append(torch.softmax(qj @ kj.T / math.sqrt(d), dim=-1) @ vj)
        outs.append(linear(torch.cat(heads, -1), sd, "proj"))
        qs.append(q)
        kvs.append(kv)
    return torch.stack(outs), torch.stack(qs), torch.stack(kvs)


def conv_path_reference(maps: torch.Tensor, sd: dict, heads: int, kernel: int = 3) -> torch.Tensor:
    """ACmix conv path on (3N, d, H, W) maps -> (N*d, H, W), by explicit shifts.

    mixed[i, c] = sum_m fc[i, m] maps[m, c] + fc_bias[i]  (k^2 maps per channel-in-head c);
    out[c * N + o] = sum_{i, u, v} dep[c * N + o, i, u, v] * mixed[i, c](y + u - k//2, x + v - k//2)
    (zero outside the map).
    """
    m, d, h, w = maps.shape
    fc = sd["fc.weight"].reshape(kernel * kernel, m)
    mixed = torch.einsum("im,mchw->ichw", fc, maps)
    if "fc.bias" in sd:
        mixed = mixed + sd["fc.bias"].view(-1, 1, 1, 1)
    pad = kernel // 2
    padded = torch.zeros(kernel * kernel, d, h + 2 * pad, w + 2 * pad, dtype=maps.dtype)
    padded[:, :, pad : pad + h, pad : pad + w] = mixed
    dep = sd["dep_conv.weight"]  # (N*d, k^2, k, k)
    out = torch.zeros(heads * d, h, w, dtype=maps.dtype)
    for c in range(d):
        for o in range(heads):
            ch = c * heads + o
            for i in range(kernel * kernel):
                for u in range(kernel):
                    for v in range(kernel):
                        out[ch] += dep[ch, i, u, v] * padded[i, c, u : u + h, v : v + w]
    return out


def acmix_sra_reference(
    x: torch.Tensor, size: tuple[int, int], sd: dict, num_heads: int, sr_ratio: int, eps=1e-5
) -> torch.Tensor:
    """rate1 * SRA + rate2 * conv path on [Q | K_up | V_up]; prefix tokens: attention only."""
    b, length, c = x.shape
    h, w = size
    prefix = length - h * w
    d = c // num_heads
    att, q, kv = sra_reference(x, size, sd, num_heads, sr_ratio, eps)
    wr = w // sr_ratio
    out = sd["rate1"] * att
    for bi in range(b):
        full = torch.empty(h, w, 3 * c, dtype=x.dtype)
        for y in range(h):
            for xx in range(w):
                # the reduced token of the patch the pixel lies in (last patch past the edge)
                py, px = min(y // sr_ratio, h // sr_ratio - 1), min(xx // sr_ratio, wr - 1)
                full[y, xx, :c] = q[bi, prefix + y * w + xx]
                full[y, xx, c:] = kv[bi, (prefix if sr_ratio == 1 else 0) + py * wr + px]
        maps = full.permute(2, 0, 1).reshape(3 * num_heads, d, h, w)
        conv = conv_path_reference(maps, sd, num_heads).reshape(c, h * w).T
        out[bi, prefix:] = out[bi, prefix:] + sd["rate2"] * conv
    return out


def pvt_reference(
    x: torch.Tensor,
    sd: dict,
    patch_size: int,
    num_heads: list[int],
    sr_ratios: list[int],
    depths: list[int],
    acmix: bool = False,
    stages_out: list | None = None,
) -> torch.Tensor:
    """Official-layout PVT forward on (B, 3, H, W) images with sides divisible by the total stride."""
    b = x.shape[0]
    feat = x
    n = len(depths)
    for i in range(n):
        p = patch_size if i == 0 else 2
        weight, bias = sd[f"patch_embed{i + 1}.proj.weight"], sd[f"patch_embed{i + 1}.proj.bias"]
        tokens = torch.stack(
            [patch_projection(feat[bi].permute(1, 2, 0), weight, bias, p) for bi in range(b)]
        )
        _, h, w, c = tokens.shape
        tokens = tokens.reshape(b, h * w, c)
        tokens = layer_norm(
            tokens, sd[f"patch_embed{i + 1}.norm.weight"], sd[f"patch_embed{i + 1}.norm.bias"], 1e-5
        )
        pos = sd[f"pos_embed{i + 1}"]
        if i == n - 1:
            tokens = torch.cat([sd["cls_token"].expand(b, -1, -1), tokens], 1)
        tokens = tokens + pos
        for j in range(depths[i]):
            pre = f"block{i + 1}.{j}."
            blk = {k[len(pre) :]: v for k, v in sd.items() if k.startswith(pre)}
            attn = {k[5:]: v for k, v in blk.items() if k.startswith("attn.")}
            y = layer_norm(tokens, blk["norm1.weight"], blk["norm1.bias"], 1e-6)
            fn = acmix_sra_reference if acmix else lambda *a: sra_reference(*a)[0]
            tokens = tokens + fn(y, (h, w), attn, num_heads[i], sr_ratios[i])
            y = layer_norm(tokens, blk["norm2.weight"], blk["norm2.bias"], 1e-6)
            y = linear(gelu(linear(y, blk, "mlp.fc1")), blk, "mlp.fc2")
            tokens = tokens + y
        grid = tokens[:, tokens.shape[1] - h * w :]
        feat = grid.transpose(1, 2).reshape(b, c, h, w)
        if stages_out is not None:
            stages_out.append(feat)
    tokens = layer_norm(tokens, sd["norm.weight"], sd["norm.bias"], 1e-6)
    return linear(tokens[:, 0], sd, "head")
