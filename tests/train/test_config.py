"""TrainConfig: validation, YAML round trip, and the precedence defaults < --config < flags."""

from __future__ import annotations

import argparse

import pytest

from convattn.train import TrainConfig, add_train_arguments, config_from_args


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return parser.parse_args(argv)


def test_yaml_round_trip(tmp_path):
    cfg = TrainConfig(model="resnet_nano", lr=3e-4, scale=(0.5, 0.9), ema=True, clip_grad=1.0)
    path = cfg.to_yaml(tmp_path / "config.yaml")
    assert TrainConfig.from_yaml(path) == cfg


def test_yaml_coerces_exponent_strings_and_lists(tmp_path):
    # PyYAML reads "1e-3" (no dot) as a string; lists come back for tuple fields.
    (tmp_path / "c.yaml").write_text("model: resnet_nano\nlr: 1e-3\nscale: [0.5, 1]\n")
    cfg = TrainConfig.from_yaml(tmp_path / "c.yaml").validate()
    assert cfg.lr == pytest.approx(1e-3) and isinstance(cfg.lr, float)
    assert cfg.scale == (0.5, 1.0)


def test_yaml_unknown_key_is_named(tmp_path):
    (tmp_path / "c.yaml").write_text("model: resnet_nano\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig.from_yaml(tmp_path / "c.yaml")


def test_missing_config_file():
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        TrainConfig.from_yaml("nope.yaml")


def test_flags_override_file_values(tmp_path):
    (tmp_path / "c.yaml").write_text("model: resnet_nano\nepochs: 7\nlr: 0.01\nema: true\n")
    cfg = config_from_args(
        _parse(["--config", str(tmp_path / "c.yaml"), "--lr", "0.5", "--no-ema"])
    )
    assert (cfg.model, cfg.epochs, cfg.lr, cfg.ema) == ("resnet_nano", 7, 0.5, False)
    # Flags not given keep the defaults.
    assert cfg.batch_size == TrainConfig().batch_size


def test_cli_flags_cover_every_field():
    args = _parse([])
    assert set(TrainConfig.field_names()) <= set(vars(args))


@pytest.mark.parametrize(
    ("changes", "name"),
    [
        (dict(model=None), "model"),
        (dict(epochs=0), "epochs"),
        (dict(batch_size=-1), "batch_size"),
        (dict(accum_steps=0), "accum_steps"),
        (dict(lr=0.0), "lr"),
        (dict(min_lr=1.0, lr=0.1), "min_lr"),
        (dict(opt="adam"), "opt"),
        (dict(amp="fp8"), "amp"),
        (dict(aug="strong"), "aug"),
        (dict(label_smoothing=1.0), "label_smoothing"),
        (dict(ema_decay=1.0), "ema_decay"),
        (dict(drop_path=1.5), "drop_path"),
        (dict(clip_grad=0.0), "clip_grad"),
        (dict(scale=(0.9, 0.5)), "scale"),
        (dict(device="tpu"), "device"),
        (dict(workers=-1), "workers"),
        (dict(epochs=2.5), "epochs"),
        (dict(ema="yes"), "ema"),
    ],
)
def test_invalid_options_name_the_option(changes, name):
    cfg = TrainConfig(**(dict(model="resnet_nano") | changes))
    with pytest.raises(ValueError, match=f"'{name}'"):
        cfg.validate()
