"""Export a run's best weights as a hub-layout folder (``config.json`` + ``model.safetensors``).

The folder records the preprocessing the run evaluated with (input size, the data set's mean and
std, a centre crop of the whole shorter side, bicubic resampling) and the class names, so
``convattn.create_model("local-dir:FOLDER")`` and timm's tools rebuild and preprocess it as
trained. ``convattn train --export-dir DIR`` calls it at the end of a run.
"""

from __future__ import annotations

from pathlib import Path

from .checkpoint import BEST_WEIGHTS, LAST_WEIGHTS

__all__ = ["export_pretrained"]


def export_pretrained(run_dir: str | Path, folder: str | Path) -> Path:
    """Write the best weights of run folder ``run_dir`` (the last ones if it has no best) to ``folder``.

    Raises:
        FileNotFoundError: the run folder holds no weights.
        ValueError: the run trained a model that is not registered by name.
    """
    from ..models import create_model, is_model, read_model_info, save_pretrained

    run_dir = Path(run_dir)
    weights = next(
        (run_dir / n for n in (BEST_WEIGHTS, LAST_WEIGHTS) if (run_dir / n).is_file()), None
    )
    if weights is None:
        raise FileNotFoundError(
            f"export_pretrained: {run_dir} holds neither {BEST_WEIGHTS} nor {LAST_WEIGHTS}"
        )
    info = read_model_info(weights)
    name, conf = info["model"], info.get("config", {})
    if not is_model(name):
        raise ValueError(
            f"export_pretrained: the run trained {name!r}, which is not a registered model "
            "(a model passed to train() as an object cannot be rebuilt from a folder)"
        )
    model = create_model(
        name,
        checkpoint_path=weights,
        num_classes=conf.get("num_classes"),
        in_chans=conf.get("in_chans"),
    )
    data_config: dict = dict(crop_pct=1.0, interpolation="bicubic")
    if conf.get("img_size"):
        data_config["input_size"] = (model.in_chans, conf["img_size"], conf["img_size"])
    for key in ("mean", "std"):
        if conf.get(key):
            data_config[key] = tuple(conf[key])
    labels = conf.get("class_names")
    return save_pretrained(
        model,
        folder,
        model_name=name,
        label_names=labels if labels and len(labels) == model.num_classes else None,
        data_config=data_config,
    )
