"""Attention weights, read from each operator's own hook.

Every function here takes a module and the input it received (captured with a forward pre-hook)
and returns the softmax weights that module uses, through the hook the operator itself provides:
``ACmix.attention(..., return_weights=True)``, ``SwinTransformerBlock.attention_weights``,
``GlobalSelfAttention2d.attention_weights`` and ``MultiheadSelfAttention.attention_weights``; GLMix
passes its slot logits through ``vis_proxy``. Nothing here re-derives an operator's internals, and
the modules' fast paths stay untouched (tests rebuild each module's output from these weights).

* :func:`slot_assignments`: GLMix slot logits -> dispatch (softmax over slots) or clustering
  (softmax over pixels) weights. The logits themselves come from the mixer's ``vis_proxy`` hook.
* :func:`acmix_attention_weights`: ACmix's sliding-window attention, with
  :func:`acmix_window_index` telling which input pixel each window slot reads (reflect padding).
* :func:`swin_window_attention_weights`: (shifted) window attention of a Swin / ACmix-Swin block.
* :func:`global_attention_weights` / :func:`multihead_attention_weights`: global self-attention
  over all pixels (``GlobalSelfAttention2d``) or tokens (``MultiheadSelfAttention``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..layers import check_choice
from ..layers.acmix import ACmix
from ..layers.attention import GlobalSelfAttention2d, MultiheadSelfAttention
from ..models.swin import SwinTransformerBlock, SwinWindowWeights

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
def swin_window_attention_weights(block: SwinTransformerBlock, x: Tensor) -> SwinWindowWeights:
    """Attention weights of a (shifted) window-attention Swin block.

    The block's own hook (:meth:`~convattn.models.swin.SwinTransformerBlock.attention_weights`):
    its preparation (``norm1``, padding, roll, shift mask, clamped window on small maps) and the
    logits of its attention module.

    Args:
        block: a :class:`~convattn.models.swin.SwinTransformerBlock` (plain or ACmix attention).
        x: (B, H, W, C), the block's input.

    Returns:
        :class:`~convattn.models.swin.SwinWindowWeights`.
    """
    return block.attention_weights(x)


# --- global attention ---------------------------------------------------------------------------
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
    return module.attention_weights(x)


@torch.no_grad()
def multihead_attention_weights(module: MultiheadSelfAttention, tokens: Tensor) -> Tensor:
    """Attention weights of :class:`~convattn.layers.attention.MultiheadSelfAttention`.

    Args:
        module: the token attention module (e.g. a GLNet MHSA block's ``mha_op``).
        tokens: (B, N, C), its input.

    Returns:
        (B, heads, N, N); row i sums to one.
    """
    return module.attention_weights(tokens)
