"""CIFAR-10 / CIFAR-100 "python version" batch files, read through a restricted unpickler.

Format: each file is a pickled dict. ``data`` is an ``N x 3072`` uint8
array (1024 red, then green, then blue values of a row-major 32x32 image), labels are ``labels``
(CIFAR-10) or ``fine_labels`` (CIFAR-100). CIFAR-10 has ``data_batch_1`` .. ``data_batch_5``,
``test_batch`` and ``batches.meta`` (``label_names``); CIFAR-100 has ``train``, ``test`` and ``meta``
(``fine_label_names``). Keys may be bytes (Python 2 pickles read with ``encoding="bytes"``) or str.

A pickle can run arbitrary code, so these files are never given to ``pickle.load``: the unpickler
below resolves only the few globals that rebuild numpy arrays and refuses everything else with a
``pickle.UnpicklingError`` naming the file, before anything is called.
"""

from __future__ import annotations

import codecs
import importlib
import os
import pickle
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from convattn.layers._checks import check_choice, check_positive_int

from .image import match_channels

__all__ = ["CIFAR_VARIANTS", "CIFARDataset", "CIFARLayout", "resolve_cifar_root", "restricted_load"]


def _numpy_attr(name: str, *modules: str) -> Any:
    """``name`` from the first of ``modules`` that has it (numpy 2 moved ``numpy.core`` to ``_core``)."""
    for module in modules:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    return None


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Protocol-2 pickles written by Python 3 store bytes as ``_codecs.encode(text, "latin1")``."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


_RECONSTRUCT = _numpy_attr("_reconstruct", "numpy._core.multiarray", "numpy.core.multiarray")
_FROMBUFFER = _numpy_attr("_frombuffer", "numpy._core.numeric", "numpy.core.numeric")
_SCALAR = _numpy_attr("scalar", "numpy._core.multiarray", "numpy.core.multiarray")
# Everything a CIFAR file needs: containers, str, bytes and int are pickle opcodes, not globals.
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}
for _module in ("numpy.core", "numpy._core"):
    _SAFE_GLOBALS[(f"{_module}.multiarray", "_reconstruct")] = _RECONSTRUCT
    _SAFE_GLOBALS[(f"{_module}.multiarray", "scalar")] = _SCALAR
    _SAFE_GLOBALS[(f"{_module}.numeric", "_frombuffer")] = _FROMBUFFER


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str) -> None:
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        obj = _SAFE_GLOBALS.get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(
                f"{self.source}: refusing to load '{module}.{name}'; only plain containers and "
                f"numpy arrays are allowed in a data file"
            )
        return obj


def restricted_load(path: str | os.PathLike) -> Any:
    """Unpickle ``path`` allowing only containers, str/bytes/numbers and numpy arrays.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        pickle.UnpicklingError: the file needs anything else, or is not a valid pickle; the
            message names the file.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        try:
            return _RestrictedUnpickler(fh, str(path)).load()
        except pickle.UnpicklingError as err:
            if str(path) in str(err):
                raise
            raise pickle.UnpicklingError(f"{path}: {err}") from err
        except (EOFError, ValueError, TypeError, IndexError, KeyError) as err:
            raise pickle.UnpicklingError(
                f"{path}: not a valid pickle ({type(err).__name__}: {err})"
            ) from err


class CIFARLayout(NamedTuple):
    """Where a CIFAR variant keeps its images, labels and class names."""

    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int
    archive_dir: str  # the folder name inside the official archive


CIFAR_VARIANTS: dict[str, CIFARLayout] = {
    "cifar10": CIFARLayout(
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_file="batches.meta",
        label_key="labels",
        names_key="label_names",
        num_classes=10,
        archive_dir="cifar-10-batches-py",
    ),
    "cifar100": CIFARLayout(
        train_files=("train",),
        test_files=("test",),
        meta_file="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
        num_classes=100,
        archive_dir="cifar-100-python",
    ),
}


def _str_keys(obj: Any, path: Path) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def resolve_cifar_root(root: str | os.PathLike, variant: str) -> Path:
    """The folder holding ``variant``'s batch files: ``root`` itself or its extracted archive dir.

    Raises:
        FileNotFoundError: neither holds the expected files (the message lists them).
    """
    root = Path(root).expanduser()
    layout = CIFAR_VARIANTS[variant]
    expected = layout.train_files + layout.test_files
    for candidate in (root, root / layout.archive_dir):
        if (candidate / expected[0]).is_file():
            missing = [f for f in expected if not (candidate / f).is_file()]
            if missing:
                raise FileNotFoundError(f"{variant} folder '{candidate}' lacks {missing}")
            return candidate
    if not root.exists():
        raise FileNotFoundError(f"{variant} folder '{root}' does not exist")
    raise FileNotFoundError(
        f"{variant} folder '{root}' holds no '{expected[0]}' (expected the extracted python "
        f"version: {list(expected)}, directly or under '{layout.archive_dir}/')"
    )


def _read_batch(path: Path, layout: CIFARLayout) -> tuple[np.ndarray, np.ndarray]:
    label_key, num_classes = layout.label_key, layout.num_classes
    batch = _str_keys(restricted_load(path), path)
    if "data" not in batch or label_key not in batch:
        raise ValueError(f"{path}: expected keys 'data' and '{label_key}', got {sorted(batch)}")
    data, labels = batch["data"], np.asarray(batch[label_key])
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
        raise ValueError(f"{path}: 'data' must be an N x 3072 uint8 array, got {type(data)}")
    if data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],):
        raise ValueError(
            f"{path}: 'data' has shape {data.shape} and '{label_key}' {labels.shape}; expected "
            f"(N, 3072) and (N,)"
        )
    if labels.size and (
        labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() >= num_classes
    ):
        raise ValueError(f"{path}: '{label_key}' must be integers in [0, {num_classes})")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _read_class_names(folder: Path, variant: str) -> list[str]:
    layout = CIFAR_VARIANTS[variant]
    path = folder / layout.meta_file
    if not path.is_file():  # the meta file is optional: fall back to the label numbers
        return [str(i) for i in range(layout.num_classes)]
    names = _str_keys(restricted_load(path), path).get(layout.names_key)
    if not isinstance(names, list) or len(names) != layout.num_classes:
        raise ValueError(
            f"{path}: expected '{layout.names_key}' to be a list of {layout.num_classes} names"
        )
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


class CIFARDataset(Dataset):
    """CIFAR-10 or CIFAR-100 (fine labels) from the python-version batch files.

    Args:
        root: the extracted folder (``cifar-10-batches-py`` / ``cifar-100-python``) or its parent.
        img_size: images come out as ``img_size x img_size`` (bilinear, antialiased when shrinking).
        train: the training files if True, else the test file.
        variant: ``"cifar10"`` or ``"cifar100"``.
        in_chans: 3 (RGB) or 1 (luma).

    Attributes:
        data: ``(N, 3, 32, 32)`` uint8 array; ``targets``: ``(N,)`` int64 labels; ``classes``: names.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        img_size: int = 32,
        *,
        train: bool = True,
        variant: str = "cifar10",
        in_chans: int = 3,
    ) -> None:
        owner = "CIFARDataset"
        self.img_size = check_positive_int(img_size, "img_size", owner)
        self.variant = check_choice(variant, "variant", tuple(CIFAR_VARIANTS), owner)
        self.in_chans = check_choice(in_chans, "in_chans", (1, 3), owner)
        self.root = resolve_cifar_root(root, variant)
        layout = CIFAR_VARIANTS[variant]
        files = layout.train_files if train else layout.test_files
        batches = [_read_batch(self.root / f, layout) for f in files]
        self.data = np.concatenate([d for d, _ in batches])
        self.targets = np.concatenate([t for _, t in batches])
        self.classes = _read_class_names(self.root, variant)
        self.train = train

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(self.data[index]).float().div_(255.0)
        if self.img_size != image.shape[-1]:
            image = F.interpolate(
                image[None], size=(self.img_size, self.img_size), mode="bilinear",
                align_corners=False, antialias=True,
            )[0].clamp_(0.0, 1.0)  # fmt: skip
        return match_channels(image, self.in_chans), int(self.targets[index])

    def __repr__(self) -> str:
        split = "train" if self.train else "test"
        return f"CIFARDataset({self.variant}, {split}, samples={len(self)}, root='{self.root}')"
