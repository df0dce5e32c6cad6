"""``convattn train``, ``eval`` and ``demo`` end to end on tiny settings; help; error messages."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from convattn.cli import main
from convattn.models import create_model, save_model

TINY = ["--data", "synthetic:shapes:32:16", "--img-size", "16", "--batch-size", "16"]
FAST = ["--workers", "0", "--aug", "none", "--quiet", "--no-plots"]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("command", ["demo", "train", "eval", "models", "convert"])
def test_help_is_complete(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: convattn {command}")
    if command == "train":
        for flag in ["--model", "--data", "--epochs", "--batch-size", "--lr", "--opt", "--amp"]:
            assert flag in text
        for flag in ["--ema", "--drop-path", "--img-size", "--out", "--resume", "--seed"]:
            assert flag in text
        for flag in ["--config", "--accum-steps", "--clip-grad", "--no-decay-names", "--mixup"]:
            assert flag in text
    if command == "eval":
        for flag in ["--model", "--checkpoint", "--data", "--img-size", "--json"]:
            assert flag in text
    if command == "demo":
        assert "--quick" in text and "--operators" in text


def _one_line_error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "--model", "resnet_nano", "--epochs", "0"], "'epochs'"),
        (["train", "--model", "resnet_nano", "--lr", "-1"], "'lr'"),
        (["train", "--model", "no_such_net"], "convattn models"),
        (["train", "--model", "resnet_nano", "--data", "bogus:thing"], "Accepted forms"),
        (["train", "--model", "resnet_nano", "--data", "/no/such/folder"], "/no/such/folder"),
        (["train", "--model", "resnet_nano", "--config", "/no/such.yaml"], "/no/such.yaml"),
        (["train", "--data", "digits"], "'model' is required"),
        (["eval", "--checkpoint", "/no/such.safetensors", "--data", "digits"], "not found"),
        (["eval", "--model", "nope", "--checkpoint", "x", "--data", "digits"], "convattn models"),
    ],
)
def test_invalid_arguments_give_one_line_errors(argv, needle, capsys):
    assert needle in _one_line_error(capsys, argv)


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--epochs", "many"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "invalid int value" in err


def test_train_then_eval_end_to_end(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--model", "resnet_nano", *TINY, *FAST, "--epochs", "2", "--out", str(run)]
    argv += ["--ema", "--opt", "sgd", "--lr", "0.05"]
    assert main(argv) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["opt"] == "sgd" and saved["ema"] is True and saved["img_size"] == 16

    # The last checkpoint names its model, size and normalisation: --model is optional.
    capsys.readouterr()
    code = main(["eval", "--checkpoint", str(run / "last.safetensors"), "--data", TINY[1]])
    code += main(
        ["eval", "--checkpoint", str(run / "last.safetensors"), "--data", TINY[1], "--json"]
    )
    assert code == 0
    *text, as_json = capsys.readouterr().out.strip().splitlines()
    result = json.loads(as_json)
    assert (
        "preprocessing (checkpoint): 16px" in text[0]
        and "top-1" in text[1]
        and result["count"] == 16
        and result["model"] == "resnet_nano"
    )
    assert result["top1"] == pytest.approx(rows[-1]["val_top1"])
    assert result["loss"] == pytest.approx(rows[-1]["val_loss"], rel=1e-5)

    # --resume auto on the finished run trains nothing more; without it the folder is protected.
    assert main([*argv, "--resume", "auto"]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert "--resume auto" in _one_line_error(capsys, argv)
    # Resuming with an optimiser the state does not fit is refused in one line.
    assert "opt='sgd'" in _one_line_error(capsys, [*argv, "--opt", "adamw", "--resume", "auto"])


def test_train_from_config_file(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            dict(
                model="resnet_nano",
                data="synthetic:shapes:32:16",
                img_size=16,
                batch_size=16,
                epochs=3,
                lr=1e-3,
                workers=0,
                quiet=True,
                plots=False,
            )
        )
    )
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--epochs", "1", "--out", str(out)]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["epochs"] == 1 and saved["lr"] == 1e-3 and saved["batch_size"] == 16


def test_eval_official_style_checkpoint(tmp_path, capsys):
    # An official release: a .pth holding {"model": state_dict}, evaluated with --model.
    model = create_model("resnet_nano", num_classes=4)
    path = tmp_path / "official.pth"
    torch.save({"model": model.state_dict(), "epoch": 300}, path)
    assert (
        main(
            [
                "eval",
                "--model",
                "resnet_nano",
                "--checkpoint",
                str(path),
                "--data",
                TINY[1],
                "--img-size",
                "16",
                "--workers",
                "0",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["count"] == 16
    # Without --model a foreign file cannot be placed.
    assert "--model" in _one_line_error(
        capsys, ["eval", "--checkpoint", str(path), "--data", TINY[1]]
    )


def test_eval_class_count_mismatch(tmp_path, capsys):
    model = create_model("resnet_nano", num_classes=10)
    path = save_model(model, tmp_path / "ten.safetensors", model_name="resnet_nano", num_classes=10)
    err = _one_line_error(capsys, ["eval", "--checkpoint", str(path), "--data", TINY[1]])
    assert "10 classes" in err


def test_demo_quick(tmp_path, capsys):
    out = tmp_path / "demo"
    models = ["resnet_nano", "xvolution_resnet_nano", "glnet_nano"]
    assert main(["demo", "--quick", "--out", str(out), "--models", *models]) == 0
    report = (out / "report.md").read_text()
    for name in models:
        assert f"| {name} |" in report
    assert "| xvolution_resnet_nano (deploy) |" in report and "**pass**" in report
    rows = {
        line.split("|")[1].strip(): line.split("|")[2]
        for line in report.splitlines()[4:]
        if line.startswith("| ") and "model" not in line
    }
    assert rows["xvolution_resnet_nano (deploy)"] != rows["xvolution_resnet_nano"]  # params
    for png in ("accuracy.png", "latency.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    # The slot maps of the trained glnet_nano (convattn.viz) are in the report.
    slot_figure = "glnet_nano-slots-stages.1.blocks.0.png"
    assert (out / slot_figure).read_bytes()[:4] == b"\x89PNG"
    assert f"![GLMix slot maps of glnet_nano]({slot_figure})" in report
    assert "## What GLMix learned" in report
    assert "deploy check" in capsys.readouterr().out


def test_demo_operators_mode(capsys):
    assert main(["demo", "--operators", "--size", "9", "--channels", "32"]) == 0
    out = capsys.readouterr().out
    assert "xvolution" in out and "OK" in out and "FAILED" not in out


def test_models_command_still_works(capsys):
    assert main(["models", "resnet_nano", "--no-macs"]) == 0
    assert "resnet_nano" in capsys.readouterr().out


def test_demo_skips_optional_model_when_over_budget(tmp_path, monkeypatch):
    from convattn import demo

    monkeypatch.setattr(demo, "DEMO_MODELS", ("resnet_nano", "acmix_swin_nano"))
    monkeypatch.setattr(demo, "TIME_BUDGET_S", 0.0)
    assert demo.run_demo(out=tmp_path, quick=True) == 0
    report = (tmp_path / "report.md").read_text()
    assert "| resnet_nano |" in report and "| acmix_swin_nano |" not in report
    assert "Skipped to stay within" in report and not (tmp_path / "acmix_swin_nano").exists()


def test_demo_deploy_check_cannot_pass_vacuously(monkeypatch):
    import copy

    from torch.utils.data import DataLoader, TensorDataset

    from convattn import deploy
    from convattn.demo import _deploy_check

    model = create_model("xvolution_resnet_nano", num_classes=3).eval()
    loader = DataLoader(TensorDataset(torch.rand(4, 3, 16, 16), torch.zeros(4, dtype=torch.long)))
    normalise = torch.nn.Identity()
    result = _deploy_check(model, loader, normalise)
    assert result["passed"] and result["modules"] >= 2 and result["max_rel_dev"] < 1e-5
    # A "re-parameterisation" that changes nothing must fail the check.
    monkeypatch.setattr(deploy, "reparameterize_model", lambda m: copy.deepcopy(m))
    assert not _deploy_check(model, loader, normalise)["passed"]


def test_train_with_stage_ops_records_and_rebuilds_the_model(tmp_path, capsys):
    from safetensors import safe_open

    run = tmp_path / "run"
    ops = "conv,conv,xvolution,conv"
    argv = ["train", "--model", "resnet_nano", "--stage-ops", ops, *TINY, *FAST]
    argv += ["--epochs", "1", "--out", str(run)]
    assert main(argv) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"] == "resnet_nano" and saved["stage_ops"] == ops
    with safe_open(str(run / "last.safetensors"), framework="pt") as fh:
        keys = set(fh.keys())
    assert "layer3.0.conv1.attn.weight" in keys and "layer2.0.conv1.attn.weight" not in keys

    # The saved config alone rebuilds the same model: re-run from it, and resume it.
    rerun = tmp_path / "rerun"
    assert main(["train", "--config", str(run / "config.yaml"), "--out", str(rerun)]) == 0
    with safe_open(str(rerun / "last.safetensors"), framework="pt") as fh:
        assert set(fh.keys()) == keys
    resume = ["train", "--config", str(run / "config.yaml"), "--epochs", "2", "--resume", "auto"]
    assert main(resume) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    # Resuming with other operators is refused; eval rebuilds the operators from the checkpoint.
    capsys.readouterr()
    other = [*resume, "--epochs", "3", "--stage-ops", "conv,conv,conv,xvolution"]
    assert "stage_ops='conv,conv,xvolution,conv'" in _one_line_error(capsys, other)
    assert main(["eval", "--checkpoint", str(run / "last.safetensors"), "--data", TINY[1]]) == 0


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--model", "resnet_nano", "--stage-ops", "conv,conv,xvol,conv"], "valid operators"),
        (["--model", "resnet_nano", "--stage-ops", "conv,conv"], "one operator per stage"),
        (["--model", "glnet_nano", "--stage-ops", "conv,conv,conv,conv"], "ResNet models"),
    ],
)
def test_stage_ops_errors_are_one_line(tmp_path, capsys, argv, needle):
    full = ["train", *argv, *TINY, *FAST, "--epochs", "1", "--out", str(tmp_path / "r")]
    assert needle in _one_line_error(capsys, full)


def test_models_command_with_stage_ops(capsys):
    assert main(["models", "resnet_nano", "--stage-ops", "conv,conv,xvolution,conv"]) == 0
    with_ops = capsys.readouterr().out
    assert main(["models", "resnet_nano"]) == 0
    assert with_ops != capsys.readouterr().out  # other params and MACs
    assert main(["models", "--stage-ops", "list"]) == 0
    assert "xvolution_inv" in capsys.readouterr().out
    assert "valid operators" in _one_line_error(capsys, ["models", "--stage-ops", "conv,x"])
