"""Hub-layout model folders: ``config.json`` + ``model.safetensors``, as timm and the HF Hub use.

:func:`save_pretrained` writes a folder that ``convattn.create_model("local-dir:FOLDER")`` and,
once convattn's models are registered in timm (:mod:`convattn.models.timm_bridge`),
``timm.create_model("local-dir:FOLDER", pretrained=True)`` rebuild. Nothing is downloaded; to
publish a folder, upload it with the hub's own tools (``huggingface-cli upload``), after which
``timm.create_model("hf-hub:USER/REPO", pretrained=True)`` finds the same two files.

``config.json`` holds timm's fields:

* ``architecture``: the model's name in timm's registry (``convattn_<name>``);
* ``num_classes`` and ``num_features``;
* ``model_args``: constructor options beyond the defaults (e.g. ``{"deploy": true}``);
* ``pretrained_cfg``: input size, mean/std, crop, interpolation, pooled size, first conv and
  classifier names (what ``timm.data.resolve_data_config`` reads), and ``label_names`` if known;
* ``convattn``: our own record (format version, convattn name, library version).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import atomic_write
from ._registry import is_model

__all__ = [
    "CONFIG_NAME",
    "LOCAL_DIR_PREFIX",
    "WEIGHTS_NAME",
    "create_model_from_folder",
    "read_folder_config",
    "save_pretrained",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
LOCAL_DIR_PREFIX = "local-dir:"
FORMAT = "convattn-hub/1"
# Arguments that config.json records elsewhere (num_classes, input_size) or that only matter for
# training (drop rates): never written to model_args.
_NOT_MODEL_ARGS = ("num_classes", "in_chans", "drop_path_rate", "drop_rate", "pretrained")
_TUPLE_KEYS = ("input_size", "mean", "std", "pool_size", "test_input_size", "min_input_size")
_DATA_KEYS = ("input_size", "mean", "std", "crop_pct", "interpolation", "pool_size")


def _json_safe(value: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as err:
        raise ValueError(f"save_pretrained: {what} is not JSON-serialisable ({err})") from err


def _structure(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _resolve_model_args(model: nn.Module, name: str, given: Mapping[str, Any] | None) -> dict:
    """Constructor options that rebuild ``model``'s structure, checked on the meta device."""
    from ._builder import create_model

    args = dict(getattr(model, "_model_args", None) or {}) if given is None else dict(given)
    args = {k: v for k, v in args.items() if k not in _NOT_MODEL_ARGS and v is not None}
    target = _structure(model)
    fixed = dict(num_classes=int(model.num_classes), in_chans=int(model.in_chans))
    candidates = [args] if given is not None else [args, {**args, "deploy": True}]
    for candidate in candidates:
        try:
            with torch.device("meta"):
                built = create_model(name, **fixed, **candidate)
        except Exception:  # an option this model does not take: try the next candidate
            continue
        if _structure(built) == target:
            return candidate
    raise ValueError(
        f"save_pretrained: {name} built with model_args={args} does not have this model's "
        "parameters and shapes; pass the constructor options as 'model_args'"
    )


def save_pretrained(
    model: nn.Module,
    folder: str | Path,
    *,
    model_name: str | None = None,
    model_args: Mapping[str, Any] | None = None,
    label_names: Sequence[str] | None = None,
    data_config: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a hub-layout folder (``config.json`` + ``model.safetensors``).

    Each file is written atomically (weights first), so an interrupted save never leaves a
    half-written file; other files in ``folder`` are left alone.

    Args:
        model: a convattn model (from :func:`convattn.create_model`, ``timm.create_model`` or a
            re-parameterised copy).
        folder: output folder (created if needed).
        model_name: convattn name of the model (default: its ``pretrained_cfg["architecture"]``).
        model_args: constructor options that rebuild it (default: the ones it was built with;
            a deploy-form model is recognised). Checked: they must give the same keys and shapes.
        label_names: class names, in classifier order (``len == num_classes``).
        data_config: preprocessing overrides (``input_size``, ``mean``, ``std``, ``crop_pct``,
            ``interpolation``), e.g. those the model was trained with.

    Returns:
        The folder.
    """
    from safetensors.torch import save_file

    from .timm_bridge import convattn_name, timm_name, timm_pretrained_cfg

    if not isinstance(model, nn.Module):
        raise TypeError(
            f"save_pretrained: 'model' must be an nn.Module, got {type(model).__name__}"
        )
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    name = convattn_name(model_name or cfg.get("architecture") or "")
    if not name or not is_model(name):
        raise ValueError(
            "save_pretrained: give 'model_name', a registered convattn model name "
            f"(got {model_name or cfg.get('architecture')!r})"
        )
    if not hasattr(model, "num_classes") or not hasattr(model, "in_chans"):
        raise ValueError("save_pretrained: 'model' must be a whole convattn model, not a wrapper")
    args = _json_safe(_resolve_model_args(model, name, model_args), "model_args")
    num_classes = int(model.num_classes)

    pcfg = timm_pretrained_cfg(name)
    pcfg.update({k: cfg[k] for k in _DATA_KEYS if cfg.get(k) is not None})
    pcfg.update(dict(data_config or {}))
    unknown = set(data_config or {}) - set(_DATA_KEYS)
    if unknown:
        raise ValueError(
            f"save_pretrained: unknown 'data_config' keys {sorted(unknown)}; use {_DATA_KEYS}"
        )
    pcfg["input_size"] = (int(model.in_chans), *tuple(pcfg["input_size"])[1:])
    pcfg["num_classes"] = num_classes
    if label_names is not None:
        label_names = [str(n) for n in label_names]
        if len(label_names) != num_classes:
            raise ValueError(
                f"save_pretrained: 'label_names' has {len(label_names)} names for "
                f"num_classes={num_classes}"
            )
        pcfg["label_names"] = label_names
    config = {
        "architecture": timm_name(name),
        "num_classes": num_classes,
        "num_features": int(model.num_features),
        "global_pool": getattr(model, "pool_type", "avg") or "avg",
        "model_args": args,
        "pretrained_cfg": _json_safe({k: v for k, v in pcfg.items() if v is not None}, "cfg"),
        "convattn": {"format": FORMAT, "model": name, "version": _version()},
    }
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"save_pretrained: 'folder' is a file: {folder}")
    # safetensors refuses shared storage; contiguous clones serialise tied or viewed tensors.
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"format": "pt", "convattn": json.dumps(config["convattn"])}
    atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    text = json.dumps(config, indent=2) + "\n"
    atomic_write(folder / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))
    return folder


def _version() -> str:
    from .. import __version__

    return __version__


def read_folder_config(folder: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a hub-layout folder (timm's layout), checked for what we need."""
    folder = Path(folder)
    path = folder / CONFIG_NAME
    if not folder.is_dir():
        raise FileNotFoundError(f"local-dir: no such folder: {folder}")
    if not path.is_file():
        raise FileNotFoundError(f"local-dir: {folder} has no {CONFIG_NAME}")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"local-dir: {path} is not valid JSON ({err})") from err
    if not isinstance(config, dict) or "architecture" not in config:
        raise ValueError(f"local-dir: {path} has no 'architecture' entry")
    return config


def _weights_file(folder: Path) -> Path:
    for name in (WEIGHTS_NAME, "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"local-dir: {folder} has neither {WEIGHTS_NAME} nor pytorch_model.bin")


def create_model_from_folder(folder: str | Path, **kwargs: Any) -> nn.Module:
    """Rebuild the model saved in a hub-layout folder (``create_model("local-dir:FOLDER")``).

    ``kwargs`` are those of :func:`convattn.create_model` and override the saved ones
    (``num_classes`` re-initialises the classifier, ``in_chans`` adapts the stem,
    ``features_only`` wraps the model).
    """
    from ._builder import create_model
    from .timm_bridge import convattn_name

    folder = Path(folder)
    config = read_folder_config(folder)
    name = convattn_name(str(config["architecture"]))
    if not is_model(name):
        raise ValueError(
            f"local-dir: {folder} holds a {config['architecture']!r}, not a convattn model; "
            "load it with timm.create_model"
        )
    if kwargs.get("checkpoint_path") is not None:
        raise ValueError("create_model: 'checkpoint_path' cannot be combined with 'local-dir:'")
    pcfg = dict(config.get("pretrained_cfg") or {})
    saved = dict(config.get("model_args") or {})
    saved.setdefault("num_classes", config.get("num_classes", pcfg.get("num_classes")))
    if "input_size" in pcfg:
        saved.setdefault("in_chans", pcfg["input_size"][0])
    given = {k: v for k, v in kwargs.items() if v is not None}
    model = create_model(name, checkpoint_path=_weights_file(folder), **(saved | given))
    target = model.model if hasattr(model, "model") and hasattr(model, "feature_info") else model
    cfg = dict(getattr(target, "pretrained_cfg", {}) or {})
    cfg.update({k: tuple(v) if k in _TUPLE_KEYS and v else v for k, v in pcfg.items()})
    cfg.update(architecture=name, source="local-dir", file=str(folder))
    if "input_size" in cfg:
        cfg["input_size"] = (int(target.in_chans), *cfg["input_size"][1:])
    cfg["num_classes"] = int(target.num_classes)
    if cfg["num_classes"] != int(saved["num_classes"]):
        cfg.pop("label_names", None)
    target.pretrained_cfg = cfg
    if target is not model:
        model.pretrained_cfg = cfg
    return model
