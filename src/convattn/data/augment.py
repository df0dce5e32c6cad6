"""Batch augmentation with kornia, run by the engine on the device after the batch is transferred.

Train mode applies, in order (timm's train transform order):

1. ``RandomResizedCrop`` to ``img_size`` (area ``scale``, aspect ratio 3/4..4/3);
2. ``RandomHorizontalFlip`` (``hflip``);
3. ``ColorJitter`` (brightness, contrast, saturation ``color_jitter``; no hue) when > 0;
4. with ``policy="randaug"``, kornia's RandAugment (``n`` ops of magnitude ``m``, default 2 and 9
   as timm's ``rand-m9-n2``). kornia picks the ops once per call, so the batch is split into
   groups of 16 images that each get their own ops, keeping the per-image variety RandAugment
   intends at a modest cost;
5. normalisation ``(x - mean) / std``.

``policy="none"`` and eval mode (``train=False``) apply only step 5. Every random draw comes from
torch's global generator, so ``torch.manual_seed`` makes the output reproducible. Colour operations
need RGB; a greyscale batch is expanded to three channels for them and averaged back.
"""

from __future__ import annotations

from collections.abc import Sequence

import kornia.augmentation as K
import torch
from kornia.augmentation.auto import RandAugment
from torch import nn

from convattn.layers._checks import check_choice, check_feature_map, check_positive_int

__all__ = ["AUGMENT_POLICIES", "BatchAugment"]

AUGMENT_POLICIES = ("light", "randaug", "none")
_RANDAUG_GROUP = 16


class _GreyAsRGB(nn.Module):
    """Run an RGB-only augmentation on a 1-channel batch (grey is a fixed point of colour ops)."""

    def __init__(self, op: nn.Module) -> None:
        super().__init__()
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 1:
            return self.op(x)
        return self.op(x.expand(-1, 3, -1, -1)).mean(dim=1, keepdim=True)


class _GroupedRandAugment(nn.Module):
    """kornia's RandAugment applied to groups of images so each group draws its own operations."""

    def __init__(self, n: int, m: int, group: int = _RANDAUG_GROUP) -> None:
        super().__init__()
        self.randaug = RandAugment(n=n, m=m)
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.randaug(chunk) for chunk in x.split(self.group)])


class BatchAugment(nn.Module):
    """Random crop, flip, colour jitter and RandAugment on a batch, then normalisation.

    The augmentations are on or off by the ``train`` argument alone; ``module.train()`` /
    ``module.eval()`` do not change them.

    Args:
        img_size: output height and width of the random resized crop.
        mean: per-channel mean (its length is the channel count).
        std: per-channel standard deviation.
        train: apply the random augmentations (else only normalisation).
        policy: ``"light"`` (crop, flip, jitter), ``"randaug"`` (light plus RandAugment) or
            ``"none"`` (normalisation only).
        hflip: random horizontal flips with probability 0.5.
        color_jitter: brightness/contrast/saturation jitter strength; 0 disables it.
        scale: area range of the random resized crop, as fractions of the image.
        randaug_n: RandAugment operations per image.
        randaug_m: RandAugment magnitude, in (0, 30).
    """

    def __init__(
        self,
        img_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        train: bool,
        policy: str = "light",
        hflip: bool = True,
        color_jitter: float = 0.0,
        scale: tuple[float, float] = (0.35, 1.0),
        randaug_n: int = 2,
        randaug_m: int = 9,
    ) -> None:
        super().__init__()
        owner = "BatchAugment"
        self.img_size = check_positive_int(img_size, "img_size", owner)
        self.policy = check_choice(policy, "policy", AUGMENT_POLICIES, owner)
        mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean_t.numel() == 0 or mean_t.shape != std_t.shape:
            raise ValueError(
                f"{owner}: 'mean' and 'std' must be non-empty and of equal length, "
                f"got {list(mean)} and {list(std)}"
            )
        if not bool((std_t > 0).all()):
            raise ValueError(f"{owner}: 'std' must be positive, got {list(std)}")
        if not color_jitter >= 0.0:
            raise ValueError(f"{owner}: 'color_jitter' must be >= 0, got {color_jitter!r}")
        if not (len(scale) == 2 and 0.0 < scale[0] <= scale[1] <= 1.0):
            raise ValueError(
                f"{owner}: 'scale' must be (low, high) with 0 < low <= high <= 1, got {scale!r}"
            )
        check_positive_int(randaug_n, "randaug_n", owner)
        if not 0 < randaug_m < 30:
            raise ValueError(f"{owner}: 'randaug_m' must be in (0, 30), got {randaug_m!r}")
        self.channels = mean_t.numel()
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std_t.view(1, -1, 1, 1), persistent=False)

        ops: list[nn.Module] = []
        if train and policy != "none":
            ops.append(K.RandomResizedCrop((img_size, img_size), scale=tuple(scale)))
            if hflip:
                ops.append(K.RandomHorizontalFlip())
            if color_jitter > 0:
                jitter = K.ColorJitter(color_jitter, color_jitter, color_jitter, 0.0, p=1.0)
                ops.append(_GreyAsRGB(jitter))
            if policy == "randaug":
                ops.append(_GreyAsRGB(_GroupedRandAugment(randaug_n, randaug_m)))
        self.augment = nn.Sequential(*ops)

    @property
    def is_random(self) -> bool:
        """True when the module applies random augmentations (train mode, policy not "none")."""
        return len(self.augment) > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Augment (train) and normalise a float batch ``(B, C, H, W)`` with values in [0, 1]."""
        check_feature_map(x, self.channels, "BatchAugment")
        if self.is_random:
            x = self.augment(x)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        return f"img_size={self.img_size}, policy={self.policy!r}, random={self.is_random}"
