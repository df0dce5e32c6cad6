"""Attention weights recomputed from each operator's own parameters.

Every function here takes a module and the input it received (captured with a forward pre-hook)
and returns the softmax weights that module uses: ACmix hands them out through its own hook
(``ACmix.attention(..., return_weights=True)``); the others are computed from the module's
parameters with plain tensor operations. Nothing is monkeypatched, and the modules' fast paths
stay untouched. Each function reproduces the module's logits exactly (tests rebuild the module's
output from these weights), so a figure shows what the network really computed.

* :func:`slot_assignments`: GLMix slot logits -> dispatch (softmax over slots) or clustering
  (softmax over pixels) weights. The logits themselves come from the mixer's ``vis_proxy`` hook.
* :func:`acmix_attention_weights`: ACmix's sliding-window attention, with
  :func:`acmix_window_index` telling which input pixel each window slot reads (reflect padding).
* :func:`swin_window_attention_weights`: (shifted) window attention of a Swin / ACmix-Swin block.
* :func:`global_attention_weights` / :func:`multihead_attention_weights`: global self-attention
  over all pixels (``GlobalSelfAttention2d``) or tokens (``MultiheadSelfAttention``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..layers._checks import check_choice
from ..layers.acmix import ACmix
from ..layers.attention import GlobalSelfAttention2d, MultiheadSelfAttention
from ..layers.window_attention import shifted_window_mask, window_partition
from ..models.swin import SwinTransformerBlock

__all__ = [
    "SLOT_MODES",
    "SwinWindowWeights",
    "acmix_attention_weights",
    "acmix_window_index",
    "global_attention_weights",
    "multihead_attention_weights",
    "slot_assignments",
    "swin_window_attention_weights",
]

SLOT_MODES = ("dispatch", "clustering")


def slot_assignments(logits: Tensor, mode: str = "dispatch") -> Tensor:
    """GLMix slot weights from the (B, S, N) slot logits the mixer passes through ``vis_proxy``.

    Args:
        logits: (B, S, ...) logits, slots on dim 1 and pixels on the remaining dims.
        mode: ``"dispatch"``: softmax over the slots (dim 1), i.e. how each pixel reads the updated
            slots back (``docs/notes/glmix.md`` §1 step 7; what the paper's figure shows); ``"clustering"``:
            softmax over the pixels, i.e. how each slot gathers pixels (step 5).

    Returns:
        Weights of the shape of ``logits``: every pixel's weights sum to one over the slots
        (dispatch), or every slot's weights sum to one over the pixels (clustering).
    """
    check_choice(mode, "mode", SLOT_MODES, "slot_assignments")
    if mode == "dispatch":
        return logits.softmax(dim=1)
    return logits.flatten(2).softmax(dim=-1).view_as(logits)


# --- ACmix (sliding windows) ----------------------------------------------------------------------
def acmix_window_index(module: ACmix, height: int, width: int) -> Tensor:
    """Which input pixel every window slot of every query reads, as a flat index ``row * W + col``.

    The operator's own :meth:`~convattn.layers.ACmix.window_index` (its border rule).

    Args:
        module: the ACmix module (its ``kernel_att`` and ``stride``).
        height: H, the height of the module's input.
        width: W, its width.

    Returns:
        Long tensor (k*k, H', W'), slots ordered as in :func:`acmix_attention_weights`. Near the
        border several slots may name the same pixel (reflection).
    """
    return module.window_index(height, width)


@torch.no_grad()
def acmix_attention_weights(module: ACmix, x: Tensor) -> Tensor:
    """The softmax weights of ACmix's attention path, per head, query pixel and window slot.

    Read from the operator's own attention path (:meth:`~convattn.layers.ACmix.attention` with
    ``return_weights=True``), so they are the weights the module computes.

    Args:
        module: an :class:`~convattn.layers.acmix.ACmix` module.
        x: (B, C_in, H, W), the module's input.

    Returns:
        (B, heads, k*k, H', W'), H' = ceil(H / stride): for the query at input pixel
        (stride * y, stride * x), the weights over its k_att x k_att window (sum to one over dim 2).
    """
    _, weights = module.attention(module.qkv(x), return_weights=True)
    return weights


# --- Swin / ACmix-Swin windows ------------------------------------------------------------------
class SwinWindowWeights(NamedTuple):
    """Window attention weights of a Swin block on its padded, cyclically rolled map.

    ``weights[b, i, j, h, t, u]``: head h, window (i, j) of the rolled map, query token t, key
    token u (tokens row-major in the window); sums to one over u. The rolled map is the block's
    map zero-padded to ``padded_size`` and rolled by ``(-shift, -shift)``: rolled pixel (r, c) is
    pixel ``((r + shift) % Hp, (c + shift) % Wp)`` of the padded map.
    """

    weights: Tensor  # (B, nH, nW, heads, w*w, w*w)
    window: int
    shift: int
    padded_size: tuple[int, int]
    size: tuple[int, int]


@torch.no_grad()
def swin_window_attention_weights(block: SwinTransformerBlock, x: Tensor) -> SwinWindowWeights:
    """Attention weights of a (shifted) window-attention Swin block, from its own parameters.

    Repeats the block's preparation (``norm1``, padding, roll, shift mask, clamped window on small
    maps) and the logits of :meth:`WindowAttention.attend`: ``q k^T / sqrt(d)`` plus the relative
    position bias plus the shift mask. A window clamped to a small map uses the bias entries of the
    offsets it can reach, as the block does.

    Args:
        block: a :class:`~convattn.models.swin.SwinTransformerBlock` (plain or ACmix attention).
        x: (B, H, W, C), the block's input.

    Returns:
        :class:`SwinWindowWeights`.
    """
    attn = block.attn
    b, h, w, _ = x.shape
    window, shift = block.window_and_shift(h, w)
    pad_h, pad_w = -h % window, -w % window
    y = F.pad(block.norm1(x), (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    if shift:
        y = torch.roll(y, (-shift, -shift), dims=(1, 2))
    n, heads, hd = window * window, attn.num_heads, attn.head_dim
    windows = window_partition(attn.qkv(y), window).view(-1, n, 3, heads, hd)
    q, k, _ = windows.permute(2, 0, 3, 1, 4).unbind(0)  # (B*nW, heads, n, d)
    logits = (q * attn.scale) @ k.transpose(-2, -1)
    # Token t of a w' x w' window sits at (t // w', t % w'); in the module's w x w bias table that
    # is token (t // w') * w + t % w' (the clamped window is embedded top-left, as in swin.py).
    inner = torch.arange(n, device=x.device)
    inner = (inner // window) * attn.window_size + inner % window
    bias = attn.relative_position_bias()[:, inner][:, :, inner]  # (heads, n, n)
    logits = logits + bias.to(logits.dtype)
    if shift:
        mask = shifted_window_mask(hp, wp, window, shift).to(logits)  # (nW, n, n)
        logits = logits.view(b, -1, heads, n, n) + mask.unsqueeze(1)
    weights = logits.softmax(dim=-1).view(b, hp // window, wp // window, heads, n, n)
    return SwinWindowWeights(weights, window, shift, (hp, wp), (h, w))


# --- global attention ---------------------------------------------------------------------------
def _packed_weights(qkv: Tensor, num_heads: int) -> Tensor:
    """softmax(q k^T / sqrt(d)) from packed (B, N, 3C) projections -> (B, heads, N, N).

    The packing is that of ``convattn.layers.attention._packed_attention`` (and of
    ``nn.MultiheadAttention``): channels [q | k | v], each head-major.
    """
    b, n, c3 = qkv.shape
    head_dim = c3 // (3 * num_heads)
    q, k, _ = qkv.view(b, n, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    return ((q / math.sqrt(head_dim)) @ k.transpose(-2, -1)).softmax(dim=-1)


@torch.no_grad()
def global_attention_weights(module: GlobalSelfAttention2d, x: Tensor) -> Tensor:
    """Attention weights of :class:`~convattn.layers.attention.GlobalSelfAttention2d`.

    Args:
        module: the global attention module.
        x: (B, C_in, H, W), its input (average-pooled by ``stride`` first, as the module does).

    Returns:
        (B, heads, N, N) with N = H'W' pixels of the (pooled) map, row-major: row i holds the weights
        of query pixel i over all key pixels (sums to one).
    """
    if module.stride > 1:
        x = F.avg_pool2d(x, module.stride, module.stride, ceil_mode=True)
    return _packed_weights(module.qkv(x.flatten(2).transpose(1, 2)), module.num_heads)


@torch.no_grad()
def multihead_attention_weights(module: MultiheadSelfAttention, tokens: Tensor) -> Tensor:
    """Attention weights of :class:`~convattn.layers.attention.MultiheadSelfAttention`.

    Args:
        module: the token attention module (e.g. a GLNet MHSA block's ``mha_op``).
        tokens: (B, N, C), its input.

    Returns:
        (B, heads, N, N); row i sums to one.
    """
    qkv = F.linear(tokens, module.in_proj_weight, module.in_proj_bias)
    return _packed_weights(qkv, module.num_heads)
