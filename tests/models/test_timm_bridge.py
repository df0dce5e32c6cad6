"""convattn models inside the real timm package: registry, timm's model contract, data config,
hub-layout folders through timm, and init_from with state dicts of timm's own model classes.

timm is imported through :func:`timm_standin.real_timm` (a test-only torchvision stand-in); the
tests skip when timm is not installed. The contract checks mirror those of timm's own model tests.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import convattn
from convattn.models import timm_bridge
from convattn.models.timm_bridge import TIMM_PREFIX, timm_name
from timm_standin import real_timm

# Cheap models of every family (the contract is per class, the nano models cover each class).
CHEAP = [
    "resnet_nano",
    "xvolution_resnet_nano",
    "acmix_resnet_nano",
    "acmix_swin_nano",
    "glnet_nano",
    "san_nano",
    "acmix_san_nano",
    "pvt_nano",
    "acmix_pvt_nano",
]
# The class-token family (timm's ViT convention): forward_features returns tokens (B, 1 + N, C)
# and the pooling choices are "token", "avg", "". Every other family returns an NCHW map.
TOKEN_MODELS = {"pvt_nano", "acmix_pvt_nano"}
SWIN_64 = dict(
    patch_size=2, embed_dim=24, depths=(2, 2, 1, 1), num_heads=(1, 2, 4, 8), window_size=4
)


@pytest.fixture(scope="module")
def timm():
    with real_timm() as module:
        yield module


def _input(name: str, batch: int = 2, chans: int = 3) -> torch.Tensor:
    size = convattn.get_pretrained_cfg(name)["input_size"][-1]
    return torch.randn(batch, chans, size, size)


def test_every_model_registered_with_prefix_and_timm_models_untouched(timm):
    names = set(timm.list_models(f"{TIMM_PREFIX}*"))
    assert names == {timm_name(n) for n in convattn.list_models()}
    assert set(convattn.register_timm_models()) == names  # idempotent
    # timm's own same-named models stay timm's.
    assert type(timm.create_model("resnet18")).__module__ == "timm.models.resnet"
    assert timm.models.model_entrypoint("resnet50").__module__ == "timm.models.resnet"
    assert timm.models.get_pretrained_cfg("resnet50").architecture == "resnet50"
    assert set(timm.list_models("convattn_*", module="timm_bridge")) == names


def test_an_existing_timm_name_is_never_overwritten(timm, monkeypatch):
    name = timm_name("resnet_nano")
    before = timm.models.model_entrypoint(name)
    # Pretend convattn had not registered it: timm now "already has" the name from elsewhere.
    monkeypatch.setattr(
        timm_bridge, "_registered", [n for n in timm_bridge._registered if n != name]
    )
    with pytest.warns(UserWarning, match="already has a model named 'convattn_resnet_nano'"):
        timm_bridge.register_timm_models()
    assert timm.models.model_entrypoint(name) is before


def test_pretrained_cfg_is_complete_and_resolves_the_data_config(timm):
    fields = {f.name for f in dataclasses.fields(timm.models.PretrainedCfg)}
    for name in convattn.list_models():
        ours = convattn.get_pretrained_cfg(name)
        cfg = timm.models.get_pretrained_cfg(timm_name(name))
        assert set(timm_bridge.timm_pretrained_cfg(name)) <= fields
        assert cfg.architecture == timm_name(name) and not cfg.has_weights
        assert cfg.pool_size == tuple(ours["pool_size"]) and cfg.first_conv and cfg.classifier
        data = timm.data.resolve_data_config(pretrained_cfg=cfg.to_dict())
        assert data["input_size"] == tuple(ours["input_size"])
        assert data["mean"] == tuple(ours["mean"]) and data["std"] == tuple(ours["std"])
        assert data["crop_pct"] == ours["crop_pct"]
        assert data["interpolation"] == ours["interpolation"]
    model = timm.create_model(timm_name("acmix_swin_nano"))
    assert timm.data.resolve_model_data_config(model)["input_size"] == (3, 32, 32)
    assert timm.data.resolve_data_config({}, model=model)["mean"] == (0.5, 0.5, 0.5)


def _check_unpooled(model, out: torch.Tensor, pool_size) -> None:
    """``out`` is unpooled features: an NCHW map of pool_size, or (class-token family) tokens."""
    if model.pool_types == timm_bridge.TOKEN_POOL_TYPES:  # timm's ViT layout (B, prefix + N, C)
        n = math.prod(pool_size)
        assert out.shape == (out.shape[0], model.num_prefix_tokens + n, model.num_features)
    else:
        assert out.dim() == 4 and out.shape[1] == model.num_features
        assert tuple(out.shape[-2:]) == tuple(pool_size)


@pytest.mark.parametrize("name", CHEAP)
def test_default_cfg_contract(timm, name):
    """timm's test_model_default_cfgs (test_model_default_cfgs_non_std for the class-token
    family: features are tokens, pooled by "token" / "avg"), on our models."""
    model = timm.create_model(timm_name(name)).eval()
    token = name in TOKEN_MODELS
    assert model.default_pool == ("token" if token else "avg") == model.pool_type
    assert (model.pool_types == timm_bridge.TOKEN_POOL_TYPES) == token
    cfg = model.default_cfg
    assert cfg is model.pretrained_cfg
    for key in ("input_size", "pool_size", "first_conv", "classifier", "mean", "std", "crop_pct"):
        assert cfg.get(key) is not None, key
    state = model.state_dict()
    assert f"{cfg['first_conv']}.weight" in state and f"{cfg['classifier']}.weight" in state
    x = torch.randn(1, *cfg["input_size"])
    with torch.no_grad():
        feats = model.forward_features(x)
        _check_unpooled(model, feats, cfg["pool_size"])
        # pool_size is the last stage's map at the default input size, for every family.
        last = model.forward_intermediates(x, indices=1, intermediates_only=True)[0]
        assert tuple(last.shape[-2:]) == tuple(cfg["pool_size"])
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (1, model.num_features) == (1, model.head_hidden_size)
        default_pooled = feats[:, 0] if token else feats.mean((2, 3))
        torch.testing.assert_close(pre, default_pooled)
        torch.testing.assert_close(model.get_classifier()(pre), model(x))
        model.reset_classifier(0)
        assert model(x).shape == (1, model.num_features)
        model.reset_classifier(0, "")
        out = model(x)
        _check_unpooled(model, out, cfg["pool_size"])
        torch.testing.assert_close(out, feats)
        other, other_pooled = (
            ("avg", feats[:, 1:].mean(1)) if token else ("max", feats.amax((2, 3)))
        )
        model.reset_classifier(5, other)
        assert model(x).shape == (1, 5)
        torch.testing.assert_close(model.forward_head(feats, pre_logits=True), other_pooled)
        model.reset_classifier(4)  # keeps the pooling chosen before
        assert model.pool_type == other
        bare = timm.create_model(timm_name(name), num_classes=0, global_pool="").eval()
        _check_unpooled(bare, bare(x), cfg["pool_size"])
        model.reset_classifier(0, "")
        model.reset_classifier(3)  # a classifier again: the family's default pooling
        assert model.pool_type == model.default_pool
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(3, "")
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(3, "mean")
    with pytest.raises(ValueError, match="global_pool"):  # the other family's pooling
        model.reset_classifier(3, "max" if token else "token")
    with pytest.raises(ValueError, match="global_pool"):
        timm.create_model(timm_name(name), global_pool="max" if token else "token")


@pytest.mark.parametrize("name", CHEAP)
def test_forward_intermediates_and_grad_checkpointing(timm, name, monkeypatch):
    """timm's test_model_forward_intermediates, plus gradients under checkpointing."""
    torch.manual_seed(0)
    model = timm.create_model(timm_name(name), num_classes=4, drop_path_rate=0.2).eval()
    info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))
    x = _input(name)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x, output_fmt="NCHW")
        torch.testing.assert_close(final, model.forward_features(x))
        assert len(inter) == len(model.feature_info)
        for t, c, r in zip(inter, info.channels(), info.reduction()):
            assert t.dim() == 4 and t.shape[1] == c and t.shape[-1] == math.ceil(x.shape[-1] / r)
        only = model.forward_intermediates(x, indices=[1, -1], intermediates_only=True)
        torch.testing.assert_close(only[0], inter[1])
        torch.testing.assert_close(only[1], inter[-1])
        normed = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)
        if name in TOKEN_MODELS:
            # The last map is the patch tokens of the final features (class token left out).
            b, c, h, w = normed[0].shape
            assert final.shape == (b, 1 + h * w, c)
            torch.testing.assert_close(normed[0].flatten(2).transpose(1, 2), final[:, 1:])
        else:
            torch.testing.assert_close(normed[0], final)
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NHWC")

    # Training mode (stochastic depth on): same outputs and gradients with checkpointing.
    model.train()
    results = []
    checkpointed = []
    real_checkpoint = timm_bridge.checkpoint
    monkeypatch.setattr(
        timm_bridge,
        "checkpoint",
        lambda fn, *args, **kw: checkpointed.append(fn) or real_checkpoint(fn, *args, **kw),
    )
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        model.zero_grad()
        torch.manual_seed(1)
        out = model(x)
        assert bool(checkpointed) == enable  # checkpointing really is on (and only then)
        out.square().sum().backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        results.append((out.detach(), grads))
    torch.testing.assert_close(results[1][0], results[0][0])
    assert results[1][1].keys() == results[0][1].keys()
    for k, g in results[0][1].items():
        torch.testing.assert_close(results[1][1][k], g, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "num_stages"),
    [
        ("resnet_nano", 4),
        ("acmix_swin_nano", 4),
        ("glnet_nano", 4),
        ("san_nano", 5),
        ("pvt_nano", 4),
    ],
)
def test_create_model_arguments(timm, name, num_stages):
    x = _input(name, batch=2, chans=1)  # 2: SAN-nano's last map is 1x1 (BatchNorm in training)
    feats = timm.create_model(timm_name(name), features_only=True, out_indices=(1, 3), in_chans=1)
    from timm.models._features import FeatureGetterNet

    assert isinstance(feats, FeatureGetterNet)
    outs = feats(x)
    assert [o.shape[1] for o in outs] == feats.feature_info.channels()
    assert len(outs) == 2 and feats.feature_info.reduction()[0] < feats.feature_info.reduction()[1]
    # features_only without out_indices: every stage of the family (SAN has five).
    every = timm.create_model(timm_name(name), features_only=True, in_chans=1)
    assert len(every(x)) == len(every.feature_info.channels()) == num_stages
    assert every.feature_info.out_indices == tuple(range(num_stages))
    last2 = timm.create_model(timm_name(name), features_only=True, out_indices=2, in_chans=1)
    assert len(last2(x)) == 2
    # Pruned to the first two stages: the same maps as the whole model's (same weights).
    torch.manual_seed(0)
    first2 = timm.create_model(timm_name(name), features_only=True, out_indices=(0, 1), in_chans=1)
    torch.manual_seed(0)
    whole = timm.create_model(timm_name(name), in_chans=1).eval()
    with torch.no_grad():
        expected = whole.forward_intermediates(x, indices=(0, 1), intermediates_only=True)
        got = first2.eval()(x)
    assert len(got) == 2
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)
    assert sum(p.numel() for p in first2.parameters()) < sum(p.numel() for p in whole.parameters())
    model = timm.create_model(timm_name(name), num_classes=3, in_chans=1, drop_path_rate=0.3)
    assert model(x).shape == (2, 3) and model.in_chans == 1
    rates = [m.drop_prob for m in model.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) == pytest.approx(0.3)
    dropped = timm.create_model(timm_name(name), num_classes=3, drop_rate=0.5).train()
    assert dropped.drop_rate == 0.5
    torch.manual_seed(0)
    if name in TOKEN_MODELS:  # tokens (B, 1 + N, C)
        pooled = torch.ones(64, 5, dropped.num_features)
    else:
        pooled = torch.ones(64, dropped.num_features, 1, 1)
    kept = dropped.forward_head(pooled, pre_logits=True)
    assert 0 < (kept == 0).float().mean() < 1  # classifier dropout is active in training


def test_to_timm_model_keeps_weights_and_outputs(timm):
    ours = convattn.create_model("xvolution_resnet_nano", num_classes=5).eval()
    x = _input("xvolution_resnet_nano")
    with torch.no_grad():
        before = ours(x)
        adapted = convattn.models.to_timm_model(ours)
        torch.testing.assert_close(adapted(x), before)
    assert isinstance(adapted, timm_bridge.TimmResNet)
    with pytest.raises(TypeError, match="'model' must be a model of a convattn family"):
        convattn.models.to_timm_model(torch.nn.Linear(2, 2))
    for name, adapter, pool in (
        ("san_nano", timm_bridge.TimmSAN, "avg"),
        ("pvt_nano", timm_bridge.TimmPyramidVisionTransformer, "token"),
    ):
        ours = convattn.create_model(name, num_classes=5).eval()
        x = _input(name)
        with torch.no_grad():
            before = ours(x)
            adapted = convattn.models.to_timm_model(ours)
            torch.testing.assert_close(adapted(x), before)
        assert isinstance(adapted, adapter) and adapted.pool_type == pool
    with pytest.raises(ValueError, match="'global_pool' must be one of"):
        convattn.models.to_timm_model(convattn.create_model("pvt_nano"), global_pool="max")


def test_every_registered_model_builds_through_timm_with_its_family_adapter(timm):
    """Every convattn model (meta device: no memory, no compute) comes out of timm.create_model
    with timm's interface: a family added without an adapter fails here."""
    for name in convattn.list_models():
        with torch.device("meta"):
            model = timm.create_model(timm_name(name))
        assert isinstance(model, timm_bridge.TimmContract), name
        assert type(model).__mro__[1:].count(timm_bridge.TimmContract) == 1
        family = next(c for c in type(model).__mro__ if c in timm_bridge._ADAPTERS)
        assert timm_bridge._ADAPTERS[family] is type(model), name
        assert model.pool_type == model.default_pool and model.pool_type in model.pool_types
        n = len(model.feature_info)
        assert n >= 1 and model.pretrained_cfg["architecture"] == timm_name(name)


def test_glnet_token_label_through_timm(timm):
    """The token-labeling GLNet keeps its eval output (class + aux_weight * max token logits)."""
    # glnet_nano's sizes (for 32x32 inputs).
    small = dict(depths=(1, 1, 2, 1), widths=(32, 64, 96, 128), num_slots=16, stem_stride=2)
    torch.manual_seed(0)
    ours = convattn.create_model("glnet_4g_tklb", num_classes=4, **small).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = ours(x)
        adapted = convattn.models.to_timm_model(ours)
        assert isinstance(adapted, timm_bridge.TimmGLNetTokenLabel)
        torch.testing.assert_close(adapted(x), before)
        feats = adapted.forward_features(x)
        pre = adapted.forward_head(feats, pre_logits=True)
        torch.testing.assert_close(pre, feats.mean((2, 3)))
        adapted.reset_classifier(0, "")
        assert adapted.tklb_aux_head is None
        torch.testing.assert_close(adapted(x), feats)


def test_local_dir_folder_through_timm(timm, tmp_path):
    model = convattn.create_model("acmix_swin_nano", num_classes=6).eval()
    folder = convattn.save_pretrained(model, tmp_path / "m", label_names=list("abcdef"))
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert loaded.pretrained_cfg["label_names"] == list("abcdef")
    x = _input("acmix_swin_nano")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    # ... and with a new head and input channels through timm's own adaptation.
    other = timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=2, in_chans=1)
    assert other(torch.randn(1, 1, 32, 32)).shape == (1, 2)
    # A folder written by timm's own exporter loads back into convattn.
    pytest.importorskip("huggingface_hub", reason="timm's save_for_hf needs huggingface_hub")
    timm.models.save_for_hf(loaded, str(tmp_path / "t"), safe_serialization=True)
    again = convattn.create_model(f"local-dir:{tmp_path / 't'}").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))


def _timm_swin(timm, num_classes: int = 10):
    from timm.models.swin_transformer import SwinTransformer

    kw = dict(SWIN_64, img_size=64, num_classes=num_classes)
    return SwinTransformer(**kw).eval()


def test_init_from_timm_swin_layout(timm):
    """timm's Swin puts patch merging at the start of stages 1-3 and its head in head.fc."""
    source = _timm_swin(timm)
    with torch.no_grad():  # make the source's norms and biases non-trivial
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    sd = source.state_dict()
    assert "layers.1.downsample.reduction.weight" in sd and "head.fc.weight" in sd
    swin = convattn.create_model("swin_tiny", num_classes=10, init_from=sd, **SWIN_64).eval()
    report = swin.init_report
    assert report.layout == "timm-swin" and report.initialised == [] and report.unused == []
    assert report.mapped["layers.0.downsample.reduction.weight"] == (
        "layers.1.downsample.reduction.weight"
    )
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(swin(x), source(x), rtol=1e-4, atol=1e-4)
    acmix = convattn.create_model("acmix_swin_nano", num_classes=10, init_from=sd)
    extra = {k.split(".attn.")[-1] for k in acmix.init_report.initialised}
    assert extra <= {"conv_path.fc.weight", "conv_path.fc.bias", "conv_path.dep_conv.weight"} | {
        "rate1",
        "rate2",
    }, extra
    assert acmix.init_report.unused == [] and acmix.init_report.fraction_loaded > 0.6


def test_init_from_timm_resnet_layout(timm):
    from timm.models.resnet import BasicBlock, ResNet

    source = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10).eval()
    with torch.no_grad():
        for m in source.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    sd = source.state_dict()
    x = torch.randn(1, 3, 64, 64)
    for name in ("resnet34", "xvolution_resnet34"):
        model = convattn.create_model(name, layers=[1, 1, 1, 1], num_classes=10, init_from=sd)
        assert model.init_report.unused == []
        with torch.no_grad():  # X-volution's attention BN starts at 0: the ResNet's output
            torch.testing.assert_close(model.eval()(x), source(x), rtol=1e-4, atol=1e-4)


def test_init_from_timm_resnet50_into_xvolution_resnet50(timm):
    sd = timm.create_model("resnet50").state_dict()
    model = convattn.create_model("xvolution_resnet50", init_from=sd)
    report = model.init_report
    assert report.unused == []
    assert all(".attn" in k and k.startswith("layer3.") for k in report.initialised)
    # Per stage-3 block only the attention branch is new: attn.weight and attn_bn's 4 tensors.
    assert len(report.initialised) == 6 * 5
    for j in range(6):
        assert torch.equal(model.layer3[j].conv2.conv.weight, sd[f"layer3.{j}.conv2.weight"])
        assert torch.equal(
            model.layer3[j].conv2.conv_bn.running_var, sd[f"layer3.{j}.bn2.running_var"]
        )


def test_import_convattn_after_timm_registers(timm):
    """`import timm; import convattn` is enough (a fresh interpreter; the stand-in if needed)."""
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).resolve().parents[1]
    code = (
        f"import sys; sys.path.insert(0, {str(tests)!r})\n"
        "try:\n    import torchvision\nexcept Exception:\n"
        "    from timm_standin import install_torchvision_standin\n"
        "    install_torchvision_standin()\n"
        "import timm, convattn\n"
        "print(timm.is_model('convattn_xvolution_resnet50'), timm.is_model('convattn_glnet_4g'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"]
