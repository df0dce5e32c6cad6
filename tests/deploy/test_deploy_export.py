"""Export to ONNX / torch.export programs, verified in onnxruntime and torch.export.load.

The export-time lowerings are checked against what they replace; every registered model exports
in deploy form and the runtime reproduces PyTorch (nano models of each family in the default suite,
the others marked slow); dynamic batch/size, the refusal of sizes a family cannot support, atomic
writes and the command-line entry point are tested on small models.
"""

from __future__ import annotations

import argparse
import os

import pytest
import torch
from torch import nn

import convattn
from convattn.deploy import export as export_mod
from convattn.deploy import export_command, export_model, reparameterize_model
from convattn.deploy.export import ExportError, add_export_arguments, dynamic_size_blockers
from convattn.models import save_model

ALL = convattn.list_models()
# One model per family (and per exported operator) in the default suite; GLNet is exported in
# test_glnet_dynamic_size_in_onnx.
DEFAULT_ONNX = {"xvolution_resnet_nano", "acmix_resnet_nano", "acmix_swin_nano"}


def _size(name: str) -> int:
    return 32 if "nano" in name else 64


def _model(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return convattn.create_model(name, num_classes=10, **kwargs).eval()


def _files(folder) -> list[str]:
    return sorted(os.listdir(folder))


# --- lowerings ----------------------------------------------------------------------------------------


class _CeilCrop(nn.Module):
    """Crops to ceil(H/2) x ceil(W/2) via ``-(-h // 2)``: ONNX's default floordiv truncates."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return self.conv(x)[..., : -(-h // 2), : -(-w // 2)]


def test_ceil_division_of_dynamic_sizes_survives_onnx(tmp_path):
    result = export_model(
        _CeilCrop(), tmp_path / "crop.onnx", img_size=(8, 8), dynamic_batch=True, dynamic_size=True
    )
    assert result.checks[-1][0] == (2, 3, 13, 11)  # the odd second size was checked
    assert result.max_deviation < 1e-5


# --- every registered model ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", [n if n in DEFAULT_ONNX else pytest.param(n, marks=pytest.mark.slow) for n in ALL]
)
def test_every_model_exports_to_onnx_in_deploy_form(name, tmp_path):
    model = _model(name)
    path = tmp_path / f"{name}.onnx"
    result = export_model(model, path, img_size=_size(name))
    assert path.is_file() and _files(tmp_path) == [path.name]
    assert result.max_deviation < 1e-4 and result.checks[0][0] == (1, 3, _size(name), _size(name))
    import onnx

    graph = onnx.load(str(path)).graph
    assert not any(node.domain.startswith("convattn") for node in graph.node)  # no custom op
    if name.startswith("acmix"):
        # Exporting must not leak traced (fake) tensors into ACmix's caches: eager still works.
        x = torch.randn(1, 3, _size(name), _size(name))
        with torch.no_grad():
            out = model(x)
        assert type(out) is torch.Tensor and torch.isfinite(out).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_every_model_round_trips_through_pt2(name, tmp_path):
    result = export_model(_model(name), tmp_path / f"{name}.pt2", "pt2", img_size=_size(name))
    assert result.max_deviation < 1e-4


def test_pt2_round_trip_needs_no_custom_operator(tmp_path):
    model = _model("acmix_resnet_nano")
    path = tmp_path / "acmix.pt2"
    result = export_model(model, path, "pt2", img_size=16, dynamic_batch=True)
    assert result.dynamic_batch and [c[0][0] for c in result.checks] == [2, 1, 3]
    program = torch.export.load(str(path))
    assert not any("convattn" in str(node.target) for node in program.graph.nodes)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-4, atol=1e-5)


# --- dynamic shapes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_dynamic_batch_and_size(fmt, tmp_path):
    path = tmp_path / f"resnet.{fmt}"
    result = export_model(
        _model("resnet_nano"), path, fmt, img_size=32, dynamic_batch=True, dynamic_size=True
    )
    shapes = [shape for shape, _ in result.checks]
    assert shapes == [(2, 3, 32, 32), (1, 3, 32, 32), (3, 3, 32, 32), (2, 3, 37, 35)]
    assert set(result.ranges) == {"batch", "height", "width"}
    assert result.max_deviation < 1e-5 and "dynamic batch and size" in result.summary()


def test_glnet_dynamic_size_in_onnx(tmp_path):
    """GLNet pools its slots adaptively: the file must pool correctly at other (odd) sizes."""
    model = _model("glnet_nano", depths=(1, 1, 1, 1))
    result = export_model(model, tmp_path / "glnet.onnx", img_size=32, dynamic_size=True)
    assert result.checks[-1][0] == (1, 3, 37, 35) and result.max_deviation < 1e-4
    assert result.ranges["height"][0] <= 32


@pytest.mark.parametrize("name", ["acmix_swin_nano", "acmix_resnet_nano", "swin_tiny"])
def test_families_without_dynamic_size_say_so(name, tmp_path):
    model = convattn.create_model(name)
    assert dynamic_size_blockers(model)
    with pytest.raises(ValueError, match="dynamic input size"):
        export_model(model, tmp_path / "m.onnx", dynamic_size=True)
    assert _files(tmp_path) == []
    assert dynamic_size_blockers(convattn.create_model("glnet_nano")) == []


class _LoopsOverBatch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x[i : i + 1]) for i in range(x.shape[0])])


def test_specialised_batch_is_refused(tmp_path):
    with pytest.raises(ValueError, match="dynamic batch: tracing specialised it to 2"):
        export_model(_LoopsOverBatch(), tmp_path / "m.onnx", img_size=4, dynamic_batch=True)
    assert _files(tmp_path) == []


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_xvolution_dynamic_batch_and_size(fmt, tmp_path):
    """The eager CPU path of X-volution loops over batch chunks; traced, it must not (it would
    bake the batch into the graph): ``_chunked_inference`` is off under torch.compiler."""
    result = export_model(
        _model("xvolution_resnet_nano"),
        tmp_path / f"x.{fmt}",
        fmt,
        img_size=16,
        dynamic_batch=True,
        dynamic_size=True,
    )
    assert [shape[0] for shape, _ in result.checks] == [2, 1, 3, 2]
    assert result.max_deviation < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
@pytest.mark.parametrize("name", [n for n in ALL if not n.startswith(("swin", "acmix"))])
def test_dynamic_size_where_supported(name, fmt, tmp_path):
    result = export_model(
        _model(name), tmp_path / f"m.{fmt}", fmt, img_size=_size(name), dynamic_size=True
    )
    assert result.max_deviation < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_dynamic_batch_every_model(name, tmp_path):
    result = export_model(
        _model(name), tmp_path / "m.onnx", img_size=_size(name), dynamic_batch=True
    )
    assert [c[0][0] for c in result.checks] == [2, 1, 3] and result.max_deviation < 1e-4


# --- failures leave nothing behind ----------------------------------------------------------------


def test_failed_verification_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    def wrong_runtime(path):
        return lambda x: [torch.zeros(x.shape[0], 2)]

    monkeypatch.setattr(export_mod, "_onnxruntime_runner", wrong_runtime)
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    path = tmp_path / "model.onnx"
    with pytest.raises(ExportError, match="does not reproduce the model"):
        export_model(model, path, img_size=8)
    assert _files(tmp_path) == []
    path.write_bytes(b"previous export")
    with pytest.raises(ExportError):
        export_model(model, path, img_size=8)
    assert _files(tmp_path) == ["model.onnx"] and path.read_bytes() == b"previous export"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(format="tflite"), "'format'"),
        (dict(img_size=(8,)), "'img_size'"),
        (dict(img_size=0), "'img_size'"),
        (dict(batch_size=0), "'batch_size'"),
        (dict(rtol=0.0), "'rtol'"),
        (dict(dtype=torch.int8), "'dtype'"),
        (dict(dtype=torch.bfloat16), "no bfloat16 convolution"),
    ],
)
def test_invalid_arguments(kwargs, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        export_model(nn.Conv2d(3, 3, 1), tmp_path / "m.onnx", **kwargs)
    assert _files(tmp_path) == []


# --- half precision -------------------------------------------------------------------------------------

HALF_CASES = [
    ("xvolution_resnet_nano", "onnx", torch.float16),
    ("acmix_swin_nano", "pt2", torch.bfloat16),
] + [
    pytest.param(name, fmt, dtype, marks=pytest.mark.slow)
    for name in ("resnet_nano", "acmix_resnet_nano", "acmix_swin_nano", "glnet_nano")
    for fmt, dtype in (("onnx", torch.float16), ("pt2", torch.bfloat16))
    if (name, fmt) != ("acmix_swin_nano", "pt2")
]


@pytest.mark.parametrize("name,fmt,dtype", HALF_CASES)
def test_half_precision_export_is_verified_against_float32(name, fmt, dtype, tmp_path):
    """float16 ONNX runs in onnxruntime's CPU provider; bfloat16 only as a pt2 program."""
    path = tmp_path / f"m.{fmt}"
    result = export_model(_model(name), path, fmt, img_size=32, dtype=dtype, dynamic_batch=True)
    assert result.dtype == str(dtype).removeprefix("torch.")
    # Measured on the nano models: ~1e-3 in float16, ~1e-2 in bfloat16 (8 significant bits).
    assert 0 < result.max_deviation < (5e-3 if dtype == torch.float16 else 3e-2)
    if fmt == "pt2":
        program = torch.export.load(str(path))
        (user_input,) = program.graph_signature.user_inputs
        node = next(n for n in program.graph.nodes if n.name == user_input)
        assert node.meta["val"].dtype == dtype


def test_export_does_not_modify_the_model(tmp_path):
    model = convattn.create_model("resnet_nano", num_classes=3)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = export_model(model, tmp_path / "m.pt2", "pt2", img_size=16)
    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert result.runtime_deviation <= result.max_deviation + 1e-6


# --- command line ---------------------------------------------------------------------------------------


def test_export_command_reads_our_checkpoint(tmp_path, capsys):
    deployed = reparameterize_model(convattn.create_model("resnet_nano", num_classes=4))
    ckpt = save_model(deployed, tmp_path / "w.safetensors", num_classes=4, deploy=True)
    parser = add_export_arguments(argparse.ArgumentParser())
    out = tmp_path / "w.pt2"
    args = parser.parse_args(
        ["--checkpoint", str(ckpt), "--out", str(out), "--img-size", "24", "20", "--dynamic-batch"]
    )
    assert export_command(args) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "pt2" in printed and "dynamic batch" in printed
    module = torch.export.load(str(out)).module()
    x = torch.randn(3, 3, 24, 20)
    with torch.no_grad():
        torch.testing.assert_close(module(x), deployed.eval()(x), rtol=1e-4, atol=1e-5)


def test_export_command_half_precision(tmp_path, capsys):
    parser = add_export_arguments(argparse.ArgumentParser())
    out = tmp_path / "h.onnx"
    args = ["--model", "resnet_nano", "--out", str(out), "--img-size", "16", "--dtype", "float16"]
    assert export_command(parser.parse_args(args)) == 0
    assert "(onnx, float16," in capsys.readouterr().out
    import onnx

    graph = onnx.load(str(out)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


def test_export_command_errors(tmp_path):
    parser = add_export_arguments(argparse.ArgumentParser())
    with pytest.raises(ValueError, match="unknown model"):
        export_command(parser.parse_args(["--model", "nope", "--out", str(tmp_path / "a.onnx")]))
    with pytest.raises(ValueError, match="give --model"):
        export_command(parser.parse_args(["--out", str(tmp_path / "a.onnx")]))
