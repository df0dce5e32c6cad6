"""One operator per ResNet stage (``stage_ops``): every operator, deploy form and re-parameterisation,
features_only, export, the registered hybrids as entries of the mechanism, and clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import convattn
from convattn.bench import count_params
from convattn.deploy import reparameterize_model
from convattn.layers import ACmix, GLMix, GlobalSelfAttention2d, Involution2d, XVolution
from convattn.models import read_model_info, save_model
from convattn.models.resnet import STAGE_OPS

from helpers import assert_close_scaled, randomize_bn

# Options that fit resnet_nano's widths (16-128 channels), given in the one place: op_args.
NANO_ARGS = {
    "xvolution_sa": {"sa_head_dim": 16},
    "attention": {"head_dim": 16},
    "glmix": {"head_dim": 16, "num_slots": 4},
}
OPERATOR_CLASS = {
    "conv": nn.Conv2d,
    "xvolution": XVolution,
    "xvolution_sa": XVolution,
    "xvolution_inv": XVolution,
    "acmix": ACmix,
    "involution": Involution2d,
    "attention": GlobalSelfAttention2d,
    "glmix": GLMix,
}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def nano(ops, **kwargs):
    torch.manual_seed(0)
    return convattn.create_model(
        "resnet_nano", stage_ops=ops, op_args=NANO_ARGS, num_classes=5, **kwargs
    )


def test_every_library_operator_has_an_entry():
    assert set(STAGE_OPS) == set(OPERATOR_CLASS)
    assert {"conv", "xvolution", "xvolution_sa", "xvolution_inv", "acmix", "involution"} <= set(
        STAGE_OPS
    )


@pytest.mark.parametrize("op", list(STAGE_OPS))
def test_operator_in_stage_3_trains_folds_and_reloads(op, tmp_path):
    ops = ("conv", "conv", op, "conv")
    model = nano(ops)
    assert model.stage_ops == ops
    spatial = model.layer3[0].conv1
    assert type(spatial) is OPERATOR_CLASS[op]
    assert type(model.layer2[0].conv1) is nn.Conv2d and type(model.layer4[0].conv1) is nn.Conv2d
    if op.startswith("xvolution"):
        assert spatial.attention == {"xvolution": "pssa", "xvolution_sa": "sa"}.get(
            op, "involution"
        )

    x = torch.randn(2, 3, 32, 29)
    out = model(x)
    assert out.shape == (2, 5)
    out.logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in model.parameters())

    model = randomize_bn(model).eval()
    with torch.no_grad():
        expected = model(x)
        deployed = reparameterize_model(model)
        assert_close_scaled(deployed(x), expected, 1e-4)
    assert not any(getattr(m, "deploy", True) is False for m in deployed.modules())
    # The deploy checkpoint rebuilds through create_model(deploy=True) with the same stage_ops.
    path = save_model(
        deployed,
        tmp_path / "d.safetensors",
        model_name="resnet_nano",
        stage_ops=list(ops),
        op_args=NANO_ARGS,
        num_classes=5,
        deploy=True,
    )
    info = read_model_info(path)
    rebuilt = convattn.create_model(info["model"], checkpoint_path=path, **info["config"]).eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), deployed(x))


def test_xvolution_ops_merge_into_one_dynamic_convolution_in_deploy_form():
    model = nano(("xvolution", "xvolution_inv", "xvolution", "xvolution_inv"))
    deployed = reparameterize_model(randomize_bn(model).eval())
    kinds = {type(m.reparam_conv).__name__ for m in deployed.modules() if isinstance(m, XVolution)}
    assert kinds == {"CentreModulatedConv2d", "InvolutionModulatedConv2d"}
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules())


def test_stage_3_and_4_ablation_on_resnet50():
    with torch.device("meta"):
        base = convattn.create_model("resnet50")
        stage3 = convattn.create_model("xvolution_resnet50")
        both = convattn.create_model(
            "resnet50", stage_ops=("conv", "conv", "xvolution", "xvolution")
        )
    d3 = count_params(stage3) - count_params(base)
    # Every 3x3 C -> C conv gains 8 C^2 PSSA weights and one more BN (2 C): stage 4 has 3 blocks
    # of width 512.
    assert count_params(both) - count_params(stage3) == 3 * (8 * 512 * 512 + 2 * 512)
    assert d3 == 6 * (8 * 256 * 256 + 2 * 256)
    assert [f["op"] for f in both.feature_info] == ["conv", "conv", "xvolution", "xvolution"]


@pytest.mark.parametrize(
    ("name", "ops"),
    [
        ("xvolution_resnet50", ("conv", "conv", "xvolution", "conv")),
        ("xvolution_sa_resnet50", ("conv", "conv", "xvolution_sa", "conv")),
        ("xvolution_inv_resnet50", ("conv", "conv", "xvolution_inv", "conv")),
        ("acmix_resnet26", ("acmix",) * 4),
        ("xvolution_resnet_nano", ("conv", "conv", "xvolution", "conv")),
        ("resnet50", ("conv",) * 4),
    ],
)
def test_registered_hybrids_are_stage_ops_entries(name, ops):
    base = {"xvolution_resnet_nano": "resnet_nano", "acmix_resnet26": "resnet26"}.get(
        name, "resnet50"
    )
    with torch.device("meta"):
        registered = convattn.create_model(name)
        explicit = convattn.create_model(base, stage_ops=ops)
    assert registered.stage_ops == ops
    assert {k: v.shape for k, v in registered.state_dict().items()} == {
        k: v.shape for k, v in explicit.state_dict().items()
    }
    assert str(registered) == str(explicit)


def test_op_args_reach_every_stage_using_the_operator():
    model = convattn.create_model(  # bottlenecks: the 3x3 position is width -> width
        "resnet26",
        stage_ops="conv,xvolution,conv,xvolution",
        op_args={"xvolution": {"pssa_weighting": "depthwise", "attn_bn_zero_init": False}},
    )
    xvols = [m for m in model.modules() if isinstance(m, XVolution)]
    assert len(xvols) == 3 and all(m.pssa_weighting == "depthwise" for m in xvols)
    assert all(m.attn_bn.weight.eq(1).all() for m in xvols)  # the override beat the default
    default = convattn.create_model("xvolution_resnet_nano")
    assert all(m.attn_bn.weight.eq(0).all() for m in default.modules() if isinstance(m, XVolution))


def test_features_only_with_stage_ops():
    net = convattn.create_model(
        "resnet_nano",
        stage_ops=("involution", "conv", "xvolution_inv", "attention"),
        op_args=NANO_ARGS,
        features_only=True,
        out_indices=(1, 3),
    ).eval()
    with torch.no_grad():
        feats = net(torch.randn(1, 3, 32, 32))
    assert [f.shape[1] for f in feats] == net.feature_info.channels() == [32, 128]
    assert [f.shape[-1] for f in feats] == [16, 4]


def test_export_of_a_stage_ops_model(tmp_path):
    from convattn.deploy.export import export_model

    model = nano(("conv", "xvolution_inv", "xvolution", "attention")).eval()
    result = export_model(model, tmp_path / "m.onnx", img_size=32)
    assert result.max_deviation < 1e-4 and (tmp_path / "m.onnx").is_file()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(stage_ops=("conv", "conv", "xvolution")), r"one operator per stage \(4 stages\)"),
        (dict(stage_ops=("conv",) * 5), r"got 5.*valid operators: conv, xvolution"),
        (dict(stage_ops=("conv", "conv", "xvol", "conv")), r"unknown operator\(s\) \['xvol'\]"),
        (dict(stage_ops="conv,conv,conv"), r"one operator per stage"),
        (dict(stage_ops=(1, 2, 3, 4)), r"sequence of operator names"),
        (dict(op_args={"xvol": {}}), r"unknown operator\(s\) \['xvol'\] in 'op_args'"),
        (
            dict(stage_ops=("conv", "conv", "xvolution", "conv"), op_args={"xvolution": {"k": 1}}),
            r"op_args\['xvolution'\] has unknown option\(s\) \['k'\].*pssa_weighting",
        ),
        (dict(xvolution_args={}), r"'xvolution_args' was replaced by op_args"),
    ],
)
def test_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        convattn.create_model("resnet50", **kwargs)


def test_error_names_every_valid_operator():
    with pytest.raises(ValueError) as err:
        convattn.create_model("resnet_nano", stage_ops=("conv", "conv", "nope", "conv"))
    assert all(name in str(err.value) for name in STAGE_OPS)
