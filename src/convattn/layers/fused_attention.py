"""Softmax attention, fused in eager mode and explicit when traced (timm's ``fused_attn`` idea).

Eager calls use ``F.scaled_dot_product_attention`` (fused CPU/GPU kernels, O(N) memory). When the
model is traced (``torch.export``, both ONNX exporters, ``torch.compile``) the same maths is written
as matmul -> softmax -> matmul: the ONNX exporter decomposes SDPA after tracing with output strides
that differ from the traced ones, which broke the views that follow it, and an explicit graph is
what every backend optimises anyway.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .tracing import is_tracing

__all__ = ["scaled_dot_product_attention"]


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> torch.Tensor:
    """``softmax(scale * q k^T + attn_mask) v`` with dropout on the weights; shapes as SDPA's."""
    if not is_tracing():
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale
        )
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = torch.matmul(q * scale, k.transpose(-2, -1))
    if attn_mask is not None:
        logits = logits + attn_mask
    weights = logits.softmax(dim=-1)
    if dropout_p > 0.0:
        weights = F.dropout(weights, dropout_p)
    return torch.matmul(weights, v)
