"""``TrainConfig``: every option of ``convattn train`` in one dataclass, loadable from YAML.

The dataclass is the single source of truth: :func:`add_train_arguments` derives the command-line
flags (with their help and defaults) from its fields, and a run folder's ``config.yaml`` written by
:meth:`TrainConfig.to_yaml` repeats the run with ``convattn train --config run/config.yaml``.
Precedence: dataclass defaults < values from ``--config`` < flags given on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "AMP_MODES",
    "AUG_POLICIES",
    "OPTIMIZERS",
    "TrainConfig",
    "add_train_arguments",
    "config_from_args",
]

OPTIMIZERS = ("adamw", "sgd")
AMP_MODES = ("none", "bf16", "fp16")
AUG_POLICIES = ("light", "randaug", "none")
# Name patterns (fnmatch) never decayed whatever their shape: position tables and embeddings.
DEFAULT_NO_DECAY_NAMES = ("*relative_position_bias_table", "*pos_embed")


def _opt(default: Any, help: str, **argparse_kwargs: Any) -> Any:
    """A dataclass field carrying its command-line help (and argparse options such as ``type``)."""
    return field(default=default, metadata=dict(help=help, **argparse_kwargs))


@dataclass
class TrainConfig:
    """Options of one training run (see ``convattn train --help`` for each field's meaning).

    ``batch_size`` is per process: a ``torchrun --nproc_per_node N`` run has a global batch of
    ``N * batch_size * accum_steps`` images per optimiser update.
    """

    # What to train on what.
    model: str | None = _opt(
        None, "registered model name (required; see 'convattn models')", metavar="NAME"
    )
    data: str = _opt(
        "digits",
        "data spec: digits, synthetic:NAME[:N_TRAIN[:N_VAL]], cifar10:PATH, cifar100:PATH "
        "or an image-folder root with train/<class>/ and val/<class>/",
        metavar="SPEC",
    )
    img_size: int | None = _opt(None, "input size (default: the model's)", type=int, metavar="PX")
    init_from: str | None = _opt(
        None,
        "start from the ImageNet weights of a related model (a torchvision/timm ResNet-50 "
        "checkpoint for the ResNet hybrids, a timm or official Swin one for ACmix-Swin): every "
        "tensor whose name and shape match is loaded",
        metavar="PATH",
    )
    stage_ops: str | None = _opt(
        None,
        "ResNet models: the spatial operator of each stage, comma-separated, e.g. "
        "conv,conv,xvolution,conv (see 'convattn models --stage-ops')",
        metavar="OPS",
    )
    # Schedule and optimiser.
    epochs: int = _opt(10, "training epochs", type=int, metavar="N")
    batch_size: int = _opt(64, "images per process and step", type=int, metavar="N")
    accum_steps: int = _opt(
        1, "gradient accumulation: micro-batches per optimiser update", type=int, metavar="N"
    )
    opt: str = _opt("adamw", "optimiser", choices=OPTIMIZERS)
    lr: float = _opt(1e-3, "peak learning rate (after warm-up)", type=float)
    min_lr: float = _opt(1e-6, "learning rate at the end of the cosine decay", type=float)
    warmup_epochs: float = _opt(1.0, "linear warm-up length in epochs", type=float, metavar="E")
    weight_decay: float = _opt(0.05, "decoupled (AdamW) or L2 (SGD) weight decay", type=float)
    momentum: float = _opt(0.9, "SGD momentum (AdamW: beta1 stays 0.9)", type=float)
    nesterov: bool = _opt(False, "Nesterov momentum for SGD")
    decay_1d: bool = _opt(
        False, "also decay norms, biases and other 0-D/1-D parameters (ACmix rates, slot_scale)"
    )
    no_decay_names: tuple[str, ...] = _opt(
        DEFAULT_NO_DECAY_NAMES,
        "parameter-name patterns (fnmatch) never decayed, on top of the model's own list",
        nargs="*",
        metavar="PATTERN",
    )
    clip_grad: float | None = _opt(
        None,
        "clip the global gradient norm to this value (default: no clipping)",
        type=float,
        metavar="NORM",
    )
    # Regularisation and augmentation.
    drop_path: float | None = _opt(
        None, "stochastic-depth rate (default: the model's)", type=float, metavar="RATE"
    )
    label_smoothing: float = _opt(0.1, "label smoothing of the training targets", type=float)
    dense_weight: float = _opt(
        0.5,
        "token-labeling models: weight of the per-token loss when the data gives dense targets",
        type=float,
    )
    mixup: float = _opt(0.0, "Mixup Beta alpha (0 disables it)", type=float, metavar="ALPHA")
    cutmix: float = _opt(0.0, "CutMix Beta alpha (0 disables it)", type=float, metavar="ALPHA")
    aug: str = _opt("light", "batch augmentation policy", choices=AUG_POLICIES)
    hflip: bool = _opt(True, "random horizontal flips (turn off for digits and text)")
    color_jitter: float = _opt(0.0, "colour-jitter strength", type=float)
    scale: tuple[float, float] = _opt(
        (0.35, 1.0),
        "area range of the random resized crop",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
    )
    # Precision and averaging.
    amp: str = _opt(
        "none",
        "mixed precision: bf16 (CPU or CUDA) or fp16 (CUDA, with loss scaling)",
        choices=AMP_MODES,
    )
    ema: bool = _opt(False, "keep an exponential moving average of the weights, evaluated too")
    ema_decay: float = _opt(0.999, "EMA decay per optimiser update", type=float)
    # Running.
    device: str = _opt("auto", "auto, cpu, cuda or cuda:N", metavar="DEV")
    workers: int = _opt(2, "DataLoader worker processes (0: load in the main process)", type=int)
    seed: int = _opt(0, "seed of weights, data order, augmentation and the digits split", type=int)
    deterministic: bool = _opt(False, "deterministic algorithms only (slower on CUDA)")
    sync_bn: bool = _opt(True, "SyncBatchNorm in multi-GPU runs (CUDA only)")
    eval_every: int = _opt(1, "evaluate every N epochs (and after the last)", type=int, metavar="N")
    # Outputs.
    out: str | None = _opt(None, "run folder (default: runs/train/MODEL)", metavar="DIR")
    resume: str | None = _opt(
        None,
        "'auto' (continue the run in --out if there is one, else start one in a new or empty "
        "folder) or a resume.pt path (default: new run)",
        metavar="R",
    )
    overwrite: bool = _opt(
        False,
        "start afresh even if --out already holds files: they are moved to a new folder "
        "<out>.old-<date>-<time> beside it, never deleted",
    )
    plots: bool = _opt(True, "write PNG loss/accuracy plots at the end")
    export_dir: str | None = _opt(
        None,
        "at the end, also write the best weights as a hub-layout folder (config.json + "
        "model.safetensors) for create_model('local-dir:DIR') and timm",
        metavar="DIR",
    )
    quiet: bool = _opt(False, "no progress bars or per-epoch lines")

    # --- construction ----------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "TrainConfig") -> TrainConfig:
        """Build a config from a mapping (e.g. parsed YAML); unknown keys raise a ValueError."""
        if not isinstance(values, dict):
            raise ValueError(
                f"{source}: expected a mapping of options, got {type(values).__name__}"
            )
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ValueError(
                f"{source}: unknown option(s) {unknown}; see 'convattn train --help' for the names"
            )
        return cls(**{k: _coerce(cls, k, v, source) for k, v in values.items()})

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        """Load a YAML file of ``option: value`` lines (field names, e.g. ``batch_size: 32``)."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(
                f"config file {path}: invalid YAML ({str(err).splitlines()[0]})"
            ) from err
        return cls.from_dict(values, source=f"config file {path}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python values (tuples as lists), ready for YAML or JSON."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    def to_yaml(self, path: str | Path) -> Path:
        """Write the config atomically as YAML (``--config`` reads it back)."""
        import yaml

        from .._io import atomic_write

        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        return atomic_write(path, lambda tmp: Path(tmp).write_text(text))

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    # --- validation ------------------------------------------------------------------------
    def validate(self) -> TrainConfig:
        """Check every option; a ValueError names the first bad one. Returns ``self``."""
        owner = "TrainConfig"
        if not self.model or not isinstance(self.model, str):
            raise ValueError(f"{owner}: 'model' is required (e.g. --model resnet_nano)")
        if not isinstance(self.data, str) or not self.data.strip():
            raise ValueError(f"{owner}: 'data' must be a non-empty spec string, got {self.data!r}")
        for name in ("epochs", "batch_size", "accum_steps", "eval_every"):
            _check_int(self, name, low=1)
        for name in ("workers", "seed"):
            _check_int(self, name, low=0)
        if self.img_size is not None:
            _check_int(self, "img_size", low=1)
        for name, choices in (("opt", OPTIMIZERS), ("amp", AMP_MODES), ("aug", AUG_POLICIES)):
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"{owner}: '{name}' must be one of {list(choices)}, got {getattr(self, name)!r}"
                )
        _check_float(self, "lr", low=0.0, low_open=True)
        _check_float(self, "min_lr", low=0.0)
        if self.min_lr > self.lr:
            raise ValueError(f"{owner}: 'min_lr' ({self.min_lr}) must not exceed 'lr' ({self.lr})")
        if self.stage_ops is not None and (
            not isinstance(self.stage_ops, str) or not self.stage_ops.strip()
        ):
            raise ValueError(
                f"{owner}: 'stage_ops' must be a comma-separated string such as "
                f"'conv,conv,xvolution,conv', got {self.stage_ops!r}"
            )
        for name in (
            "warmup_epochs",
            "weight_decay",
            "mixup",
            "cutmix",
            "color_jitter",
            "dense_weight",
        ):
            _check_float(self, name, low=0.0)
        _check_float(self, "momentum", low=0.0, high=1.0, high_open=True)
        _check_float(self, "label_smoothing", low=0.0, high=1.0, high_open=True)
        _check_float(self, "ema_decay", low=0.0, high=1.0, low_open=True, high_open=True)
        if self.drop_path is not None:
            _check_float(self, "drop_path", low=0.0, high=1.0, high_open=True)
        if self.clip_grad is not None:
            _check_float(self, "clip_grad", low=0.0, low_open=True)
        low, high = self.scale
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(
                f"{owner}: 'scale' must be (low, high), 0 < low <= high <= 1, got {self.scale}"
            )
        if not (
            self.device in ("auto", "cpu", "cuda")
            or (self.device.startswith("cuda:") and self.device[5:].isdigit())
        ):
            raise ValueError(
                f"{owner}: 'device' must be auto, cpu, cuda or cuda:N, got {self.device!r}"
            )
        for name in ("nesterov", "decay_1d", "ema", "deterministic", "sync_bn", "overwrite"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"{owner}: '{name}' must be true or false, got {getattr(self, name)!r}"
                )
        if not all(isinstance(p, str) for p in self.no_decay_names):
            raise ValueError(
                f"{owner}: 'no_decay_names' must be strings, got {self.no_decay_names!r}"
            )
        return self


def _check_int(cfg: TrainConfig, name: str, low: int) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"TrainConfig: '{name}' must be an integer >= {low}, got {value!r}")


def _check_float(
    cfg: TrainConfig,
    name: str,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    value = getattr(cfg, name)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "" if low is None else f"{'(' if low_open else '['}{low}"
        hi = "" if high is None else f"{high}{')' if high_open else ']'}"
        span = f"in {lo}, {hi}" if lo and hi else f"{'>' if low_open else '>='} {low}"
        raise ValueError(f"TrainConfig: '{name}' must be a number {span}, got {value!r}")


def _coerce(cls: type[TrainConfig], name: str, value: Any, source: str) -> Any:
    """Loosen YAML's typing: ``1e-3`` (a string for PyYAML) -> float, lists -> tuples."""
    meta = next(f for f in dataclasses.fields(cls) if f.name == name).metadata
    kind = meta.get("type")
    if value is None:
        return None
    if meta.get("nargs") is not None:
        if not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(_coerce_scalar(v, kind, name, source) if kind else v for v in value)
    return _coerce_scalar(value, kind, name, source) if kind else value


def _coerce_scalar(value: Any, kind: type, name: str, source: str) -> Any:
    if kind is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{source}: '{name}' must be a number, got {value!r}") from None
    return value


# --- command line ------------------------------------------------------------------------
def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per :class:`TrainConfig` field (``--batch-size`` for ``batch_size``...).

    Every flag defaults to None ("not given") so that :func:`config_from_args` can tell flags
    given on the command line from values read with ``--config``; the help shows the real default.
    """
    parser.add_argument(
        "--config",
        metavar="FILE.yaml",
        help="read options from a YAML file (e.g. a run folder's config.yaml); flags override it",
    )
    for f in dataclasses.fields(TrainConfig):
        meta = dict(f.metadata)
        help_text = meta.pop("help")
        default = f.default
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        kwargs: dict[str, Any] = dict(dest=f.name, default=None)
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs.update(meta)
        flag = "--" + f.name.replace("_", "-")
        if default is not None:
            help_text = f"{help_text} (default: {shown})"
        parser.add_argument(flag, help=help_text, **kwargs)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Merge defaults, the ``--config`` file and the flags given, then validate."""
    cfg = TrainConfig.from_yaml(args.config) if getattr(args, "config", None) else TrainConfig()
    given = {
        name: getattr(args, name)
        for name in TrainConfig.field_names()
        if getattr(args, name, None) is not None
    }
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
    return cfg.replace(**given).validate()
