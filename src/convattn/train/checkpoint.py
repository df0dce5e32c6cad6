"""Run-folder checkpoints, written atomically, and the RNG capture needed for exact resumption.

A run folder holds:

- ``last.safetensors`` / ``best.safetensors``: model weights in our format
  (:func:`convattn.models.save_model`; ``best`` holds the EMA weights when the EMA scores best);
- ``resume.pt``: the full training state (model, optimiser, scheduler, grad scaler, EMA, the RNG
  states of torch/NumPy/Python per rank, epoch, update count, best metric, metric history). It is
  saved with ``torch.save`` and read back with ``torch.load(weights_only=True)``, so it holds only
  tensors, containers and primitives (RNG states are stored as tensors);
- ``config.yaml`` and ``metrics.jsonl``.

Every file is written inside a temporary ``.convattn-tmp-*`` folder beside the target and renamed
over it (:func:`convattn._io.atomic_write`), so a crash or ``SIGKILL`` mid-write leaves the
previous file intact; ``resume.pt`` is written last in an epoch and is the commit point of that
epoch. :func:`remove_stale_temporaries` removes the ``.convattn-tmp-*`` leftovers of such a kill,
and nothing else.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_write, remove_stale_temporaries, torch_load_tensors

__all__ = [
    "BEST_WEIGHTS",
    "LAST_WEIGHTS",
    "RESUME_FILE",
    "capture_rng_state",
    "load_resume_state",
    "remove_stale_temporaries",
    "restore_rng_state",
    "save_resume_state",
]

RESUME_FILE = "resume.pt"
LAST_WEIGHTS = "last.safetensors"
BEST_WEIGHTS = "best.safetensors"


def capture_rng_state() -> dict[str, Any]:
    """The global RNG states of torch (CPU and CUDA), NumPy and Python as tensors and numbers."""
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_gauss": float(np_gauss),
        "python_version": int(py_version),
        "python_internal": torch.tensor(py_internal, dtype=torch.int64),
        "python_gauss": py_gauss,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            state["numpy_pos"],
            state["numpy_has_gauss"],
            state["numpy_gauss"],
        )
    )
    internal = tuple(int(v) for v in state["python_internal"].tolist())
    random.setstate((state["python_version"], internal, state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def save_resume_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Write the training state atomically with ``torch.save``."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_resume_state(path: str | Path) -> dict[str, Any]:
    """Read a state written by :func:`save_resume_state` (``weights_only=True``: nothing unpickled).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is truncated, corrupt or not a convattn resume file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"resume file not found: {path}")
    state = torch_load_tensors(path, what="resume file")
    if not isinstance(state, dict) or state.get("format") != "convattn-resume/1":
        raise ValueError(f"{path} is not a convattn resume file")
    return state
