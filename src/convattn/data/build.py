"""``build_datasets``: a data spec -> train and val datasets plus what the engine needs to use them.

Every dataset yields ``(image, label)``: a float32 ``(in_chans, img_size, img_size)`` tensor in
[0, 1], decoded and resized but neither normalised nor augmented (that is :class:`BatchAugment`'s
job, on whole batches on the device), and an int label.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from convattn.layers._checks import check_positive_int

from .cifar import CIFARDataset
from .constants import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
)
from .digits import DigitsDataset
from .folder import ImageFolderDataset, check_same_classes, find_classes
from .image import LUMA_WEIGHTS
from .spec import DataSpec, parse_data_spec
from .synthetic import SyntheticDataset

__all__ = ["DataBundle", "build_datasets"]

_STATS_SAMPLES = 64  # synthetic sets: samples averaged for mean/std


@dataclass
class DataBundle:
    """Train and val datasets with their metadata.

    Attributes:
        train: yields ``(float32 CHW image in [0, 1], int label)``.
        val: same, for evaluation.
        num_classes: the number of classes.
        in_chans: image channels (3, or 1 when asked for).
        class_names: one name per label.
        mean: per-channel mean to normalise with.
        std: per-channel standard deviation to normalise with.
        spec: the parsed spec the bundle was built from.
    """

    train: Dataset
    val: Dataset
    num_classes: int
    in_chans: int
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    spec: DataSpec | None = None


def _rgb_stats_to(
    in_chans: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """RGB statistics for ``in_chans`` channels (luma-weighted for grey; std an upper bound)."""
    if in_chans == 3:
        return tuple(mean), tuple(std)
    return (
        (round(float(np.dot(LUMA_WEIGHTS, mean)), 4),),
        (round(float(np.dot(LUMA_WEIGHTS, std)), 4),),
    )


def _measured_stats(
    dataset: Dataset, max_samples: int = _STATS_SAMPLES
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std over the first ``max_samples`` images of ``dataset``."""
    images = torch.stack([dataset[i][0] for i in range(min(len(dataset), max_samples))])
    mean = images.mean(dim=(0, 2, 3))
    std = images.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())


def _build_folder(root: Path, img_size: int, in_chans: int, spec: DataSpec) -> DataBundle:
    if not root.exists():
        raise FileNotFoundError(f"image-folder root '{root}' does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"image-folder root '{root}' is not a directory")
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise FileNotFoundError(
                f"image-folder root '{root}' has no '{split}' folder "
                f"(expected '{root}/train/<class>/*' and '{root}/val/<class>/*')"
            )
    classes = find_classes(root / "train")
    check_same_classes(classes, find_classes(root / "val"), "train", str(root / "val"))
    train = ImageFolderDataset(root / "train", img_size, in_chans=in_chans)
    val = ImageFolderDataset(root / "val", img_size, in_chans=in_chans, class_names=classes)
    mean, std = _rgb_stats_to(in_chans, IMAGENET_MEAN, IMAGENET_STD)
    return DataBundle(train, val, len(classes), in_chans, classes, mean, std, spec)


def build_datasets(
    spec: str | DataSpec, img_size: int, *, seed: int = 0, in_chans: int | None = None
) -> DataBundle:
    """Build the train and val datasets described by ``spec``.

    Args:
        spec: a spec string (see :func:`parse_data_spec`) or a :class:`DataSpec`.
        img_size: images come out as ``img_size x img_size``.
        seed: selects the digits split and the synthetic samples (folders and CIFAR ignore it).
        in_chans: 3 or 1; None means 3 (digits, grey, are repeated to 3 channels).

    Returns:
        A :class:`DataBundle`. ``mean``/``std`` are ImageNet's for image folders, the published
        dataset statistics for CIFAR, and measured on the train split for digits and synthetic.

    Raises:
        ValueError: a bad spec or option, or bad data (no images, empty or mismatched class
            folders, every image unreadable, malformed CIFAR files); the message names the path.
        FileNotFoundError: a missing root, ``train/``/``val/`` folder or CIFAR file.
        pickle.UnpicklingError: a CIFAR file holding anything but plain data.
    """
    parsed = parse_data_spec(spec)
    img_size = check_positive_int(img_size, "img_size", "build_datasets")
    in_chans = 3 if in_chans is None else in_chans
    if in_chans not in (1, 3):
        raise ValueError(f"build_datasets: 'in_chans' must be 1, 3 or None, got {in_chans!r}")

    if parsed.kind == "folder":
        return _build_folder(parsed.path, img_size, in_chans, parsed)
    if parsed.kind in ("cifar10", "cifar100"):
        train = CIFARDataset(
            parsed.path, img_size, train=True, variant=parsed.kind, in_chans=in_chans
        )
        val = CIFARDataset(
            parsed.path, img_size, train=False, variant=parsed.kind, in_chans=in_chans
        )
        rgb_mean, rgb_std = (
            (CIFAR10_MEAN, CIFAR10_STD)
            if parsed.kind == "cifar10"
            else (CIFAR100_MEAN, CIFAR100_STD)
        )
        mean, std = _rgb_stats_to(in_chans, rgb_mean, rgb_std)
    elif parsed.kind == "digits":
        train = DigitsDataset("train", img_size, seed=seed, in_chans=in_chans)
        val = DigitsDataset("val", img_size, seed=seed, in_chans=in_chans)
        mean = (round(float(train.images.mean()), 4),) * in_chans
        std = (round(float(train.images.std()), 4),) * in_chans
    else:
        kwargs = dict(seed=seed, in_chans=in_chans)
        train = SyntheticDataset(parsed.name, parsed.train_size, img_size, split="train", **kwargs)
        val = SyntheticDataset(parsed.name, parsed.val_size, img_size, split="val", **kwargs)
        mean, std = _measured_stats(train)
    classes = list(train.classes)
    return DataBundle(train, val, len(classes), in_chans, classes, mean, std, parsed)
