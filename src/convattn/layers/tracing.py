"""Tracing-aware helpers shared by the operators (eager caches that never hold a traced tensor)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch

__all__ = ["cached_in_eager", "is_tracing"]

_F = TypeVar("_F", bound=Callable)


def is_tracing() -> bool:
    """True inside ``torch.compile`` / ``torch.export`` / TorchScript tracing (ONNX, ``dynamo=False``)."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def cached_in_eager(function: _F | None = None, *, maxsize: int = 128):
    """``functools.lru_cache`` for eager calls; traced calls build their result fresh.

    Tensors made while tracing are fake (symbolic): cached, they would leak into later eager calls
    (and symbolic sizes cannot be hashed). Use as ``@cached_in_eager`` or
    ``@cached_in_eager(maxsize=16)``; the wrapper keeps ``cache_clear`` and ``cache_info``.
    """

    def decorate(fn):
        cached = functools.lru_cache(maxsize=maxsize)(fn)

        @functools.wraps(fn)
        def wrapper(*args):
            return fn(*args) if is_tracing() else cached(*args)

        wrapper.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
        wrapper.cache_info = cached.cache_info  # type: ignore[attr-defined]
        return wrapper

    return decorate(function) if function is not None else decorate
