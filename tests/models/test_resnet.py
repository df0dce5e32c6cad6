"""ResNet family: published parameter/MAC counts and official ACmix-ResNet checkpoint layouts."""

import copy
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import convattn
from convattn.bench import count_macs, count_params
from convattn.layers import ACmix

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "layers"))
from ref_acmix import acmix_reference

from helpers import OFFICIAL_KEYS, assert_close_scaled

KEYS = OFFICIAL_KEYS

# Exact counts: torchvision for the plain ResNets, the official ACmix key maps' _meta for ACmix.
EXACT_PARAMS = {
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "acmix_resnet26": 10_487_816,
    "acmix_resnet38": 14_410_896,
    "acmix_resnet50": 18_333_976,
}
# X-volution: the computed table of docs/notes/xvolution.md §4, +-1 %.
APPROX_PARAMS = {"xvolution_resnet50": 28.7e6, "xvolution_resnet34": 27.8e6}


@pytest.mark.parametrize("name,expected", EXACT_PARAMS.items())
def test_exact_parameter_counts(name, expected):
    assert count_params(convattn.create_model(name)) == expected


@pytest.mark.parametrize("name,expected", APPROX_PARAMS.items())
def test_xvolution_parameter_counts(name, expected):
    assert count_params(convattn.create_model(name)) == pytest.approx(expected, rel=0.01)


@pytest.mark.parametrize("name", ["resnet_nano", "xvolution_resnet_nano", "acmix_resnet_nano"])
def test_nano_models_are_small(name):
    assert count_params(convattn.create_model(name)) <= 1.0e6


@pytest.mark.parametrize(
    "name,gmacs",
    [
        ("resnet50", 4.09),
        pytest.param("acmix_resnet50", 3.50, marks=pytest.mark.slow),
        pytest.param("xvolution_resnet50", 4.7, marks=pytest.mark.slow),
    ],
)
def test_macs_at_224_match_published(name, gmacs):
    macs = count_macs(convattn.create_model(name), (1, 3, 224, 224)) / 1e9
    assert macs == pytest.approx(gmacs, rel=0.03)


def _official_state_dict(name: str, seed: int = 0) -> dict:
    spec = json.loads((KEYS / f"{name}.json").read_text())["keys"]
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in spec.items():
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[key] = torch.randn(shape, generator=g) * 0.05
    return sd


class _LiteralACmix(nn.Module):
    """Stands in for an ACmix module: the official maths on the official sub-state-dict."""

    def __init__(self, sd: dict, stride: int) -> None:
        super().__init__()
        self.sd, self.stride = sd, stride

    def forward(self, x):
        return acmix_reference(x, self.sd, heads=4, kernel_att=7, stride=self.stride)


@pytest.mark.parametrize("wrap", ["model", "ddp"])
def test_official_acmix_resnet26_checkpoint_reproduces_official_maths(tmp_path, wrap):
    official = _official_state_dict("acmix_resnet26")
    stored = {f"module.{k}": v for k, v in official.items()} if wrap == "ddp" else official
    path = tmp_path / "acmix_r26.pth"
    torch.save({"model": stored, "epoch": 89}, path)
    model = convattn.create_model("acmix_resnet26", checkpoint_path=path).double().eval()

    # Reference network: the same loaded weights for the plain parts, and every ACmix replaced by
    # the literal official forward fed with the *official* tensors of that module.
    reference = copy.deepcopy(model)
    for name, module in list(reference.named_modules()):
        if isinstance(module, ACmix):
            prefix = f"{name}."
            sub = {
                k[len(prefix) :]: v.double() for k, v in official.items() if k.startswith(prefix)
            }
            parent, attr = name.rsplit(".", 1)
            setattr(reference.get_submodule(parent), attr, _LiteralACmix(sub, module.stride))
    x = torch.randn(1, 3, 128, 128, dtype=torch.float64)  # the official code needs >= 4 px maps
    with torch.no_grad():
        assert_close_scaled(model(x), reference(x), rtol=1e-9)


def test_checkpoint_of_other_architecture_fails_clearly(tmp_path):
    path = tmp_path / "r26.pth"
    torch.save({"model": _official_state_dict("acmix_resnet26")}, path)
    with pytest.raises(RuntimeError, match=r"missing keys.*unexpected keys"):
        convattn.create_model("acmix_resnet38", checkpoint_path=path)
