"""Image decoding with Pillow: a file on disk -> float32 CHW tensor in [0, 1] at img_size x img_size.

Decoding runs per sample inside DataLoader workers; everything
random (crops, flips, colour) happens later on whole batches in :class:`BatchAugment`, so this step
is deterministic.

Resize policy (the same for train and val, so object scale and aspect agree between the two):

- ``"crop"`` (default): scale the shorter side to ``img_size`` then take the centre square, as
  timm's eval transform with ``crop_pct=1``. Nothing is distorted; the borders of wide or tall
  images are lost.
- ``"squash"``: resize straight to ``img_size x img_size``, keeping the whole field of view at the
  cost of the aspect ratio.

Both resample with Pillow's antialiased bicubic filter on 8-bit data, so values stay in [0, 1].
EXIF orientation tags are not applied (as in timm and torchvision): pixels are used as stored.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, ImageOps

from convattn.layers._checks import check_choice, check_positive_int

__all__ = [
    "IMG_EXTENSIONS",
    "LUMA_WEIGHTS",
    "RESIZE_MODES",
    "load_image",
    "match_channels",
    "pil_to_tensor",
    "rgb_to_grey",
]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
RESIZE_MODES = ("crop", "squash")

# ITU-R 601-2 luma, the weights of Pillow's convert("L"), so grey output is the same from any source.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def _to_8bit(img: Image.Image) -> Image.Image:
    """16/32-bit integer greyscale -> 8-bit "L" by keeping the top byte (Pillow would clip at 255)."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img, dtype=np.int64)
        return Image.fromarray(np.clip(arr >> 8, 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        # Going through RGBA avoids Pillow's warning about palette transparency given as bytes.
        return img.convert("RGBA")
    return img


def load_image(
    path: str | os.PathLike,
    img_size: int,
    *,
    in_chans: int = 3,
    resize_mode: str = "crop",
) -> torch.Tensor:
    """Decode an image file and return it resized as a float32 ``(in_chans, img_size, img_size)``.

    Any mode Pillow reads is accepted: greyscale, palette, RGBA (alpha dropped), CMYK, 16-bit.

    Args:
        path: the image file.
        img_size: output height and width.
        in_chans: 3 for RGB, 1 for greyscale (luma).
        resize_mode: ``"crop"`` (shorter side then centre crop) or ``"squash"`` (see module docs).

    Returns:
        A float32 tensor in [0, 1].

    Raises:
        OSError: the file is missing, unreadable or corrupt (Pillow's own errors, which name it).
        ValueError: a bad option.
    """
    check_positive_int(img_size, "img_size", "load_image")
    check_choice(in_chans, "in_chans", (1, 3), "load_image")
    check_choice(resize_mode, "resize_mode", RESIZE_MODES, "load_image")
    with Image.open(path) as img:
        # JPEG only: decode at a reduced DCT scale that still covers img_size (much faster).
        img.draft(None, (img_size, img_size))
        img = _to_8bit(img)
        img = img.convert("L" if in_chans == 1 else "RGB")
    if resize_mode == "crop":
        img = ImageOps.fit(img, (img_size, img_size), method=Image.Resampling.BICUBIC)
    else:
        img = img.resize((img_size, img_size), Image.Resampling.BICUBIC)
    return pil_to_tensor(img)


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """An 8-bit "L" or "RGB" Pillow image -> float32 CHW tensor in [0, 1]."""
    arr = np.array(img, dtype=np.uint8)  # a writable copy: torch warns on read-only arrays
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous().float().div_(255.0)


def rgb_to_grey(x: torch.Tensor) -> torch.Tensor:
    """``(..., 3, H, W)`` RGB -> ``(..., 1, H, W)`` luma with Pillow's weights."""
    weights = x.new_tensor(LUMA_WEIGHTS).view(3, 1, 1)
    return (x * weights).sum(dim=-3, keepdim=True)


def match_channels(x: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Convert a CHW image with 1 or 3 channels to ``in_chans`` (grey repeated, RGB -> luma)."""
    if x.shape[-3] == in_chans:
        return x
    if in_chans == 1:
        return rgb_to_grey(x)
    return x.expand(*x.shape[:-3], in_chans, *x.shape[-2:]).contiguous()
