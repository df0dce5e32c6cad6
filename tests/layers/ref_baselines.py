"""Literal, slow references of the baseline operators, written straight from their definitions.

The oracles for tests/layers/test_global_attention.py and test_involution.py, and the "reference"
rows of benchmarks/bench_ops.py. Nothing here is shared with the fast implementations: no SDPA, no
custom op, no nn layers; parameters are read from the module and every step is spelled out.

- average pooling by s (ceil mode): mean over each s x s window, border windows over their valid
  pixels (``avg_pool_ceil``);
- global self-attention (docs/notes/xvolution.md §1.5): per image and head,
  A = softmax(Q K^T / sqrt(d)) with the N x N matrix materialised, Y = W^o [A V] + b^o
  (``global_attention``);
- involution (arXiv 2103.06255, RedNet defaults): kernels H = W_1 ReLU(BN(W_0 AvgPool_s(X))) + b_1,
  Y[c, p] = sum_delta H[g(c), delta, p] X[c, s*p + delta] with zero padding, via ``unfold``
  (``involution``) or via explicit loops over pixels and taps (``involution_aggregate_loops``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def out_size(n: int, stride: int) -> int:
    return -(-n // stride)


def avg_pool_ceil(x: torch.Tensor, s: int) -> torch.Tensor:
    """Mean over each s x s window; windows cut by the border average their valid pixels."""
    if s == 1:
        return x
    h, w = x.shape[-2:]
    rows = []
    for pi in range(out_size(h, s)):
        cols = []
        for pj in range(out_size(w, s)):
            cols.append(x[:, :, s * pi : s * pi + s, s * pj : s * pj + s].mean(dim=(2, 3)))
        rows.append(torch.stack(cols, -1))
    return torch.stack(rows, -2)


def pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """1x1 convolution Y[o, p] = sum_c W[o, c] X[c, p] + b[o]; ``weight`` is (O, C) or (O, C, 1, 1)."""
    y = torch.einsum("oc,bchw->bohw", weight.reshape(weight.shape[0], -1), x)
    return y if bias is None else y + bias.view(1, -1, 1, 1)


def batch_norm(y: torch.Tensor, bn) -> torch.Tensor:
    """BN with batch statistics (biased variance) in training mode, running statistics in eval."""
    if bn.training:
        mean = y.mean(dim=(0, 2, 3))
        var = y.var(dim=(0, 2, 3), unbiased=False)
    else:
        mean, var = bn.running_mean, bn.running_var
    shape = (1, -1, 1, 1)
    y = (y - mean.view(shape)) / torch.sqrt(var.view(shape) + bn.eps)
    return y * bn.weight.view(shape) + bn.bias.view(shape)


def global_attention(module, x: torch.Tensor) -> torch.Tensor:
    """``GlobalSelfAttention2d`` from its parameters: ``qkv`` (3C, C) stacked q, k, v; ``proj``."""
    x = avg_pool_ceil(x, module.stride)
    bsz, c, h, w = x.shape
    d = module.head_dim
    qkv = pointwise(x, module.qkv.weight, module.qkv.bias).flatten(2)  # (B, 3C, N)
    q, k, v = qkv[:, :c], qkv[:, c : 2 * c], qkv[:, 2 * c :]
    heads = []
    for head in range(module.num_heads):
        rows = slice(head * d, (head + 1) * d)
        qh, kh, vh = q[:, rows], k[:, rows], v[:, rows]  # (B, d, N)
        logits = qh.transpose(1, 2) @ kh / math.sqrt(d)  # (B, N_query, N_key)
        weights = torch.exp(logits - logits.amax(-1, keepdim=True))
        weights = weights / weights.sum(-1, keepdim=True)  # softmax over the keys
        heads.append(vh @ weights.transpose(1, 2))  # (B, d, N_query)
    out = torch.cat(heads, 1).reshape(bsz, c, h, w)
    return pointwise(out, module.proj.weight, module.proj.bias)


def involution_kernels(module, x: torch.Tensor) -> torch.Tensor:
    """H = W_1 ReLU(BN(W_0 AvgPool_s(X))) + b_1 as (B, G, K*K, H', W'), taps row-major."""
    hidden = pointwise(avg_pool_ceil(x, module.stride), module.reduce.conv.weight, None)
    hidden = torch.clamp_min(batch_norm(hidden, module.reduce.bn), 0.0)
    kernels = pointwise(hidden, module.span.weight, module.span.bias)
    bsz, _, ho, wo = kernels.shape
    return kernels.reshape(bsz, module.groups, module.kernel_size**2, ho, wo)


def involution_aggregate_unfold(
    x: torch.Tensor, kernels: torch.Tensor, kernel_size: int, stride: int
) -> torch.Tensor:
    """Y[c, p] = sum_delta H[g(c), delta, p] X[c, s*p + delta] via the K*K-fold unfold copy."""
    bsz, c, _, _ = x.shape
    groups, ho, wo = kernels.shape[1], kernels.shape[-2], kernels.shape[-1]
    windows = F.unfold(x, kernel_size, padding=kernel_size // 2, stride=stride)
    windows = windows.reshape(bsz, groups, c // groups, kernel_size**2, ho, wo)
    return (windows * kernels.unsqueeze(2)).sum(3).reshape(bsz, c, ho, wo)


def involution_aggregate_loops(
    x: torch.Tensor, kernels: torch.Tensor, kernel_size: int, stride: int
) -> torch.Tensor:
    """The same sum with explicit loops over output pixels and taps (tiny shapes only)."""
    bsz, c, h, w = x.shape
    groups, ho, wo = kernels.shape[1], kernels.shape[-2], kernels.shape[-1]
    group_of = torch.arange(c) // (c // groups)
    r = kernel_size // 2
    out = x.new_zeros(bsz, c, ho, wo)
    for pi in range(ho):
        for pj in range(wo):
            for di in range(-r, r + 1):
                for dj in range(-r, r + 1):
                    i, j = stride * pi + di, stride * pj + dj
                    if not (0 <= i < h and 0 <= j < w):
                        continue  # zero padding
                    tap = (di + r) * kernel_size + (dj + r)
                    out[:, :, pi, pj] += kernels[:, group_of, tap, pi, pj] * x[:, :, i, j]
    return out


def involution(module, x: torch.Tensor) -> torch.Tensor:
    """``Involution2d`` from its parameters: kernel generation, unfold aggregation, projection."""
    kernels = involution_kernels(module, x)
    out = involution_aggregate_unfold(x, kernels, module.kernel_size, module.stride)
    if module.out_channels != module.in_channels:
        out = pointwise(out, module.proj.weight, None)
    return out
