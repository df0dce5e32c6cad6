"""Training from ImageNet-style weights (--init-from) and exporting the best weights as a
hub-layout folder (--export-dir)."""

from __future__ import annotations

import json

import pytest
import torch

import convattn
from convattn.cli import main
from convattn.train import export_pretrained, train


def test_init_from_then_export_rebuilds_the_best_model(tiny_cfg, tmp_path):
    source = convattn.create_model("resnet_nano", num_classes=1000)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "resnet_nano.pth")
    cfg = tiny_cfg(
        model="xvolution_resnet_nano",
        img_size=32,
        epochs=1,
        init_from=str(tmp_path / "resnet_nano.pth"),
        export_dir=str(tmp_path / "hub"),
    )
    train(cfg)
    config = json.loads((tmp_path / "hub" / "config.json").read_text())
    assert config["architecture"] == "convattn_xvolution_resnet_nano"
    pcfg = config["pretrained_cfg"]
    assert pcfg["input_size"] == [3, 32, 32] and pcfg["crop_pct"] == 1.0
    assert len(pcfg["label_names"]) == config["num_classes"] == 4  # synthetic:shapes classes
    hub = convattn.create_model(f"local-dir:{tmp_path / 'hub'}").eval()
    best = convattn.create_model(
        "xvolution_resnet_nano",
        num_classes=4,
        checkpoint_path=tmp_path / "run" / "best.safetensors",
    ).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(hub(x), best(x))


def test_init_from_is_checked_and_reported(tiny_cfg, tmp_path, capsys):
    bad = tmp_path / "swin.pth"
    torch.save(convattn.create_model("acmix_swin_nano").state_dict(), bad)
    with pytest.raises(ValueError, match="init_from"):
        train(tiny_cfg(model="resnet_nano", img_size=32, epochs=1, init_from=str(bad)))
    good = tmp_path / "resnet.pth"
    torch.save(convattn.create_model("resnet_nano").state_dict(), good)
    argv = ["train", "--model", "xvolution_resnet_nano", "--data", "synthetic:shapes:32:16"]
    argv += ["--epochs", "1", "--batch-size", "16", "--workers", "0", "--no-plots"]
    argv += ["--init-from", str(good), "--out", str(tmp_path / "cli")]
    assert main(argv) == 0
    assert "init_from" in capsys.readouterr().out


def test_export_errors(tmp_path, tiny_cfg, tiny_net):
    with pytest.raises(FileNotFoundError, match=r"best\.safetensors"):
        export_pretrained(tmp_path, tmp_path / "out")
    train(tiny_cfg(epochs=1), model=tiny_net())
    with pytest.raises(ValueError, match="not a registered model"):
        export_pretrained(tmp_path / "run", tmp_path / "out")
