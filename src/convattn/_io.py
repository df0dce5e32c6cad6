"""Atomic file writes and safe checkpoint reads.

A failed or interrupted write never destroys the previous file: the new content is written inside
a private temporary folder beside the target (``.convattn-tmp-*``), then renamed over the target.
Whatever the writer itself creates (safetensors, for one, writes its own ``.tmpXXXXXX`` file
before renaming it) stays inside that folder, so a ``SIGKILL`` mid-write leaves at most one
``.convattn-tmp-*`` folder behind, which :func:`remove_stale_temporaries` recognises by its
prefix. No other file is ever cleaned up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["TEMP_PREFIX", "atomic_write", "remove_stale_temporaries", "torch_load_tensors"]

# Every temporary file or folder convattn creates starts with this prefix.
TEMP_PREFIX = ".convattn-tmp-"


@contextlib.contextmanager
def _temporary_path(path: Path) -> Iterator[Path]:
    """``<parent>/.convattn-tmp-<name>-XXXX/<name>``: a path on the target's file system."""
    folder = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{path.name}-", dir=path.parent))
    try:
        yield folder / path.name
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    The rename is atomic on POSIX and Windows, so readers see either the old or the new file.
    ``tmp`` has the same name as ``path`` (in a temporary folder), so writers that look at the
    suffix behave as they would on ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _temporary_path(path) as tmp:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    return path


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete what interrupted :func:`atomic_write` calls left in ``folder`` (ours only).

    Only entries whose name starts with :data:`TEMP_PREFIX` are removed; any other file, hidden
    or ``*.tmp`` ones included, is left alone.
    """
    removed = []
    for entry in sorted(Path(folder).glob(f"{TEMP_PREFIX}*")):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def torch_load_tensors(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with a one-line error naming ``path``.

    Raises:
        ValueError: the file is truncated, corrupt, not a PyTorch file, or holds Python objects
            other than tensors, containers and numbers (which are never unpickled). The message
            does not relay PyTorch's suggestion to retry with ``weights_only=False``.
    """
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "Unsupported global" in text or "Unsupported class" in text:
            reason = (
                "it holds Python objects besides tensors, containers and numbers, and convattn "
                "never unpickles objects (they could run code)"
            )
        else:
            reason = "truncated, corrupt or not a PyTorch or safetensors file"
        raise ValueError(f"{what} {path} is not a readable checkpoint: {reason}") from None
    except Exception:  # zip errors, EOF, unknown formats
        raise ValueError(
            f"{what} {path} is not a readable checkpoint: truncated, corrupt or not a PyTorch "
            "or safetensors file"
        ) from None
