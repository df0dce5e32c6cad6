"""Checkpoints on the command line: eval scores a run as the run did, convert keeps the
checkpoint's classifier, export names its format, and a broken file is one clear line."""

from __future__ import annotations

import json
import random
import warnings

import pytest
import torch
from safetensors.torch import save_file

from convattn.cli import main
from convattn.models import create_model, read_model_info, save_model
from convattn.train import TrainConfig, evaluate_checkpoint, train


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _one_line_error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if "Warning" not in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny finished run whose preprocessing differs from every default: 12 px, data seed 3
    (which picks the synthetic samples), the data's own mean/std."""
    out = tmp_path_factory.mktemp("eval") / "run"
    cfg = TrainConfig(
        model="resnet_nano",
        data="synthetic:shapes:32:24",
        img_size=12,
        seed=3,
        epochs=1,
        batch_size=16,
        workers=0,
        aug="none",
        quiet=True,
        plots=False,
        out=str(out),
    )
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    result = train(cfg)
    torch.set_num_threads(before)
    return out, result["history"][-1]


@pytest.mark.parametrize("name", ["resume.pt", "last.safetensors"])
def test_eval_uses_the_runs_preprocessing_and_split(run, name, capsys):
    folder, logged = run
    # The command of a user who names model and data: the run's size, stats and split are used.
    argv = ["eval", "--model", "resnet_nano", "--checkpoint", str(folder / name)]
    assert main([*argv, "--data", "synthetic:shapes:32:24", "--workers", "0", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["loss"] == pytest.approx(logged["val_loss"], rel=1e-5)
    assert result["top1"] == pytest.approx(logged["val_top1"])
    assert (result["model"], result["data"]) == ("resnet_nano", "synthetic:shapes:32:24")
    assert (result["img_size"], result["seed"], result["count"]) == (12, 3, 24)
    assert result["preprocessing"] == "checkpoint"
    # Neither --model nor --data: both come from the checkpoint; the output says what it used.
    assert main(["eval", "--checkpoint", str(folder / name), "--workers", "0"]) == 0
    text = capsys.readouterr().out
    assert "preprocessing (checkpoint): 12px" in text and "split seed 3" in text


def test_eval_warns_when_the_user_overrides_the_run(run):
    folder, _ = run
    with pytest.warns(UserWarning, match=r"img_size=16 overrides the checkpoint's img_size=12"):
        result = evaluate_checkpoint(folder / "resume.pt", img_size=16, workers=0)
    assert result["img_size"] == 16 and "overridden" in result["preprocessing"]
    with pytest.warns(UserWarning, match="seed=0 overrides"):
        evaluate_checkpoint(folder / "last.safetensors", seed=0, workers=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # repeating the run's own values is not an override
        evaluate_checkpoint(folder / "last.safetensors", img_size=12, seed=3, workers=0)


def test_export_reads_a_training_runs_checkpoint(run, tmp_path, capsys):
    """Training facts in the description (epoch, data, mean...) are not model options."""
    folder, _ = run
    out = tmp_path / "run.pt2"
    argv = ["export", "--checkpoint", str(folder / "last.safetensors"), "--out", str(out)]
    assert main([*argv, "--img-size", "12"]) == 0
    assert out.is_file() and "wrote" in capsys.readouterr().out


def test_convert_keeps_the_checkpoints_classifier(tmp_path, capsys):
    src = create_model("resnet_nano", num_classes=10).eval()
    own = tmp_path / "own.safetensors"  # plain safetensors, no description
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(own))
    out = tmp_path / "ours.safetensors"
    argv = ["convert", "--model", "resnet_nano", "--official", str(own), "--out", str(out)]
    assert main(argv) == 0
    info = read_model_info(out)
    assert info["config"]["num_classes"] == 10
    loaded = create_model("resnet_nano", checkpoint_path=out).eval()
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded(x), src(x))
    capsys.readouterr()
    # Another class count is refused without --reset-classifier, and nothing is written.
    other = tmp_path / "other.safetensors"
    argv[-1] = str(other)
    err = _one_line_error(capsys, [*argv, "--num-classes", "5"])
    assert "10-class classifier" in err and "--reset-classifier" in err and not other.exists()
    assert main([*argv, "--num-classes", "5", "--reset-classifier"]) == 0
    assert read_model_info(other)["config"]["num_classes"] == 5


def _broken_files(tmp_path) -> list:
    good = save_model(create_model("resnet_nano", num_classes=4), tmp_path / "good.safetensors")
    data = good.read_bytes()
    files = {
        "truncated": data[: len(data) // 2],
        "random": random.Random(0).randbytes(300),
        "empty": b"",
    }
    paths = []
    for name, content in files.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(content)
        paths.append(path)
    return paths


def test_broken_checkpoint_is_one_clear_line_everywhere(tmp_path, capsys):
    torch.manual_seed(0)
    for path in _broken_files(tmp_path):
        for argv in (
            ["eval", "--checkpoint", str(path), "--data", "synthetic:shapes:8:8"],
            ["eval", "--model", "resnet_nano", "--checkpoint", str(path), "--data", "digits"],
            ["export", "--checkpoint", str(path), "--out", str(tmp_path / "m.onnx")],
            ["export", "--model", "resnet_nano", "--checkpoint", str(path), "--out", "m.pt2"],
            [
                "convert",
                "--model",
                "resnet_nano",
                "--official",
                str(path),
                "--out",
                "x.safetensors",
            ],
            ["viz", "--what", "rates", "--checkpoint", str(path)],
            ["viz", "--what", "rates", "--model", "acmix_resnet_nano", "--checkpoint", str(path)],
        ):
            err = _one_line_error(capsys, argv)
            assert f"{path} is not a readable checkpoint" in err, (argv, err)
            assert "does not name its model" not in err


def test_unreadable_pth_error_gives_no_weights_only_advice(tmp_path, capsys):
    import argparse

    path = tmp_path / "release.pth"
    state = create_model("resnet_nano", num_classes=4).state_dict()
    torch.save({"model": state, "args": argparse.Namespace(lr=0.1)}, path)
    argv = ["eval", "--model", "resnet_nano", "--checkpoint", str(path), "--data", "digits"]
    err = _one_line_error(capsys, argv)
    assert "not a readable checkpoint" in err and "Python objects" in err
    assert "weights_only" not in err


def test_export_states_or_refuses_the_format(tmp_path, capsys):
    for out, extra, needle in (
        ("m.txt", [], "name an .onnx or a .pt2 file"),
        ("m.onnx", ["--format", "pt2"], "--format is pt2"),
    ):
        argv = ["export", "--model", "resnet_nano", "--out", str(tmp_path / out), *extra]
        assert needle in _one_line_error(capsys, argv)
        assert not (tmp_path / out).exists()
