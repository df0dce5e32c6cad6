"""Data: offline datasets, loaders, batch augmentation and Mixup/CutMix for the training engine.

Sources: image folders, CIFAR-10/100 python batches (restricted
unpickler), scikit-learn's digits and synthetic tasks; :func:`build_datasets` turns a spec string
into train/val datasets yielding un-normalised float32 images in [0, 1]. :func:`create_loader`
batches them reproducibly; :class:`BatchAugment` (kornia) and :class:`MixupCutmix` run on batches.
"""

from .augment import AUGMENT_POLICIES, BatchAugment
from .build import DataBundle, build_datasets
from .cifar import CIFARDataset, restricted_load
from .constants import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
)
from .digits import DigitsDataset
from .folder import ImageFolderDataset, UnreadableImageWarning, find_classes
from .image import IMG_EXTENSIONS, load_image
from .loader import create_loader, seed_worker
from .mixup import MixupCutmix, smooth_one_hot
from .spec import DataSpec, parse_data_spec
from .synthetic import SYNTHETIC_TASKS, SyntheticDataset

__all__ = [
    "AUGMENT_POLICIES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMG_EXTENSIONS",
    "SYNTHETIC_TASKS",
    "BatchAugment",
    "CIFARDataset",
    "DataBundle",
    "DataSpec",
    "DigitsDataset",
    "ImageFolderDataset",
    "MixupCutmix",
    "SyntheticDataset",
    "UnreadableImageWarning",
    "build_datasets",
    "create_loader",
    "find_classes",
    "load_image",
    "parse_data_spec",
    "restricted_load",
    "seed_worker",
    "smooth_one_hot",
]
