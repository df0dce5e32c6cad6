"""SAN and ACmix-SAN models: official key maps, parameter and MAC counts against the papers, and
official-layout checkpoints against the literal reference."""

import copy
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import convattn
from convattn.bench import count_macs, count_params
from convattn.layers import san as san_layers
from convattn.layers._window_tiles import window_gather
from convattn.layers.acmix import ACmixConvPath
from convattn.layers.san import PatchwiseSelfAttention

from helpers import OFFICIAL_KEYS, assert_close_scaled

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "layers"))
from ref_san import san_reference

DEPTHS = [10, 15, 19]
# Published (SAN paper / official README; ACmix paper table): params (M), GMACs.
PUBLISHED = {
    "san10": (11.8, 1.9),
    "san15": (16.2, 2.6),
    "san19": (20.5, 3.3),
    "acmix_san10": (12.1, 1.9),
    "acmix_san15": (16.6, 2.7),
    "acmix_san19": (21.2, 3.4),
}
_SLOW = pytest.mark.slow


def _spec(depth: int) -> dict:
    return json.loads((OFFICIAL_KEYS / f"san{depth}_patchwise.json").read_text())


def _official_state_dict(depth: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in _spec(depth)["keys"].items():
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(5)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith("running_mean"):
            sd[key] = torch.randn(shape, generator=g) * 0.1
        else:
            sd[key] = torch.randn(shape, generator=g) * 0.05
    return sd


# --- sizes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", DEPTHS)
def test_parameter_count_equals_official_and_published(depth):
    model = convattn.create_model(f"san{depth}")
    params = count_params(model)
    assert params == _spec(depth)["_meta"]["num_params"]
    assert params / 1e6 == pytest.approx(PUBLISHED[f"san{depth}"][0], rel=0.01)


@pytest.mark.parametrize("depth", DEPTHS)
def test_acmix_parameter_count_within_3_percent_of_published(depth):
    name = f"acmix_san{depth}"
    params = count_params(convattn.create_model(name))
    assert params / 1e6 == pytest.approx(PUBLISHED[name][0], rel=0.03)


@pytest.mark.parametrize("name", ["san_nano", "acmix_san_nano"])
def test_nano_models_are_small(name):
    assert count_params(convattn.create_model(name)) <= 0.5e6


def official_counter_flops(model: nn.Module, size: int = 224) -> int:
    """The SAN release's complexity rules (batch 1), restated: products of every convolution and
    Linear, plus one op per conv-bias output, 2 per BatchNorm input element, 1 per ReLU output and
    per pooling input element, and k*k per element of the patchwise aggregation's output."""
    total = 0

    def add(n: int) -> None:
        nonlocal total
        total += int(n)

    def hook(module, inputs, output):
        x = inputs[0]
        if isinstance(module, nn.Conv2d):
            per_pixel = module.kernel_size[0] * module.kernel_size[1] * module.in_channels
            add(output.numel() * per_pixel // module.groups)
            if module.bias is not None:
                add(output.numel())
        elif isinstance(module, nn.BatchNorm2d):
            add(x.numel() * (2 if module.affine else 1))
        elif isinstance(module, nn.ReLU):
            add(output.numel())
        elif isinstance(module, (nn.MaxPool2d, nn.AdaptiveAvgPool2d)):
            add(x.numel())
        elif isinstance(module, nn.Linear):
            add(x.shape[0] * module.in_features * module.out_features)
        elif isinstance(module, PatchwiseSelfAttention):
            add(output.numel() * module.kernel_size**2)
        elif isinstance(module, ACmixConvPath):  # fc runs as a GEMM on its weight, not a call
            b, maps, d, h, w = x.shape
            add(b * module.fc.out_channels * maps * d * h * w)

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            model.eval()(torch.randn(1, 3, size, size))
    finally:
        for h in handles:
            h.remove()
    return total


def products_macs(model: nn.Module, size: int = 224) -> int:
    """MACs counting each output pixel's window sum as k*k products (the papers' convention; the
    model itself evaluates it with halo tiles, whose masked products count_macs also counts)."""

    def exact(value, weights, kernel_size, stride=1, tile=None):
        m, d = value.shape[:2]
        windows = window_gather(value, kernel_size, stride).view(m, d, -1, *weights.shape[-2:])
        return torch.einsum("mdjhw,mjhw->mdhw", windows, weights)

    original = san_layers.window_aggregate
    san_layers.window_aggregate = exact
    try:
        return count_macs(model, (1, 3, size, size))
    finally:
        san_layers.window_aggregate = original


@_SLOW
@pytest.mark.parametrize("depth", DEPTHS)
def test_macs_by_the_official_rules_match_the_official_count(depth):
    """Counted by the SAN release's rules, our network equals the official one (1%), and that
    count is the published figure (rounded to 0.1 G)."""
    ours = official_counter_flops(convattn.create_model(f"san{depth}"))
    official = _spec(depth)["_meta"]["official_counter_flops_224"]
    assert ours == pytest.approx(official, rel=0.01)
    assert round(ours / 1e9, 1) == PUBLISHED[f"san{depth}"][1]


@_SLOW
@pytest.mark.parametrize("depth", DEPTHS)
def test_acmix_macs_within_3_percent_of_published(depth):
    name = f"acmix_san{depth}"
    macs = products_macs(convattn.create_model(name))
    assert macs / 1e9 == pytest.approx(PUBLISHED[name][1], rel=0.03)


# --- official checkpoints -------------------------------------------------------------------------


def _save(tmp_path, sd, ddp=True):
    path = tmp_path / "official.pth"
    stored = {f"module.{k}": v for k, v in sd.items()} if ddp else sd
    torch.save({"epoch": 100, "state_dict": stored, "top1_val": 0.771}, path)
    return path


@pytest.mark.parametrize(
    "depth,ddp", [(10, True), (10, False), pytest.param(15, True, marks=_SLOW), (19, True)]
)
def test_official_checkpoint_loads_every_key(tmp_path, depth, ddp):
    sd = _official_state_dict(depth)
    model = convattn.create_model(f"san{depth}", checkpoint_path=_save(tmp_path, sd, ddp))
    ours = model.state_dict()
    # Every official tensor arrived: stacked projections, everything else by name.
    for key, value in sd.items():
        if ".sam.conv" in key and key.rsplit(".", 2)[-2] in ("conv1", "conv2", "conv3"):
            continue
        torch.testing.assert_close(ours[key], value)
    for prefix in {k.rsplit(".sam.", 1)[0] for k in sd if ".sam." in k}:
        for p in ("weight", "bias"):
            parts = [sd[f"{prefix}.sam.conv{i}.{p}"] for i in (1, 2, 3)]
            torch.testing.assert_close(ours[f"{prefix}.sam.qkv.{p}"], torch.cat(parts))
    assert len(ours) == len(sd) - 4 * sum(1 for k in sd if k.endswith("sam.conv1.weight"))


class _LiteralSAM(nn.Module):
    """Stands in for a patchwise attention module: the literal maths on the official tensors."""

    def __init__(self, sd: dict, kernel_size: int) -> None:
        super().__init__()
        self.sd, self.kernel_size = sd, kernel_size

    def forward(self, x):
        return san_reference(x, self.sd, self.kernel_size, share_planes=8)


def test_official_san10_checkpoint_reproduces_the_literal_maths(tmp_path):
    official = _official_state_dict(10)
    model = convattn.create_model("san10", checkpoint_path=_save(tmp_path, official))
    model = model.double().eval()
    reference = copy.deepcopy(model)
    for name, module in list(reference.named_modules()):
        if isinstance(module, PatchwiseSelfAttention):
            prefix = f"{name}."
            sub = {
                k[len(prefix) :]: v.double() for k, v in official.items() if k.startswith(prefix)
            }
            parent, attr = name.rsplit(".", 1)
            setattr(reference.get_submodule(parent), attr, _LiteralSAM(sub, module.kernel_size))
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        assert_close_scaled(model(x), reference(x), rtol=1e-9)


def test_san_checkpoint_does_not_load_into_acmix_san(tmp_path):
    path = _save(tmp_path, _official_state_dict(10))
    with pytest.raises(RuntimeError, match=r"missing keys"):
        convattn.create_model("acmix_san10", checkpoint_path=path)


# --- structure ------------------------------------------------------------------------------------


def test_stage_layout_and_features():
    model = convattn.create_model("san10", features_only=True)
    assert model.feature_info.channels() == [64, 256, 512, 1024, 2048]
    assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
    net = convattn.create_model("san10")
    assert [len(getattr(net, f"layer{i}")) for i in range(5)] == [2, 1, 2, 4, 1]
    assert [getattr(net, f"layer{i}")[0].sam.kernel_size for i in range(5)] == [3, 7, 7, 7, 7]


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="'widths' must be positive multiples of 32"):
        convattn.create_model("san_nano", widths=(16, 64, 64, 128, 128))
    with pytest.raises(ValueError, match="'operator' must be one of"):
        convattn.create_model("san_nano", operator="pairwise")
    with pytest.raises(ValueError, match="one entry per stage"):
        convattn.create_model("san_nano", layers=(1, 1))
