"""Token labeling: the training loss of models with an auxiliary per-token head.

Token labeling (Jiang et al., "All Tokens Matter: Token Labeling for Training Better Vision
Transformers", NeurIPS 2021) supervises every final-stage token with a dense (per-location) class
target, next to the usual image-level target. The GLNet ``*_tklb`` models
(:class:`~convattn.models.glnet.GLNetTokenLabel`) return ``(class_logits, token_logits, box)`` in
training mode, where ``box`` is the MixToken box they pasted from the reversed batch.

:func:`token_label_loss` is the official objective::

    lam      = 1 - box_area / N                      (N tokens; 1 when no box)
    t_cls    = lam * t + (1 - lam) * t[reversed]     (t: the image-level soft target)
    loss     = cls_weight * CE(class_logits, t_cls) + dense_weight * CE(token_logits, dense)

where CE is the soft-target cross-entropy averaged over images (and tokens). The token logits are
already un-mixed by the model, so each image's dense target is its own, unmixed map. Without a
dense target only the first term is used (the class target is still mixed with ``lam``, because
the image the class head saw was mixed).

Dense targets ``dense`` are either soft maps ``(B, K, h, w)`` (per-location class distributions,
e.g. a teacher's scores) or hard maps ``(B, h, w)`` of class indices (one-hot, label-smoothed). A
map whose ``h * w`` differs from the token count N is area-averaged onto the token grid, which must
then be square (square training images).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["dense_token_targets", "is_token_label_output", "token_label_loss"]


def is_token_label_output(output: object) -> bool:
    """Whether a training-mode model output is ``(class_logits, token_logits, box)``."""
    return (
        isinstance(output, (tuple, list))
        and len(output) == 3
        and isinstance(output[0], torch.Tensor)
        and isinstance(output[1], torch.Tensor)
        and output[1].dim() == 3
    )


def _soft_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()


def dense_token_targets(
    dense: torch.Tensor, num_tokens: int, num_classes: int, label_smoothing: float = 0.0
) -> torch.Tensor:
    """A dense target as per-token distributions ``(B, N, K)`` (row-major token order).

    Args:
        dense: ``(B, K, h, w)`` float class distributions or ``(B, h, w)`` integer class maps.
        num_tokens: N, the model's token count.
        num_classes: K.
        label_smoothing: applied to integer maps (as to the image-level target).
    """
    if not isinstance(dense, torch.Tensor):
        raise ValueError(f"dense target: expected a tensor, got {type(dense).__name__}")
    if dense.is_floating_point():
        if dense.dim() != 4 or dense.shape[1] != num_classes:
            raise ValueError(
                f"dense target: a float map must be (B, {num_classes}, h, w), got "
                f"{tuple(dense.shape)}"
            )
        maps = dense.float()
    else:
        if dense.dim() != 3:
            raise ValueError(
                f"dense target: an integer map must be (B, h, w), got {tuple(dense.shape)}"
            )
        if dense.numel() and (int(dense.min()) < 0 or int(dense.max()) >= num_classes):
            raise ValueError(f"dense target: class indices must be in [0, {num_classes})")
        off = label_smoothing / num_classes
        maps = F.one_hot(dense.long(), num_classes).permute(0, 3, 1, 2).float()
        maps = maps * (1.0 - label_smoothing) + off
    h, w = maps.shape[-2:]
    if h * w != num_tokens:
        side = math.isqrt(num_tokens)
        if side * side != num_tokens:
            raise ValueError(
                f"dense target: a {h}x{w} map cannot be pooled onto {num_tokens} tokens (the "
                "token grid must be square, i.e. square training images, or the map must have "
                "exactly one entry per token)"
            )
        maps = F.adaptive_avg_pool2d(maps, side)
    return maps.flatten(2).transpose(1, 2)


def token_label_loss(
    output: Sequence,
    targets: torch.Tensor,
    dense: torch.Tensor | None = None,
    *,
    dense_weight: float = 0.5,
    cls_weight: float = 1.0,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """The token-labeling objective (see the module docstring).

    Args:
        output: the model's training output ``(class_logits (B, K), token_logits (B, N, K), box)``
            with ``box = (row0, col0, row1, col1)`` on the token grid.
        targets: image-level targets, ``(B, K)`` soft or ``(B,)`` class indices (smoothed).
        dense: the dense target (see :func:`dense_token_targets`), or None to train the class
            head only.
        dense_weight: weight of the token term (official token-labeling recipe: 0.5).
        cls_weight: weight of the class term (official: 1.0).
        label_smoothing: smoothing of integer targets.
    """
    cls_logits, token_logits, box = output
    b, n, k = token_logits.shape
    if targets.dim() == 1:
        off = label_smoothing / k
        targets = F.one_hot(targets.long(), k).float() * (1.0 - label_smoothing) + off
    r0, c0, r1, c1 = (int(v) for v in box)
    lam = 1.0 - max(r1 - r0, 0) * max(c1 - c0, 0) / n
    if lam < 1.0:
        targets = lam * targets + (1.0 - lam) * targets.flip(0)
    loss = cls_weight * _soft_ce(cls_logits.float(), targets)
    if dense is None:
        return loss
    dense_t = dense_token_targets(dense, n, k, label_smoothing).to(token_logits.device)
    if dense_t.shape[0] != b:
        raise ValueError(f"dense target: batch {dense_t.shape[0]} != the model's batch {b}")
    aux = _soft_ce(token_logits.float().reshape(-1, k), dense_t.reshape(-1, k))
    return loss + dense_weight * aux


def warn_no_dense_target(model_name: str) -> None:
    """The one-time message when a token-labeling model trains without a dense target."""
    warnings.warn(
        f"{model_name} returns token logits for token labeling, but the training data gives no "
        "dense target (a third batch element); the token logits are ignored and only the class "
        "head is trained (its target mixed by the model's MixToken box)",
        stacklevel=3,
    )
