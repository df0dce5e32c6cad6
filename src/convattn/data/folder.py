"""ImageFolder datasets: ``split_dir/<class_name>/**/<image>`` read with Pillow.

Layout and conventions follow timm's folder reader: class names are the
sorted sub-folder names of the split folder, label ``i`` is the ``i``-th name, files are found
recursively inside each class folder, matched on their extension case-insensitively
(:data:`IMG_EXTENSIONS` by default), and listed in sorted path order so every run sees the same
sample indices. Names starting with ``.`` (hidden files, ``.ipynb_checkpoints``) are ignored.

Corrupt images are handled in two stages:

1. **Scan time** (construction). With ``verify="header"`` (default) every file is opened and
   Pillow's ``verify()`` is run: this reads headers and, for PNG and WebP, checksums, without
   decoding pixels, so it is cheap even for large folders. It catches files that are not images,
   empty files and broken PNG/WebP. ``verify="full"`` decodes every image (catches everything,
   e.g. truncated JPEG/BMP, costs one decode per file); ``verify="none"`` skips the check. Failing
   files are dropped from the sample list, counted in :attr:`ImageFolderDataset.skipped`, and
   reported in one :class:`UnreadableImageWarning` naming the first few.
2. **Load time** (``__getitem__``). A file that passed the scan but fails to decode is reported in
   an :class:`UnreadableImageWarning` naming it and replaced by the next sample (wrapping around),
   so a long run is not killed by one bad file; after 20 consecutive failures a RuntimeError is
   raised.

A split with no images, a class folder with no (readable) images, or a split where every image is
unreadable is an error naming the folder.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from convattn.layers._checks import check_choice, check_positive_int

from .image import IMG_EXTENSIONS, RESIZE_MODES, load_image

__all__ = [
    "VERIFY_MODES",
    "ImageFolderDataset",
    "UnreadableImageWarning",
    "find_classes",
]

VERIFY_MODES = ("header", "full", "none")
_MAX_CONSECUTIVE_LOAD_FAILURES = 20
_LISTED_IN_WARNING = 5
# What Pillow raises for bad files: UnidentifiedImageError and truncation are OSErrors, PNG checksum
# failures SyntaxErrors, some decoders ValueError/EOFError; decompression bombs their own type.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


class UnreadableImageWarning(UserWarning):
    """An image file could not be decoded and was skipped (filter it with ``warnings``)."""


def _visible(name: str) -> bool:
    return not name.startswith(".")


def find_classes(split_dir: str | os.PathLike) -> list[str]:
    """Sorted names of the visible sub-folders of ``split_dir`` (the class names).

    Raises:
        FileNotFoundError: ``split_dir`` does not exist.
        NotADirectoryError: ``split_dir`` is a file.
        ValueError: it holds no class folders (the message says if images lie directly in it).
    """
    split_dir = Path(split_dir)
    if not split_dir.exists():
        raise FileNotFoundError(f"image folder '{split_dir}' does not exist")
    if not split_dir.is_dir():
        raise NotADirectoryError(f"image folder '{split_dir}' is not a directory")
    entries = [e for e in os.scandir(split_dir) if _visible(e.name)]
    classes = sorted(e.name for e in entries if e.is_dir())
    if not classes:
        loose = [e.name for e in entries if e.name.lower().endswith(IMG_EXTENSIONS)]
        hint = (
            f"; its {len(loose)} image(s) must be moved into per-class sub-folders "
            f"'{split_dir}/<class_name>/'"
            if loose
            else ""
        )
        raise ValueError(f"image folder '{split_dir}' has no class sub-folders{hint}")
    return classes


def _list_images(class_dir: Path, extensions: tuple[str, ...]) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if _visible(d))
        found.extend(
            Path(dirpath, f)
            for f in filenames
            if _visible(f) and os.path.splitext(f)[1].lower() in extensions
        )
    return sorted(found)


def _unreadable_reason(path: Path, verify: str, img_size: int) -> str | None:
    """None if ``path`` passes the scan-time check, else a short reason."""
    try:
        if verify == "full":
            load_image(path, img_size)
        else:
            with Image.open(path) as img:
                img.verify()
    except _DECODE_ERRORS as err:
        return f"{type(err).__name__}: {err}"
    return None


class ImageFolderDataset(Dataset):
    """Images in ``split_dir/<class_name>/**/*``, decoded and resized, with integer labels.

    Unreadable images are skipped with a counted :class:`UnreadableImageWarning`; see the module
    docstring for what is detected at scan time and what at load time.

    Args:
        split_dir: the folder whose sub-folders are the classes (e.g. ``root/train``).
        img_size: images come out as ``img_size x img_size``.
        in_chans: 3 (RGB) or 1 (greyscale).
        resize_mode: ``"crop"`` (shorter side, centre crop) or ``"squash"`` (see :mod:`.image`).
        extensions: accepted file extensions, matched case-insensitively.
        verify: scan-time check, ``"header"``, ``"full"`` or ``"none"``.
        class_names: the expected classes (e.g. the train split's, when building val); a
            different set of sub-folders is a ValueError listing the difference.

    Attributes:
        classes: the sorted class names; ``class_to_idx`` maps them to labels.
        samples: ``(path, label)`` of every readable image, in sorted path order.
        targets: the labels alone.
        skipped: ``(path, reason)`` of every image dropped at scan time.
    """

    def __init__(
        self,
        split_dir: str | os.PathLike,
        img_size: int,
        *,
        in_chans: int = 3,
        resize_mode: str = "crop",
        extensions: Sequence[str] = IMG_EXTENSIONS,
        verify: str = "header",
        class_names: Sequence[str] | None = None,
    ) -> None:
        owner = "ImageFolderDataset"
        self.img_size = check_positive_int(img_size, "img_size", owner)
        self.in_chans = check_choice(in_chans, "in_chans", (1, 3), owner)
        self.resize_mode = check_choice(resize_mode, "resize_mode", RESIZE_MODES, owner)
        self.verify = check_choice(verify, "verify", VERIFY_MODES, owner)
        self.extensions = tuple(
            e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions
        )
        self.root = Path(split_dir)
        self.classes = find_classes(self.root)
        if class_names is not None:
            check_same_classes(list(class_names), self.classes, "expected", str(self.root))
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.samples, self.skipped = self._scan()
        self.targets = [label for _, label in self.samples]
        self._load_failures = 0

    def _scan(self) -> tuple[list[tuple[str, int]], list[tuple[str, str]]]:
        per_class = {c: _list_images(self.root / c, self.extensions) for c in self.classes}
        total = sum(len(files) for files in per_class.values())
        if total == 0:
            raise ValueError(
                f"image folder '{self.root}' has no images with extensions {list(self.extensions)} "
                f"in its {len(self.classes)} class folder(s)"
            )
        samples: list[tuple[str, int]] = []
        skipped: list[tuple[str, str]] = []
        empty: list[str] = []
        for name, files in per_class.items():
            kept = 0
            for path in files:
                reason = (
                    None
                    if self.verify == "none"
                    else _unreadable_reason(path, self.verify, self.img_size)
                )
                if reason is None:
                    samples.append((str(path), self.class_to_idx[name]))
                    kept += 1
                else:
                    skipped.append((str(path), reason))
            if kept == 0:
                empty.append(name)
        if not samples:
            raise ValueError(
                f"image folder '{self.root}': all {total} image file(s) are unreadable, e.g. "
                f"{skipped[0][0]} ({skipped[0][1]})"
            )
        if empty:
            raise ValueError(
                f"image folder '{self.root}': class folder(s) {empty} contain no readable images "
                f"(extensions {list(self.extensions)}); remove them or add images"
            )
        if skipped:
            listed = "; ".join(f"{p} ({r})" for p, r in skipped[:_LISTED_IN_WARNING])
            more = (
                f" and {len(skipped) - _LISTED_IN_WARNING} more"
                if len(skipped) > _LISTED_IN_WARNING
                else ""
            )
            warnings.warn(
                f"image folder '{self.root}': skipped {len(skipped)} unreadable image(s) of "
                f"{total} at scan time (verify='{self.verify}'): {listed}{more}",
                UnreadableImageWarning,
                stacklevel=3,
            )
        return samples, skipped

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        for attempt in range(_MAX_CONSECUTIVE_LOAD_FAILURES):
            path, label = self.samples[(index + attempt) % len(self.samples)]
            try:
                image = load_image(
                    path, self.img_size, in_chans=self.in_chans, resize_mode=self.resize_mode
                )
            except _DECODE_ERRORS as err:
                self._load_failures += 1
                warnings.warn(
                    f"{path}: unreadable at load time ({type(err).__name__}: {err}); using the "
                    f"next sample instead ({self._load_failures} load failure(s) so far in this "
                    f"process)",
                    UnreadableImageWarning,
                    stacklevel=2,
                )
                continue
            return image, label
        raise RuntimeError(
            f"image folder '{self.root}': {_MAX_CONSECUTIVE_LOAD_FAILURES} consecutive images "
            f"from index {index} failed to decode; the data set looks broken"
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root='{self.root}', samples={len(self)}, "
            f"classes={len(self.classes)}, img_size={self.img_size}, skipped={len(self.skipped)})"
        )


def check_same_classes(reference: list[str], found: list[str], ref_name: str, where: str) -> None:
    """Raise a ValueError listing the difference if ``found`` differs from ``reference``."""
    if reference == found:
        return
    missing = sorted(set(reference) - set(found))
    extra = sorted(set(found) - set(reference))
    raise ValueError(
        f"class folders of '{where}' do not match the {ref_name} classes: "
        f"missing {missing}, unexpected {extra}"
    )
