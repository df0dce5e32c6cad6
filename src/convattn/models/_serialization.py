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

__all__ = ["convert_official", "read_model_info", "save_model"]

FORMAT = "convattn/1"


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


def read_model_info(path: str | Path) -> dict:
    """The JSON description stored in one of our ``.safetensors`` checkpoints."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    if "convattn" not in meta:
        raise ValueError(f"{path}: not a convattn checkpoint (no 'convattn' metadata)")
    return json.loads(meta["convattn"])


def convert_official(model_name: str, official_path: str | Path, out_path: str | Path) -> Path:
    """Load an official checkpoint into ``model_name`` and write it in our format."""
    model = create_model(model_name, checkpoint_path=official_path)
    return save_model(model, out_path, model_name=model_name, source=str(Path(official_path).name))
