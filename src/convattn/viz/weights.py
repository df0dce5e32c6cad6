"""Attention weights, read from each operator's own hook.

Every function here takes a module and the input it received (captured with a forward pre-hook)
and returns the softmax weights that module uses, through the hook the operator itself provides:
``ACmix.attention(..., return_weights=True)``, ``PatchwiseSelfAttention.attention(...,
return_weights=True)``, ``SpatialReductionAttention.attention_weights``,
``SwinTransformerBlock.attention_weights``,
``GlobalSelfAttention2d.attention_weights`` and ``MultiheadSelfAttention.attention_weights``; GLMix
passes its slot logits through ``vis_proxy``. Nothing here re-derives an operator's internals, and
the modules' fast paths stay untouched (tests rebuild each module's output from these weights).

* :func:`slot_assignments`: GLMix slot logits -> dispatch (softmax over slots) or clustering
  (softmax over pixels) weights. The logits themselves come from the mixer's ``vis_proxy`` hook.
* :func:`acmix_attention_weights`: ACmix's sliding-window attention, with
  :func:`acmix_window_index` telling which input pixel each window slot reads (reflect padding).
* :func:`san_attention_weights`: SAN's / ACmix-SAN's patchwise window weights (per channel group,
  no softmax), with :func:`san_window_index` for the pixel each window slot reads.
* :func:`swin_window_attention_weights`: (shifted) window attention of a Swin / ACmix-Swin block.
* :func:`sr_attention_weights`: PVT's / ACmix-PVT's spatial-reduction attention over the reduced
  keys, with :func:`sr_key_index` for the key that covers each pixel.
* :func:`global_attention_weights` / :func:`multihead_attention_weights`: global self-attention
  over all pixels (``GlobalSelfAttention2d``) or tokens (``MultiheadSelfAttention``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..layers import check_choice
from ..layers.acmix import ACmix
from ..layers.attention import GlobalSelfAttention2d, MultiheadSelfAttention
from ..layers.san import PatchwiseSelfAttention
from ..layers.sr_attention import SpatialReductionAttention
from ..models.swin import SwinTransformerBlock, SwinWindowWeights

__all__ = [
    "SLOT_MODES",
    "SwinWindowWeights",
    "acmix_attention_weights",
    "acmix_window_index",
    "global_attention_weights",
    "multihead_attention_weights",
    "san_attention_weights",
    "san_window_index",
    "slot_assignments",
    "sr_attention_weights",
    "sr_key_index",
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


# --- SAN / ACmix-SAN (patchwise windows) -------------------------------------------------------
@torch.no_grad()
def san_attention_weights(module: PatchwiseSelfAttention, x: Tensor) -> Tensor:
    """SAN's patchwise window weights, per channel group, query pixel and window slot.

    Read from the operator's own attention (:meth:`~convattn.layers.san.PatchwiseSelfAttention.
    attention` with ``return_weights=True``); an ``ACmixPatchwiseAttention`` computes its attention
    path with the same call. Unlike ACmix's these weights have no softmax: they are the weight
    MLP's outputs, used as they come, and may be negative.

    Args:
        module: a :class:`~convattn.layers.san.PatchwiseSelfAttention` (or its ACmix form).
        x: (B, C_in, H, W), the module's input.

    Returns:
        (B, G, k*k, H', W'), G = ``module.groups`` channel groups, H' = ceil(H / stride).
    """
    _, weights = module.attention(module.qkv(x), return_weights=True)
    return weights


def san_window_index(module: PatchwiseSelfAttention, height: int, width: int) -> Tensor:
    """Which input pixel every window slot of every query reads (``row * W + col``): (k*k, H', W').

    The operator's own :meth:`~convattn.layers.san.PatchwiseSelfAttention.window_index`
    (reflection at the border, repeated on maps smaller than the window).
    """
    return module.window_index(height, width)


# --- PVT / ACmix-PVT (spatial reduction) ---------------------------------------------------------
@torch.no_grad()
def sr_attention_weights(
    module: SpatialReductionAttention, tokens: Tensor, size: tuple[int, int]
) -> Tensor:
    """Softmax weights of PVT's spatial-reduction attention (the operator's ``attention_weights``).

    Args:
        module: a :class:`~convattn.layers.sr_attention.SpatialReductionAttention` (or its ACmix
            form, whose attention path is the same).
        tokens: (B, L, C), its input: ``L - H*W`` prefix tokens (PVT's class token), then the map.
        size: (H, W) of the map.

    Returns:
        (B, heads, L, m): row i holds token i's weights over the m keys (prefix tokens first, then
        the reduced map row-major); each row sums to one.
    """
    return module.attention_weights(tokens, size)


def sr_key_index(
    module: SpatialReductionAttention, height: int, width: int, prefix: int = 0
) -> Tensor:
    """The key (last index of :func:`sr_attention_weights`) covering each pixel: (H, W), -1 = none.

    The operator's own :meth:`~convattn.layers.sr_attention.SpatialReductionAttention.key_index`.
    """
    return module.key_index(height, width, prefix)


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
