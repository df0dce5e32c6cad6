"""Import the real timm in the tests without torchvision (test-only helper).

timm declares torchvision as a requirement and imports a few of its names at import time
(``torchvision.ops.misc.FrozenBatchNorm2d``, ``torchvision.transforms`` and ``.functional``'s
``InterpolationMode``, six ``torchvision.datasets`` classes). None of them is used by model
creation, registration, feature extraction or ``resolve_data_config``, which is what our tests
exercise. The test command installs timm with ``--no-deps``; when torchvision is not importable,
:func:`import_timm` puts a minimal stand-in for those names into ``sys.modules`` first. Calling
anything of the stand-in raises, so a test that really needed torchvision would fail loudly.
"""

from __future__ import annotations

import contextlib
import enum
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Iterator

import pytest
from torch import nn

_DATASETS = ("CIFAR10", "CIFAR100", "MNIST", "KMNIST", "FashionMNIST", "ImageFolder")


def _placeholder(name: str) -> type:
    def __init__(self, *args, **kwargs):
        raise RuntimeError(f"torchvision stand-in (tests): {name} is not available")

    return type(name, (), {"__init__": __init__})


def _transforms_getattr(name: str) -> type:
    if name.startswith("__"):
        raise AttributeError(name)
    return _placeholder(name)


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


class FrozenBatchNorm2d(nn.Module):
    """Only a type to compare against (timm's freeze helpers); never instantiated here."""


def install_torchvision_standin() -> list[str]:
    """Put the stand-in modules into ``sys.modules``; returns their names (none if a torchvision
    is already there)."""
    if "torchvision" in sys.modules:
        return []

    def module(name: str, **attrs) -> types.ModuleType:
        mod = types.ModuleType(name)
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
        mod.__dict__.update(attrs)
        sys.modules[name] = mod
        return mod

    tv = module("torchvision", __version__="0.0.0+tests.standin")
    tv.ops = module("torchvision.ops")
    tv.ops.misc = module("torchvision.ops.misc", FrozenBatchNorm2d=FrozenBatchNorm2d)
    tv.transforms = module("torchvision.transforms", __getattr__=_transforms_getattr)
    tv.transforms.functional = module(
        "torchvision.transforms.functional", InterpolationMode=InterpolationMode
    )
    tv.datasets = module("torchvision.datasets", **{n: _placeholder(n) for n in _DATASETS})
    return [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]


@contextlib.contextmanager
def real_timm() -> Iterator[types.ModuleType]:
    """The real timm with convattn's models registered; skips the test if timm is not installed.

    A stand-in installed here is removed again on exit (timm keeps the names it imported), so
    later tests (torch.compile / export probe for torchvision) never see it.
    """
    if importlib.util.find_spec("timm") is None:
        pytest.skip("timm is not installed (the README's test command installs it)")
    installed: list[str] = []
    try:
        import torchvision  # noqa: F401
    except Exception:  # absent, or present but unusable with this torch build
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        installed = install_torchvision_standin()
    try:
        import timm

        import convattn

        convattn.register_timm_models()
        yield timm
    finally:
        for name in installed:
            sys.modules.pop(name, None)
