"""Literal, slow reference of X-volution written straight from its maths (docs/notes/xvolution.md).

The oracle for tests/layers/test_xvolution.py. Everything is explicit Python loops over pixels,
taps, directions and heads on tiny shapes; nothing here is shared with the fast implementation.

- §1.1 conv branch:      Y[o,p] = Σ_c Σ_δ W[o,c,δ+K//2] X[c, s·p+δ]          (zero padding)
- §1.4 PSSA:             Y[o,p] = Σ_{d∈D} Σ_c W^a_d[o,c] X[c,q] S_d(X)[c,q],  q = s·p
- §1.5 global SA branch: avg-pool by s (valid pixels), 1x1 q/k/v, per-head softmax(q·k/√d_h) v,
                         1x1 proj
- involution branch:      H[g, δ, p] = W_1 ReLU(BN(W_0 AvgPool_s(X)[p])) + b_1 (per pixel),
                         Inv(X)[o, p] = Σ_c P[o, c] Σ_δ H[g(c), δ, p] X[c, s·p+δ]
- §2 training form:      BN_c(conv) + BN_a(attention)
- §3 deploy form:        K_p[o,c,δ] = Ŵ^s[o,c,δ] + 1[δ∈D] Ŵ^a_δ[o,c] X[c,q];
                         Y[o,p] = b[o] + Σ_δ Σ_c K_p[o,c,δ] X[c,q+δ]
"""

from __future__ import annotations

import math

import torch

# D_1: the 8 neighbours (row-major over the 3x3 window); the centre (0, 0) optionally.
NEIGHBOURS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
WITH_CENTRE = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 0), (0, 1), (1, -1), (1, 0), (1, 1)]


def directions(include_center: bool) -> list[tuple[int, int]]:
    return WITH_CENTRE if include_center else NEIGHBOURS


def out_size(n: int, stride: int) -> int:
    return -(-n // stride)


def pixel(x: torch.Tensor, b: int, i: int, j: int) -> torch.Tensor:
    """X[b, :, i, j], or zeros outside the image (zero padding / zero fill)."""
    if 0 <= i < x.shape[2] and 0 <= j < x.shape[3]:
        return x[b, :, i, j]
    return torch.zeros_like(x[b, :, 0, 0])


def shift(x: torch.Tensor, d: tuple[int, int]) -> torch.Tensor:
    """S_d(X)[c, p] = X[c, p + d] inside the image, 0 outside."""
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        for i in range(x.shape[2]):
            for j in range(x.shape[3]):
                out[b, :, i, j] = pixel(x, b, i + d[0], j + d[1])
    return out


def batch_norm(y: torch.Tensor, mean, var, gamma, beta, eps: float) -> torch.Tensor:
    """Inference BatchNorm: (y - μ) / sqrt(σ² + ε) · γ + β per channel."""
    shape = (1, -1, 1, 1)
    return (y - mean.view(shape)) / torch.sqrt(var.view(shape) + eps) * gamma.view(
        shape
    ) + beta.view(shape)


def conv2d(x: torch.Tensor, weight: torch.Tensor, stride: int) -> torch.Tensor:
    """§1.1 with zero padding K//2 (no bias)."""
    bsz, _, h, w = x.shape
    k = weight.shape[-1]
    r = k // 2
    out = x.new_zeros(bsz, weight.shape[0], out_size(h, stride), out_size(w, stride))
    for b in range(bsz):
        for pi in range(out.shape[2]):
            for pj in range(out.shape[3]):
                qi, qj = stride * pi, stride * pj
                for di in range(-r, r + 1):
                    for dj in range(-r, r + 1):
                        out[b, :, pi, pj] += weight[:, :, di + r, dj + r] @ pixel(
                            x, b, qi + di, qj + dj
                        )
    return out


def pssa(x: torch.Tensor, weights: torch.Tensor, stride: int, include_center: bool) -> torch.Tensor:
    """§1.4 with per-direction weights ``weights[d]`` of shape (C_out, C_in) (W^a_d)."""
    bsz, _, h, w = x.shape
    dirs = directions(include_center)
    shifted = [shift(x, d) for d in dirs]
    out = x.new_zeros(bsz, weights.shape[1], out_size(h, stride), out_size(w, stride))
    for b in range(bsz):
        for pi in range(out.shape[2]):
            for pj in range(out.shape[3]):
                qi, qj = stride * pi, stride * pj
                for n in range(len(dirs)):
                    product = x[b, :, qi, qj] * shifted[n][b, :, qi, qj]
                    out[b, :, pi, pj] += weights[n] @ product
    return out


def pssa_weights_per_direction(attn, weighting: str, channels: int) -> torch.Tensor:
    """W^a_d as (|D|, C_out, C_in) from a PixelShiftAttention's documented parameter layout.

    'full': a 1x1 conv over the channel concatenation [P_d1, P_d2, ...] (docs/notes/xvolution.md §1.4);
    'depthwise': (C, 1, |D|) diagonal weights; 'none': identity for every direction.
    """
    n = len(attn.directions)
    if weighting == "full":
        w = attn.weight.reshape(attn.weight.shape[0], n, channels)  # concat order: d-major
        return w.permute(1, 0, 2)
    eye = torch.eye(channels, dtype=attn.weight.dtype)
    if weighting == "none":
        return eye.expand(n, channels, channels)
    return torch.stack([torch.diag(attn.weight[:, 0, i]) for i in range(n)])


def avg_pool_ceil(x: torch.Tensor, s: int) -> torch.Tensor:
    """Average over each s x s window; windows cut by the border average their valid pixels."""
    bsz, c, h, w = x.shape
    out = x.new_zeros(bsz, c, out_size(h, s), out_size(w, s))
    for pi in range(out.shape[2]):
        for pj in range(out.shape[3]):
            out[:, :, pi, pj] = x[:, :, s * pi : s * pi + s, s * pj : s * pj + s].mean(dim=(2, 3))
    return out


def global_sa(
    x: torch.Tensor,
    qkv_weight: torch.Tensor,
    qkv_bias: torch.Tensor,
    proj_weight: torch.Tensor,
    proj_bias: torch.Tensor | None,
    stride: int,
    head_dim: int,
) -> torch.Tensor:
    """§1.5: per-pixel linear q, k, v (weight rows stacked q, k, v; heads of ``head_dim`` side by
    side), softmax(q·k / sqrt(head_dim)) over all pixels per head, linear output projection."""
    if stride > 1:
        x = avg_pool_ceil(x, stride)
    bsz, _, h, w = x.shape
    width = qkv_weight.shape[0] // 3
    tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
    qkv = tokens @ qkv_weight.reshape(3 * width, -1).T + qkv_bias  # (B, N, 3·width)
    q, k, v = qkv[..., :width], qkv[..., width : 2 * width], qkv[..., 2 * width :]
    out = torch.zeros_like(q)
    for b in range(bsz):
        for head in range(width // head_dim):
            sl = slice(head * head_dim, (head + 1) * head_dim)
            for t in range(h * w):
                logits = torch.stack([q[b, t, sl] @ k[b, u, sl] for u in range(h * w)])
                logits = logits / math.sqrt(head_dim)
                attn = torch.exp(logits - logits.max())
                attn = attn / attn.sum()
                out[b, t, sl] = sum(attn[u] * v[b, u, sl] for u in range(h * w))
    y = out @ proj_weight.reshape(proj_weight.shape[0], -1).T
    if proj_bias is not None:
        y = y + proj_bias
    return y.transpose(1, 2).reshape(bsz, -1, h, w)


def bn_params(bn) -> tuple:
    return bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps


def training_forward(module, x: torch.Tensor) -> torch.Tensor:
    """§2 in inference mode: BN_c(conv(X)) + BN_a(attention(X)), from an XVolution's parameters."""
    conv = batch_norm(conv2d(x, module.conv.weight, module.stride), *bn_params(module.conv_bn))
    attn = module.attn
    if module.attention == "pssa":
        weights = pssa_weights_per_direction(attn, module.pssa_weighting, module.in_channels)
        branch = pssa(x, weights, module.stride, len(attn.directions) == 9)
    elif module.attention == "involution":
        kernels = involution_kernels(attn, x, module.stride)
        branch = apply_pixel_kernels(x, involution_pixel_kernels(attn, kernels), module.stride)
    else:
        branch = global_sa(
            x,
            attn.qkv.weight,
            attn.qkv.bias,
            attn.proj.weight,
            attn.proj.bias,
            module.stride,
            attn.head_dim,
        )
    return conv + batch_norm(branch, *bn_params(module.attn_bn))


def fold_bn(weight: torch.Tensor, mean, var, gamma, beta, eps) -> tuple:
    """§3 step 1: Ŵ[o] = s[o] W[o], b[o] = β[o] − μ[o] s[o], s = γ / sqrt(σ² + ε)."""
    scale = gamma / torch.sqrt(var + eps)
    return weight * scale.view(-1, *[1] * (weight.dim() - 1)), beta - mean * scale


def deploy_forward(
    x: torch.Tensor,
    static: torch.Tensor,
    dynamic: torch.Tensor,
    bias: torch.Tensor,
    stride: int,
    include_center: bool,
) -> torch.Tensor:
    """§3 step 2, literally: build K_p for every output pixel p and apply it to the window.

    ``dynamic`` is laid out on the KxK taps, (C_out, C_in, K, K) or diagonal (C, 1, K, K).
    """
    bsz, c_in, h, w = x.shape
    c_out, _, k, _ = static.shape
    r = k // 2
    if dynamic.shape[1] == 1 and c_in > 1:
        dynamic = torch.stack(
            [torch.diag_embed(dynamic[:, 0, i, j]) for i in range(k) for j in range(k)], -1
        )
        dynamic = dynamic.reshape(c_out, c_in, k, k)
    indicator = torch.zeros(k, k, dtype=x.dtype)
    for di, dj in directions(include_center):
        indicator[di + r, dj + r] = 1.0
    out = x.new_zeros(bsz, c_out, out_size(h, stride), out_size(w, stride))
    for b in range(bsz):
        for pi in range(out.shape[2]):
            for pj in range(out.shape[3]):
                qi, qj = stride * pi, stride * pj
                centre = x[b, :, qi, qj]
                kernel = static + indicator * dynamic * centre.view(1, c_in, 1, 1)  # K_p
                window = torch.stack(
                    [
                        torch.stack([pixel(x, b, qi + di, qj + dj) for dj in range(-r, r + 1)], -1)
                        for di in range(-r, r + 1)
                    ],
                    -2,
                )  # (C_in, K, K)
                out[b, :, pi, pj] = bias + (kernel * window).sum(dim=(1, 2, 3))
    return out


# ----------------------------------------------------------------- involution as the attention part
def involution_kernels(inv, x: torch.Tensor, stride: int) -> torch.Tensor:
    """H[b, g, i, j, p] for every output pixel p, pixel by pixel: the input average-pooled by the
    stride (valid pixels of each window), 1x1 reduce (+ BN unless folded), ReLU, 1x1 span.

    Returns (B, G, K_i, K_i, Ho, Wo)."""
    pooled = avg_pool_ceil(x, stride) if stride > 1 else x
    reduce = inv.reduce
    w0 = reduce.conv.weight.flatten(1)
    k = inv.kernel_size
    bsz, _, ho, wo = pooled.shape
    out = x.new_zeros(bsz, inv.groups, k, k, ho, wo)
    for b in range(bsz):
        for pi in range(ho):
            for pj in range(wo):
                hidden = w0 @ pooled[b, :, pi, pj]
                if reduce.conv.bias is not None:
                    hidden = hidden + reduce.conv.bias
                if "bn" in reduce._modules:
                    bn = reduce.bn
                    hidden = (hidden - bn.running_mean) / torch.sqrt(
                        bn.running_var + bn.eps
                    ) * bn.weight + bn.bias
                hidden = torch.clamp(hidden, min=0.0)
                spanned = inv.span.weight.flatten(1) @ hidden + inv.span.bias  # (G·K·K,)
                out[b, :, :, :, pi, pj] = spanned.view(inv.groups, k, k)
    return out


def involution_pixel_kernels(inv, kernels: torch.Tensor, scale=None) -> torch.Tensor:
    """The involution branch as per-pixel kernels (B, C_out, C_in, K_i, K_i, Ho, Wo):
    scale[o] · P[o, c] · H[g(c), δ, p], P the projection (identity without one)."""
    bsz, groups, k, _, ho, wo = kernels.shape
    c_in = inv.in_channels
    per_group = c_in // groups
    if isinstance(inv.proj, torch.nn.Conv2d):
        mix = inv.proj.weight.flatten(1)
    else:
        mix = torch.eye(c_in, dtype=kernels.dtype)
    if scale is not None:
        mix = scale.view(-1, 1) * mix
    out = kernels.new_zeros(bsz, mix.shape[0], c_in, k, k, ho, wo)
    for c in range(c_in):
        g = c // per_group
        out[:, :, c] = mix[:, c].view(1, -1, 1, 1, 1, 1) * kernels[:, g].unsqueeze(1)
    return out


def apply_pixel_kernels(x: torch.Tensor, kernels: torch.Tensor, stride: int) -> torch.Tensor:
    """Y[b, o, p] = Σ_c Σ_δ K_p[b, o, c, δ] X[b, c, s·p + δ] (zero padding), pixel by pixel."""
    bsz, c_out, _, k, _, ho, wo = kernels.shape
    r = k // 2
    out = x.new_zeros(bsz, c_out, ho, wo)
    for b in range(bsz):
        for pi in range(ho):
            for pj in range(wo):
                qi, qj = stride * pi, stride * pj
                for di in range(-r, r + 1):
                    for dj in range(-r, r + 1):
                        tap = kernels[b, :, :, di + r, dj + r, pi, pj]
                        out[b, :, pi, pj] += tap @ pixel(x, b, qi + di, qj + dj)
    return out


def involution_deploy_forward(module, x: torch.Tensor) -> torch.Tensor:
    """The merged form, literally: K_p = Ŵ^s (zero-padded to the larger window) + a[o] P[o, c]
    H[g(c), δ, p] built for every output pixel, applied to its window, plus the bias."""
    dyn = module.reparam_conv
    inv = dyn.involution
    kernels = involution_pixel_kernels(
        inv, involution_kernels(inv, x, module.stride), dyn.dynamic_scale
    )
    k = max(kernels.shape[3], dyn.weight.shape[-1])
    pad_d = (k - kernels.shape[3]) // 2
    pad_s = (k - dyn.weight.shape[-1]) // 2
    full = kernels.new_zeros(*kernels.shape[:3], k, k, *kernels.shape[5:])
    full[:, :, :, pad_d : k - pad_d, pad_d : k - pad_d] = kernels
    static = dyn.weight.new_zeros(dyn.weight.shape[0], dyn.weight.shape[1], k, k)
    static[:, :, pad_s : k - pad_s, pad_s : k - pad_s] = dyn.weight
    full = full + static.view(1, *static.shape, 1, 1)
    return apply_pixel_kernels(x, full, module.stride) + dyn.bias.view(1, -1, 1, 1)
