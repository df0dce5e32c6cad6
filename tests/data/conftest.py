"""Fixtures for the data tests: tiny image folders and CIFAR batch files written on the fly."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_image(path: Path, size=(12, 10), mode="RGB", fmt=None, seed=0) -> Path:
    """A small random image of ``size`` (W, H) in ``mode``, saved as ``fmt`` (from the suffix)."""
    rng = np.random.default_rng(seed)
    w, h = size
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
    img = Image.fromarray(arr[..., 0] if channels == 1 else arr, mode=mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


@pytest.fixture
def image_folder(tmp_path):
    """root/{train,val}/{cat,dog,emu}/ with 3 train and 2 val images per class in mixed formats."""
    root = tmp_path / "imgs"
    suffixes = [".png", ".jpg", ".JPEG", ".bmp", ".webp"]
    n = 0
    for split, count in (("train", 3), ("val", 2)):
        for cls in ("dog", "cat", "emu"):
            for i in range(count):
                write_image(root / split / cls / f"img{i}{suffixes[n % 5]}", seed=n)
                n += 1
    return root


def cifar_dict(n: int, num_classes: int, label_key: str, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"fake batch",
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        label_key.encode(): [int(v) for v in rng.integers(0, num_classes, size=n)],
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def dump(obj, path: Path, protocol: int = pickle.HIGHEST_PROTOCOL) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=protocol)
    return path


@pytest.fixture
def cifar10_dir(tmp_path):
    """A fake ``cifar-10-batches-py`` with 4 images per train batch and 6 test images."""
    folder = tmp_path / "cifar-10-batches-py"
    for i in range(1, 6):
        dump(cifar_dict(4, 10, "labels", seed=i), folder / f"data_batch_{i}", protocol=2)
    dump(cifar_dict(6, 10, "labels", seed=9), folder / "test_batch")
    names = [
        n.encode()
        for n in (["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"])
    ]
    dump({b"label_names": names, b"num_vis": 3072}, folder / "batches.meta")
    return folder


@pytest.fixture
def cifar100_dir(tmp_path):
    """A fake ``cifar-100-python`` with 10 train and 5 test images."""
    folder = tmp_path / "cifar-100-python"
    train = cifar_dict(10, 100, "fine_labels", seed=1)
    train[b"coarse_labels"] = [0] * 10
    dump(train, folder / "train")
    dump(cifar_dict(5, 100, "fine_labels", seed=2), folder / "test")
    names = [f"class{i}".encode() for i in range(100)]
    dump({b"fine_label_names": names, b"coarse_label_names": [b"x"] * 20}, folder / "meta")
    return folder


@pytest.fixture
def make_image():
    """The :func:`write_image` helper, for tests that build their own files."""
    return write_image


@pytest.fixture
def make_cifar_dict():
    return cifar_dict


@pytest.fixture
def dump_pickle():
    return dump
