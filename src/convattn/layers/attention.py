"""Global multi-head self-attention.

``MultiheadSelfAttention`` works on tokens (B, N, C) and keeps ``nn.MultiheadAttention``'s
parameter layout (``in_proj_weight``, ``in_proj_bias``, ``out_proj.weight``/``.bias``) so official
GLNet checkpoints load unchanged, but runs through ``F.scaled_dot_product_attention``: memory stays
O(N) on CPU (the native MHA fast path materialises the N x N matrix) and ``FlopCounterMode`` sees the
attention products when the math backend is forced.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MultiheadSelfAttention"]


class MultiheadSelfAttention(nn.Module):
    """Self-attention among N tokens: softmax(Q K^T / sqrt(d)) V with packed Q/K/V projection.

    Args:
        dim: token width C.
        num_heads: number of heads; ``dim`` must be divisible by it.
        qkv_bias: learn biases in the packed Q/K/V projection.
        proj_bias: learn a bias in the output projection.
    """

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool = True, proj_bias: bool = True
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(
                f"MultiheadSelfAttention: 'dim' ({dim}) must be divisible by 'num_heads' ({num_heads})"
            )
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim)) if qkv_bias else None
        self.out_proj = nn.Linear(dim, dim, bias=proj_bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Same scheme as nn.MultiheadAttention: xavier-uniform packed projection, zero biases.
        nn.init.xavier_uniform_(self.in_proj_weight)
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.in_proj_bias)
        if self.out_proj.bias is not None:
            nn.init.zeros_(self.out_proj.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, N, C)."""
        b, n, c = tokens.shape
        if c != self.dim:
            raise ValueError(
                f"MultiheadSelfAttention: argument 'tokens' must have {self.dim} channels (last dim), got {c}"
            )
        qkv = F.linear(tokens, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(self.head_dim))
        out = out.transpose(1, 2).reshape(b, n, c)
        return self.out_proj(out)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}"
