"""scikit-learn's bundled handwritten digits: 1,797 real 8x8 greyscale images, 10 classes, offline.

The only real labelled image set available without downloads. Pixel
values 0-16 are scaled to [0, 1] and upsampled to ``img_size`` with bilinear interpolation.

Split: stratified, 20 % of every class goes to val (1,437 train / 360 val images). Which images go
where depends on ``seed`` (a per-class permutation drawn from ``numpy.random.default_rng(seed)``),
so pass the same seed to compare runs on the same val set.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from convattn.layers._checks import check_choice, check_positive_int

from .image import match_channels

__all__ = ["DIGITS_CLASSES", "DigitsDataset", "digits_split", "load_digits_arrays"]

DIGITS_CLASSES = [str(i) for i in range(10)]
_MAX_VALUE = 16.0


@functools.lru_cache(maxsize=1)
def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as ``(float32 images (N, 8, 8) in [0, 1], int64 labels (N,))``."""
    from sklearn.datasets import load_digits  # imported lazily: sklearn takes seconds to import

    bunch = load_digits()
    images = (bunch.images / _MAX_VALUE).astype(np.float32)
    images.setflags(write=False)  # shared by every dataset through the cache
    labels = bunch.target.astype(np.int64)
    labels.setflags(write=False)
    return images, labels


def digits_split(
    labels: np.ndarray, seed: int = 0, val_fraction: float = 0.2
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split: ``round(val_fraction * count)`` of each class to val. Returns sorted indices."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"digits_split: 'val_fraction' must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_val = round(val_fraction * len(members))
        val.append(members[:n_val])
        train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


class DigitsDataset(Dataset):
    """One split of the digits set, upsampled to ``img_size`` and repeated to ``in_chans`` channels.

    Args:
        split: ``"train"`` or ``"val"``.
        img_size: output height and width (bilinear upsampling from 8x8).
        seed: selects the stratified split (see the module docstring).
        in_chans: 3 (grey repeated, the default) or 1.
        val_fraction: the share of each class held out for val.

    Attributes:
        images: ``(N, 8, 8)`` float32 in [0, 1]; ``targets``: ``(N,)`` labels; ``classes``: "0".."9".
    """

    def __init__(
        self,
        split: str = "train",
        img_size: int = 32,
        *,
        seed: int = 0,
        in_chans: int = 3,
        val_fraction: float = 0.2,
    ) -> None:
        owner = "DigitsDataset"
        self.split = check_choice(split, "split", ("train", "val"), owner)
        self.img_size = check_positive_int(img_size, "img_size", owner)
        self.in_chans = check_choice(in_chans, "in_chans", (1, 3), owner)
        images, labels = load_digits_arrays()
        train_idx, val_idx = digits_split(labels, seed, val_fraction)
        index = train_idx if split == "train" else val_idx
        self.images, self.targets = images[index], labels[index]
        self.classes = list(DIGITS_CLASSES)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(self.images[index].copy())[None, None]
        if self.img_size != image.shape[-1]:
            image = F.interpolate(
                image, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False
            ).clamp_(0.0, 1.0)
        return match_channels(image[0], self.in_chans), int(self.targets[index])

    def __repr__(self) -> str:
        return f"DigitsDataset({self.split}, samples={len(self)}, img_size={self.img_size})"
