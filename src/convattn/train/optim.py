"""Optimisers, weight-decay parameter groups and the warm-up + cosine learning-rate schedule.

Weight decay shrinks weights towards zero, which is meaningless (or harmful) for parameters that
set a scale or an offset rather than a feature detector: norm gains and shifts, biases, and 0-D/1-D
scalars such as ACmix's path weights ``rate1``/``rate2`` or GLMix's temperature ``slot_scale``.
Those go to a group with ``weight_decay=0`` (timm's convention), as do names the model lists in
``no_weight_decay()`` / ``no_weight_decay_keywords()`` and names matching user patterns.

The schedule is per optimiser update: a linear warm-up (update ``s`` uses ``lr * (s + 1) / (W + 1)``
for ``W`` warm-up updates, so no update is wasted at zero and the peak is not repeated), then a
half-cosine from ``lr`` down towards ``min_lr`` over the remaining updates.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

__all__ = [
    "create_optimizer",
    "create_scheduler",
    "lr_factor",
    "param_groups",
    "split_decay_params",
]


def _model_no_decay(model: nn.Module) -> tuple[set[str], set[str]]:
    """Names and name fragments the model itself exempts from decay (timm's hooks)."""
    names = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    keywords = (
        set(model.no_weight_decay_keywords())
        if hasattr(model, "no_weight_decay_keywords")
        else set()
    )
    return names, keywords


def split_decay_params(
    model: nn.Module, *, decay_1d: bool = False, no_decay_names: Iterable[str] = ()
) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """Split the trainable parameters into ``(decayed, not decayed)`` lists of ``(name, param)``.

    Args:
        model: the model (unwrapped, so names have no ``module.`` prefix).
        decay_1d: decay 0-D/1-D parameters too (norm weights, biases, scalar rates).
        no_decay_names: fnmatch patterns of names never decayed.
    """
    patterns = tuple(no_decay_names)
    names, keywords = _model_no_decay(model)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = (
            (param.ndim <= 1 and not decay_1d)
            or name in names
            or any(k in name for k in keywords)
            or any(fnmatch.fnmatchcase(name, p) for p in patterns)
        )
        (no_decay if exempt else decay).append((name, param))
    return decay, no_decay


def param_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    decay_1d: bool = False,
    no_decay_names: Iterable[str] = (),
) -> list[dict]:
    """Parameter groups ``decay`` (``weight_decay``) and ``no_decay`` (0), empty ones dropped."""
    decay, no_decay = split_decay_params(model, decay_1d=decay_1d, no_decay_names=no_decay_names)
    groups = [
        {"group": "decay", "params": [p for _, p in decay], "weight_decay": weight_decay},
        {"group": "no_decay", "params": [p for _, p in no_decay], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def create_optimizer(
    model: nn.Module,
    opt: str = "adamw",
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    *,
    momentum: float = 0.9,
    nesterov: bool = False,
    decay_1d: bool = False,
    no_decay_names: Iterable[str] = (),
) -> torch.optim.Optimizer:
    """AdamW or SGD over :func:`param_groups` of ``model``.

    Args:
        model: the (unwrapped) model.
        opt: ``"adamw"`` or ``"sgd"``.
        lr: peak learning rate.
        weight_decay: decay of the decayed group.
        momentum: SGD momentum.
        nesterov: SGD Nesterov momentum.
        decay_1d: see :func:`split_decay_params`.
        no_decay_names: see :func:`split_decay_params`.
    """
    groups = param_groups(model, weight_decay, decay_1d=decay_1d, no_decay_names=no_decay_names)
    if not groups:
        raise ValueError("create_optimizer: the model has no trainable parameters")
    if opt == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)
    if opt == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)
    raise ValueError(f"create_optimizer: 'opt' must be 'adamw' or 'sgd', got {opt!r}")


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Learning-rate multiplier of update ``step`` (0-based): linear warm-up, then cosine.

    Update ``s < warmup_steps`` uses ``(s + 1) / (warmup_steps + 1)``; afterwards the factor follows
    ``min_ratio + (1 - min_ratio) * (1 + cos(pi * t)) / 2`` with ``t`` going from 0 at the first
    post-warm-up update towards 1 at ``total_steps``.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    decay_steps = max(total_steps - warmup_steps, 1)
    t = min((step - warmup_steps) / decay_steps, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def create_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    warmup_steps: int,
    lr: float,
    min_lr: float = 0.0,
) -> LambdaLR:
    """Per-update :class:`LambdaLR` following :func:`lr_factor` (call ``step()`` after each update).

    Args:
        optimizer: its groups' ``lr`` is the peak ``lr``.
        total_steps: optimiser updates of the whole run.
        warmup_steps: updates of linear warm-up (clamped to ``total_steps``).
        lr: peak learning rate (for the ``min_lr`` ratio).
        min_lr: learning rate approached at the end.
    """
    warmup_steps = min(max(int(warmup_steps), 0), total_steps)
    min_ratio = min_lr / lr

    def factor(step: int) -> float:
        return lr_factor(step, total_steps, warmup_steps, min_ratio)

    return LambdaLR(optimizer, factor)
