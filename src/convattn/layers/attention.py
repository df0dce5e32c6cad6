"""Global multi-head self-attention, on tokens and on NCHW maps.

Both classes compute softmax(Q K^T / sqrt(d)) V through ``F.scaled_dot_product_attention``: memory
stays O(N) on CPU (the native ``nn.MultiheadAttention`` fast path materialises the N x N matrix) and
``FlopCounterMode`` sees the attention products when the math backend is forced
(``convattn.bench.count_macs``).

* ``MultiheadSelfAttention`` works on tokens (B, N, C) and keeps ``nn.MultiheadAttention``'s
  parameter layout (``in_proj_weight``, ``in_proj_bias``, ``out_proj.weight``/``.bias``) so official
  GLNet checkpoints load unchanged.
* ``GlobalSelfAttention2d`` is the drop-in "SA alone" baseline of X-volution (arXiv 2106.02253;
  ``docs/notes/xvolution.md`` §1.5): 1x1 Q/K/V, attention over all pixels, 1x1 output projection to
  ``out_channels``; stride s average-pools the input first; no positional encoding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_feature_map, check_positive_int
from .fused_attention import scaled_dot_product_attention

__all__ = ["GlobalSelfAttention2d", "MultiheadSelfAttention", "resolve_num_heads"]


def _packed_weights(qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) from packed (B, N, 3C) projections -> (B, heads, N, N).

    The explicit form of what :func:`_packed_attention` lets SDPA compute (visualisation hook).
    """
    b, n, c3 = qkv.shape
    head_dim = c3 // (3 * num_heads)
    q, k, _ = qkv.view(b, n, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    return ((q / math.sqrt(head_dim)) @ k.transpose(-2, -1)).softmax(dim=-1)


def _packed_attention(qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Attention from packed projections: (B, N, 3*C) -> (B, N, C), heads side by side in C."""
    b, n, c3 = qkv.shape
    head_dim = c3 // (3 * num_heads)
    qkv = qkv.view(b, n, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
    out = scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(head_dim))
    return out.transpose(1, 2).reshape(b, n, c3 // 3)


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
        self.dim = dim
        self.num_heads = resolve_num_heads(dim, num_heads, 1, type(self).__name__, "dim")
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
        if tokens.dim() != 3:
            raise ValueError(
                "MultiheadSelfAttention: argument 'tokens' must be 3-D (B, N, C), "
                f"got shape {tuple(tokens.shape)}"
            )
        c = tokens.shape[-1]
        if c != self.dim:
            raise ValueError(
                f"MultiheadSelfAttention: argument 'tokens' must have {self.dim} channels (last dim), got {c}"
            )
        qkv = F.linear(tokens, self.in_proj_weight, self.in_proj_bias)
        return self.out_proj(_packed_attention(qkv, self.num_heads))

    @torch.no_grad()
    def attention_weights(self, tokens: torch.Tensor) -> torch.Tensor:
        """The attention weights of (B, N, C) ``tokens``: (B, heads, N, N), rows sum to one."""
        qkv = F.linear(tokens, self.in_proj_weight, self.in_proj_bias)
        return _packed_weights(qkv, self.num_heads)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}"


def resolve_num_heads(
    channels: int,
    num_heads: int | None,
    head_dim: int,
    owner: str,
    name: str = "channels",
    *,
    head_dim_name: str = "head_dim",
    round_down: bool = False,
) -> int:
    """The head count of every attention in the library: ``num_heads`` if given, else from ``head_dim``.

    ``num_heads`` must divide ``channels``. Without it the heads are ``channels / head_dim``, which
    must be exact, or with ``round_down`` the largest divisor of ``channels`` not above
    ``channels // head_dim`` (at least 1; :class:`GlobalSelfAttention2d`'s documented default).

    Args:
        channels: the attention width.
        num_heads: explicit head count, or None.
        head_dim: target channels per head when ``num_heads`` is None.
        owner: the class named in error messages.
        name: the argument that holds ``channels``, for error messages.
        head_dim_name: the argument that holds ``head_dim``, for error messages.
        round_down: round an inexact ``channels / head_dim`` down to a divisor instead of raising.
    """
    if num_heads is not None:
        check_positive_int(num_heads, "num_heads", owner)
        if channels % num_heads:
            raise ValueError(
                f"{owner}: '{name}' ({channels}) must be divisible by 'num_heads' ({num_heads})"
            )
        return num_heads
    check_positive_int(head_dim, head_dim_name, owner)
    if round_down:
        heads = max(1, channels // head_dim)
        while channels % heads:
            heads -= 1
        return heads
    if channels % head_dim:
        raise ValueError(
            f"{owner}: '{name}' ({channels}) must be divisible by '{head_dim_name}' ({head_dim}); "
            "pass 'num_heads' to choose the head count directly"
        )
    return channels // head_dim


class GlobalSelfAttention2d(nn.Module):
    """Multi-head self-attention over all pixels of an NCHW map, as a drop-in for a 3x3 conv.

    With N = H'W' pixels of the (pooled) input X and heads h = 1..num_heads of width d::

        Q_h, K_h, V_h = W^{q,k,v}_h X + b          (1x1 projections, C_in -> d each)
        A_h = softmax(Q_h^T K_h / sqrt(d))         (N x N, softmax over the keys; never materialised)
        Y = W^o [A_1 V_1^T; ...; A_h V_h^T] + b^o  (1x1 projection, C_in -> C_out)

    The attention width is ``in_channels``; ``out_channels`` only sets the width of the output
    projection, which is how C_in != C_out is handled (no extra layer). For ``stride`` s > 1 the
    input is first average-pooled by s with ``ceil_mode`` (partial edge windows average their
    in-image pixels), so the output is ceil(H/s) x ceil(W/s). There is no positional encoding.

    Parameters: ``qkv`` (Linear C_in -> 3 C_in, i.e. packed 1x1 Q/K/V) and ``proj`` (Linear
    C_in -> C_out). They act on the flattened (B, N, C) tokens because SDPA wants contiguous heads.

    MACs per image (``count_macs``): 3 N C_in^2 + 2 N^2 C_in + N C_in C_out.

    Args:
        in_channels: input width C_in (also the attention width).
        out_channels: output width C_out.
        stride: spatial stride, applied by average pooling before attention.
        num_heads: number of heads; must divide ``in_channels``. Default: the largest divisor of
            ``in_channels`` not above ``in_channels // head_dim`` (4 heads at 256 channels).
        head_dim: target head width used when ``num_heads`` is None.
        qkv_bias: learn biases in the Q/K/V projection.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        *,
        num_heads: int | None = None,
        head_dim: int = 64,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.in_channels = check_positive_int(in_channels, "in_channels", owner)
        self.out_channels = check_positive_int(out_channels, "out_channels", owner)
        self.stride = check_positive_int(stride, "stride", owner)
        check_positive_int(head_dim, "head_dim", owner)
        self.num_heads = resolve_num_heads(
            in_channels, num_heads, head_dim, owner, "in_channels", round_down=True
        )
        self.head_dim = in_channels // self.num_heads
        self.qkv = nn.Linear(in_channels, 3 * in_channels, bias=qkv_bias)
        self.proj = nn.Linear(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, ceil(H/stride), ceil(W/stride))."""
        check_feature_map(x, self.in_channels, type(self).__name__)
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride, self.stride, ceil_mode=True)
        b, _, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C_in)
        out = self.proj(_packed_attention(self.qkv(tokens), self.num_heads))
        return out.transpose(1, 2).reshape(b, self.out_channels, h, w)

    @torch.no_grad()
    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The attention weights for input ``x`` (the visualisation hook).

        Returns:
            (B, heads, N, N), N = H'W' pixels of the (pooled) map, row-major: row i holds query
            pixel i's weights over all key pixels (sums to one).
        """
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride, self.stride, ceil_mode=True)
        return _packed_weights(self.qkv(x.flatten(2).transpose(1, 2)), self.num_heads)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, stride={self.stride}, "
            f"num_heads={self.num_heads}, head_dim={self.head_dim}"
        )
