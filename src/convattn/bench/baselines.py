"""Naive forms of the fast operators, as the operator benchmarks' speed and memory yardsticks.

Each function computes what a module computes, from that module's own parameters, the way a
straightforward implementation would: materialising what the fast kernels avoid. They are
baselines, not test oracles: the tests keep their own literal references under ``tests/`` and never
import these, so a mistake here cannot hide a mistake in an operator.

* :func:`acmix_unfold`: ACmix the way the official code computes it (``docs/notes/acmix.md``,
  section 1): reflection-padded keys, values and position encodings unfolded into
  k_att^2-fold copies, the position term added to and subtracted from the full-size keys.
* :func:`global_attention_math`: :class:`~convattn.layers.GlobalSelfAttention2d` through the
  math backend of scaled-dot-product attention (the N x N weights materialised).
* :func:`involution_unfold`: :class:`~convattn.layers.Involution2d` with its plain-op aggregation
  (the K^2-fold ``unfold`` copy the module uses only while exporting).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..layers.acmix import reflect_index
from ..layers.involution import involution_aggregate_unfold

__all__ = ["acmix_unfold", "global_attention_math", "involution_unfold"]


def _reflect_pad(t: torch.Tensor, pad: int) -> torch.Tensor:
    """Reflection padding of the last two axes (reflected again where one reflection is short)."""
    rows = reflect_index(t.shape[-2], pad, t.device)
    cols = reflect_index(t.shape[-1], pad, t.device)
    return t[..., rows, :][..., cols]


def acmix_unfold(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """ACmix's forward as the official module runs it, from an :class:`~convattn.layers.ACmix`.

    The attention logits are ``q_c . (k_j + pe_c - pe_j)`` over the k_att x k_att window of every
    (strided) query, with k, v and the position encodings unfolded; the convolution path and the
    combination are the module's own (they are cheap in both forms).
    """
    heads = module.conv_path.fc.weight.shape[1] // 3  # 3 * heads input maps, whatever the name
    b, _, h, w = x.shape
    width = module.qkv.weight.shape[0] // 3
    d = width // heads
    k_att, s = module.kernel_att, module.stride
    qkv = module.qkv(x)
    q, k, v = (t.reshape(b * heads, d, h, w) for t in qkv.split(width, dim=1))
    xs = torch.linspace(-1.0, 1.0, w, dtype=x.dtype, device=x.device)
    ys = torch.linspace(-1.0, 1.0, h, dtype=x.dtype, device=x.device)
    grid = torch.stack([xs.expand(h, w), ys.unsqueeze(1).expand(h, w)]).unsqueeze(0)
    pe = module.pos_proj(grid)  # (1, d, H, W)
    h_out, w_out = -(-h // s), -(-w // s)
    pad = k_att // 2

    def windows(t: torch.Tensor) -> torch.Tensor:  # (n, d, H, W) -> (n, d, k_att^2, H', W')
        cols = F.unfold(_reflect_pad(t, pad), k_att, stride=s)
        return cols.view(t.shape[0], d, k_att * k_att, h_out, w_out)

    q = q[:, :, ::s, ::s] * d**-0.5
    logits = (q.unsqueeze(2) * (windows(k) + pe[:, :, ::s, ::s].unsqueeze(2) - windows(pe))).sum(1)
    out_att = (logits.softmax(dim=1).unsqueeze(1) * windows(v)).sum(2)
    out_att = out_att.reshape(b, width, h_out, w_out)
    out_conv = module.conv_path(qkv.view(b, 3 * heads, d, h, w))
    return module.rate1 * out_att + module.rate2 * out_conv


def global_attention_math(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A :class:`~convattn.layers.GlobalSelfAttention2d` forward with the N x N weights built."""
    with sdpa_kernel(SDPBackend.MATH):
        return module(x)


def involution_unfold(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """An :class:`~convattn.layers.Involution2d` forward with the K^2-fold ``unfold`` aggregation."""
    kernels = module.generate_kernels(x)
    return module.proj(involution_aggregate_unfold(x, kernels, module.kernel_size, module.stride))
