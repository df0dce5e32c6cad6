"""``evaluate_checkpoint``: score a weights file on a data set (``convattn eval``).

Our ``.safetensors`` checkpoints describe themselves (model name, input size, class count,
normalisation; see :func:`convattn.models.read_model_info`). Other files, such as the papers'
official releases, need the model name and are normalised with the model's default statistics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["evaluate_checkpoint"]


def _our_metadata(path: Path) -> dict[str, Any]:
    """The JSON stored in one of our checkpoints, or ``{}`` for any other file."""
    if path.suffix != ".safetensors":
        return {}
    from ..models import read_model_info

    try:
        return read_model_info(path)
    except Exception:  # not ours (or unreadable: loading reports that with the path)
        return {}


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str,
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

    Args:
        checkpoint: our ``.safetensors`` file, a ``resume.pt``-style or official ``.pth`` file.
        data: a data spec (see :func:`convattn.data.parse_data_spec`).
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
        ``{"model", "checkpoint", "data", "split", "img_size", "top1", "top5", "loss", "count"}``.

    Raises:
        FileNotFoundError: no such checkpoint.
        ValueError: unknown model, a checkpoint that does not fit the model, or a classifier
            whose class count differs from the data's.
    """
    from ..data import BatchAugment, build_datasets, create_loader
    from ..models import create_model, get_pretrained_cfg, is_model, load_checkpoint
    from .distributed import resolve_device
    from .engine import evaluate, import_model_families

    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if split not in ("val", "train"):
        raise ValueError(f"evaluate_checkpoint: 'split' must be 'val' or 'train', got {split!r}")
    info = _our_metadata(path)
    meta = info.get("config", {}) or {}
    name = model_name or info.get("model")
    if not name:
        raise ValueError(f"{path} does not name its model; give --model NAME")
    import_model_families()
    if not is_model(name):
        raise ValueError(
            f"unknown model '{name}'; run 'convattn models' to list the registered names"
        )
    pcfg = get_pretrained_cfg(name)
    img_size = img_size or meta.get("img_size") or int(pcfg.get("input_size", (3, 224, 224))[-1])
    in_chans = meta.get("in_chans") if meta.get("in_chans") in (1, 3) else None
    seed = meta.get("data_seed", 0) if seed is None else seed
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
    loaded = load_checkpoint(model, path)
    if loaded["reinitialized"]:
        raise ValueError(
            f"{path}: its classifier does not fit the {bundle.num_classes} classes of {data}; "
            "evaluate it on data with the classes it was trained on"
        )
    mean = meta.get("mean") or pcfg.get("mean") or bundle.mean
    std = meta.get("std") or pcfg.get("std") or bundle.std
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
        **result,
    }
