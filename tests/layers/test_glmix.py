"""GLMix mixer and GLNet block: fast path vs the literal reference, official keys, costs, errors."""

import itertools
import json
import math

import pytest
import ref_glmix as ref
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from convattn.bench import count_macs
from convattn.layers.glmix import GLMix, GLMixBlock

from helpers import OFFICIAL_KEYS

KEYS_DIR = OFFICIAL_KEYS
SIZES = [(5, 7), (8, 8), (14, 14), (1, 1), (3, 2)]


def randomize(module: nn.Module, slot_scale: float = 6.0) -> nn.Module:
    """Non-trivial parameters; a large slot temperature so both softmaxes are far from uniform."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name == "slot_scale":
                p.fill_(slot_scale)
            elif name.endswith(("norm1.weight", "norm2.weight")):
                p.normal_(1.0, 0.2)
            else:
                p.normal_(0.0, 0.3)
    return module


def official_block_keys(model: str) -> dict[str, list[int]]:
    prefix = "stages.0.blocks.0."
    full = json.loads((KEYS_DIR / f"{model}.json").read_text())
    return {k[len(prefix) :]: v for k, v in full.items() if k.startswith(prefix)}


# Constructor options of the first stage-1 block of each official model (its keys and shapes are
# read from official_keys/glnet_*.json).
OFFICIAL_STAGE1 = {
    "glnet_4g": ({"mlp_ratio": 3, "cpe_kernel": 3, "mlp_dw": True}, 64),
    "glnet_stl": ({"mlp_ratio": 4}, 96),
    "glnet_stl_paramslot": ({"mlp_ratio": 4, "slot_init": "param"}, 96),
}


# ---------------------------------------------------------------------------------------------
# The reference itself


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_reference_slot_attention_matches_torch_multihead_attention(heads):
    mha = nn.MultiheadAttention(8, heads, batch_first=True).double()
    randomize(mha)
    state = {f"relation_mha.{k}": v for k, v in mha.state_dict().items()}
    slots = torch.randn(3, 6, 8, dtype=torch.float64)
    expected, _ = mha(slots, slots, slots, need_weights=False)
    torch.testing.assert_close(ref.slot_self_attention(slots, state, heads), expected)


def test_reference_pooling_helpers_match_torch():
    x = torch.randn(2, 3, 7, 5, dtype=torch.float64)
    pooled = nn.functional.adaptive_avg_pool2d(x, 3).flatten(2).transpose(1, 2)
    torch.testing.assert_close(ref.adaptive_avg_pool_cells(x, 3), pooled)
    torch.testing.assert_close(ref.stride_avg_pool(x, 1), x)
    # 7 rows with stride 2: the last window holds one row and averages it alone.
    torch.testing.assert_close(ref.stride_avg_pool(x, 2)[:, :, 3, 2], x[:, :, 6, 4])


# ---------------------------------------------------------------------------------------------
# Fast path == reference


def _check_block(size, batch, heads, slots, **options):
    block = randomize(GLMixBlock(8, num_heads=heads, num_slots=slots, mlp_ratio=2, **options))
    block = block.double().eval()
    x = torch.randn(batch, 8, *size, dtype=torch.float64)
    expected = ref.glmix_block(x, block.state_dict(), num_heads=heads, num_slots=slots)
    torch.testing.assert_close(block(x), expected, rtol=1e-10, atol=1e-10)


BLOCK_OPTIONS = [
    {},
    {"cpe_kernel": 3},
    {"mlp_dw": True, "slot_init": "param"},
    {"layerscale": 0.7},
    {"cpe_kernel": 3, "mlp_dw": True, "layerscale": 1.3, "slot_init": "param"},
]


@pytest.mark.parametrize(
    "case", range(len(SIZES) * 2), ids=lambda i: f"{SIZES[i // 2]}-b{(1, 3)[i % 2]}"
)
def test_block_matches_reference_sizes(case):
    size, batch = SIZES[case // 2], (1, 3)[case % 2]
    _check_block(size, batch, heads=2, slots=16, **BLOCK_OPTIONS[case % len(BLOCK_OPTIONS)])


@pytest.mark.parametrize("slot_init", ["ada_avgpool", "param"])
@pytest.mark.parametrize("slots", [4, 16, 64])
@pytest.mark.parametrize("heads", [1, 2, 4])
def test_block_matches_reference_heads_slots(heads, slots, slot_init):
    _check_block((5, 7), 3, heads, slots, slot_init=slot_init)


@pytest.mark.parametrize(
    "cpe,mlp_dw,layerscale", list(itertools.product([0, 3], [False, True], [None, 0.5]))
)
def test_block_matches_reference_options(cpe, mlp_dw, layerscale):
    _check_block((8, 8), 3, 4, 4, cpe_kernel=cpe, mlp_dw=mlp_dw, layerscale=layerscale)


def test_block_matches_reference_official_width():
    _check_block((14, 14), 1, 2, 64, cpe_kernel=3, mlp_dw=True)


@pytest.mark.parametrize("channels", [(8, 8), (8, 12), (8, 4)], ids=str)
@pytest.mark.parametrize("size", [(5, 7), (8, 8), (1, 1), (3, 2)], ids=str)
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_mixer_matches_reference(stride, size, channels):
    c_in, c_out = channels
    slot_init = "param" if (stride + size[0]) % 2 else "ada_avgpool"
    mixer = GLMix(c_in, c_out, stride, num_heads=2, num_slots=9, slot_init=slot_init)
    mixer = randomize(mixer).double()
    x = torch.randn(3, c_in, *size, dtype=torch.float64)
    expected = ref.glmix_operator(x, mixer.state_dict(), num_heads=2, num_slots=9, stride=stride)
    out = mixer(x)
    assert out.shape == (3, c_out, math.ceil(size[0] / stride), math.ceil(size[1] / stride))
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("stride", [1, 2])
def test_mixer_slot_source_is_used_for_initial_slots(stride):
    mixer = randomize(GLMix(8, stride=stride, num_heads=2, num_slots=4)).double()
    x = torch.randn(2, 8, 6, 5, dtype=torch.float64)
    source = torch.randn(2, 8, 3, 9, dtype=torch.float64)
    expected = ref.glmix_operator(
        x, mixer.state_dict(), num_heads=2, num_slots=4, stride=stride, slot_source=source
    )
    out = mixer(x, slot_source=source)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(out, mixer(x))  # the source matters


def test_param_slots_ignore_slot_source():
    mixer = randomize(GLMix(8, num_heads=2, num_slots=5, slot_init="param"))
    x = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(mixer(x, slot_source=torch.randn(2, 8, 2, 2)), mixer(x))


def test_block_is_cpe_norm_then_mixer_on_raw_slots():
    """Block step 1-3 wiring: slots from the raw input; the mixer sees norm1(x + CPE(x))."""
    block = randomize(GLMixBlock(8, num_heads=2, num_slots=4, cpe_kernel=3)).double().eval()
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    captured = {}
    block.vis_proxy.register_forward_hook(lambda m, i, o: captured.setdefault("logits", o))
    block(x)
    shortcut = x + block.pos_conv(x)
    z = block.norm1(shortcut)
    slots0 = nn.functional.adaptive_avg_pool2d(x, 2).flatten(2).transpose(1, 2)
    cos = nn.functional.normalize(slots0, dim=-1) @ nn.functional.normalize(z.flatten(2), dim=1)
    torch.testing.assert_close(captured["logits"], block.slot_scale * cos)


@pytest.mark.parametrize("cls", [GLMix, GLMixBlock])
def test_output_keeps_input_memory_format(cls):
    module = randomize(cls(8, num_heads=2, num_slots=4)).double().eval()
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    out, out_cl = module(x), module(x_cl)
    assert out.is_contiguous()
    assert out_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out_cl, out, rtol=1e-12, atol=1e-12)
    # A non-contiguous view works too and comes back contiguous.
    torch.testing.assert_close(module(x.transpose(2, 3)), module(x.transpose(2, 3).contiguous()))


# ---------------------------------------------------------------------------------------------
# Official state-dict layout


@pytest.mark.parametrize("model", sorted(OFFICIAL_STAGE1))
def test_state_dict_matches_official_keys_and_loads(model):
    options, dim = OFFICIAL_STAGE1[model]
    expected_keys = official_block_keys(model)
    block = GLMixBlock(dim, **options)
    assert block.num_heads == dim // 32
    assert {k: list(v.shape) for k, v in block.state_dict().items()} == expected_keys
    synthetic = {k: torch.randn(shape) * 0.2 for k, shape in expected_keys.items()}
    block.load_state_dict(synthetic, strict=True)
    block.eval()
    x = torch.randn(1, dim, 3, 4)
    expected = ref.glmix_block(x, synthetic, num_heads=dim // 32, num_slots=64)
    torch.testing.assert_close(block(x), expected, rtol=1e-4, atol=1e-4)


def test_layerscale_keys_and_mixer_keys():
    block = GLMixBlock(64, layerscale=1e-4)
    state = block.state_dict()
    assert state["ls1.gamma"].shape == state["ls2.gamma"].shape == (1, 64, 1, 1)
    assert torch.all(state["ls1.gamma"] == 1e-4)
    # With in == out and stride 1 the mixer holds exactly the official mixer parameters.
    mixer_parts = ("slot_scale", "relation_mha", "feature_conv")
    mixer_keys = {k for k in official_block_keys("glnet_stl") if k.split(".")[0] in mixer_parts}
    assert set(GLMix(64).state_dict()) == mixer_keys
    assert "proj.weight" in GLMix(64, 32).state_dict()


def test_initialisation_follows_official():
    block = GLMixBlock(96, slot_init="param")
    assert block.slot_scale.dim() == 0 and block.slot_scale.requires_grad
    torch.testing.assert_close(block.slot_scale.detach(), torch.tensor(96**-0.5))
    assert abs(block.init_slots.std().item() - 0.02) < 0.002
    assert block.init_slots.abs().max().item() > 0


# ---------------------------------------------------------------------------------------------
# Assignments


def test_assignments_sum_to_one():
    mixer = randomize(GLMix(8, num_heads=2, num_slots=9), slot_scale=10.0).double()
    captured = {}
    mixer.vis_proxy.register_forward_hook(lambda m, i, o: captured.__setitem__("logits", o))
    mixer.relation_mha.register_forward_pre_hook(lambda m, a: captured.__setitem__("slots", a[0]))
    # Clustering sums to one over pixels: on a constant map every slot is that constant vector.
    v = torch.randn(8, dtype=torch.float64)
    mixer(v.view(1, 8, 1, 1).expand(2, 8, 5, 6).contiguous())
    torch.testing.assert_close(captured["slots"], v.expand(2, 9, 8))
    # Dispatch sums to one over slots: identical slots reach every pixel unchanged.
    u = torch.randn(8, dtype=torch.float64)
    with torch.no_grad():
        mixer.relation_mha.out_proj.weight.zero_()
        mixer.relation_mha.out_proj.bias.copy_(u)
        for conv in mixer.feature_conv:
            conv.weight.zero_()
            conv.bias.zero_()
    out = mixer(torch.randn(2, 8, 5, 6, dtype=torch.float64))
    torch.testing.assert_close(out, u.view(1, 8, 1, 1).expand(2, 8, 5, 6))
    # The captured logits are sharp (not uniform), so the checks above are not trivial.
    logits = captured["logits"]
    assert logits.shape == (2, 9, 30)
    assert logits.softmax(1).max() > 0.5 and logits.softmax(-1).max() > 0.1


# ---------------------------------------------------------------------------------------------
# Cost


def block_macs(c, n, s, r, k=5, mlp_dw=False, cpe=False):
    macs = s * n * c * 3 + 4 * s * c * c + 2 * s * s * c + 2 * n * c * c + k * k * n * c
    macs += 2 * r * n * c * c
    return macs + (9 * r * n * c if mlp_dw else 0) + (9 * n * c if cpe else 0)


def test_macs_spec_check():
    macs = count_macs(GLMixBlock(128), (8, 128, 14, 14))
    assert macs == 8 * block_macs(128, 196, 64, 4)
    assert round(macs / 1e9, 3) == 0.342


def test_macs_formula_with_cpe_and_mlp_dw():
    block = GLMixBlock(64, mlp_ratio=3, cpe_kernel=3, mlp_dw=True, num_slots=16)
    assert count_macs(block, (2, 64, 9, 7)) == 2 * block_macs(64, 63, 16, 3, mlp_dw=True, cpe=True)


def test_macs_mixer_stride_and_projection():
    mixer = GLMix(64, 96, 2, num_slots=16, local_kernel=3)
    n = 5 * 4  # ceil(9/2) x ceil(7/2)
    expected = 16 * n * 64 * 3 + 4 * 16 * 64**2 + 2 * 16**2 * 64 + 2 * n * 64**2 + 9 * n * 64
    assert count_macs(mixer, (1, 64, 9, 7)) == expected + n * 64 * 96


def test_mixer_macs_linear_in_pixels():
    mixer = GLMix(32, num_slots=16)
    small, large = (count_macs(mixer, (1, 32, s, s)) for s in (16, 32))
    fixed = 4 * 16 * 32**2 + 2 * 16**2 * 32  # the slot MHSA does not depend on N
    assert large - fixed == 4 * (small - fixed)


# ---------------------------------------------------------------------------------------------
# Training form


@pytest.fixture
def one_thread():
    """gradcheck runs hundreds of tiny forwards; with two OpenMP threads on a shared 2-core
    machine each op can stall for milliseconds, so these tests run single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_gradcheck_block(one_thread):
    block = randomize(
        GLMixBlock(
            4,
            num_heads=2,
            num_slots=4,
            slot_init="param",
            mlp_ratio=1.5,
            mlp_dw=True,
            cpe_kernel=3,
            layerscale=0.5,
        ),
        slot_scale=2.0,
    ).double()
    params = {k: v.detach().requires_grad_() for k, v in block.named_parameters()}
    wanted = ("slot_scale", "init_slots")

    def f(x, *tensors):
        return torch.func.functional_call(block, {**params, **dict(zip(wanted, tensors))}, (x,))

    x = torch.randn(2, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (x, *(params[k] for k in wanted)))


def test_gradcheck_mixer_stride_projection_slot_source(one_thread):
    mixer = randomize(GLMix(4, 6, 2, num_heads=2, num_slots=4), slot_scale=2.0).double()
    x = torch.randn(2, 4, 5, 3, dtype=torch.float64, requires_grad=True)
    source = torch.randn(2, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: mixer(a, slot_source=b), (x, source))


def test_drop_path_in_train_mode_drops_whole_residual_branches(one_thread):
    block = randomize(GLMixBlock(8, num_heads=2, num_slots=4, drop_path=0.5)).double()
    state = block.state_dict()
    x = torch.randn(16, 8, 4, 5, dtype=torch.float64)
    out = block.train()(x)
    seen = set()
    for i in range(x.shape[0]):
        matches = []
        for a, b in itertools.product((0.0, 2.0), repeat=2):
            scales = (torch.tensor([a], dtype=x.dtype), torch.tensor([b], dtype=x.dtype))
            cand = ref.glmix_block(
                x[i : i + 1], state, num_heads=2, num_slots=4, branch_scales=scales
            )
            if torch.allclose(out[i : i + 1], cand, rtol=1e-10, atol=1e-10):
                matches.append((a, b))
        assert len(matches) == 1, f"sample {i} matches {matches}"
        seen.add(matches[0])
    assert len(seen) >= 3  # drops happen per sample and per branch
    # Eval mode is deterministic and equals the undropped reference.
    expected = ref.glmix_block(x, state, num_heads=2, num_slots=4)
    torch.testing.assert_close(block.eval()(x), expected)


# ---------------------------------------------------------------------------------------------
# Properties and errors


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    stride=st.integers(1, 3),
    c_in=st.sampled_from([2, 4, 6]),
    c_out=st.sampled_from([2, 3, 4, 8]),
    heads=st.sampled_from([1, 2]),
    slots=st.integers(1, 10),
    slot_init=st.sampled_from(["ada_avgpool", "param"]),
)
def test_mixer_property(batch, h, w, stride, c_in, c_out, heads, slots, slot_init):
    kwargs = {"num_heads": heads, "num_slots": slots, "slot_init": slot_init}
    if slot_init == "ada_avgpool" and math.isqrt(slots) ** 2 != slots:
        with pytest.raises(ValueError, match="num_slots"):
            GLMix(c_in, c_out, stride, **kwargs)
        return
    out = GLMix(c_in, c_out, stride, **kwargs)(torch.randn(batch, c_in, h, w))
    assert out.shape == (batch, c_out, -(-h // stride), -(-w // stride))
    assert torch.isfinite(out).all()


@settings(max_examples=15, deadline=None)
@given(
    batch=st.integers(1, 3),
    h=st.integers(1, 8),
    w=st.integers(1, 8),
    slots=st.sampled_from([1, 4, 9]),
    options=st.sampled_from(BLOCK_OPTIONS),
)
def test_block_property(batch, h, w, slots, options):
    block = GLMixBlock(8, num_heads=2, num_slots=slots, mlp_ratio=1, **options)
    x = torch.randn(batch, 8, h, w)
    out = block(x)
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize(
    "x,exc,match",
    [
        ([1.0], TypeError, "'x' must be a torch.Tensor"),
        (torch.zeros(1, 8, 4, 4, dtype=torch.int64), TypeError, "'x' must have a floating dtype"),
        (torch.zeros(8, 4, 4), ValueError, "'x' must be a 4-D"),
        (torch.zeros(1, 5, 4, 4), ValueError, "'x' must have 8 channels"),
        (torch.zeros(1, 8, 0, 4), ValueError, "'x' must have spatial size"),
        (torch.zeros(0, 8, 4, 4), ValueError, "batch size 0"),
    ],
)
@pytest.mark.parametrize("cls", [GLMix, GLMixBlock])
def test_bad_input(cls, x, exc, match):
    module = cls(8, num_heads=2, num_slots=4)
    with pytest.raises(exc, match=match):
        module(x)


def test_bad_slot_source():
    mixer = GLMix(8, num_heads=2, num_slots=4)
    x = torch.randn(2, 8, 4, 4)
    with pytest.raises(ValueError, match="'slot_source' must have 8 channels"):
        mixer(x, slot_source=torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="'slot_source' must have the batch size"):
        mixer(x, slot_source=torch.randn(3, 8, 4, 4))
    with pytest.raises(TypeError, match="'slot_source' must have a floating dtype"):
        mixer(x, slot_source=torch.zeros(2, 8, 4, 4, dtype=torch.int32))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num_slots": 10}, "'num_slots' must be a perfect square"),
        ({"num_slots": 0}, "'num_slots' must be a positive integer"),
        ({"slot_init": "conv"}, "'slot_init' must be one of"),
        ({"head_dim": 3}, "divisible by 'head_dim'"),
        ({"num_heads": 3}, "divisible by 'num_heads'"),
        ({"local_kernel": 4}, "'local_kernel' must be odd"),
        ({"local_kernel": 0}, "'local_kernel' must be a positive integer"),
        ({"stride": 0}, "'stride' must be a positive integer"),
        ({"out_channels": 0}, "'out_channels' must be a positive integer"),
    ],
)
def test_bad_mixer_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GLMix(8, **{"head_dim": 4, **kwargs})
    with pytest.raises(ValueError, match="'in_channels' must be a positive integer"):
        GLMix(0)


def test_non_square_slots_allowed_with_learned_slots():
    out = GLMix(8, num_heads=2, num_slots=10, slot_init="param")(torch.randn(1, 8, 3, 3))
    assert out.shape == (1, 8, 3, 3)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num_slots": 8}, "'num_slots' must be a perfect square"),
        ({"num_heads": 3}, "'dim' \\(8\\) must be divisible by 'num_heads'"),
        ({"mlp_ratio": 0.0}, "'mlp_ratio'"),
        ({"mlp_ratio": "4"}, "'mlp_ratio'"),
        ({"cpe_kernel": 2}, "'cpe_kernel' must be odd"),
        ({"cpe_kernel": -3}, "'cpe_kernel' must be a positive integer"),
        ({"layerscale": 0.0}, "'layerscale' must be None or > 0"),
        ({"drop_path": 1.0}, "'drop_path' must be in \\[0, 1\\)"),
        ({"drop_path": -0.1}, "'drop_path' must be in \\[0, 1\\)"),
    ],
)
def test_bad_block_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GLMixBlock(8, **{"num_heads": 2, **kwargs})
    with pytest.raises(ValueError, match="'dim' must be a positive integer"):
        GLMixBlock(0)


# ---------------------------------------------------------------------------------------------
# Reduced precision


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_forward(dtype):
    block = GLMixBlock(16, num_heads=2, num_slots=16, mlp_ratio=2, cpe_kernel=3, mlp_dw=True)
    block = block.eval()
    x = torch.randn(2, 16, 9, 7)
    expected = block(x)
    try:
        out = block.to(dtype)(x.to(dtype))
    except RuntimeError as err:  # pragma: no cover - depends on the CPU kernels of this build
        pytest.skip(f"{dtype} CPU kernels missing: {err}")
    assert out.dtype == dtype
    tol = 0.1 if dtype == torch.bfloat16 else 0.02
    torch.testing.assert_close(out.float(), expected, rtol=tol, atol=tol)
