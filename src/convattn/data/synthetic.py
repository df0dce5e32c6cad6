"""Synthetic classification tasks generated on the fly, deterministic per (seed, split, index).

Learnable but not trivial, for throughput runs and "does training learn" checks without any data:

- ``shapes``: one bright, randomly coloured filled shape (square, circle, plus-shaped cross, or a
  horizontal/vertical bar) of random size and position on a dark noisy background; 4 classes.
- ``stripes``: sinusoidal stripes (horizontal, vertical, diagonal, anti-diagonal) of random period,
  phase and two random colours, plus noise; 4 classes.

Labels cycle with the index (``index % num_classes``) so every split is balanced. Each sample draws
from its own ``numpy.random.default_rng([seed, split, index])``, so samples do not depend on access
order or worker assignment, and train and val never share a sample.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from convattn.layers._checks import check_choice, check_positive_int

from .image import match_channels

__all__ = ["SYNTHETIC_TASKS", "SyntheticDataset"]

_SPLIT_IDS = {"train": 0, "val": 1}


def _noisy_background(rng: np.random.Generator, size: int, low: float, high: float) -> np.ndarray:
    base = rng.uniform(low, high, size=(3, 1, 1))
    return base + rng.uniform(-0.08, 0.08, size=(3, size, size))


def _shapes(rng: np.random.Generator, size: int, label: int) -> np.ndarray:
    image = _noisy_background(rng, size, 0.0, 0.4)
    half = rng.uniform(0.18, 0.35) * size  # half-extent of the shape, in pixels
    cy, cx = rng.uniform(half, size - half, size=2)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    dy, dx = np.abs(yy - cy), np.abs(xx - cx)
    arm = max(half * 0.3, 0.75)  # half-width of bars and cross arms
    if label == 0:  # square
        mask = (dy <= half) & (dx <= half)
    elif label == 1:  # circle
        mask = dy**2 + dx**2 <= half**2
    elif label == 2:  # cross
        mask = ((dy <= arm) & (dx <= half)) | ((dx <= arm) & (dy <= half))
    else:  # bar, horizontal or vertical
        if rng.random() < 0.5:
            dy, dx = dx, dy
        mask = (dy <= arm) & (dx <= half)
    colour = rng.uniform(0.55, 1.0, size=(3, 1, 1))
    return np.where(mask[None], colour, image)


def _stripes(rng: np.random.Generator, size: int, label: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    coordinate = (yy, xx, (xx + yy) / np.sqrt(2), (xx - yy) / np.sqrt(2))[label]
    period = rng.uniform(max(3.0, size / 8), max(4.0, size / 3))
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * coordinate / period + rng.uniform(0, 2 * np.pi))
    colour_a, colour_b = rng.uniform(0.0, 1.0, size=(2, 3, 1, 1))
    image = colour_a + (colour_b - colour_a) * wave[None]
    return image + rng.uniform(-0.1, 0.1, size=image.shape)


# name -> (class names, generator(rng, size, label) -> (3, size, size) array, roughly in [0, 1])
SYNTHETIC_TASKS: dict[
    str, tuple[list[str], Callable[[np.random.Generator, int, int], np.ndarray]]
] = {
    "shapes": (["square", "circle", "cross", "bar"], _shapes),
    "stripes": (["horizontal", "vertical", "diagonal", "anti_diagonal"], _stripes),
}


class SyntheticDataset(Dataset):
    """A synthetic task from :data:`SYNTHETIC_TASKS`, generated per index from the seed.

    Args:
        task: the task name (``"shapes"`` or ``"stripes"``).
        num_samples: the split's length.
        img_size: output height and width.
        seed: base seed; a different seed gives a different data set.
        split: ``"train"`` or ``"val"`` (distinct samples for the same seed).
        in_chans: 3 (RGB) or 1 (luma).
    """

    def __init__(
        self,
        task: str = "shapes",
        num_samples: int = 512,
        img_size: int = 32,
        *,
        seed: int = 0,
        split: str = "train",
        in_chans: int = 3,
    ) -> None:
        owner = "SyntheticDataset"
        self.task = check_choice(task, "task", tuple(SYNTHETIC_TASKS), owner)
        self.num_samples = check_positive_int(num_samples, "num_samples", owner)
        self.img_size = check_positive_int(img_size, "img_size", owner)
        self.split = check_choice(split, "split", tuple(_SPLIT_IDS), owner)
        self.in_chans = check_choice(in_chans, "in_chans", (1, 3), owner)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"{owner}: 'seed' must be a non-negative integer, got {seed!r}")
        self.seed = seed
        self.classes, self._generate = SYNTHETIC_TASKS[task]
        self.classes = list(self.classes)
        self.targets = [i % len(self.classes) for i in range(num_samples)]

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        index = operator.index(index)  # plain ints, NumPy ints and 0-d integer tensors
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(
                f"SyntheticDataset: index {index} out of range [0, {self.num_samples})"
            )
        index %= self.num_samples
        label = self.targets[index]
        rng = np.random.default_rng([self.seed, _SPLIT_IDS[self.split], index])
        image = np.clip(self._generate(rng, self.img_size, label), 0.0, 1.0).astype(np.float32)
        return match_channels(torch.from_numpy(image), self.in_chans), label

    def __repr__(self) -> str:
        return (
            f"SyntheticDataset({self.task}, {self.split}, samples={len(self)}, "
            f"img_size={self.img_size}, seed={self.seed})"
        )
