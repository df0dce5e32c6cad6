"""``evaluate_checkpoint``: score a weights file on a data set (``convattn eval``).

Our checkpoints describe how their model was trained: ``.safetensors`` weights carry the model
name, input size, class count, normalisation, data spec and data seed (see
:func:`convattn.models.read_model_info`), and a run's ``resume.pt`` holds the run's options. Eval
takes its preprocessing and split from there (the data seed picks the digits and synthetic
splits), reports what it used, and warns when an option given by the user overrides it. Other
files, such as the papers' official releases, need the model name and are normalised with the
model's default statistics.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

__all__ = ["checkpoint_metadata", "evaluate_checkpoint"]

RESUME_FORMAT = "convattn-resume/1"


def checkpoint_metadata(path: str | Path) -> dict[str, Any]:
    """What one of our checkpoints says about its training; ``{}`` for other files.

    Returns ``{"model": NAME, "config": {img_size, mean, std, data, data_seed, num_classes,
    in_chans, ...}}`` for our ``.safetensors`` weights and for a run's ``resume.pt``.

    Raises:
        ValueError: the file is not a readable checkpoint.
    """
    from .._io import torch_load_tensors
    from ..models._serialization import checkpoint_info

    path = Path(path)
    if path.suffix == ".safetensors":
        return checkpoint_info(path)
    state = torch_load_tensors(path)
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
        return {}
    run = state.get("config") or {}
    meta = dict(state.get("weights_meta") or {})
    # Resume files written before they carried the weights' metadata: the run's options.
    meta.setdefault("img_size", run.get("img_size"))
    meta.setdefault("data", run.get("data"))
    meta.setdefault("data_seed", run.get("seed"))
    return {"model": run.get("model"), "config": meta}


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | None = None,
    *,
    model_name: str | None = None,
    img_size: int | None = None,
    batch_size: int = 128,
    workers: int = 2,
    device: str = "auto",
    amp: str = "none",
    split: str = "val",
    seed: int | None = None,
) -> dict[str, Any]:
    """Load ``checkpoint`` into its model and evaluate it on ``data``'s ``split``.

    Preprocessing (input size, mean/std) and the data split come from the checkpoint when it is
    one of ours; ``img_size`` or ``seed`` that differ from it are used, with a warning.

    Args:
        checkpoint: our ``.safetensors`` file, a run's ``resume.pt`` or an official ``.pth`` file.
        data: a data spec (see :func:`convattn.data.parse_data_spec`); defaults to the one the
            checkpoint was trained on.
        model_name: registered model name; defaults to the one stored in our checkpoints.
        img_size: input size; defaults to the checkpoint's training size, then the model's.
        batch_size: evaluation batch size.
        workers: DataLoader workers.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        amp: autocast mode (``none``, ``bf16``, ``fp16``).
        split: ``val`` or ``train``.
        seed: data seed, which selects the digits split; defaults to the training run's (stored
            in our checkpoints), else 0.

    Returns:
        ``{"model", "checkpoint", "data", "split", "img_size", "mean", "std", "seed",
        "preprocessing", "top1", "top5", "loss", "count"}``; ``preprocessing`` says where size,
        normalisation and split came from (``"checkpoint"``, ``"checkpoint, overridden: ..."``
        or ``"model defaults"``).

    Raises:
        FileNotFoundError: no such checkpoint.
        ValueError: unknown model, an unreadable checkpoint, one that does not fit the model, or
            a classifier whose class count differs from the data's.
    """
    from ..data import BatchAugment, build_datasets, create_loader
    from ..models import create_model, get_pretrained_cfg, is_model, load_checkpoint
    from .distributed import resolve_device
    from .engine import evaluate

    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if split not in ("val", "train"):
        raise ValueError(f"evaluate_checkpoint: 'split' must be 'val' or 'train', got {split!r}")
    info = checkpoint_metadata(path)
    meta = info.get("config", {}) or {}
    name = model_name or info.get("model")
    if not name:
        raise ValueError(f"{path} does not name its model; give --model NAME")
    if not is_model(name):
        raise ValueError(
            f"unknown model '{name}'; run 'convattn models' to list the registered names"
        )
    data = data or meta.get("data")
    if not data:
        raise ValueError(f"{path} does not say what it was trained on; give --data SPEC")
    overridden = []
    for option, value, theirs in (
        ("img_size", img_size, meta.get("img_size")),
        ("seed", seed, meta.get("data_seed")),
    ):
        if value is not None and theirs is not None and value != theirs:
            overridden.append(f"{option} {value} instead of {theirs}")
            warnings.warn(
                f"eval: {option}={value} overrides the checkpoint's {option}={theirs} "
                f"({'input size' if option == 'img_size' else 'data split seed'} of its "
                "training run); the score is not comparable to the run's",
                stacklevel=2,
            )
    pcfg = get_pretrained_cfg(name)
    img_size = img_size or meta.get("img_size") or int(pcfg.get("input_size", (3, 224, 224))[-1])
    in_chans = meta.get("in_chans") if meta.get("in_chans") in (1, 3) else None
    seed = meta.get("data_seed", 0) if seed is None else seed
    seed = 0 if seed is None else seed
    bundle = build_datasets(data, img_size, seed=seed, in_chans=in_chans)
    if meta.get("num_classes") not in (None, bundle.num_classes):
        raise ValueError(
            f"{path} was trained on {meta['num_classes']} classes but {data} has "
            f"{bundle.num_classes}"
        )

    model = create_model(
        name,
        num_classes=bundle.num_classes,
        in_chans=bundle.in_chans,
        stage_ops=meta.get("stage_ops"),  # a ResNet trained with --stage-ops
    )
    try:
        load_checkpoint(model, path)
    except ValueError as err:
        if "classifier" not in str(err):
            raise
        raise ValueError(
            f"{path}: its classifier does not fit the {bundle.num_classes} classes of {data}; "
            "evaluate it on data with the classes it was trained on"
        ) from None
    if info:
        # Our runs normalise with their data's statistics; a resume.pt of an older version
        # does not store them, and then the data's own are the run's when the data is the same.
        mean, std = meta.get("mean") or bundle.mean, meta.get("std") or bundle.std
        if not meta.get("mean") and meta.get("data") not in (None, data):
            warnings.warn(
                f"eval: {path} does not store its normalisation; using {data}'s statistics",
                stacklevel=2,
            )
        source = "checkpoint" + (f", overridden: {'; '.join(overridden)}" if overridden else "")
    else:
        mean = pcfg.get("mean") or bundle.mean
        std = pcfg.get("std") or bundle.std
        source = "model defaults"
    if len(mean) != bundle.in_chans:
        mean, std = bundle.mean, bundle.std
    dev = resolve_device(device)
    model.to(dev)
    normalise = BatchAugment(img_size, mean, std, train=False).to(dev)
    dataset = bundle.val if split == "val" else bundle.train
    loader = create_loader(dataset, batch_size, train=False, num_workers=workers)
    result = evaluate(model, loader, dev, amp, transform=normalise)
    return {
        "model": name,
        "checkpoint": str(path),
        "data": data,
        "split": split,
        "img_size": img_size,
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "seed": seed,
        "preprocessing": source,
        **result,
    }
