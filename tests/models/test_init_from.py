"""init_from: hybrids started from ImageNet conv weights (torchvision/timm ResNet-50 and the
official Swin layout), with synthetic state dicts of the right names and shapes."""

from __future__ import annotations

import json
import logging

import pytest
import torch

import convattn
from convattn.models import init_from_pretrained

from helpers import OFFICIAL_KEYS


def torchvision_resnet50_state_dict(num_classes: int = 1000) -> dict[str, torch.Tensor]:
    """Random tensors under torchvision's ``resnet50`` names and shapes (timm uses the same)."""
    g = torch.Generator().manual_seed(0)
    sd: dict[str, torch.Tensor] = {}

    def conv(name, cout, cin, k):
        sd[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=g) * 0.05

    def bn(name, c):
        sd[f"{name}.weight"] = torch.rand(c, generator=g) + 0.5
        sd[f"{name}.bias"] = torch.randn(c, generator=g) * 0.1
        sd[f"{name}.running_mean"] = torch.randn(c, generator=g) * 0.1
        sd[f"{name}.running_var"] = torch.rand(c, generator=g) + 0.5
        sd[f"{name}.num_batches_tracked"] = torch.tensor(100)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    cin = 64
    for stage, (blocks, width) in enumerate(zip([3, 4, 6, 3], [64, 128, 256, 512]), start=1):
        for j in range(blocks):
            p = f"layer{stage}.{j}"
            conv(f"{p}.conv1", width, cin, 1)
            bn(f"{p}.bn1", width)
            conv(f"{p}.conv2", width, width, 3)
            bn(f"{p}.bn2", width)
            conv(f"{p}.conv3", width * 4, width, 1)
            bn(f"{p}.bn3", width * 4)
            if j == 0:
                conv(f"{p}.downsample.0", width * 4, cin, 1)
                bn(f"{p}.downsample.1", width * 4)
            cin = width * 4
    sd["fc.weight"] = torch.randn(num_classes, 2048, generator=g) * 0.01
    sd["fc.bias"] = torch.zeros(num_classes)
    return sd


@pytest.fixture(scope="module")
def resnet50_sd() -> dict[str, torch.Tensor]:
    return torchvision_resnet50_state_dict()


def test_xvolution_resnet50_loads_the_conv_branch(resnet50_sd, caplog):
    with caplog.at_level(logging.INFO, logger="convattn"):
        model = convattn.create_model("xvolution_resnet50", init_from=resnet50_sd)
    report = model.init_report
    assert "loaded" in caplog.text and report.layout == "ours"
    assert report.unused == []  # every ImageNet tensor found its place
    # Stage 3: six blocks, the attention branch (attn + attn_bn's 4 tensors) is all that is new.
    assert len(report.initialised) == 6 * 5
    assert all(k.startswith("layer3.") and ".attn" in k for k in report.initialised)
    for j in range(6):
        src, op = f"layer3.{j}", model.layer3[j].conv2
        assert torch.equal(op.conv.weight, resnet50_sd[f"{src}.conv2.weight"])
        assert torch.equal(op.conv_bn.bias, resnet50_sd[f"{src}.bn2.bias"])
        assert report.mapped[f"{src}.conv2.conv_bn.running_mean"] == f"{src}.bn2.running_mean"
    assert torch.equal(model.layer4[2].conv2.weight, resnet50_sd["layer4.2.conv2.weight"])
    assert torch.equal(model.fc.weight, resnet50_sd["fc.weight"])


def test_acmix_resnet50_loads_everything_around_the_operators(resnet50_sd):
    model = convattn.create_model("acmix_resnet50", num_classes=10, init_from=resnet50_sd)
    report = model.init_report
    assert {"fc.weight", "fc.bias"} <= set(report.initialised)  # 10 classes, not 1000
    assert "fc.weight" in report.unused and report.fraction_loaded > 0.5
    assert 0.5 < report.fraction_used < 0.6  # the 3x3 convs (44% of ResNet-50) have no place
    assert all(".conv2." in k for k in report.unused if k.startswith("layer"))
    assert torch.equal(model.layer1[0].bn2.weight, resnet50_sd["layer1.0.bn2.weight"])


def test_a_bigger_source_classifier_does_not_count(resnet50_sd):
    """An ImageNet-21k head (bigger than the backbone) is not a reason to refuse the backbone."""
    big_head = dict(
        resnet50_sd, **{"fc.weight": torch.zeros(21841, 2048), "fc.bias": torch.zeros(21841)}
    )
    model = convattn.create_model("xvolution_resnet50", init_from=big_head)
    assert model.init_report.unused == ["fc.bias", "fc.weight"]
    assert model.init_report.fraction_used == 1.0 and model.init_report.fraction_loaded > 0.8


def test_path_wrapped_checkpoint_and_in_chans(resnet50_sd, tmp_path):
    path = tmp_path / "resnet50.pth"
    torch.save({"state_dict": resnet50_sd, "epoch": 90}, path)
    model = convattn.create_model("xvolution_resnet50", in_chans=1, init_from=path)
    torch.testing.assert_close(model.conv1.weight, resnet50_sd["conv1.weight"].sum(1, keepdim=True))
    assert "conv1.weight" in model.init_report.loaded and model.init_report.source == str(path)


def test_started_hybrid_computes_what_the_resnet_computes():
    """The attention BN starts at gamma = 0: X-volution started from a ResNet equals the ResNet."""
    source = convattn.create_model("resnet_nano").eval()
    with torch.no_grad():
        for m in source.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    model = convattn.create_model("xvolution_resnet_nano", init_from=source.state_dict()).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x))


def _official_swin_tiny_state_dict() -> dict[str, torch.Tensor]:
    """Official Swin-T names/shapes: the ACmix-Swin-T map minus ACmix's own tensors."""
    keys = json.loads((OFFICIAL_KEYS / "acmix_swin_tiny.json").read_text())["keys"]
    acmix_only = (".attn.fc.", ".attn.dep_conv.", ".attn.rate1", ".attn.rate2")
    g = torch.Generator().manual_seed(0)
    return {
        k: torch.randn(shape, generator=g) if shape else torch.randn((), generator=g)
        for k, shape in keys.items()
        if not any(a in k for a in acmix_only)
    }


def test_swin_family_from_the_official_layout():
    sd = _official_swin_tiny_state_dict()
    assert "layers.0.downsample.reduction.weight" in sd and "head.weight" in sd
    swin = convattn.create_model("swin_tiny", init_from=sd)
    assert swin.init_report.layout == "ours" and swin.init_report.initialised == []
    assert torch.equal(
        swin.layers[0].downsample.reduction.weight, sd["layers.0.downsample.reduction.weight"]
    )
    acmix = convattn.create_model("acmix_swin_tiny", init_from=sd)
    assert all(".attn." in k for k in acmix.init_report.initialised)
    assert not any(k.endswith("relative_position_index") for k in acmix.init_report.initialised)
    assert torch.equal(
        acmix.layers[2].blocks[5].attn.qkv.weight, sd["layers.2.blocks.5.attn.qkv.weight"]
    )


def test_swin_family_from_the_timm_layout():
    """timm's layout: merging at the start of stages 1-3 (layers.{i+1}.downsample), head.fc."""
    official = _official_swin_tiny_state_dict()
    timm_sd = {}
    for k, v in official.items():
        if ".downsample." in k:
            stage = int(k.split(".")[1])
            k = k.replace(f"layers.{stage}.", f"layers.{stage + 1}.", 1)
        timm_sd[k.replace("head.", "head.fc.")] = v
    model = convattn.create_model("acmix_swin_tiny", init_from=timm_sd)
    assert model.init_report.layout == "timm-swin" and model.init_report.unused == []
    assert torch.equal(
        model.layers[2].downsample.norm.weight, timm_sd["layers.3.downsample.norm.weight"]
    )
    assert torch.equal(model.head.weight, timm_sd["head.fc.weight"])


def test_a_mismatch_that_leaves_most_tensors_unloaded_is_an_error(resnet50_sd):
    with pytest.raises(ValueError, match=r"init_from: .* 0% of the model's weights load"):
        convattn.create_model("swin_tiny", init_from=resnet50_sd)
    # ResNet-50 weights into a ResNet-34: the 3x3 convs and BNs fit by name and shape (most of
    # the model's tensors), but most of the checkpoint would be dropped.
    with pytest.raises(ValueError, match=r"of the source's are used; at least 50%"):
        convattn.create_model("xvolution_resnet34", init_from=resnet50_sd)
    model = convattn.create_model("resnet_nano")
    with pytest.raises(TypeError, match="init_from"):
        init_from_pretrained(model, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"init_from.*checkpoint_path"):
        convattn.create_model("resnet_nano", init_from={}, checkpoint_path="x.pth")
