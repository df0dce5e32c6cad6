"""GLNet token-labeling models (glnet_4g_tklb, glnet_9g_tklb): official key maps and sizes, loading
official-layout checkpoints against the literal reference, and the auxiliary head's behaviour in
training (MixToken, un-mixed token logits) and evaluation (class + 0.5 * max token logits)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_glnet import ARCH, ref_bn, ref_glnet, save_official, synthetic_state_dict

import convattn
from convattn.bench import count_macs, count_params
from convattn.models.glnet import GLNetTokenLabel

from helpers import OFFICIAL_KEYS, assert_close_scaled

NAMES = ["glnet_4g_tklb", "glnet_9g_tklb"]
# Model card (rayleizhu/GLMix README): params (M), GFLOPs (= GMACs).
CARD = {"glnet_4g_tklb": (27.0, 4.5), "glnet_9g_tklb": (61.0, 9.7)}
SUMMARY = json.loads((OFFICIAL_KEYS / "glnet_summary.json").read_text())
NANO = dict(
    depths=(1, 1, 2, 1),
    widths=(32, 64, 96, 128),
    mixing_modes=("glmix", "glmix", "glmix.mha_nchw", "mha_nchw"),
    mlp_ratio=3.0,
    cpe_kernel=3,
    mlp_dw=True,
    downsample_style="overlapped",
    num_slots=16,
    stem_stride=2,
)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def nano_tklb(num_classes=5, **kwargs) -> GLNetTokenLabel:
    torch.manual_seed(0)
    return GLNetTokenLabel(**NANO, num_classes=num_classes, **kwargs)


# --- sizes, keys, MACs ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_keys_params_and_macs_match_official_and_card(name):
    with torch.device("meta"):
        model = convattn.create_model(name).eval()
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == json.loads((OFFICIAL_KEYS / f"{name}.json").read_text())
    official = SUMMARY[name]
    assert len(shapes) == official["state_dict_keys"] == 643
    params = count_params(model)
    assert params == official["params"]
    gmacs = count_macs(model, (1, 3, 224, 224)) / 1e9
    assert gmacs == pytest.approx(official["gmacs_224_incl_attention"], rel=0.01)
    card_params, card_gmacs = CARD[name]
    assert gmacs == pytest.approx(card_gmacs, rel=0.01)
    # The card's "27 M" for glnet_4g_tklb is the network without the auxiliary head (27.00 M; the
    # official class has 27.51 M with it); "61 M" for glnet_9g_tklb includes it (60.78 M).
    aux = count_params(model.tklb_aux_head)
    counted = params - aux if name == "glnet_4g_tklb" else params
    assert counted / 1e6 == pytest.approx(card_params, rel=0.01)


def test_derived_key_maps_are_reproducible():
    import importlib.util

    spec = importlib.util.spec_from_file_location("derive", OFFICIAL_KEYS / "derive_tklb.py")
    derive = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(derive)
    for name, shapes in derive.derive().items():
        assert shapes == json.loads((OFFICIAL_KEYS / f"{name}.json").read_text())


def test_backbone_equals_glnet_4g_plus_aux_head():
    with torch.device("meta"):
        plain = convattn.create_model("glnet_4g").state_dict()
        tklb = convattn.create_model("glnet_4g_tklb").state_dict()
    assert set(tklb) - set(plain) == {"tklb_aux_head.weight", "tklb_aux_head.bias"}
    assert all(tklb[k].shape == v.shape for k, v in plain.items())


# --- official-layout checkpoint vs the literal reference ------------------------------------------
def _ref_eval_output(x, sd):
    """Eval output: head(mean of tokens) + 0.5 * max over tokens of aux_head(tokens)."""
    logits, stages = ref_glnet(x, sd, ARCH["glnet_4g"])
    tokens = ref_bn(stages[-1], sd, "norm.").flatten(2).transpose(1, 2)  # (B, N, C)
    aux = tokens @ sd["tklb_aux_head.weight"].T + sd["tklb_aux_head.bias"]
    return logits + 0.5 * aux.max(dim=1).values


def test_glnet_4g_tklb_official_checkpoint_matches_reference(tmp_path):
    shapes = json.loads((OFFICIAL_KEYS / "glnet_4g_tklb.json").read_text())
    sd = synthetic_state_dict(shapes)
    path = save_official(tmp_path, sd)
    model = convattn.create_model("glnet_4g_tklb", checkpoint_path=path).eval()
    loaded = model.state_dict()
    assert loaded.keys() == sd.keys() and all(torch.equal(loaded[k], v) for k, v in sd.items())
    x = torch.randn(1, 3, 48, 48, dtype=torch.float64)
    sd64 = {k: v.double() if v.is_floating_point() else v for k, v in sd.items()}
    with torch.no_grad():
        got = model(x.float()).double()
    assert_close_scaled(got, _ref_eval_output(x, sd64), rtol=2e-5)


@pytest.mark.slow
def test_glnet_9g_tklb_official_checkpoint_loads(tmp_path):
    shapes = json.loads((OFFICIAL_KEYS / "glnet_9g_tklb.json").read_text())
    path = save_official(tmp_path, synthetic_state_dict(shapes))
    model = convattn.create_model("glnet_9g_tklb", checkpoint_path=path).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_new_class_count_reinitialises_both_heads(tmp_path):
    shapes = json.loads((OFFICIAL_KEYS / "glnet_4g_tklb.json").read_text())
    path = save_official(tmp_path, synthetic_state_dict(shapes))
    with pytest.raises(ValueError, match="reset_classifier"):
        convattn.create_model("glnet_4g_tklb", checkpoint_path=path, num_classes=7)
    model = convattn.create_model(
        "glnet_4g_tklb", checkpoint_path=path, num_classes=7, reset_classifier=True
    )
    assert model.head.out_features == model.tklb_aux_head.out_features == 7


# --- behaviour of the auxiliary head --------------------------------------------------------------
def test_eval_output_is_class_plus_half_max_token_logits():
    model = nano_tklb().eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        tokens = feats.flatten(2).transpose(1, 2)
        expected = model.head(tokens.mean(1)) + 0.5 * model.tklb_aux_head(tokens).max(1).values
        torch.testing.assert_close(model(x), expected)
        torch.testing.assert_close(model.forward_head(feats), expected)
        assert model.forward_head(feats, pre_logits=True).shape == (3, 128)


def test_training_returns_class_logits_unmixed_token_logits_and_box():
    model = nano_tklb().train()
    x = torch.randn(4, 3, 32, 32)
    box = (0, 1, 2, 2)  # rows 0..1, column 1 of the 2x2 final grid
    model.sample_box = lambda grid: box
    captured = {}
    model.stages[0].register_forward_pre_hook(lambda m, a: captured.update(stem=a[0].clone()))
    model.tklb_aux_head.register_forward_hook(lambda m, a, out: captured.update(raw=out.clone()))
    cls_logits, aux, got_box = model(x)
    assert got_box == box and cls_logits.shape == (4, 5) and aux.shape == (4, 4, 5)
    # The stem output of image b took the box's region (scaled x8 onto the 16x16 stem map) from
    # image B-1-b.
    stem = model.forward_stem(x)
    mixed = stem.clone()
    mixed[:, :, 0:16, 8:16] = stem.flip(0)[:, :, 0:16, 8:16]
    torch.testing.assert_close(captured["stem"], mixed)
    # Token logits inside the box come back from the reversed batch; outside they stay.
    raw = captured["raw"].reshape(4, 2, 2, 5)
    unmixed = raw.clone()
    unmixed[:, 0:2, 1:2] = raw.flip(0)[:, 0:2, 1:2]
    torch.testing.assert_close(aux, unmixed.reshape(4, 4, 5))
    (cls_logits.sum() + aux.sum()).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_box_statistics_follow_beta_area():
    model = nano_tklb()
    torch.manual_seed(0)
    boxes = [model.sample_box((7, 7)) for _ in range(400)]
    for r0, c0, r1, c1 in boxes:
        assert 0 <= r0 <= r1 <= 7 and 0 <= c0 <= c1 <= 7
    areas = [(r1 - r0) * (c1 - c0) / 49 for r0, c0, r1, c1 in boxes]
    # lam ~ U(0, 1): the unclipped box covers (1 - lam) of the grid on average (1/2), clipping and
    # rounding down make it smaller; it is never the whole grid less than half the time.
    assert 0.15 < sum(areas) / len(areas) < 0.5
    assert any(a > 0.5 for a in areas) and any(a == 0 for a in areas)


def test_mix_token_off_keeps_the_training_tuple_with_an_empty_box():
    model = nano_tklb(mix_token=False).train()
    _, aux, box = model(torch.randn(2, 3, 32, 32))
    assert box == (0, 0, 0, 0) and aux.shape == (2, 4, 5)


def test_features_only_and_no_classifier():
    model = nano_tklb(num_classes=0).train()
    assert model.tklb_aux_head is None
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 128)
    net = convattn.create_model("glnet_4g_tklb", features_only=True).eval()
    with torch.no_grad():
        feats = net(torch.randn(1, 3, 32, 32))
    assert [f.shape[1] for f in feats] == [64, 128, 256, 512]


def test_bad_option():
    with pytest.raises(ValueError, match="mix_beta"):
        GLNetTokenLabel(**NANO, mix_beta=0.0)


def test_reset_classifier_resets_both_heads():
    model = nano_tklb()
    model.reset_classifier(3)
    assert model.head.out_features == model.tklb_aux_head.out_features == 3
    assert math.isclose(model.tklb_aux_head.weight.std().item(), 0.02, rel_tol=0.3)


def test_traced_mix_token_matches_the_eager_slices():
    # Compiled graphs take the mask form (no .item()); it draws the same box and mixes alike.
    model = nano_tklb().train()
    for seed in range(20):
        torch.manual_seed(seed)
        expected = model.sample_box((7, 5))
        torch.manual_seed(seed)
        assert tuple(model._sample_box_tensor((7, 5), torch.device("cpu")).tolist()) == expected
    x = torch.randn(4, 3, 32, 32)
    model.sample_box = lambda grid: (0, 1, 2, 2)
    eager = model(x)
    stem = model.forward_stem(x)
    model._sample_box_tensor = lambda grid, device: torch.tensor([0, 1, 2, 2])
    traced = model._forward_mixed_traced(stem, model._final_grid(stem.shape[-2:]))
    torch.testing.assert_close(traced[0], eager[0])
    torch.testing.assert_close(traced[1], eager[1])
