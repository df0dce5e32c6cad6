"""GLNet family: official key maps and sizes, MACs, loading official-layout checkpoints against a
literal reference forward, API, features, resolutions, dtypes and errors."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import convattn
import convattn.models.glnet
from convattn.bench import count_macs, count_params
from convattn.models.glnet import GLNet

from helpers import OFFICIAL_KEYS, assert_close_scaled, randomize_bn

KEYS_DIR = OFFICIAL_KEYS
OFFICIAL = ["glnet_4g", "glnet_9g", "glnet_16g", "glnet_stl", "glnet_stl_paramslot"]

# glnet_summary.json (official code instantiated): params, state-dict keys, buffer elements, GMACs
# at 224 including the attention products.
SUMMARY = {
    "glnet_4g": (27_001_593, 641, 3014, 4.482),
    "glnet_9g": (60_010_617, 641, 4518, 9.588),
    "glnet_16g": (106_055_161, 701, 6022, 16.604),
    "glnet_stl": (30_296_786, 249, 3077, 4.347),
    "glnet_stl_paramslot": (30_481_106, 259, 3077, 4.347),
}

# Architectures as the table of docs/notes/glmix.md §2 states them, for the reference forward.
_4G = dict(style="overlapped", modes=("glmix", "glmix", "hybrid", "mha_nchw"), slots=64)
_STL = dict(style="patch", modes=("glmix", "glmix", "glmix", "mha_tokens"), slots=64)
ARCH = {
    "glnet_4g": dict(_4G, stem_stride=4),
    "glnet_16g": dict(_4G, stem_stride=4),
    "glnet_stl": dict(_STL, stem_stride=4),
    "glnet_stl_paramslot": dict(_STL, stem_stride=4),
    "glnet_nano": dict(_4G, stem_stride=2, slots=16),
}


@pytest.fixture(autouse=True)
def one_thread():
    """These tests run many tiny ops (float64 depthwise convs loop over groups); with two OpenMP
    threads on a shared 2-core machine every op can stall for milliseconds, so run single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- literal reference (written from docs/notes/glmix.md §1-§3, no library code) ------
def ref_conv(x, w, b, stride, padding):
    """Dense convolution as im2col + matrix product: out[o, p] = sum_{c,taps} w[o, c, taps] x[c, p+taps]."""
    n, _, h, wd = x.shape
    k = w.shape[-1]
    cols = F.unfold(x, k, padding=padding, stride=stride)  # (N, C*k*k, L)
    out = torch.einsum("ok,nkl->nol", w.reshape(w.shape[0], -1), cols) + b.view(1, -1, 1)
    oh, ow = (h + 2 * padding - k) // stride + 1, (wd + 2 * padding - k) // stride + 1
    return out.reshape(n, -1, oh, ow)


def ref_dwconv(x, w, b):
    """'Same' depthwise convolution, one kernel tap at a time."""
    k = w.shape[-1]
    r = k // 2
    h, wd = x.shape[-2:]
    padded = F.pad(x, (r, r, r, r))
    out = b.view(1, -1, 1, 1).expand_as(x).clone()
    for i in range(k):
        for j in range(k):
            out = out + w[:, 0, i, j].view(1, -1, 1, 1) * padded[:, :, i : i + h, j : j + wd]
    return out


def ref_bn(x, sd, p):
    """Eval BatchNorm: (x - mean) / sqrt(var + 1e-5) * weight + bias, per channel."""
    shape = (1, -1, 1, 1)
    scale = sd[p + "weight"].view(shape) / torch.sqrt(sd[p + "running_var"].view(shape) + 1e-5)
    return (x - sd[p + "running_mean"].view(shape)) * scale + sd[p + "bias"].view(shape)


def ref_ln(x, w, b, dim):
    """LayerNorm over ``dim`` (biased variance, eps 1e-6)."""
    mean = x.mean(dim, keepdim=True)
    var = ((x - mean) ** 2).mean(dim, keepdim=True)
    shape = [1] * x.dim()
    shape[dim] = -1
    return (x - mean) / torch.sqrt(var + 1e-6) * w.view(shape) + b.view(shape)


def ref_gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def ref_softmax(x, dim):
    e = torch.exp(x - x.amax(dim, keepdim=True))
    return e / e.sum(dim, keepdim=True)


def ref_l2n(v):
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def ref_mha(t, sd, p, heads):
    """nn.MultiheadAttention semantics on (B, L, C): packed q/k/v rows, one head at a time."""
    c = t.shape[-1]
    d = c // heads
    w, b = sd[p + "in_proj_weight"], sd[p + "in_proj_bias"]
    q, k, v = (t @ w[i * c : (i + 1) * c].T + b[i * c : (i + 1) * c] for i in range(3))
    outs = []
    for h in range(heads):
        s = slice(h * d, (h + 1) * d)
        attn = ref_softmax(q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(d), -1)
        outs.append(attn @ v[..., s])
    return torch.cat(outs, -1) @ sd[p + "out_proj.weight"].T + sd[p + "out_proj.bias"]


def ref_pool_cells(x, g):
    """Adaptive average pooling to g x g cells (rows floor(i*H/g) .. ceil((i+1)*H/g)), row-major."""
    h, w = x.shape[-2:]
    cells = []
    for i in range(g):
        for j in range(g):
            r0, r1 = i * h // g, -(-(i + 1) * h // g)
            c0, c1 = j * w // g, -(-(j + 1) * w // g)
            cells.append(x[:, :, r0:r1, c0:c1].mean((2, 3)))
    return torch.stack(cells, 1)  # (B, S, C)


def ref_conv_mlp(x, sd, p):
    h = ref_conv(x, sd[p + "mlp.0.weight"], sd[p + "mlp.0.bias"], 1, 0)
    if p + "mlp.1.weight" in sd:
        h = h + ref_dwconv(h, sd[p + "mlp.1.weight"], sd[p + "mlp.1.bias"])
    return ref_conv(ref_gelu(h), sd[p + "mlp.3.weight"], sd[p + "mlp.3.bias"], 1, 0)


def ref_scale(x, sd, key):
    return x * sd[key] if key in sd else x


def ref_cpe(x, sd, p):
    if p + "pos_conv.weight" in sd:
        return x + ref_dwconv(x, sd[p + "pos_conv.weight"], sd[p + "pos_conv.bias"])
    return x


def ref_glmix_block(x, sd, p, heads, num_slots):
    raw = x
    x = ref_cpe(x, sd, p)
    z = ref_ln(x, sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1)
    b, c, h, w = z.shape
    pix = z.reshape(b, c, h * w).transpose(1, 2)  # (B, N, C)
    if p + "init_slots" in sd:
        init = sd[p + "init_slots"].expand(b, -1, -1)
    else:
        init = ref_pool_cells(raw, math.isqrt(num_slots))
    logits = sd[p + "slot_scale"] * torch.einsum("bsc,bnc->bsn", ref_l2n(init), ref_l2n(pix))
    slots = torch.einsum("bsn,bnc->bsc", ref_softmax(logits, 2), pix)  # cluster: over pixels
    slots = ref_mha(slots, sd, p + "relation_mha.", heads)
    glob = torch.einsum("bsn,bsc->bcn", ref_softmax(logits, 1), slots)  # dispatch: over slots
    local = ref_conv(z, sd[p + "feature_conv.0.weight"], sd[p + "feature_conv.0.bias"], 1, 0)
    local = ref_dwconv(local, sd[p + "feature_conv.1.weight"], sd[p + "feature_conv.1.bias"])
    local = ref_conv(local, sd[p + "feature_conv.2.weight"], sd[p + "feature_conv.2.bias"], 1, 0)
    x = x + ref_scale(glob.reshape(b, c, h, w) + local, sd, p + "ls1.gamma")
    mlp = ref_conv_mlp(ref_ln(x, sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1), sd, p)
    return x + ref_scale(mlp, sd, p + "ls2.gamma")


def ref_mhsa_nchw_block(x, sd, p, heads):
    x = ref_cpe(x, sd, p)
    b, c, h, w = x.shape
    t = x.reshape(b, c, h * w).transpose(1, 2)
    attn = ref_mha(
        ref_ln(t, sd[p + "norm1.weight"], sd[p + "norm1.bias"], 2), sd, p + "mha_op.", heads
    )
    t = t + ref_scale(attn, sd, p + "ls1.gamma")
    x = t.transpose(1, 2).reshape(b, c, h, w)
    mlp = ref_conv_mlp(ref_ln(x, sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1), sd, p)
    return x + ref_scale(mlp, sd, p + "ls2.gamma")


def ref_mhsa_token_block(t, sd, p, heads):
    attn = ref_mha(
        ref_ln(t, sd[p + "norm1.weight"], sd[p + "norm1.bias"], 2), sd, p + "mha_op.", heads
    )
    t = t + attn
    hidden = ref_gelu(
        ref_ln(t, sd[p + "norm2.weight"], sd[p + "norm2.bias"], 2) @ sd[p + "mlp.0.weight"].T
        + sd[p + "mlp.0.bias"]
    )
    return t + hidden @ sd[p + "mlp.2.weight"].T + sd[p + "mlp.2.bias"]


def ref_downsample(x, sd, i, arch):
    p = f"downsample_layers.{i}."
    if arch["style"] == "overlapped":
        if i == 0:
            first_stride = arch["stem_stride"] // 2
            x = ref_conv(x, sd[p + "1.weight"], sd[p + "1.bias"], first_stride, 1)
            x = ref_gelu(ref_bn(x, sd, p + "2."))
            return ref_bn(ref_conv(x, sd[p + "4.weight"], sd[p + "4.bias"], 2, 1), sd, p + "5.")
        return ref_bn(ref_conv(x, sd[p + "0.weight"], sd[p + "0.bias"], 2, 1), sd, p + "1.")
    if i == 0:
        s = arch["stem_stride"]
        return ref_bn(ref_conv(x, sd[p + "0.weight"], sd[p + "0.bias"], s, 0), sd, p + "1.")
    return ref_conv(ref_bn(x, sd, p + "0."), sd[p + "1.weight"], sd[p + "1.bias"], 2, 0)


def ref_glnet(x, sd, arch):
    """Whole-network reference: returns (logits, [stage outputs])."""
    stages = []
    for i in range(4):
        x = ref_downsample(x, sd, i, arch)
        c = x.shape[1]
        heads = c // 32
        depth = len({k.split(".")[3] for k in sd if k.startswith(f"stages.{i}.blocks.")})
        mode = arch["modes"][i]
        for j in range(depth):
            p = f"stages.{i}.blocks.{j}."
            if mode == "glmix" or (mode == "hybrid" and j % 2 == 0):
                x = ref_glmix_block(x, sd, p, heads, arch["slots"])
            elif mode == "mha_tokens":
                b, _, h, w = x.shape
                t = ref_mhsa_token_block(x.reshape(b, c, h * w).transpose(1, 2), sd, p, heads)
                x = t.transpose(1, 2).reshape(b, c, h, w)
            else:
                x = ref_mhsa_nchw_block(x, sd, p, heads)
        stages.append(x)
    pooled = ref_bn(x, sd, "norm.").mean((2, 3))
    return pooled @ sd["head.weight"].T + sd["head.bias"], stages


# --- helpers --------------------------------------------------------------------------------------
def official_shapes(name: str) -> dict[str, list[int]]:
    return json.loads((KEYS_DIR / f"{name}.json").read_text())


def synthetic_state_dict(shapes: dict[str, list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with the given shapes, scaled so a deep network stays well conditioned."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in shapes.items():
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            sd[key] = torch.tensor(7)
        elif leaf == "running_var":
            sd[key] = torch.rand(shape, generator=g) + 0.5
        elif leaf == "slot_scale":  # large temperatures: both softmaxes far from uniform
            sd[key] = torch.rand(shape, generator=g) * 4 + 4
        elif leaf == "gamma":
            sd[key] = torch.rand(shape, generator=g) * 0.5 + 0.25
        elif len(shape) == 1 and leaf == "weight":  # norm affine weights
            sd[key] = 1 + 0.2 * torch.randn(shape, generator=g)
        elif len(shape) <= 1:  # biases and running means
            sd[key] = 0.2 * torch.randn(shape, generator=g)
        else:
            fan_in = math.prod(shape[1:]) if leaf != "init_slots" else 1
            sd[key] = torch.randn(shape, generator=g) / math.sqrt(fan_in)
    return sd


def save_official(tmp_path, sd, wrapper="model"):
    path = tmp_path / "official.pth"
    torch.save({wrapper: sd, "epoch": 299}, path)
    return path


def check_against_reference(
    name, tmp_path, size, batch=2, wrapper="model", dtype=torch.float32, **kwargs
):
    """Official-layout checkpoint -> create_model (strict) -> output == the float64 reference.

    The big models run in float32 (float64 depthwise convolutions take a slow CPU path); the
    reference always runs in float64.
    """
    if name == "glnet_nano" or kwargs:
        with torch.device("meta"):
            model = convattn.create_model(name, **kwargs)
        shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    else:
        shapes = official_shapes(name)
    sd = synthetic_state_dict(shapes)
    path = save_official(tmp_path, sd, wrapper)
    model = convattn.create_model(name, checkpoint_path=path, **kwargs).eval().to(dtype)
    loaded = model.state_dict()
    assert loaded.keys() == sd.keys()
    assert all(
        torch.equal(loaded[k].to(v.dtype), v) for k, v in sd.items()
    )  # nothing re-initialised
    x = torch.randn(batch, 3, *size, dtype=torch.float64)
    sd64 = {k: v.double() if v.is_floating_point() else v for k, v in sd.items()}
    expected, expected_stages = ref_glnet(x, sd64, ARCH[name])
    rtol = 1e-9 if dtype == torch.float64 else 2e-5
    with torch.no_grad():
        assert_close_scaled(model(x.to(dtype)).double(), expected, rtol=rtol)
        for got, want in zip(model.forward_intermediates(x.to(dtype)), expected_stages):
            assert_close_scaled(got.double(), want, rtol=rtol)
    return model


# --- sizes, keys, MACs ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", OFFICIAL)
def test_param_count_keys_and_buffers_match_official(name):
    params, num_keys, buffer_elems, _ = SUMMARY[name]
    with torch.device("meta"):
        model = convattn.create_model(name)
    assert count_params(model) == params
    assert len(model.state_dict()) == num_keys
    assert sum(b.numel() for b in model.buffers()) == buffer_elems


@pytest.mark.parametrize("name", ["glnet_4g", "glnet_stl", "glnet_stl_paramslot"])
def test_state_dict_equals_official_key_map(name):
    with torch.device("meta"):
        model = convattn.create_model(name)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == official_shapes(name)


def test_layerscale_keys_of_16g():
    # The official LayerScale is (1, C, 1, 1) on NCHW branches and (C,) on the NCHW-MHSA block's
    # token branch; 30 blocks x 2 = the 60 extra keys of glnet_16g.
    with torch.device("meta"):
        sd = convattn.create_model("glnet_16g").state_dict()
    gammas = {k: tuple(v.shape) for k, v in sd.items() if k.endswith("gamma")}
    assert len(gammas) == 60
    assert gammas["stages.0.blocks.0.ls1.gamma"] == (1, 128, 1, 1)
    assert gammas["stages.2.blocks.0.ls2.gamma"] == (1, 512, 1, 1)
    assert gammas["stages.2.blocks.1.ls1.gamma"] == (512,)
    assert gammas["stages.2.blocks.1.ls2.gamma"] == (1, 512, 1, 1)
    assert gammas["stages.3.blocks.3.ls1.gamma"] == (1024,)


@pytest.mark.parametrize("name", OFFICIAL)
def test_macs_at_224_match_official(name):
    # FlopCounterMode only needs shapes: count on the meta device (same totals, no compute).
    with torch.device("meta"):
        model = convattn.create_model(name)
    gmacs = count_macs(model, (1, 3, 224, 224)) / 1e9
    assert gmacs == pytest.approx(SUMMARY[name][3], rel=0.03)


def test_meta_mac_count_equals_real_count():
    real = convattn.create_model("glnet_nano")
    with torch.device("meta"):
        meta = convattn.create_model("glnet_nano")
    assert count_macs(meta, (2, 3, 32, 32)) == count_macs(real, (2, 3, 32, 32)) > 0


def test_nano_size_and_configuration():
    model = convattn.create_model("glnet_nano")
    assert count_params(model) <= 1_000_000
    assert [f["num_chs"] for f in model.feature_info] == [32, 64, 96, 128]
    assert [len(s.blocks) for s in model.stages] == [1, 1, 2, 1]
    assert model.stages[0].blocks[0].num_slots == 16
    assert model.pretrained_cfg["input_size"] == (3, 32, 32)


def test_block_layout_of_4g_and_stl():
    from convattn.layers.glmix import GLMixBlock
    from convattn.models.glnet import MHSABlock, MHSANCHWBlock

    with torch.device("meta"):
        g4, stl = convattn.create_model("glnet_4g"), convattn.create_model("glnet_stl")
    kinds = [type(b) for b in g4.stages[2].blocks]
    assert kinds == [GLMixBlock, MHSANCHWBlock] * 9
    assert all(type(b) is MHSANCHWBlock for b in g4.stages[3].blocks)
    assert all(type(b) is MHSABlock for b in stl.stages[3].blocks)
    assert [b.num_heads for b in (s.blocks[0] for s in g4.stages[:3])] == [2, 4, 8]
    assert g4.stages[3].blocks[0].mha_op.num_heads == 16
    assert stl.stages[3].blocks[0].mha_op.num_heads == 24


def test_initialisation_follows_official():
    model = convattn.create_model("glnet_nano")
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 1 + 5  # head + the out_proj of every attention (slot and full MHSA)
    for m in linears:
        assert m.weight.abs().max() <= 2.0 and not m.bias.any()
    assert model.head.weight.std().item() == pytest.approx(0.02, rel=0.1)
    mha = model.stages[2].blocks[1].mha_op
    bound = math.sqrt(6 / (mha.dim + 3 * mha.dim))  # xavier-uniform packed projection
    assert 0.8 * bound < mha.in_proj_weight.abs().max() <= bound and not mha.in_proj_bias.any()


# --- official-layout loading vs the literal reference ---------------------------------------------
def test_glnet_4g_official_layout_matches_reference(tmp_path):
    check_against_reference("glnet_4g", tmp_path, (48, 48), batch=1)


def test_glnet_stl_official_layout_matches_reference(tmp_path):
    check_against_reference("glnet_stl", tmp_path, (64, 64), batch=1)


def test_glnet_stl_paramslot_official_layout_matches_reference_odd_size(tmp_path):
    check_against_reference("glnet_stl_paramslot", tmp_path, (71, 45), batch=1)


def test_nano_matches_reference_odd_sizes(tmp_path):
    model = check_against_reference("glnet_nano", tmp_path, (23, 17), 3, dtype=torch.float64)
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    assert model(x).shape == (1, 1000)


def test_layerscale_model_ema_checkpoint_matches_reference(tmp_path):
    # glnet_16g's release layout ({"model_ema": sd}, LayerScale in every block) on a small model.
    check_against_reference(
        "glnet_nano", tmp_path, (16, 16), wrapper="model_ema", dtype=torch.float64, layerscale=1e-4
    )


@pytest.mark.slow
def test_glnet_16g_model_ema_matches_reference(tmp_path):
    with torch.device("meta"):
        shapes = {
            k: list(v.shape) for k, v in convattn.create_model("glnet_16g").state_dict().items()
        }
    sd = synthetic_state_dict(shapes)
    path = save_official(tmp_path, sd, "model_ema")
    model = convattn.create_model("glnet_16g", checkpoint_path=path).eval()
    x = torch.randn(1, 3, 48, 48, dtype=torch.float64)
    sd64 = {k: v.double() if v.is_floating_point() else v for k, v in sd.items()}
    with torch.no_grad():
        got = model(x.float()).double()
    assert_close_scaled(got, ref_glnet(x, sd64, ARCH["glnet_16g"])[0], rtol=2e-5)


def test_reference_helpers_match_torch():
    """The reference's building blocks agree with torch's own ops (guards the oracle itself)."""
    x = torch.randn(2, 6, 9, 7, dtype=torch.float64)
    w, b = torch.randn(4, 6, 3, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    torch.testing.assert_close(ref_conv(x, w, b, 2, 1), F.conv2d(x, w, b, 2, 1))
    dw, db = torch.randn(6, 1, 5, 5, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    torch.testing.assert_close(ref_dwconv(x, dw, db), F.conv2d(x, dw, db, padding=2, groups=6))
    for g in (1, 3, 8, 11):
        torch.testing.assert_close(
            ref_pool_cells(x, g), F.adaptive_avg_pool2d(x, g).flatten(2).transpose(1, 2)
        )
    mha = torch.nn.MultiheadAttention(6, 3, batch_first=True).double().eval()
    t = torch.randn(2, 5, 6, dtype=torch.float64)
    sd = {f"m.{k}": v for k, v in mha.state_dict().items()}
    torch.testing.assert_close(ref_mha(t, sd, "m.", 3), mha(t, t, t, need_weights=False)[0])
    torch.testing.assert_close(ref_gelu(x), F.gelu(x))


# --- API, features, resolutions -------------------------------------------------------------------
def test_api_surface():
    model = convattn.create_model("glnet_nano", num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 128, 2, 2)
        assert model.forward_head(feats, pre_logits=True).shape == (2, 128)
        assert model(x).shape == (2, 7)
        assert model.get_classifier().out_features == 7
        model.reset_classifier(3)
        assert model(x).shape == (2, 3)
        model.reset_classifier(0)
        assert model(x).shape == (2, 128)
    assert model.num_features == 128 and model.in_chans == 3


@pytest.mark.parametrize(
    ("name", "size", "maps"),
    [
        ("glnet_4g", (224, 224), [56, 28, 14, 7]),
        ("glnet_9g", (97, 97), [25, 13, 7, 4]),  # overlapped convs: ceil(H / 2) each
        ("glnet_16g", (64, 64), [16, 8, 4, 2]),
        ("glnet_stl", (101, 70), [25, 12, 6, 3]),  # patch convs floor
        ("glnet_stl_paramslot", (224, 224), [56, 28, 14, 7]),
    ],
)
def test_features_only_strides_and_channels(name, size, maps):
    with torch.device("meta"):
        net = convattn.create_model(name, features_only=True)
        outs = net(torch.empty(1, 3, *size))
        widths = [net.model.stages[i].dim for i in range(4)]
    assert net.feature_info.reduction() == [4, 8, 16, 32]
    assert net.feature_info.channels() == widths == [o.shape[1] for o in outs]
    assert [o.shape[2] for o in outs] == maps


def test_features_only_nano_values_and_out_indices():
    model = convattn.create_model("glnet_nano").eval()
    net = convattn.create_model("glnet_nano", features_only=True, out_indices=(1, 3)).eval()
    net.model.load_state_dict(model.state_dict(), strict=False)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        outs = net(x)
        full = model.forward_intermediates(x)
    assert net.feature_info.reduction() == [4, 16]
    assert [tuple(o.shape) for o in outs] == [(2, 64, 8, 8), (2, 128, 2, 2)]
    torch.testing.assert_close(outs[0], full[1])
    torch.testing.assert_close(outs[1], full[3])


@functools.cache
def eval_nano() -> GLNet:
    return randomize_bn(convattn.create_model("glnet_nano", num_classes=5)).eval()


@settings(max_examples=12, deadline=None)
@given(h=st.integers(1, 40), w=st.integers(1, 40), batch=st.integers(1, 3))
def test_nano_any_size_property(h, w, batch):
    model = eval_nano()
    with torch.no_grad():
        stages = model.forward_intermediates(torch.randn(batch, 3, h, w))
    sizes = [(h, w)]
    for _ in range(4):  # stem stride 2, then three stride-2 transitions, each ceil(H / 2)
        sizes.append((-(-sizes[-1][0] // 2), -(-sizes[-1][1] // 2)))
    assert [tuple(s.shape[2:]) for s in stages] == sizes[1:]
    assert all(torch.isfinite(s).all() for s in stages)


@settings(max_examples=12, deadline=None)
@given(h=st.integers(20, 80), w=st.integers(20, 80))
def test_stl_sizes_property(h, w):
    with torch.device("meta"):
        model = convattn.create_model("glnet_stl")
    x = torch.empty(1, 3, h, w, device="meta")
    if h < 32 or w < 32:
        with pytest.raises(ValueError, match="at least 32x32"):
            model(x)
    else:
        stages = model.forward_intermediates(x)
        assert [tuple(s.shape[2:]) for s in stages] == [
            (h // 4 // 2**i, w // 4 // 2**i) for i in range(4)
        ]


def test_batch_independence():
    model = randomize_bn(convattn.create_model("glnet_nano")).eval()
    x = torch.randn(3, 3, 19, 26)
    with torch.no_grad():
        joint = model(x)
        alone = torch.cat([model(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(joint, alone, rtol=1e-4, atol=1e-5)


# --- training, checkpoints with other heads/inputs -------------------------------------------------
def test_nano_forward_backward_all_parameters_get_gradients():
    model = convattn.create_model("glnet_nano", num_classes=10, drop_path_rate=0.1).train()
    x = torch.randn(4, 3, 32, 32)
    loss = F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "slot_scale" in n)


def test_paramslot_learned_slots_get_gradients():
    model = GLNet(
        depths=(1, 1, 1, 1),
        widths=(32, 32, 32, 32),
        slot_init="param",
        num_slots=4,
        num_classes=3,
    ).train()
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if n.endswith("init_slots")]
    assert len(grads) == 3 and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_drop_path_schedule_is_linear():
    model = convattn.create_model("glnet_4g", drop_path_rate=0.15)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for s in model.stages for b in s.blocks]
    assert len(rates) == 30
    torch.testing.assert_close(
        torch.tensor(rates), torch.linspace(0, 0.15, 30).double(), check_dtype=False
    )


def test_gradcheck_tiny_glnet():
    # Every block kind (GLMix with CPE / MLP DW / LayerScale, NCHW MHSA, token MHSA) once.
    model = GLNet(
        depths=(1, 1, 1, 1),
        widths=(32, 32, 32, 32),
        mixing_modes=("glmix", "mha_nchw", "glmix", "mha"),
        mlp_ratio=1.0,
        num_slots=4,
        cpe_kernel=3,
        mlp_dw=True,
        layerscale=0.5,
        downsample_style="overlapped",
        stem_stride=2,
        num_classes=2,
    )
    model = randomize_bn(model).double().eval()
    x = torch.randn(1, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(model, (x,), eps=1e-6, atol=1e-5)


def test_checkpoint_with_other_num_classes_and_in_chans(tmp_path):
    src = randomize_bn(convattn.create_model("glnet_nano")).eval()
    path = save_official(tmp_path, src.state_dict())
    model = convattn.create_model(
        "glnet_nano", checkpoint_path=path, num_classes=10, in_chans=1, reset_classifier=True
    )
    sd = model.state_dict()
    stem = "downsample_layers.0.1.weight"
    torch.testing.assert_close(sd[stem], src.state_dict()[stem].sum(1, keepdim=True))
    torch.testing.assert_close(
        sd["stages.2.blocks.1.mha_op.in_proj_weight"],
        src.state_dict()["stages.2.blocks.1.mha_op.in_proj_weight"],
    )
    assert model.eval()(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_checkpoint_of_other_variant_is_rejected(tmp_path):
    nano = convattn.create_model("glnet_nano").state_dict()
    path = save_official(tmp_path, {k: v for k, v in nano.items() if "stages.3" not in k})
    with pytest.raises(RuntimeError, match="missing keys"):
        convattn.create_model("glnet_nano", checkpoint_path=path)
    path = save_official(tmp_path, nano)
    with pytest.raises(RuntimeError, match="keys with other shapes"):
        convattn.create_model("glnet_nano", checkpoint_path=path, widths=(32, 64, 96, 160))


# --- dtypes and errors ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_forward(dtype):
    model = randomize_bn(convattn.create_model("glnet_nano", num_classes=10)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        try:
            got = model.to(dtype)(x.to(dtype))
        except RuntimeError as err:  # a CPU kernel missing for this dtype
            pytest.skip(f"{dtype} forward not supported on this CPU build: {err}")
    assert got.dtype == dtype
    assert_close_scaled(got.float(), expected, rtol=0.1)


@pytest.mark.parametrize(
    ("x", "exc", "match"),
    [
        (torch.randn(1, 4, 32, 32), ValueError, "'x' must have 3 channels"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.int64), TypeError, "'x' must have a floating"),
        (torch.randn(3, 32, 32), ValueError, "'x' must be a 4-D"),
        (torch.randn(0, 3, 32, 32), ValueError, "'x' has batch size 0"),
        (torch.randn(1, 3, 0, 32), ValueError, "'x' must have spatial size"),
        ([1.0], TypeError, "'x' must be a torch.Tensor"),
    ],
)
def test_bad_input(x, exc, match):
    model = convattn.create_model("glnet_nano").eval()
    with pytest.raises(exc, match=match):
        model(x)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(depths=(1, 1, 1)), "'depths', 'widths' and 'mixing_modes' must each have 4"),
        (dict(depths=(1, 0, 1, 1)), "'depths' must be a positive integer"),
        (dict(widths=(32, 48, 64, 96)), "'widths' must be multiples of 'head_dim'"),
        (dict(mixing_modes=("glmix", "conv", "glmix", "mha")), "'mixing_modes' must be one of"),
        (dict(downsample_style="ovlp"), "'downsample_style' must be one of"),
        (dict(stem_stride=8), "'stem_stride' must be one of"),
        (dict(drop_path_rate=1.0), "'drop_path_rate' must be in"),
        (dict(head_dim=0), "'head_dim' must be a positive integer"),
        (dict(num_slots=10), "'num_slots' must be a perfect square"),
        (dict(num_classes=-1), "'num_classes' must be an int >= 0"),
        (dict(mlp_ratio=0.0), "'mlp_ratio' must give >= 1 hidden channel"),
        (dict(cpe_kernel=2), "'cpe_kernel' must be odd"),
        (dict(layerscale=0.0), "'layerscale' must be None or > 0"),
        (dict(in_chans=0), "'in_chans' must be a positive integer"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GLNet(**kwargs)
