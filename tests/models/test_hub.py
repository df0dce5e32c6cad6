"""Hub-layout folders: save_pretrained -> config.json + model.safetensors -> create_model("local-dir:...")."""

from __future__ import annotations

import json

import pytest
import torch

import convattn
from convattn.deploy import reparameterize_model
from convattn.models import hub

from helpers import randomize_bn

# timm's PretrainedCfg fields (timm 1.0): config.json's pretrained_cfg must use only these, or
# timm.create_model("local-dir:...") refuses it.
TIMM_CFG_FIELDS = {
    "url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source", "architecture", "tag",
    "custom_load", "input_size", "test_input_size", "min_input_size", "fixed_input_size",
    "interpolation", "crop_pct", "test_crop_pct", "crop_mode", "mean", "std", "num_classes",
    "label_offset", "label_names", "label_descriptions", "pool_size", "test_pool_size",
    "first_conv", "classifier", "license", "description", "origin_url", "paper_name",
    "paper_ids", "notes",
}  # fmt: skip


@pytest.mark.parametrize("name", ["xvolution_resnet_nano", "acmix_swin_nano", "glnet_nano"])
def test_round_trip_and_config(name, tmp_path):
    model = randomize_bn(convattn.create_model(name, num_classes=4, in_chans=1)).eval()
    folder = convattn.save_pretrained(model, tmp_path / "m", label_names=["a", "b", "c", "d"])
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == f"convattn_{name}"
    assert config["num_classes"] == 4 and config["num_features"] == model.num_features
    assert config["model_args"] == {} and config["convattn"]["model"] == name
    pcfg = config["pretrained_cfg"]
    assert set(pcfg) <= TIMM_CFG_FIELDS
    assert pcfg["input_size"] == [1, 32, 32] and pcfg["label_names"] == ["a", "b", "c", "d"]
    for key in (
        "mean",
        "std",
        "crop_pct",
        "interpolation",
        "pool_size",
        "first_conv",
        "classifier",
    ):
        assert key in pcfg

    again = convattn.create_model(f"local-dir:{folder}").eval()
    assert again.pretrained_cfg["label_names"] == ["a", "b", "c", "d"]
    assert again.pretrained_cfg["input_size"] == (1, 32, 32)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))


def test_local_dir_overrides(tmp_path):
    model = convattn.create_model("resnet_nano", num_classes=4).eval()
    folder = convattn.save_pretrained(model, tmp_path / "m")
    with pytest.raises(ValueError, match="reset_classifier"):
        convattn.create_model(f"local-dir:{folder}", num_classes=2)
    new_head = convattn.create_model(
        f"local-dir:{folder}", num_classes=2, in_chans=1, reset_classifier=True
    )
    assert new_head.fc.out_features == 2 and new_head.pretrained_cfg["num_classes"] == 2
    torch.testing.assert_close(new_head.layer2[0].conv1.weight, model.layer2[0].conv1.weight)
    feats = convattn.create_model(f"local-dir:{folder}", features_only=True, out_indices=(2,))
    assert [f.shape[1] for f in feats(torch.randn(1, 3, 32, 32))] == [64]


def test_deploy_form_is_recorded_and_rebuilt(tmp_path):
    model = randomize_bn(convattn.create_model("xvolution_resnet_nano")).eval()
    deployed = reparameterize_model(model)
    folder = convattn.save_pretrained(deployed, tmp_path / "d")
    assert json.loads((folder / "config.json").read_text())["model_args"] == {"deploy": True}
    again = convattn.create_model(f"local-dir:{folder}").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(x), deployed(x))


def test_model_args_are_recorded_and_checked(tmp_path):
    model = convattn.create_model("resnet34", layers=[1, 1, 1, 1], num_classes=3)
    folder = convattn.save_pretrained(model, tmp_path / "m")
    assert json.loads((folder / "config.json").read_text())["model_args"] == {
        "layers": [1, 1, 1, 1]
    }
    assert sum(1 for _ in convattn.create_model(f"local-dir:{folder}").layer1) == 1
    with pytest.raises(ValueError, match="model_args"):
        convattn.save_pretrained(model, tmp_path / "bad", model_args={})


def test_errors_name_the_argument(tmp_path):
    model = convattn.create_model("resnet_nano", num_classes=3)
    with pytest.raises(ValueError, match="label_names"):
        convattn.save_pretrained(model, tmp_path / "m", label_names=["a"])
    with pytest.raises(ValueError, match="data_config"):
        convattn.save_pretrained(model, tmp_path / "m", data_config={"size": 3})
    with pytest.raises(ValueError, match="model_name"):
        convattn.save_pretrained(torch.nn.Conv2d(1, 1, 1), tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        convattn.create_model(f"local-dir:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        convattn.create_model(f"local-dir:{tmp_path / 'empty'}")
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"architecture": "vit_base_patch16_224"}))
    with pytest.raises(ValueError, match="not a convattn model"):
        convattn.create_model(f"local-dir:{other}")


def test_an_interrupted_save_keeps_the_previous_folder(tmp_path, monkeypatch):
    first = convattn.create_model("resnet_nano", num_classes=3)
    folder = convattn.save_pretrained(first, tmp_path / "m")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        convattn.save_pretrained(convattn.create_model("resnet_nano", num_classes=3), folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert hub.CONFIG_NAME in before and hub.WEIGHTS_NAME in before
