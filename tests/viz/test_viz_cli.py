"""``convattn viz`` end to end: each visualisation, options, and one-line errors (exit 2)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from convattn.cli import main
from convattn.models import create_model, save_model


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> str:
    rng = np.random.default_rng(1)
    path = tmp_path_factory.mktemp("img") / "cli.png"
    Image.fromarray((rng.random((32, 32)) * 255).astype(np.uint8), mode="L").save(path)
    return str(path)


def _written(capsys) -> list[str]:
    out = capsys.readouterr().out
    return [line.removeprefix("wrote ") for line in out.splitlines() if line.startswith("wrote ")]


def _png_size(path: str) -> tuple[int, int]:
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["viz", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: convattn viz")
    for flag in ("--model", "--checkpoint", "--image", "--what", "--block", "--out", "--mode"):
        assert flag in text
    for word in ("slots", "attention", "kernels", "rates"):
        assert word in text


@pytest.mark.parametrize(
    ("argv", "size", "name_part"),
    [
        (["--model", "glnet_nano"], (1600, 480), "glnet_nano-slots-stages.1.blocks.0"),
        (
            ["--model", "glnet_nano", "--mode", "clustering", "--block", "stages.0.blocks.0"],
            (1600, 480),
            "glnet_nano-slots-clustering-stages.0.blocks.0",
        ),
        (
            ["--model", "acmix_resnet_nano", "--what", "attention", "--query", "4,28"],
            (640, 440),
            "acmix_resnet_nano-attention-layer3.0.conv2",
        ),
        (
            ["--model", "acmix_pvt_nano", "--what", "attention", "--query", "4,28"],
            (640, 440),
            "acmix_pvt_nano-attention-stages.2.blocks.0.attn",
        ),
        (
            ["--model", "san_nano", "--what", "attention", "--query", "4,28"],
            (640, 440),
            "san_nano-attention-layer2.0.sam",
        ),
        (
            ["--model", "xvolution_resnet_nano", "--what", "kernels", "--block", "0", "--deploy"],
            (1300, 460),
            "xvolution_resnet_nano-kernels-layer3.0.conv1",
        ),
    ],
)
def test_each_visualisation(image_file, tmp_path, capsys, argv, size, name_part):
    code = main(["viz", *argv, "--image", image_file, "--out", str(tmp_path)])
    assert code == 0
    (path,) = _written(capsys)
    assert name_part in path and path.startswith(str(tmp_path))
    assert _png_size(path) == size


def test_rates_need_no_image(tmp_path, capsys):
    assert (
        main(["viz", "--model", "acmix_swin_nano", "--what", "rates", "--out", str(tmp_path)]) == 0
    )
    (path,) = _written(capsys)
    assert path.endswith("acmix_swin_nano-rates.png")


def test_model_taken_from_our_checkpoint(image_file, tmp_path, capsys):
    ckpt = save_model(
        create_model("glnet_nano", num_classes=4), tmp_path / "g.safetensors", num_classes=4
    )
    assert (
        main(["viz", "--checkpoint", str(ckpt), "--image", image_file, "--out", str(tmp_path)]) == 0
    )
    out = capsys.readouterr().out
    assert "glnet_nano" in out and str(ckpt) in out and "random init" not in out


def _one_line_error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("convattn viz: error: ") and "Traceback" not in err
    return err


def test_errors(image_file, tmp_path, capsys):
    base = ["viz", "--image", image_file, "--out", str(tmp_path)]
    err = _one_line_error(capsys, [*base, "--model", "glnet_nano", "--block", "nope"])
    assert "'nope'" in err and "0: stages.0.blocks.0" in err and "2: stages.2.blocks.0" in err
    err = _one_line_error(capsys, [*base, "--model", "glnet_nano", "--block", "7"])
    assert "out of range" in err
    err = _one_line_error(capsys, [*base, "--model", "resnet_nano", "--what", "attention"])
    assert "no attention layers" in err and "nothing these visualisations can show" in err
    err = _one_line_error(capsys, [*base, "--model", "acmix_resnet_nano", "--what", "kernels"])
    assert "--what attention (4 layers" in err and "--what rates" in err
    err = _one_line_error(capsys, ["viz", "--model", "glnet_nano", "--out", str(tmp_path)])
    assert "--image" in err
    err = _one_line_error(capsys, [*base, "--model", "no_such_model"])
    assert "unknown model" in err
    assert "needs" in _one_line_error(capsys, ["viz", "--model", "glnet_nano", "--what", "slots"])
    err = _one_line_error(
        capsys, ["viz", "--model", "glnet_nano", "--image", str(tmp_path / "x.png")]
    )
    assert "x.png" in err
    assert "--model" in _one_line_error(capsys, base)
    assert not list(tmp_path.glob("*.png"))


def test_bad_query_is_a_usage_error(image_file, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["viz", "--model", "glnet_nano", "--image", image_file, "--query", "3"])
    assert exc.value.code == 2
    assert "Y,X" in capsys.readouterr().err
