"""Re-parameterisation: the fusion maths, ``reparameterize_model`` semantics, the ACmix rate folds,
and every registered model: folded == unfolded in eval mode, and deploy checkpoints load into
``create_model(name, deploy=True)``."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import convattn
from convattn.deploy import ConvNormSequential, fuse_bn_conv, reparameterize_model
from convattn.deploy.reparam import fold_bn_conv_, fold_conv_bn_
from convattn.layers import ACmix, ACmixWindowAttention, XVolution
from convattn.models import read_model_info, save_model

from helpers import assert_close_scaled, randomize_bn

ALL = convattn.list_models()
# A few seconds or more each (building alone, or many blocks); one model per family stays in the
# default suite: resnet_nano, xvolution_resnet_nano, acmix_resnet_nano, acmix_swin_nano, swin_tiny,
# glnet_nano, glnet_4g, glnet_stl (plus the other ResNets).
HEAVY = {
    "glnet_9g",
    "glnet_9g_tklb",
    "glnet_4g_tklb",
    "glnet_16g",
    "glnet_stl_paramslot",
    "swin_small",
    "acmix_swin_small",
    "acmix_swin_tiny",
    "acmix_resnet38",
    "acmix_resnet50",
    "san15",
    "san19",
    "acmix_san15",
    "acmix_san19",
}
# BatchNorms that stay by design: the one after each ACmix (ACmix is not linear in the channels
# the BN scales) and GLNet's pre-head norm (after a residual sum, and forward_features returns it).
EXPECTED_BN = {"acmix_resnet": "bn2", "glnet": "norm"}
# SAN: each block's pre-activation bn1 and the weight MLP's first BN (conv_w.0) precede a ReLU;
# bn2 and the stage BNs bn0..bn4 follow the aggregation or a residual sum.
_SAN_BN = {"bn0", "bn1", "bn2", "bn3", "bn4", "0"}


def _params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in names]


def _input_size(name: str) -> int:
    return 32 if "nano" in name else 64


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics/affines and random ACmix rates, so every fold is non-trivial."""
    g = torch.Generator().manual_seed(seed)
    randomize_bn(model, g)
    xvols = [m for m in model.modules() if isinstance(m, XVolution) and not m.deploy]
    # PSSA is second order: with gamma ~ 1 in every attention BN, a random network's growing
    # activations overflow float32 after a few stacked X-volutions (why the ResNets start gamma at
    # 0). Keep it significant in the 2-deep nano model and small but non-zero in the deep ones.
    pssa_gain = 0.05 if len(xvols) <= 2 else 1e-6
    with torch.no_grad():
        for m in xvols:
            m.attn_bn.weight.mul_(pssa_gain)
        for m in model.modules():
            if isinstance(m, (ACmix, ACmixWindowAttention)):
                m.rate1.copy_(torch.rand(1, generator=g) * 1.5 + 0.25)
                m.rate2.copy_(torch.rand(1, generator=g) * 1.5 - 0.75)
    return model.eval()


@torch.no_grad()
def _float32_noise(model: nn.Module, x: torch.Tensor, expected: torch.Tensor) -> float:
    """Output change (relative to scale) when every weight moves by float32 rounding (2^-24).

    Folded weights carry exactly such rounding; deep, randomly initialised networks amplify it
    (ACmix-ResNet-50 by ~10^3), so the float32 tolerance is set relative to this floor.
    """
    noisy = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    for p in noisy.parameters():
        p.mul_(1 + torch.randn(p.shape, generator=g) * 2**-24)
    return float((noisy(x) - expected).abs().max() / expected.abs().max())


# --- fusion maths -----------------------------------------------------------------------------------


@pytest.mark.parametrize("groups,kernel,stride", [(1, 2, 2), (2, 3, 1), (4, 1, 2)])
def test_fuse_bn_conv_matches_bn_then_conv(groups, kernel, stride):
    bn = randomize_bn(nn.BatchNorm2d(8)).double().eval()
    conv = nn.Conv2d(8, 12, kernel, stride=stride, groups=groups).double()
    fused = fuse_bn_conv(bn, conv)
    x = torch.randn(3, 8, 9, 10, dtype=torch.float64)
    torch.testing.assert_close(fused(x), conv(bn(x)))
    assert fused.bias is not None and fused.weight.shape == conv.weight.shape


def test_fuse_bn_conv_refuses_padded_conv():
    bn, conv = nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, padding=1)
    with pytest.raises(ValueError, match="pads its input"):
        fuse_bn_conv(bn, conv)
    seq = ConvNormSequential(bn, conv)
    seq.reparameterize()  # inexact, so left alone
    assert isinstance(seq[0], nn.BatchNorm2d) and seq[1] is conv


def test_fold_helpers_only_fold_conv_bn_pairs():
    parent = nn.Module()
    parent.conv, parent.bn = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
    parent.act = nn.ReLU()
    assert not fold_conv_bn_(parent, "conv", "act")
    assert not fold_bn_conv_(parent, "conv", "bn")
    assert fold_conv_bn_(parent, "conv", "bn")
    assert isinstance(parent.bn, nn.Identity) and parent.conv.bias is not None
    assert not fold_conv_bn_(parent, "conv", "bn")  # already folded


def test_conv_norm_sequential_folds_both_directions_and_keeps_keys():
    seq = ConvNormSequential(
        nn.Identity(),
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.GELU(),
        nn.BatchNorm2d(6),
        nn.Conv2d(6, 8, 2, stride=2),
    )
    randomize_bn(seq).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        before = seq(x)
        seq.reparameterize()
        after = seq(x)
    assert_close_scaled(after, before, 1e-6)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in seq)
    assert set(seq.state_dict()) == {"1.weight", "1.bias", "5.weight", "5.bias"}


# --- reparameterize_model semantics -----------------------------------------------------------------


class _Switchable(nn.Module):
    """Counts calls; only has the ``switch_to_deploy`` alias."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def switch_to_deploy(self) -> None:
        self.calls += 1


class _Root(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.child = _Switchable()

    def reparameterize(self) -> None:
        self.calls += 1


def test_reparameterize_model_copies_unless_inplace_and_visits_root_and_aliases():
    model = _Root()
    copy = reparameterize_model(model)
    assert copy is not model and model.calls == 0 and model.child.calls == 0
    assert copy.calls == 1 and copy.child.calls == 1
    same = reparameterize_model(model, inplace=True)
    assert same is model and model.calls == 1 and model.child.calls == 1


def test_reparameterize_model_on_a_single_operator():
    xvol = _randomize(XVolution(8, 8))
    deployed = reparameterize_model(xvol)
    assert deployed.deploy and not xvol.deploy
    x = torch.randn(2, 8, 7, 9)
    with torch.no_grad():
        assert_close_scaled(deployed(x), xvol(x), 1e-5)


# --- ACmix rate folds -------------------------------------------------------------------------------


@pytest.mark.parametrize("rate1,rate2", [(0.37, -1.3), (-2.0, 0.0), (0.0, 0.8), (1.0, 1.0)])
def test_acmix_rate_fold_is_exact(rate1, rate2):
    # float64: the fold divides fc's v columns by rate1, exact up to rounding only.
    module = ACmix(8, 16, stride=2, kernel_att=5, heads=4).double().eval()
    with torch.no_grad():
        module.rate1.fill_(rate1)
        module.rate2.fill_(rate2)
    x = torch.randn(2, 8, 9, 11, dtype=torch.float64)
    with torch.no_grad():
        before = module(x)
        module.reparameterize()
        after = module(x)
    torch.testing.assert_close(after, before)
    assert module.rate2.item() == 1.0
    assert module.rate1.item() == (0.0 if rate1 == 0.0 else 1.0)  # 0 cannot be divided out


def test_acmix_window_attention_rate_fold_is_exact():
    module = ACmixWindowAttention(16, window_size=4, num_heads=2).double().eval()
    with torch.no_grad():
        module.rate1.fill_(-0.6)
        module.rate2.fill_(1.7)
    x = torch.randn(2, 8, 8, 16, dtype=torch.float64)
    with torch.no_grad():
        before = module(x)
        module.reparameterize()
        after = module(x)
        module.reparameterize()  # idempotent
        again = module(x)
    torch.testing.assert_close(after, before)
    torch.testing.assert_close(again, after, rtol=0, atol=0)
    assert module.rate1.item() == module.rate2.item() == 1.0


# --- every registered model ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", _params(ALL))
def test_folded_model_matches_and_deploy_checkpoint_loads(name, tmp_path):
    model = _randomize(convattn.create_model(name, num_classes=7))
    s = _input_size(name)
    x = torch.randn(2, 3, s, s - 3)  # odd width: padded and cropped paths too
    deployed = reparameterize_model(model)
    with torch.no_grad():
        expected, got = model(x), deployed(x)
    assert torch.isfinite(expected).all()
    # Capped: a chaotic random network (ACmix-ResNet-50's floor reaches 1e-2) must still match
    # to 1e-3; float64 exactness is tested separately below.
    tolerance = min(1e-3, max(1e-5, 20 * _float32_noise(model, x, expected)))
    assert_close_scaled(got, expected, tolerance)

    # Every foldable BN is gone (the remaining ones are those documented as not foldable).
    left = {
        n.rsplit(".", 1)[-1] for n, m in deployed.named_modules() if isinstance(m, nn.BatchNorm2d)
    }
    allowed = {v for k, v in EXPECTED_BN.items() if name.startswith(k)}
    if name.startswith(("san", "acmix_san")):
        allowed |= _SAN_BN
    assert left <= allowed, left
    assert not any(getattr(m, "deploy", True) is False for m in deployed.modules())

    # Idempotent: a second pass changes no value.
    again = reparameterize_model(deployed)
    for key, value in deployed.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value, rtol=0, atol=0)

    # The deploy checkpoint loads strictly into the deploy-form builder.
    path = save_model(deployed, tmp_path / f"{name}.safetensors", num_classes=7, deploy=True)
    info = read_model_info(path)
    loaded = convattn.create_model(info["model"], checkpoint_path=path, **info["config"]).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), got)


@pytest.mark.parametrize(
    "name",
    ["resnet_nano", "xvolution_resnet_nano", "acmix_resnet_nano", "acmix_swin_nano", "glnet_nano"],
)
def test_fold_is_exact_in_float64(name):
    """Folded in float64, the deploy form equals the training form to float64 rounding."""
    model = _randomize(convattn.create_model(name, num_classes=7)).double()
    x = torch.randn(2, 3, 32, 29, dtype=torch.float64)
    deployed = reparameterize_model(model)
    with torch.no_grad():
        assert_close_scaled(deployed(x), model(x), 1e-11)


@pytest.mark.parametrize("name", ["resnet_nano", "glnet_nano"])
def test_deploy_checkpoint_does_not_load_into_training_form(name, tmp_path):
    deployed = reparameterize_model(convattn.create_model(name))
    path = save_model(deployed, tmp_path / "deploy.safetensors")
    with pytest.raises(RuntimeError, match=r"missing keys|unexpected keys"):
        convattn.create_model(name, checkpoint_path=path)


def test_deploy_builder_has_no_batchnorm_to_fold():
    model = convattn.create_model("resnet_nano", deploy=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    keys = set(model.state_dict())
    assert {"conv1.bias", "layer2.0.downsample.0.bias"} <= keys
    assert not any(".bn" in k or k.startswith("bn") for k in keys)
    # Folding a model that is already in deploy form changes nothing.
    folded = reparameterize_model(model)
    assert set(folded.state_dict()) == keys


def test_glnet_stl_transition_folds_input_side():
    """STL-layout GLNet (BN -> conv 2x2/2 transitions), small widths so it runs in the default suite."""
    model = _randomize(
        convattn.create_model(
            "glnet_stl", depths=(1, 1, 1, 1), widths=(32, 64, 96, 128), num_slots=4
        )
    )
    x = torch.randn(1, 3, 64, 67)
    deployed = reparameterize_model(model)
    assert isinstance(deployed.downsample_layers[1][0], nn.Identity)
    with torch.no_grad():
        assert_close_scaled(deployed(x), model(x), 1e-5)


def test_features_only_wrapper_is_reparameterised():
    model = _randomize(convattn.create_model("resnet_nano", features_only=True))
    deployed = reparameterize_model(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for got, expected in zip(deployed(x), model(x), strict=True):
            assert_close_scaled(got, expected, 1e-5)
