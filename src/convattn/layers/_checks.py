"""Input validation shared by every operator.

Operators call :func:`check_feature_map` first thing in ``forward`` so that bad input fails with a
message naming the argument and what was expected, instead of a shape error from deep inside.
"""

from __future__ import annotations

import torch

__all__ = ["check_choice", "check_drop_in", "check_feature_map", "check_positive_int"]


def check_feature_map(
    x: object,
    channels: int | None,
    owner: str,
    name: str = "x",
    min_size: tuple[int, int] = (1, 1),
) -> None:
    """Validate an NCHW floating-point feature map.

    Args:
        x: the tensor to check.
        channels: the expected channel count (``x.shape[1]``), or None to skip the check.
        owner: the module's name, used in messages (e.g. ``"ACmix"``).
        name: the argument's name, used in messages.
        min_size: the smallest (H, W) the operator supports.

    Raises:
        TypeError: ``x`` is not a tensor or not of a floating dtype.
        ValueError: ``x`` is not 4-D, has the wrong channel count, or a spatial size below ``min_size``.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{owner}: argument '{name}' must be a torch.Tensor, got {type(x).__name__}"
        )
    if not x.is_floating_point():
        raise TypeError(
            f"{owner}: argument '{name}' must have a floating dtype "
            f"(float32, float64, bfloat16 or float16), got {x.dtype}"
        )
    if x.dim() != 4:
        raise ValueError(
            f"{owner}: argument '{name}' must be a 4-D tensor (N, C, H, W), "
            f"got {x.dim()}-D shape {tuple(x.shape)}"
        )
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{owner}: argument '{name}' must have {channels} channels (dim 1), "
            f"got {x.shape[1]} (shape {tuple(x.shape)})"
        )
    h, w = x.shape[-2:]
    if h < min_size[0] or w < min_size[1]:
        raise ValueError(
            f"{owner}: argument '{name}' must have spatial size at least {min_size[0]}x{min_size[1]}, "
            f"got {h}x{w}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{owner}: argument '{name}' has batch size 0 (shape {tuple(x.shape)})")


def check_positive_int(value: object, name: str, owner: str) -> int:
    """Return ``value`` if it is a positive int, else raise a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: '{name}' must be a positive integer, got {value!r}")
    return value


def check_choice(value: object, name: str, choices: tuple[str, ...], owner: str) -> str:
    """Return ``value`` if it is one of ``choices``, else raise a ValueError listing them."""
    if value not in choices:
        raise ValueError(f"{owner}: '{name}' must be one of {list(choices)}, got {value!r}")
    return value  # type: ignore[return-value]


def check_drop_in(owner: str, in_channels: object, out_channels: object, stride: object) -> None:
    """Check the ``(in_channels, out_channels, stride)`` every KxK-convolution drop-in takes."""
    check_positive_int(in_channels, "in_channels", owner)
    check_positive_int(out_channels, "out_channels", owner)
    check_positive_int(stride, "stride", owner)
