"""create_model / registry / checkpoint loading, exercised on the cheap nano ResNet."""

import logging

import pytest
import torch

import convattn
from convattn.models import FeatureListNet, adapt_input_conv, load_checkpoint, read_state_dict


def test_list_models_and_unknown_name():
    names = convattn.list_models()
    assert "resnet50" in names and names == sorted(names)
    assert convattn.list_models("resnet5*") == ["resnet50"]
    assert set(convattn.list_models(["resnet26", "resnet34"])) == {"resnet26", "resnet34"}
    with pytest.raises(ValueError, match="Unknown model 'resnet51'"):
        convattn.create_model("resnet51")


def test_none_arguments_do_not_override_defaults():
    m = convattn.create_model("resnet_nano", num_classes=None, in_chans=None, drop_path_rate=None)
    assert m.num_classes == 1000 and m.in_chans == 3
    assert m.pretrained_cfg["architecture"] == "resnet_nano"
    assert m.pretrained_cfg["input_size"] == (3, 32, 32)


def test_api_surface():
    m = convattn.create_model("resnet_nano", num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    feats = m.forward_features(x)
    assert feats.shape == (2, 128, 4, 4)
    assert m.forward_head(feats, pre_logits=True).shape == (2, 128)
    assert m(x).shape == (2, 7)
    assert m.get_classifier().out_features == 7
    m.reset_classifier(3)
    assert m(x).shape == (2, 3)
    m.reset_classifier(0)
    assert m(x).shape == (2, 128)
    assert [f["num_chs"] for f in m.feature_info] == [16, 32, 64, 128]
    assert [f["reduction"] for f in m.feature_info] == [1, 2, 4, 8]


def test_features_only_and_out_indices():
    m = convattn.create_model("resnet50", features_only=True, out_indices=(1, 3)).eval()
    assert isinstance(m, FeatureListNet)
    with torch.no_grad():
        outs = m(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [512, 2048] == m.feature_info.channels()
    assert m.feature_info.reduction() == [8, 32]
    assert [o.shape[-1] for o in outs] == [8, 2]
    with pytest.raises(ValueError, match="out_indices"):
        convattn.create_model("resnet_nano", features_only=True, out_indices=(4,))
    with pytest.raises(ValueError, match="features_only"):
        convattn.create_model("resnet_nano", out_indices=(1,))


def test_bad_input_names_argument():
    m = convattn.create_model("resnet_nano")
    with pytest.raises(ValueError, match="3 channels"):
        m(torch.randn(1, 4, 32, 32))
    with pytest.raises(TypeError, match="floating"):
        m(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


@pytest.mark.parametrize("wrapper", ["plain", "model", "state_dict", "ddp", "safetensors"])
def test_checkpoint_layouts_load(tmp_path, wrapper):
    src = convattn.create_model("resnet_nano").eval()
    sd = src.state_dict()
    path = tmp_path / "ckpt.pth"
    if wrapper == "plain":
        torch.save(sd, path)
    elif wrapper == "model":
        torch.save({"model": sd, "epoch": 3, "optimizer": {}}, path)
    elif wrapper == "state_dict":
        torch.save({"state_dict": sd}, path)
    elif wrapper == "ddp":
        torch.save({"model": {f"module.{k}": v for k, v in sd.items()}}, path)
    else:
        from safetensors.torch import save_file

        path = tmp_path / "ckpt.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    dst = convattn.create_model("resnet_nano", checkpoint_path=path).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(dst(x), src(x))


def test_checkpoint_new_num_classes_and_in_chans(tmp_path, caplog):
    src = convattn.create_model("resnet_nano").eval()
    path = tmp_path / "ckpt.pth"
    torch.save({"model": src.state_dict()}, path)
    with caplog.at_level(logging.WARNING, logger="convattn"):
        dst = convattn.create_model(
            "resnet_nano", checkpoint_path=path, num_classes=5, in_chans=1, reset_classifier=True
        )
    assert "re-initialised" in caplog.text and "Adapted stem" in caplog.text
    assert dst.fc.out_features == 5
    torch.testing.assert_close(dst.conv1.weight, src.conv1.weight.sum(1, keepdim=True))
    torch.testing.assert_close(dst.layer4[0].conv2.weight, src.layer4[0].conv2.weight)
    feats = convattn.create_model("resnet_nano", checkpoint_path=path, features_only=True)
    assert len(feats(torch.randn(1, 3, 32, 32))) == 4


def test_class_count_comes_from_the_checkpoint(tmp_path):
    """A 10-class checkpoint builds a 10-class model; no head is silently re-initialised."""
    src = convattn.create_model("resnet_nano", num_classes=10, in_chans=1).eval()
    x = torch.randn(2, 1, 32, 32)
    for path in (tmp_path / "own.pth", tmp_path / "own.safetensors"):
        if path.suffix == ".pth":
            torch.save({"model": src.state_dict()}, path)
        else:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
        dst = convattn.create_model("resnet_nano", checkpoint_path=path).eval()
        assert (dst.num_classes, dst.in_chans) == (10, 1)
        torch.testing.assert_close(dst(x), src(x))
        # Another class count is an error naming the way out...
        with pytest.raises(ValueError, match=r"10-class classifier.*reset_classifier=True"):
            convattn.create_model("resnet_nano", checkpoint_path=path, num_classes=3)
        with pytest.raises(ValueError, match="reset_classifier"):
            load_checkpoint(convattn.create_model("resnet_nano", in_chans=1), path)
        # ...unless a fresh head is asked for; the backbone is still loaded.
        fresh = convattn.create_model(
            "resnet_nano", checkpoint_path=path, num_classes=3, reset_classifier=True
        )
        assert fresh.fc.out_features == 3
        torch.testing.assert_close(fresh.layer4[0].conv2.weight, src.layer4[0].conv2.weight)


@pytest.mark.parametrize("content", [b"", b"\x00" * 7, b"garbage bytes that are not a header"])
def test_unreadable_safetensors_is_one_clear_error(tmp_path, content):
    from convattn.models import read_model_info
    from convattn.models._serialization import checkpoint_info

    good = tmp_path / "good.safetensors"
    from convattn.models import save_model

    save_model(convattn.create_model("resnet_nano"), good)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(content)
    for path in (truncated, bad):
        for call in (
            lambda p: convattn.create_model("resnet_nano", checkpoint_path=p),
            read_state_dict,
            read_model_info,
            checkpoint_info,
        ):
            with pytest.raises(ValueError, match="is not a readable checkpoint") as err:
                call(path)
            assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_unreadable_pth_does_not_relay_weights_only_advice(tmp_path):
    import argparse

    pickled = tmp_path / "objects.pth"  # e.g. a training script's argparse options
    state = convattn.create_model("resnet_nano").state_dict()
    torch.save({"model": state, "args": argparse.Namespace(lr=0.1)}, pickled)
    for path, reason in ((pickled, "Python objects"), (tmp_path / "junk.pth", "corrupt")):
        if not path.exists():
            path.write_bytes(b"junk")
        with pytest.raises(ValueError, match=reason) as err:
            convattn.create_model("resnet_nano", checkpoint_path=path)
        assert str(path) in str(err.value)
        assert "weights_only" not in str(err.value) and err.value.__cause__ is None


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint_path"):
        convattn.create_model("resnet_nano", checkpoint_path=tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        read_state_dict(bad)
    other = tmp_path / "other.pth"
    torch.save({"model": convattn.create_model("resnet26").state_dict()}, other)
    with pytest.raises(RuntimeError, match="missing keys"):
        convattn.create_model("resnet_nano", checkpoint_path=other)


def test_adapt_input_conv_keeps_scale():
    w = torch.randn(4, 3, 3, 3)
    torch.testing.assert_close(adapt_input_conv(1, w), w.sum(1, keepdim=True))
    assert adapt_input_conv(5, w).shape == (4, 5, 3, 3)
    # With a multiple of 3 channels a constant input gives the same response as before.
    torch.testing.assert_close(adapt_input_conv(6, w).sum(1), w.sum(1))


def test_save_model_round_trip_with_metadata(tmp_path):
    from convattn.models import read_model_info, save_model

    src = convattn.create_model("resnet_nano", num_classes=4).eval()
    path = save_model(src, tmp_path / "nano.safetensors", num_classes=4)
    info = read_model_info(path)
    assert info["model"] == "resnet_nano" and info["config"] == {"num_classes": 4}
    dst = convattn.create_model(info["model"], checkpoint_path=path, **info["config"]).eval()
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(dst(x), src(x))
    with pytest.raises(ValueError, match="safetensors"):
        save_model(src, tmp_path / "nano.pth")


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    from convattn.models import _serialization, save_model

    model = convattn.create_model("resnet_nano")
    path = save_model(model, tmp_path / "last.safetensors")
    before = path.read_bytes()

    def exploding_save(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", exploding_save)
    with pytest.raises(OSError, match="disk full"):
        _serialization.save_model(model, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]


def test_checkpoint_key_preference(tmp_path):
    """A cfg's checkpoint_key (e.g. 'model_ema' for glnet_16g) wins when a file holds several."""
    a = convattn.create_model("resnet_nano").state_dict()
    b = {k: v + 1 if v.is_floating_point() else v for k, v in a.items()}
    path = tmp_path / "both.pth"
    torch.save({"model": a, "model_ema": b}, path)
    assert torch.equal(read_state_dict(path)["conv1.weight"], a["conv1.weight"])
    got = read_state_dict(path, prefer_key="model_ema")
    assert torch.equal(got["conv1.weight"], b["conv1.weight"])
    assert convattn.get_pretrained_cfg("glnet_16g")["checkpoint_key"] == "model_ema"


def test_convert_cli_writes_our_format_from_official_file(tmp_path, capsys):
    from convattn.cli import main
    from convattn.models import read_model_info

    src = convattn.create_model("resnet_nano").eval()
    official = tmp_path / "official.pth"
    torch.save({"model": {f"module.{k}": v for k, v in src.state_dict().items()}}, official)
    out = tmp_path / "ours.safetensors"
    assert (
        main(["convert", "--model", "resnet_nano", "--official", str(official), "--out", str(out)])
        == 0
    )
    assert read_model_info(out)["model"] == "resnet_nano"
    dst = convattn.create_model("resnet_nano", checkpoint_path=out).eval()
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(dst(x), src(x))
    assert (
        main(["convert", "--model", "resnet_nano", "--official", "missing.pth", "--out", str(out)])
        == 2
    )
    assert "no such file" in capsys.readouterr().err


# --- pretrained=True and checkpoint filters -------------------------------------------------------


@pytest.mark.parametrize("name", ["glnet_4g", "resnet_nano"])
def test_pretrained_true_raises_and_says_how_to_load(name):
    from convattn.models import model_entrypoint

    with pytest.raises(ValueError, match="checkpoint_path=FILE") as info:
        convattn.create_model(name, pretrained=True)
    assert "never downloads" in str(info.value)
    if name == "glnet_4g":  # names the release to download
        assert "glnet_4g.pth" in str(info.value)
    with pytest.raises(ValueError, match="'pretrained=True' is not supported"):
        model_entrypoint(name)(pretrained=True)
    assert isinstance(convattn.create_model(name, pretrained=False), torch.nn.Module)


def test_checkpoint_filter_is_the_models_own_hook(tmp_path):
    class Renamed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(2, 2)

        def checkpoint_filter(self, state_dict):
            return {k.replace("official_fc", "fc"): v for k, v in state_dict.items()}

    source = Renamed()
    torch.save({f"official_{k}": v for k, v in source.state_dict().items()}, tmp_path / "w.pth")
    target = Renamed()
    convattn.models.load_checkpoint(target, tmp_path / "w.pth")
    torch.testing.assert_close(target.fc.weight, source.fc.weight)
    plain = torch.nn.Linear(2, 2)  # no hook: keys are taken as they are
    with pytest.raises(RuntimeError, match="does not fit"):
        convattn.models.load_checkpoint(plain, tmp_path / "w.pth")
