"""Our checkpoint format: a ``.safetensors`` file whose header metadata holds a small JSON
(model name, constructor options, format version), written atomically.

Loading never unpickles: safetensors is a plain tensor container, and other files go through
``torch.load(weights_only=True)`` in :func:`convattn.models.read_state_dict`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from .._io import atomic_write
from ._builder import create_model

__all__ = [
    "checkpoint_info",
    "constructor_options",
    "convert_official",
    "load_safetensors",
    "read_model_info",
    "save_model",
]

FORMAT = "convattn/1"
# Keys of a checkpoint's description that describe how it was made, not how to build the model.
DESCRIPTIVE_KEYS = frozenset(
    {"epoch", "top1", "weights", "data", "data_seed", "img_size", "mean", "std", "class_names"}
    | {"source"}
)


def save_model(
    model: nn.Module, path: str | Path, model_name: str | None = None, **config: Any
) -> Path:
    """Save ``model``'s weights and a JSON description to ``path`` (``.safetensors``)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"save_model: 'path' must end in .safetensors, got {path.name}")
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    name = model_name or cfg.get("architecture")
    if not name:
        raise ValueError("save_model: give 'model_name' (the model has no pretrained_cfg)")
    info = {"format": FORMAT, "model": name, "config": config}
    # safetensors refuses shared storage; clone so tied or viewed tensors serialise.
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"convattn": json.dumps(info, sort_keys=True, default=str)}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def _unreadable(path: str | Path) -> ValueError:
    return ValueError(
        f"checkpoint {path} is not a readable checkpoint: truncated, corrupt or not a "
        "safetensors file"
    )


def load_safetensors(path: str | Path) -> dict:
    """The tensors of a ``.safetensors`` file; a ValueError naming it if it cannot be read."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except OSError:
        raise
    except Exception:  # SafetensorError, header JSON errors, ...
        raise _unreadable(path) from None


def _safetensors_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return fh.metadata() or {}
    except OSError:
        raise
    except Exception:
        raise _unreadable(path) from None


def read_model_info(path: str | Path) -> dict:
    """The JSON description stored in one of our ``.safetensors`` checkpoints.

    Raises:
        ValueError: the file is not a readable safetensors file, or not one of ours.
    """
    meta = _safetensors_metadata(path)
    if "convattn" not in meta:
        raise ValueError(f"{path}: not a convattn checkpoint (no 'convattn' metadata)")
    try:
        info = json.loads(meta["convattn"])
    except ValueError:
        raise ValueError(f"{path}: its 'convattn' metadata is not valid JSON") from None
    if not isinstance(info, dict):
        raise ValueError(f"{path}: its 'convattn' metadata is not a JSON object")
    return info


def checkpoint_info(path: str | Path) -> dict:
    """Our description of a checkpoint, ``{}`` for a readable file that is not ours.

    ``.safetensors`` files are checked here (an unreadable one raises a ValueError naming it);
    other files are read when their weights are loaded.
    """
    if Path(path).suffix != ".safetensors":
        return {}
    meta = _safetensors_metadata(path)
    if "convattn" not in meta:
        return {}
    return read_model_info(path)


def constructor_options(info: dict) -> dict:
    """The ``create_model`` options in a checkpoint's description (training facts left out)."""
    config = info.get("config") or {}
    return {k: v for k, v in config.items() if k not in DESCRIPTIVE_KEYS}


def convert_official(
    model_name: str,
    official_path: str | Path,
    out_path: str | Path,
    *,
    num_classes: int | None = None,
    reset_classifier: bool = False,
) -> Path:
    """Load an official checkpoint into ``model_name`` and write it in our format.

    The class count is the checkpoint's unless ``num_classes`` is given; a ``num_classes`` other
    than the checkpoint's needs ``reset_classifier=True`` (a new, randomly initialised head).
    """
    model = create_model(
        model_name,
        checkpoint_path=official_path,
        num_classes=num_classes,
        reset_classifier=reset_classifier,
    )
    shape = {k: getattr(model, k) for k in ("num_classes", "in_chans") if hasattr(model, k)}
    return save_model(
        model, out_path, model_name=model_name, source=str(Path(official_path).name), **shape
    )
