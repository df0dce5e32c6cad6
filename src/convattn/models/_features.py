"""Multi-scale feature extraction (``features_only=True``) for detection and segmentation necks.

Every backbone implements ``forward_intermediates(x, indices) -> list[Tensor]`` returning NCHW maps
of the requested stages and exposes ``feature_info``: one dict per stage with ``num_chs``,
``reduction`` and ``module``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["FeatureInfo", "FeatureListNet", "resolve_out_indices"]


def resolve_out_indices(
    out_indices: Sequence[int] | int | None, num_stages: int
) -> tuple[int, ...]:
    """Normalise ``out_indices``: None -> all stages, int n -> last n stages, negatives allowed."""
    if out_indices is None:
        return tuple(range(num_stages))
    if isinstance(out_indices, int):
        if not 1 <= out_indices <= num_stages:
            raise ValueError(f"out_indices: an int must be in [1, {num_stages}], got {out_indices}")
        return tuple(range(num_stages - out_indices, num_stages))
    resolved = []
    for i in out_indices:
        j = i + num_stages if i < 0 else i
        if not 0 <= j < num_stages:
            raise ValueError(
                f"out_indices: index {i} is out of range for a model with {num_stages} stages"
            )
        resolved.append(j)
    return tuple(resolved)


class FeatureInfo:
    """Channel counts and reductions of the selected stages (timm-compatible accessors)."""

    def __init__(self, info: list[dict], out_indices: Sequence[int]) -> None:
        self.info = [dict(info[i]) for i in out_indices]
        self.out_indices = tuple(out_indices)

    def channels(self) -> list[int]:
        return [d["num_chs"] for d in self.info]

    def reduction(self) -> list[int]:
        return [d["reduction"] for d in self.info]

    def module_name(self) -> list[str]:
        return [d["module"] for d in self.info]

    def __getitem__(self, i: int) -> dict:
        return self.info[i]

    def __len__(self) -> int:
        return len(self.info)


class FeatureListNet(nn.Module):
    """Wraps a backbone so ``forward`` returns the list of selected stage outputs."""

    def __init__(self, model: nn.Module, out_indices: Sequence[int] | int | None = None) -> None:
        super().__init__()
        info = model.feature_info
        self.out_indices = resolve_out_indices(out_indices, len(info))
        self.feature_info = FeatureInfo(info, self.out_indices)
        self.model = model
        self.pretrained_cfg = getattr(model, "pretrained_cfg", {})
        # The classifier is unused here; drop it so its parameters are neither counted nor trained.
        if hasattr(model, "reset_classifier"):
            model.reset_classifier(0)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(x, self.out_indices)
