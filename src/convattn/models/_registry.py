"""A small model registry in timm's style: ``@register_model`` entrypoints looked up by name."""

from __future__ import annotations

import fnmatch
import functools
import sys
from collections.abc import Callable, Iterable
from typing import TypeVar

from torch import nn

__all__ = [
    "get_pretrained_cfg",
    "is_model",
    "list_models",
    "model_entrypoint",
    "register_model",
]

_F = TypeVar("_F", bound=Callable[..., nn.Module])
_entrypoints: dict[str, Callable[..., nn.Module]] = {}
_model_module: dict[str, str] = {}
_pretrained_cfgs: dict[str, dict] = {}


def register_model(fn: _F) -> _F:
    """Register ``fn`` under its function name; the module's ``default_cfgs[name]`` becomes its cfg.

    The registered (and returned) constructor takes timm's ``pretrained`` flag: False is accepted,
    True raises a ValueError that says how to load weights (nothing is ever downloaded).
    """
    name = fn.__name__
    if name in _entrypoints:
        raise ValueError(f"register_model: a model named '{name}' is already registered")
    module_name = fn.__module__.split(".")[-1]

    @functools.wraps(fn)
    def entrypoint(*args, pretrained: bool = False, **kwargs):
        if pretrained:
            raise ValueError(_no_download_message(name))
        return fn(*args, **kwargs)

    _entrypoints[name] = entrypoint
    _model_module[name] = module_name
    module = sys.modules[fn.__module__]
    cfg = getattr(module, "default_cfgs", {}).get(name)
    if cfg is not None:
        _pretrained_cfgs[name] = dict(cfg)
    return entrypoint  # type: ignore[return-value]


def _no_download_message(name: str) -> str:
    source = _pretrained_cfgs.get(name, {}).get("official_checkpoint")
    where = (
        f"download the released weights yourself ({source}) and"
        if source
        else "this model has no released weights; train it or"
    )
    return (
        f"{name}: 'pretrained=True' is not supported, convattn never downloads weights: {where} "
        f"pass the file as create_model('{name}', checkpoint_path=FILE) (CLI: --checkpoint FILE), "
        "or load it with convattn.models.load_checkpoint(model, FILE)"
    )


def list_models(pattern: str | Iterable[str] = "*", module: str | None = None) -> list[str]:
    """Sorted registered names matching fnmatch ``pattern`` (a string or several), optionally per family."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    names = {n for n in _entrypoints if any(fnmatch.fnmatchcase(n, p) for p in patterns)}
    if module is not None:
        names = {n for n in names if _model_module[n] == module}
    return sorted(names)


def is_model(name: str) -> bool:
    return name in _entrypoints


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    """The constructor registered as ``name``; a ValueError lists close names if it is unknown."""
    if name not in _entrypoints:
        close = fnmatch.filter(_entrypoints, f"*{name.split('_')[0]}*")[:8]
        hint = f" Similar: {close}." if close else ""
        raise ValueError(
            f"Unknown model '{name}'.{hint} See convattn.list_models() for all {len(_entrypoints)} names."
        )
    return _entrypoints[name]


def get_pretrained_cfg(name: str) -> dict:
    """The model's default configuration (input size, mean/std, paper, official checkpoint name...)."""
    return dict(_pretrained_cfgs.get(name, {}))
