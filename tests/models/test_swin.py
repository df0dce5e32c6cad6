"""Swin / ACmix-Swin: published counts, official checkpoint layouts, equivalence with the literal
reference (tests/models/ref_swin.py) at official and arbitrary sizes, and the model API."""

import functools
import json
import math
from pathlib import Path

import pytest
import ref_swin as ref
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import convattn
import convattn.models.swin  # registers the models (until models/__init__.py imports it)
from convattn.bench import count_macs, count_params
from convattn.layers.acmix import ACmixWindowAttention
from convattn.models.swin import (
    PatchMerging,
    SwinTransformer,
    SwinTransformerBlock,
    checkpoint_filter_fn,
)

from helpers import OFFICIAL_KEYS

KEYS = OFFICIAL_KEYS
ACMIX_KEYS = ("attn.rate1", "attn.rate2", "attn.fc.weight", "attn.fc.bias", "attn.dep_conv.weight")
BUFFERS = ("relative_position_index", "attn_mask")

# Exact counts: the official ACmix key maps' _meta, and the official Swin code (same classes
# without the five ACmix tensors per block).
EXACT_PARAMS = {"swin_tiny": 28_288_354, "acmix_swin_tiny": 28_649_908}
EXACT_PARAMS_BIG = {"swin_small": 49_606_258, "acmix_swin_small": 50_345_080}


# --- helpers -----------------------------------------------------------------------------------
@functools.cache
def cached(name: str) -> SwinTransformer:
    """A shared eval-mode model for the read-only tests (building Swin-T costs seconds)."""
    return convattn.create_model(name).eval()


def official_key_map(name: str) -> dict[str, list[int]]:
    """Official key -> shape. Swin-T/S are the ACmix maps without the ACmix tensors."""
    acmix = name.startswith("acmix_")
    base = name if acmix else f"acmix_{name}"
    keys = json.loads((KEYS / f"{base}.json").read_text())["keys"]
    return {k: v for k, v in keys.items() if acmix or not k.endswith(ACMIX_KEYS)}


def random_official_state_dict(shapes: dict, seed: int = 0, scale: float = 0.05) -> dict:
    """Random tensors with the official shapes; the deterministic buffers get garbage on purpose."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in shapes.items():
        if key.endswith("relative_position_index"):
            sd[key] = torch.randint(0, 5, shape, generator=g)
        elif key.endswith("attn_mask"):
            sd[key] = torch.randn(shape, generator=g)
        elif key.endswith(("norm.weight", "norm1.weight", "norm2.weight")):
            sd[key] = 1.0 + 0.2 * torch.randn(shape, generator=g)
        elif len(shape) == 1 or key.endswith("bias_table"):
            sd[key] = 0.5 * torch.randn(shape, generator=g)
        else:
            sd[key] = scale * torch.randn(shape, generator=g)
    return sd


def official_layout(model: torch.nn.Module, seed: int = 0) -> dict:
    """Random official-layout state dict for any of our configurations (e.g. the nano model)."""
    shapes = {
        k.replace("attn.conv_path.", "attn."): list(v.shape) for k, v in model.state_dict().items()
    }
    return random_official_state_dict(shapes, seed, scale=0.3)


def ref_config(model: SwinTransformer) -> dict:
    return dict(
        patch=model.patch_embed.patch_size,
        depths=[len(stage.blocks) for stage in model.layers],
        heads=[stage.blocks[0].attn.num_heads for stage in model.layers],
        window=model.layers[0].blocks[0].window_size,
        acmix=isinstance(model.layers[0].blocks[0].attn, ACmixWindowAttention),
    )


def as_float64(sd: dict) -> dict:
    return {k: v.double() if v.is_floating_point() else v for k, v in sd.items()}


def load_official(name: str, sd: dict, tmp_path: Path, **kwargs) -> SwinTransformer:
    path = tmp_path / f"{name}_official.pth"
    torch.save({"model": sd, "epoch": 299}, path)
    # create_model loads strictly: a missing or unexpected key raises.
    return convattn.create_model(name, checkpoint_path=path, **kwargs).double().eval()


def assert_matches_reference(model: SwinTransformer, sd: dict, x: torch.Tensor) -> None:
    stages: list = []
    expected = ref.swin_forward(x, as_float64(sd), stages_out=stages, **ref_config(model))
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-9, atol=1e-9)
        for got, want in zip(model.forward_intermediates(x), stages, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


# --- counts --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,expected",
    [*EXACT_PARAMS.items()]
    + [pytest.param(n, c, marks=pytest.mark.slow) for n, c in EXACT_PARAMS_BIG.items()],
)
def test_exact_parameter_counts(name, expected):
    assert count_params(cached(name)) == expected


@pytest.mark.parametrize(
    "name", ["acmix_swin_tiny", pytest.param("acmix_swin_small", marks=pytest.mark.slow)]
)
def test_state_dict_is_the_official_key_map(name):
    """Same keys and shapes as the official model, except the attn_mask buffers (recomputed)."""
    meta = json.loads((KEYS / f"{name}.json").read_text())["_meta"]
    official = official_key_map(name)
    assert len(official) == meta["num_keys"]
    ours = {
        k.replace("attn.conv_path.", "attn."): list(v.shape)
        for k, v in cached(name).state_dict().items()
    }
    expected = {k: v for k, v in official.items() if not k.endswith("attn_mask")}
    assert ours == expected
    buffers = [k for k in official if k.endswith(BUFFERS)]
    assert len(buffers) == meta["buffer_keys_in_state_dict"]


def test_nano_model_is_small():
    model = convattn.create_model("acmix_swin_nano")
    assert count_params(model) <= 1.0e6
    cfg = convattn.get_pretrained_cfg("acmix_swin_nano")
    assert cfg["input_size"] == (3, 32, 32)
    assert cfg["model_args"]["window_size"] == model.layers[0].blocks[0].window_size == 4


def test_block_macs_match_official_formula():
    """One ACmix-Swin-T stage-1 block at 28x28: the official ``flops()`` terms (norms excluded)."""
    dim, heads, hw, n = 192, 6, 28 * 28, 49
    block = SwinTransformerBlock(dim, heads, 7, shifted=True, attn_layer="acmix")
    windows = hw // n
    attention = windows * (n * dim * 3 * dim + 2 * n * n * dim + n * dim * dim)
    mlp = 2 * hw * dim * 4 * dim
    acmix = 27 * dim * hw + 81 * dim * hw  # fc (3*heads -> 9 per channel-in-head) + dep_conv
    assert count_macs(block, (1, 28, 28, dim)) == attention + mlp + acmix


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,gmacs",
    [
        ("swin_tiny", 4.49),
        ("acmix_swin_tiny", 4.65),
        ("swin_small", 8.74),
        ("acmix_swin_small", 8.99),
    ],
)
def test_macs_at_224_match_published(name, gmacs):
    macs = count_macs(convattn.create_model(name), (1, 3, 224, 224)) / 1e9
    assert macs == pytest.approx(gmacs, rel=0.03)


def test_drop_path_schedule_is_linear():
    model = cached("swin_tiny")
    rates = [
        b.drop_path.drop_prob if hasattr(b.drop_path, "drop_prob") else 0.0
        for stage in model.layers
        for b in stage.blocks
    ]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.2, 12), rtol=0, atol=1e-7)
    shifts = [b.shift_size for b in model.layers[2].blocks]
    assert shifts == [0, 3, 0, 3, 0, 3]


# --- equivalence with the literal reference --------------------------------------------------------
@pytest.mark.parametrize(
    "batch,hw",
    [(3, (32, 32)), (1, (33, 31)), (3, (5, 70)), (1, (1, 1)), (3, (17, 9)), (1, (8, 40))],
)
def test_nano_matches_reference(batch, hw):
    """Official semantics (32x32) and the documented size rules: padding, odd merging, clamping.

    (1, (8, 40)): one image whose stage-0 map (4x20) is a single row of windows."""
    model = convattn.create_model("acmix_swin_nano").double().eval()
    sd = official_layout(model)
    model.load_state_dict(checkpoint_filter_fn(dict(sd), model))
    assert_matches_reference(model, sd, torch.randn(batch, 3, *hw, dtype=torch.float64))


@pytest.mark.parametrize("hw", [(24, 24), (19, 30)])
def test_plain_swin_matches_reference(hw):
    model = SwinTransformer(
        patch_size=2, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=3
    )
    model = model.double().eval()
    sd = official_layout(model)
    model.load_state_dict(checkpoint_filter_fn(dict(sd), model))
    assert_matches_reference(model, sd, torch.randn(2, 3, *hw, dtype=torch.float64))


BLOCK_GRID = [
    # (H, W, window, heads, C)
    (8, 8, 4, 2, 8),
    (9, 13, 4, 1, 6),
    (12, 7, 3, 2, 8),
    (3, 5, 4, 2, 8),  # clamped to a 3x3 window, no shift
    (6, 6, 7, 3, 6),  # clamped
]


def randomize_block(block: SwinTransformerBlock, seed: int, scale: float = 0.4) -> dict:
    """Load random official-layout weights into ``block``; return them for the reference (prefix "blk")."""
    shapes = {k: list(v.shape) for k, v in block.state_dict().items()}
    sd = {
        k.replace("attn.conv_path.", "attn."): v
        for k, v in random_official_state_dict(shapes, seed, scale).items()
    }
    block.load_state_dict(checkpoint_filter_fn(dict(sd), block))
    return {f"blk.{k}": v for k, v in as_float64(sd).items()}


@pytest.mark.parametrize("acmix", [False, True])
@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize("h,w,window,heads,c", BLOCK_GRID)
def test_block_matches_reference(acmix, shifted, h, w, window, heads, c):
    kind = "acmix" if acmix else "window"
    block = SwinTransformerBlock(c, heads, window, shifted=shifted, attn_layer=kind).double()
    sd = randomize_block(block.eval(), seed=h * w + window)
    x = torch.randn(2, h, w, c, dtype=torch.float64)
    expected = ref.swin_block(x, sd, "blk", heads, window, shifted, acmix)
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected, rtol=1e-10, atol=1e-10)


def test_conv_path_runs_on_the_rolled_map():
    """The shifted ACmix block must match the rolled-map conv path, and NOT the un-rolled one."""
    size, shift = 14, 3
    block = SwinTransformerBlock(8, 2, 7, shifted=True, attn_layer="acmix").double().eval()
    sd = randomize_block(block, seed=1, scale=0.5)
    x = torch.randn(1, size, size, 8, dtype=torch.float64)
    with torch.no_grad():
        got = block(x)
    rolled = ref.swin_block(x, sd, "blk", 2, 7, True, True)
    unrolled = ref.swin_block(x, sd, "blk", 2, 7, True, True, conv_on_rolled_map=False)
    torch.testing.assert_close(got, rolled, rtol=1e-10, atol=1e-10)
    # Only pixels whose 3x3 neighbourhood crosses the wrap-around seam (rows/cols 0 and 13) or the
    # edges of the rolled map (rows/cols shift - 1 and shift) differ (docs/notes/acmix.md §3).
    seam = torch.zeros(size, dtype=torch.bool)
    seam[[0, size - 1, shift - 1, shift]] = True
    expected_diff = seam[:, None] | seam[None, :]
    assert torch.equal((got - unrolled).abs().amax(dim=(0, 3)) > 1e-9, expected_diff)


def test_patch_merging_uses_the_official_order():
    merge = PatchMerging(1)
    with torch.no_grad():
        merge.norm.weight.fill_(1.0)
        merge.norm.bias.zero_()
        merge.reduction.weight.copy_(torch.eye(2, 4))  # keep the first two of x0, x1, x2, x3
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 2, 2, 1)  # rows (1, 2) and (3, 4)
    normed = torch.nn.functional.layer_norm(torch.tensor([1.0, 3.0, 2.0, 4.0]), (4,))
    torch.testing.assert_close(merge(x).flatten(), normed[:2])


# --- official checkpoints ----------------------------------------------------------------------------
def test_official_acmix_swin_tiny_checkpoint(tmp_path):
    """Official layout ({"model": sd}, with attn_mask and garbage relative_position_index buffers)
    loads strictly and matches the reference; at 56x56 stage 0 runs the official shifted windows."""
    sd = random_official_state_dict(official_key_map("acmix_swin_tiny"))
    model = load_official("acmix_swin_tiny", sd, tmp_path)
    assert_matches_reference(model, sd, torch.randn(2, 3, 56, 56, dtype=torch.float64))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["acmix_swin_tiny", "swin_tiny"])
def test_official_checkpoint_at_224(name, tmp_path):
    """The whole official model at its training size, where the official code runs as released."""
    sd = random_official_state_dict(official_key_map(name), scale=0.02)
    model = load_official(name, sd, tmp_path)
    assert_matches_reference(model, sd, torch.randn(1, 3, 224, 224, dtype=torch.float64))


def test_checkpoint_filter_recomputes_buffers():
    model = convattn.create_model("acmix_swin_nano")
    sd = official_layout(model)
    out = checkpoint_filter_fn(sd, model)
    assert not any(k.endswith("attn_mask") for k in out)
    own = model.state_dict()
    key = "layers.0.blocks.1.attn.relative_position_index"
    assert sd[key].max() < 5 and torch.equal(out[key], own[key])


def test_official_checkpoint_with_new_head_and_stem(tmp_path):
    model = convattn.create_model("acmix_swin_nano")
    sd = official_layout(model)
    path = tmp_path / "nano.pth"
    torch.save({"model": sd}, path)
    loaded = convattn.create_model(
        "acmix_swin_nano", checkpoint_path=path, num_classes=7, in_chans=1, reset_classifier=True
    ).eval()
    assert loaded(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    torch.testing.assert_close(
        loaded.patch_embed.proj.weight, sd["patch_embed.proj.weight"].sum(1, keepdim=True)
    )


# --- sizes, dtypes, gradients ---------------------------------------------------------------------
@settings(max_examples=12, deadline=None)
@given(
    h=st.integers(1, 48),
    w=st.integers(1, 48),
    batch=st.integers(1, 2),
    name=st.sampled_from(["acmix_swin_nano", "tiny_window"]),
)
def test_any_input_size(h, w, batch, name):
    model = _property_models()[name]
    with torch.no_grad():
        logits = model(torch.randn(batch, 3, h, w))
        feats = model.forward_intermediates(torch.randn(batch, 3, h, w))
    assert logits.shape == (batch, 1000) and torch.isfinite(logits).all()
    for i, f in enumerate(feats):
        red = model.feature_info[i]["reduction"]
        assert f.shape == (batch, model.feature_info[i]["num_chs"], -(-h // red), -(-w // red))


_CACHE: dict = {}


def _property_models() -> dict:
    if not _CACHE:
        _CACHE["acmix_swin_nano"] = convattn.create_model("acmix_swin_nano").eval()
        _CACHE["tiny_window"] = SwinTransformer(
            patch_size=3, embed_dim=8, depths=(2, 2), num_heads=(2, 2), window_size=5
        ).eval()
    return _CACHE


def test_forward_backward_with_drop_path():
    model = convattn.create_model("acmix_swin_nano", drop_path_rate=0.3, num_classes=10)
    model.train()
    out = model(torch.randn(2, 3, 32, 32))
    out.logsumexp(1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.layers[0].blocks[0].attn.rate2.grad.abs() > 0


@pytest.mark.parametrize("shape", [(2, 5, 6, 4), (1, 3, 5, 4)])
def test_gradcheck_block(shape):
    """Shifted + padded (5x6 -> 8x8) and clamped (3x5: 3x3 windows) ACmix blocks, float64."""
    block = SwinTransformerBlock(4, 2, 4, shifted=True, attn_layer="acmix").double()
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(block, (x,), eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 0.08), (torch.float16, 0.01)])
def test_low_precision_forward(dtype, tol):
    model = convattn.create_model("acmix_swin_nano").eval()
    x = torch.randn(2, 3, 35, 29)
    with torch.no_grad():
        ref32 = model(x)
        try:
            low = model.to(dtype)(x.to(dtype))
        except RuntimeError as err:  # pragma: no cover - depends on the CPU kernels available
            pytest.skip(f"{dtype} CPU kernels missing: {err}")
    assert low.dtype == dtype
    scale = ref32.abs().max()
    assert (low.float() - ref32).abs().max() <= tol * scale


def test_inference_mode_then_training():
    """Masks cached under inference_mode must be usable by a later training step."""
    model = convattn.create_model("acmix_swin_nano", num_classes=3)
    x = torch.randn(1, 3, 44, 44)
    with torch.inference_mode():
        model.eval()(x)
    model.train()(x).sum().backward()
    assert model.layers[0].blocks[1].attn.qkv.weight.grad is not None


# --- API ---------------------------------------------------------------------------------------
def test_feature_info_and_intermediates():
    model = cached("swin_tiny")
    assert [f["num_chs"] for f in model.feature_info] == [96, 192, 384, 768]
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16, 32]
    assert [f["module"] for f in model.feature_info] == [f"layers.{i}" for i in range(4)]
    with torch.no_grad():
        feats = model.forward_intermediates(torch.randn(1, 3, 70, 64), (0, -2, 3))
    assert [tuple(f.shape) for f in feats] == [(1, 96, 18, 16), (1, 384, 5, 4), (1, 768, 3, 2)]


def test_features_only():
    model = convattn.create_model("acmix_swin_nano", features_only=True, out_indices=(1, 3))
    assert model.feature_info.channels() == [48, 192]
    assert model.feature_info.reduction() == [4, 16]
    with torch.no_grad():
        feats = model.eval()(torch.randn(2, 3, 32, 30))
    assert [tuple(f.shape) for f in feats] == [(2, 48, 8, 8), (2, 192, 2, 2)]


def test_forward_features_head_and_classifier():
    model = convattn.create_model("acmix_swin_nano", num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 192, 2, 2)
        # forward_features ends with the final LayerNorm (per pixel, over channels).
        torch.testing.assert_close(feats.mean(1), torch.zeros(2, 2, 2), atol=1e-5, rtol=0)
        # Intermediates are not normalised: the last one differs from forward_features.
        assert not torch.allclose(model.forward_intermediates(x, [3])[0], feats)
        assert model.forward_head(feats, pre_logits=True).shape == (2, 192)
        assert model(x).shape == (2, 5)
    assert model.get_classifier().out_features == 5
    model.reset_classifier(0)
    assert model(x).shape == (2, 192)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)


def test_bad_inputs_name_the_argument():
    model = convattn.create_model("acmix_swin_nano")
    with pytest.raises(ValueError, match="'x' must have 3 channels"):
        model(torch.randn(1, 4, 32, 32))
    with pytest.raises(TypeError, match="'x' must have a floating dtype"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.int64))
    with pytest.raises(ValueError, match="'x' must be a 4-D tensor"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="'x' must have spatial size"):
        model(torch.randn(1, 3, 0, 32))
    with pytest.raises(ValueError, match="batch size 0"):
        model(torch.randn(0, 3, 32, 32))


@pytest.mark.parametrize(
    "kwargs,option",
    [
        (dict(window_size=0), "window_size"),
        (dict(patch_size=-1), "patch_size"),
        (dict(embed_dim=10, num_heads=(3, 6, 12, 24)), "num_heads"),
        (dict(depths=(2, 2)), "depths"),
        (dict(depths=(2, 0, 2, 2)), "depths"),
        (dict(attn_layer="conv"), "attn_layer"),
        (dict(drop_path_rate=1.0), "drop_path_rate"),
        (dict(drop_rate=-0.1), "drop_rate"),
        (dict(num_classes=-1), "num_classes"),
        (dict(mlp_ratio=0), "mlp_ratio"),
    ],
)
def test_invalid_options(kwargs, option):
    with pytest.raises(ValueError, match=option):
        SwinTransformer(**kwargs)


def test_registered_names():
    names = convattn.list_models("*swin*")
    assert {
        "swin_tiny",
        "swin_small",
        "acmix_swin_tiny",
        "acmix_swin_small",
        "acmix_swin_nano",
    } <= set(names)
    assert math.isclose(convattn.get_pretrained_cfg("acmix_swin_tiny")["paper_top1"], 81.9)
