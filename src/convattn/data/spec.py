"""Data specification strings (the ``--data`` option) parsed into a :class:`DataSpec`.

Accepted forms (contract in notes/train_contract.md):

- ``digits``: scikit-learn's bundled 8x8 digits;
- ``synthetic:NAME`` (optionally ``synthetic:NAME:N_TRAIN[:N_VAL]``): a generated task;
- ``cifar10:PATH`` / ``cifar100:PATH``: the python-version batch files;
- ``folder:PATH`` or a bare ``PATH``: an image-folder root holding ``train/<class>/*`` and
  ``val/<class>/*``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DATA_SPEC_FORMS", "DataSpec", "parse_data_spec"]

DATA_SPEC_FORMS = (
    "'digits'",
    "'synthetic:NAME[:N_TRAIN[:N_VAL]]' (NAME in {tasks})",
    "'cifar10:PATH'",
    "'cifar100:PATH'",
    "'folder:PATH' or an image-folder root PATH (with train/<class>/ and val/<class>/)",
)
DATA_KINDS = ("digits", "synthetic", "cifar10", "cifar100", "folder")
_DEFAULT_TRAIN_SIZE = 512
_DEFAULT_VAL_SIZE = 128
# A "word:" prefix that is not a known kind is a typo, not a path (Windows drives are one letter).
_PREFIX = re.compile(r"^([A-Za-z][A-Za-z0-9_-]+):")


@dataclass(frozen=True)
class DataSpec:
    """Which data set to build.

    Args:
        kind: one of ``digits``, ``synthetic``, ``cifar10``, ``cifar100``, ``folder``.
        path: the data folder (cifar and folder kinds).
        name: the synthetic task.
        train_size: synthetic train-split length.
        val_size: synthetic val-split length.
    """

    kind: str
    path: Path | None = None
    name: str | None = None
    train_size: int = _DEFAULT_TRAIN_SIZE
    val_size: int = _DEFAULT_VAL_SIZE

    def __post_init__(self) -> None:
        if self.path is not None and not isinstance(self.path, Path):
            object.__setattr__(self, "path", Path(self.path).expanduser())
        if self.kind not in DATA_KINDS:
            raise ValueError(
                f"DataSpec: 'kind' must be one of {list(DATA_KINDS)}, got {self.kind!r}"
            )
        if self.kind in ("cifar10", "cifar100", "folder") and self.path is None:
            raise ValueError(f"DataSpec: kind {self.kind!r} needs a 'path'")
        if self.kind == "synthetic" and self.name is None:
            raise ValueError("DataSpec: kind 'synthetic' needs a task 'name'")
        for field in ("train_size", "val_size"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DataSpec: '{field}' must be a positive integer, got {value!r}")

    def __str__(self) -> str:
        """The canonical spec string; ``parse_data_spec(str(spec)) == spec``."""
        if self.kind == "digits":
            return "digits"
        if self.kind == "synthetic":
            return f"synthetic:{self.name}:{self.train_size}:{self.val_size}"
        return f"{self.kind}:{self.path}"


def _accepted_forms() -> str:
    from .synthetic import SYNTHETIC_TASKS

    tasks = ", ".join(sorted(SYNTHETIC_TASKS))
    return "; ".join(form.format(tasks=tasks) for form in DATA_SPEC_FORMS)


def _bad_spec(spec: object, why: str) -> ValueError:
    return ValueError(f"invalid data spec {spec!r}: {why}. Accepted forms: {_accepted_forms()}")


def _parse_synthetic(spec: str, rest: str) -> DataSpec:
    from .synthetic import SYNTHETIC_TASKS

    name, *sizes = rest.split(":")
    if name not in SYNTHETIC_TASKS:
        raise _bad_spec(spec, f"unknown synthetic task {name!r}")
    if len(sizes) > 2 or not all(s.isdigit() and int(s) > 0 for s in sizes):
        raise _bad_spec(spec, "synthetic sizes must be positive integers N_TRAIN[:N_VAL]")
    counts = [int(s) for s in sizes] + [_DEFAULT_TRAIN_SIZE, _DEFAULT_VAL_SIZE][len(sizes) :]
    return DataSpec("synthetic", name=name, train_size=counts[0], val_size=counts[1])


def parse_data_spec(spec: str) -> DataSpec:
    """Parse a data spec string (see the module docstring for the forms).

    Only the form is checked here; whether the path exists is checked by ``build_datasets``.

    Raises:
        ValueError: ``spec`` is not a non-empty string of an accepted form (the message names
            the spec and lists the forms).
    """
    if isinstance(spec, DataSpec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise _bad_spec(spec, "expected a non-empty string")
    spec = spec.strip()
    if spec == "digits":
        return DataSpec("digits")
    match = _PREFIX.match(spec)
    if match is None:
        return DataSpec("folder", path=Path(spec).expanduser())
    kind, rest = match.group(1), spec[match.end() :]
    if kind == "synthetic":
        return _parse_synthetic(spec, rest)
    if kind == "digits":
        raise _bad_spec(spec, "'digits' takes no argument")
    if kind in ("cifar10", "cifar100", "folder"):
        if not rest.strip():
            raise _bad_spec(spec, f"'{kind}:' needs a path after the colon")
        return DataSpec(kind, path=Path(rest).expanduser())
    if Path(spec).expanduser().exists():  # a real folder whose name happens to contain a colon
        return DataSpec("folder", path=Path(spec).expanduser())
    raise _bad_spec(spec, f"unknown kind {kind!r}")
