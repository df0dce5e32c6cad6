"""Which models the benchmark can build: the zoo plus bench-only references, and their deploy form."""

from __future__ import annotations

import fnmatch
import importlib
import inspect
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .vit_reference import vit_reference

__all__ = [
    "BENCH_ONLY_MODELS",
    "build_model",
    "default_img_size",
    "deploy_form",
    "in_chans",
    "resolve_models",
]

# Built by the benchmark only; never registered in convattn.models (not trainable zoo members).
BENCH_ONLY_MODELS: dict[str, Callable[..., nn.Module]] = {"vit_reference": vit_reference}


def _zoo() -> list[str]:
    from ..models import list_models

    return list_models()


def resolve_models(patterns: Sequence[str]) -> list[str]:
    """Expand fnmatch patterns (``acmix_*``) and names into model names, in the order given.

    Raises:
        ValueError: no pattern given, or a pattern that matches no model (the message lists the
            unmatched patterns and how to see the names).
    """
    if not patterns:
        raise ValueError("--models: give at least one model name or pattern (e.g. 'resnet50')")
    known = [*_zoo(), *BENCH_ONLY_MODELS]
    names: list[str] = []
    unmatched = []
    for pattern in patterns:
        hits = [n for n in known if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            unmatched.append(pattern)
        names += [n for n in hits if n not in names]
    if unmatched:
        hints = []
        for pattern in unmatched:
            stem = pattern.split("_")[0].strip("*?[]")
            close = [n for n in known if stem and stem in n][:6]
            hints.append(f"{pattern!r}" + (f" (similar: {', '.join(close)})" if close else ""))
        raise ValueError(
            f"--models: no model matches {'; '.join(hints)}. 'convattn models' lists the "
            f"registered names; the benchmark also knows {', '.join(BENCH_ONLY_MODELS)}"
        )
    return names


def build_model(name: str) -> nn.Module:
    """A zoo model (``create_model``) or a bench-only reference, on the current default device."""
    if name in BENCH_ONLY_MODELS:
        return BENCH_ONLY_MODELS[name]()
    from ..models import create_model

    return create_model(name)


def default_img_size(name: str) -> int:
    """The model's default square input size (its pretrained cfg; 224 for bench-only models)."""
    if name in BENCH_ONLY_MODELS:
        return 224
    from ..models import get_pretrained_cfg

    return int(get_pretrained_cfg(name).get("input_size", (3, 224, 224))[-1])


def in_chans(name: str) -> int:
    """Input channels the model expects by default."""
    if name in BENCH_ONLY_MODELS:
        return 3
    from ..models import get_pretrained_cfg

    return int(get_pretrained_cfg(name).get("input_size", (3, 224, 224))[0])


@torch.no_grad()
def deploy_form(model: nn.Module) -> tuple[nn.Module, str]:
    """The inference (deploy) form of ``model`` and how it was obtained.

    Uses ``convattn.deploy.reparam.reparameterize_model`` when that module exists; otherwise calls
    ``reparameterize()`` on the outermost modules that define it (a parent's re-parameterisation
    covers its children). The model should be in eval mode (BatchNorm running statistics are folded).
    """
    try:
        reparam = importlib.import_module("convattn.deploy.reparam")
        reparameterize_model = reparam.reparameterize_model
    except (ImportError, AttributeError):
        reparameterize_model = None
    if reparameterize_model is not None:
        # In place where supported: a deep copy would double the worker's weight memory.
        accepts_inplace = "inplace" in inspect.signature(reparameterize_model).parameters
        out = (
            reparameterize_model(model, inplace=True)
            if accepts_inplace
            else reparameterize_model(model)
        )
        return (out if isinstance(out, nn.Module) else model), "reparameterize_model"
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if callable(getattr(module, "reparameterize", None))
    ]
    names = [name for name, _ in candidates]
    outermost = [
        module
        for name, module in candidates
        if not any(p != name and (p == "" or name.startswith(p + ".")) for p in names)
    ]
    for module in outermost:  # listed first: re-parameterisation replaces children
        module.reparameterize()
    return model, f"reparameterize() on {len(outermost)} module(s)"
