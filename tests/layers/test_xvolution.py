"""X-volution (arXiv:2106.02253) against the literal reference in ref_xvolution.py (docs/notes/xvolution.md §1-§3)."""

import math

import pytest
import ref_xvolution as ref
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from convattn.bench import count_macs, count_params
from convattn.layers import xvolution
from convattn.layers.attention import GlobalSelfAttention2d
from convattn.layers.xvolution import (
    CentreModulatedConv2d,
    InvolutionModulatedConv2d,
    PixelShiftAttention,
    XVolution,
    centre_modulated_conv2d,
    directions_to_kernel,
    fuse_xvolution_kernels,
    pixel_shift_products,
    pssa_directions,
)

from helpers import assert_close_scaled, randomize_bn

F64 = torch.float64
SIZES = [(5, 7), (6, 6), (1, 1), (2, 3)]
WEIGHTINGS = ["full", "depthwise", "none"]


@pytest.fixture(autouse=True)
def _single_thread():
    """Shapes here are tiny: with 2 threads on a busy machine every OpenMP barrier of a micro-op
    can stall for milliseconds (measured: BatchNorm 14 us -> 46 ms), so run these on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(c_in, c_out, stride=1, k=3, dtype=F64, **kw) -> XVolution:
    """An eval-mode XVolution with random BN statistics (non-trivial folds)."""
    m = XVolution(c_in, c_out, stride, k, **kw).to(dtype)
    return randomize_bn(m).eval()


def pssa_case(stride, size, weighting, include_center):
    """Deterministic spread of the remaining grid axes (C_in != C_out, K 3/5, batch 1/3)."""
    i = SIZES.index(size)
    c_in, c_out = (3, 5) if weighting == "full" else (4, 4)
    k = 5 if (i + include_center) % 2 else 3
    batch = 3 if (i + stride) % 2 else 1
    return c_in, c_out, k, batch


# --------------------------------------------------------------------------- §1.4 building blocks


def test_directions_are_the_3x3_neighbourhood_row_major():
    assert pssa_directions() == tuple(ref.NEIGHBOURS)
    assert pssa_directions(include_center=True) == tuple(ref.WITH_CENTRE)


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("size", [(5, 7), (2, 3)])
def test_pixel_shift_products_are_centre_times_zero_filled_shift(stride, size):
    x = torch.randn(2, 3, *size, dtype=F64)
    dirs = pssa_directions(include_center=True)
    expected = torch.stack([x * ref.shift(x, d) for d in dirs], 1)[..., ::stride, ::stride]
    torch.testing.assert_close(pixel_shift_products(x, stride, dirs), expected)
    # The autograd path (stack) and the inference path (written in place) agree.
    with_grad = pixel_shift_products(x.clone().requires_grad_(), stride, dirs)
    torch.testing.assert_close(with_grad.detach(), expected)


def test_directions_to_kernel_places_weights_on_taps():
    dirs = pssa_directions()
    w = torch.arange(1.0, 9.0).view(1, 1, 8)
    k3 = directions_to_kernel(w, dirs, 3)[0, 0]
    torch.testing.assert_close(k3, torch.tensor([[1.0, 2, 3], [4, 0, 5], [6, 7, 8]]))
    k5 = directions_to_kernel(w, dirs, 5)[0, 0]
    assert k5[1:4, 1:4].equal(k3) and k5.abs().sum() == k3.abs().sum()
    wg = torch.randn(2, 3, 8, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: directions_to_kernel(t, dirs, 5), (wg,))


# --------------------------------------------------------------------------- training form, §2


@pytest.mark.parametrize("include_center", [False, True])
@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("stride", [1, 2])
def test_training_form_matches_literal_reference(stride, size, weighting, include_center):
    c_in, c_out, k, batch = pssa_case(stride, size, weighting, include_center)
    m = make(c_in, c_out, stride, k, pssa_weighting=weighting, include_center=include_center)
    x = torch.randn(batch, c_in, *size, dtype=F64)
    y = m(x)
    assert y.shape == (batch, c_out, -(-size[0] // stride), -(-size[1] // stride))
    torch.testing.assert_close(y, ref.training_forward(m, x))


@pytest.mark.parametrize("stride,size,batch", [(1, (5, 7), 1), (2, (5, 7), 3), (2, (1, 1), 1)])
@pytest.mark.parametrize("head_dim", [2, 4])
def test_sa_training_form_matches_literal_reference(stride, size, batch, head_dim):
    m = make(4, 3, stride, attention="sa", sa_head_dim=head_dim)
    with torch.no_grad():
        m.attn.qkv.bias.normal_()  # exercise the q/k/v biases too
    x = torch.randn(batch, 4, *size, dtype=F64)
    torch.testing.assert_close(m(x), ref.training_forward(m, x))


def test_train_mode_uses_batch_statistics():
    m = XVolution(3, 4, 2).double().train()
    x = torch.randn(4, 3, 6, 6, dtype=F64)
    y = m(x)
    assert y.shape == (4, 4, 3, 3)
    # Each branch is batch-normalised, so the sum has zero mean per channel (beta = 0).
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(4, dtype=F64))


def test_initialisation():
    m = XVolution(64, 128)
    std = m.conv.weight.std().item()
    assert abs(std - math.sqrt(2.0 / (128 * 9))) < 0.1 * std  # Kaiming normal, fan_out
    pssa_std = m.attn.weight.std().item()
    assert abs(pssa_std - math.sqrt(2.0 / 128)) < 0.1 * pssa_std  # 1x1 conv: fan_out = C_out
    for bn in (m.conv_bn, m.attn_bn):
        assert bn.weight.eq(1).all() and bn.bias.eq(0).all()
    zero = XVolution(4, 4, attn_bn_zero_init=True).eval()
    x = torch.randn(1, 4, 5, 5)
    torch.testing.assert_close(zero(x), zero.conv_bn(zero.conv(x)))


# --------------------------------------------------------------------------- fusion maths, §3


@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("k", [3, 5])
def test_fuse_xvolution_kernels_folds_bn_and_lays_taps(weighting, k):
    m = make(4, 4, 1, k, pssa_weighting=weighting, include_center=k == 5)
    static, dynamic, bias = fuse_xvolution_kernels(
        m.conv.weight, m.conv_bn, m.attn.direction_weights(), m.attn_bn, m.directions
    )
    w_s, b_s = ref.fold_bn(m.conv.weight, *ref.bn_params(m.conv_bn))
    per_dir = ref.pssa_weights_per_direction(m.attn, weighting, 4)  # (|D|, O, C)
    w_a, b_a = ref.fold_bn(per_dir.transpose(0, 1), *ref.bn_params(m.attn_bn))  # (O, |D|, C)
    torch.testing.assert_close(static, w_s)
    torch.testing.assert_close(bias, b_s + b_a)
    full = dynamic
    if weighting != "full":  # diagonal (C, 1, K, K) -> (C, C, K, K)
        full = torch.diag_embed(dynamic[:, 0].permute(1, 2, 0)).permute(2, 3, 0, 1)
    r = k // 2
    for n, (di, dj) in enumerate(m.directions):
        torch.testing.assert_close(full[:, :, di + r, dj + r], w_a[:, n])
    mask = torch.ones(k, k, dtype=torch.bool)
    for di, dj in m.directions:
        mask[di + r, dj + r] = False
    assert full[:, :, mask].eq(0).all()


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_literal_deploy_of_fused_kernels_equals_literal_training_form(weighting):
    """The §3 algebra with literal code on both sides (independent of the fast paths)."""
    m = make(3 if weighting == "full" else 4, 4, 2, 3, pssa_weighting=weighting)
    x = torch.randn(2, m.in_channels, 5, 7, dtype=F64)
    static, dynamic, bias = m.get_equivalent_kernel_bias()
    torch.testing.assert_close(
        ref.deploy_forward(x, static, dynamic, bias, 2, False), ref.training_forward(m, x)
    )


# --------------------------------------------------------------------------- deploy form, §3


@pytest.mark.parametrize("include_center", [False, True])
@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("stride", [1, 2])
def test_deploy_form_matches_per_pixel_kernels(stride, size, weighting, include_center):
    c_in, c_out, k, batch = pssa_case(stride, size, weighting, include_center)
    conv = CentreModulatedConv2d(
        c_in, c_out, k, stride, pssa_directions(include_center), weighting != "full"
    ).double()
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(batch, c_in, *size, dtype=F64)
    expected = ref.deploy_forward(
        x, conv.weight, conv.dynamic_weight, conv.bias, stride, include_center
    )
    torch.testing.assert_close(conv(x), expected)


def test_deploy_ignores_dynamic_taps_outside_the_footprint():
    """The indicator 1[δ∈D] of §3: the centre tap of the dynamic kernel has no effect."""
    conv = CentreModulatedConv2d(3, 4).double()
    x = torch.randn(1, 3, 5, 5, dtype=F64)
    y = conv(x)
    with torch.no_grad():
        conv.dynamic_weight[:, :, 1, 1] = 5.0
    torch.testing.assert_close(conv(x), y)


REPARAM_CASES = [
    # (attention, weighting, include_center, c_in, c_out, stride, k, size)
    ("pssa", "full", False, 5, 7, 1, 3, (7, 9)),
    ("pssa", "full", True, 5, 7, 2, 5, (7, 9)),
    ("pssa", "depthwise", False, 6, 6, 2, 3, (9, 5)),
    ("pssa", "none", True, 6, 6, 1, 3, (5, 5)),
    ("sa", "full", False, 8, 5, 1, 3, (7, 9)),
    ("sa", "full", False, 8, 5, 2, 5, (7, 9)),
]


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("case", REPARAM_CASES)
def test_reparameterize_is_equivalent_and_idempotent(case, dtype):
    attention, weighting, centre, c_in, c_out, stride, k, size = case
    kw = dict(attention=attention, pssa_weighting=weighting, include_center=centre, sa_head_dim=4)
    m = make(c_in, c_out, stride, k, dtype, **kw)
    x = torch.randn(3, c_in, *size, dtype=dtype)
    expected = m(x)
    m.reparameterize()
    assert m.deploy and not hasattr(m, "conv_bn") and not hasattr(m, "attn_bn")
    assert all(p.dtype == dtype for p in m.parameters())
    y = m(x)
    if dtype == F64:
        torch.testing.assert_close(y, expected)
    else:
        assert (y - expected).abs().max() < 1e-4  # §8
        assert_close_scaled(y, expected, 1e-5)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    m.reparameterize()  # idempotent
    assert m.state_dict().keys() == state.keys()
    assert all(m.state_dict()[k].equal(v) for k, v in state.items())
    torch.testing.assert_close(m(x), y, rtol=0, atol=0)

    deployed = XVolution(c_in, c_out, stride, k, deploy=True, **kw).to(dtype)
    deployed.load_state_dict(m.state_dict(), strict=True)
    torch.testing.assert_close(deployed.eval()(x), y, rtol=0, atol=0)


def test_switch_to_deploy_alias_and_equivalent_kernel_is_differentiable():
    m = make(3, 4)
    static, dynamic, bias = m.get_equivalent_kernel_bias()
    (static.square().sum() + dynamic.square().sum() + bias.sum()).backward()
    assert m.conv.weight.grad is not None and m.attn.weight.grad is not None
    assert m.attn_bn.weight.grad is not None
    m.switch_to_deploy()
    assert m.deploy and isinstance(m.reparam_conv, CentreModulatedConv2d)


def test_sa_deploy_keeps_global_branch_with_folded_projection():
    m = make(4, 8, 2, attention="sa", sa_head_dim=4)
    m.reparameterize()
    assert isinstance(m.attn, GlobalSelfAttention2d) and m.attn.num_heads == 1
    assert isinstance(m.reparam_conv, nn.Conv2d) and m.reparam_conv.bias is not None
    static, dynamic, _ = m.get_equivalent_kernel_bias()
    assert dynamic is None and static.shape == (8, 4, 3, 3)


# --------------------------------------------------------------------------- gradients


def test_gradcheck_training_form_pssa():
    m = XVolution(3, 4, 2).double()  # train mode: BN batch statistics
    x = torch.randn(2, 3, 5, 4, dtype=F64, requires_grad=True)
    w = m.attn.weight.detach().clone().requires_grad_()

    def f(x, w):
        return torch.func.functional_call(m, {"attn.weight": w}, (x,))

    assert torch.autograd.gradcheck(f, (x, w))


@pytest.mark.parametrize("weighting", ["depthwise", "none"])
def test_gradcheck_training_form_diagonal_weightings(weighting):
    m = XVolution(3, 3, 1, pssa_weighting=weighting, include_center=True).double()
    x = torch.randn(2, 3, 4, 3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


def test_gradcheck_training_form_sa():
    m = XVolution(4, 3, 2, attention="sa", sa_head_dim=2).double()
    x = torch.randn(2, 4, 5, 3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


@pytest.mark.parametrize("depthwise", [False, True])
def test_gradcheck_deploy_form(depthwise):
    conv = CentreModulatedConv2d(3, 3, 3, 2, depthwise_dynamic=depthwise).double()
    x = torch.randn(2, 3, 5, 4, dtype=F64, requires_grad=True)
    w = conv.weight.detach().clone().requires_grad_()
    d = conv.dynamic_weight.detach().clone().requires_grad_()
    b = torch.randn(3, dtype=F64, requires_grad=True)

    def f(x, w, d, b):
        return centre_modulated_conv2d(x, w, d, b, 2)

    assert torch.autograd.gradcheck(f, (x, w, d, b))


# --------------------------------------------------------------------------- properties, inputs


@settings(max_examples=25, deadline=None)
@given(
    c_in=st.integers(1, 4),
    c_out=st.integers(1, 4),
    stride=st.integers(1, 3),
    k=st.integers(1, 6),
    weighting=st.sampled_from(WEIGHTINGS),
    centre=st.booleans(),
    attention=st.sampled_from(["pssa", "sa"]),
    head_dim=st.integers(1, 3),
    h=st.integers(1, 7),
    w=st.integers(1, 7),
    batch=st.integers(1, 2),
    deploy=st.booleans(),
)
def test_property_shapes_or_clear_error(
    c_in, c_out, stride, k, weighting, centre, attention, head_dim, h, w, batch, deploy
):
    kw = dict(pssa_weighting=weighting, include_center=centre, attention=attention)
    try:
        m = XVolution(c_in, c_out, stride, k, sa_head_dim=head_dim, deploy=deploy, **kw)
    except ValueError as e:
        assert any(name in str(e) for name in ("kernel_size", "pssa_weighting", "sa_head_dim"))
        return
    y = m.eval()(torch.randn(batch, c_in, h, w))
    assert y.shape == (batch, c_out, -(-h // stride), -(-w // stride))
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("deploy", [False, True])
def test_bad_inputs(deploy):
    m = XVolution(3, 4, deploy=deploy)
    with pytest.raises(ValueError, match=r"'x'.*3 channels"):
        m(torch.randn(1, 2, 5, 5))
    with pytest.raises(TypeError, match=r"'x'.*floating"):
        m(torch.ones(1, 3, 5, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"'x'.*4-D"):
        m(torch.randn(3, 5, 5))
    with pytest.raises(ValueError, match=r"'x'.*spatial size"):
        m(torch.randn(1, 3, 0, 5))
    with pytest.raises(ValueError, match=r"'x'.*batch size 0"):
        m(torch.randn(0, 3, 5, 5))
    with pytest.raises(TypeError, match=r"'x'.*torch.Tensor"):
        m([[1.0]])


@pytest.mark.parametrize(
    "args,kw,option",
    [
        ((3, 4, 1, 4), {}, "kernel_size"),
        ((3, 4, 1, 1), {}, "kernel_size"),
        ((3, 4, 0), {}, "stride"),
        ((0, 4), {}, "in_channels"),
        ((3, 4), {"pssa_weighting": "qkv"}, "pssa_weighting"),
        ((3, 4), {"pssa_weighting": "depthwise"}, "pssa_weighting"),
        ((3, 4), {"pssa_weighting": "none"}, "pssa_weighting"),
        ((3, 4), {"attention": "qkv"}, "attention"),
        ((3, 4), {"attention": "involution"}, "involution_group_channels"),
        ((16, 16), {"attention": "involution", "pssa_weighting": "none"}, "pssa_weighting"),
        ((6, 3), {"attention": "sa", "sa_head_dim": 4}, "sa_head_dim"),
        ((4, 4), {"attention": "sa", "sa_head_dim": 0}, "sa_head_dim"),
        ((4, 4), {"attention": "sa", "include_center": True, "sa_head_dim": 2}, "include_center"),
    ],
)
def test_bad_options(args, kw, option):
    with pytest.raises(ValueError, match=option):
        XVolution(*args, **kw)


@pytest.mark.parametrize("directions", [[(0, 2)], [], [(1, 1), (1, 1)], [(0, 1, 1)]])
def test_directions_are_validated(directions):
    with pytest.raises(ValueError, match="directions"):
        CentreModulatedConv2d(3, 4, directions=directions)
    with pytest.raises(ValueError, match="directions"):
        pixel_shift_products(torch.randn(1, 3, 4, 4), 1, directions)


def test_building_blocks_validate_input():
    with pytest.raises(ValueError, match=r"'x'.*3 channels"):
        PixelShiftAttention(3, 4)(torch.randn(1, 4, 5, 5))
    with pytest.raises(ValueError, match=r"'x'.*3 channels"):
        CentreModulatedConv2d(3, 4)(torch.randn(1, 4, 5, 5))


# --------------------------------------------------------------------------- precision


@pytest.mark.parametrize("attention", ["pssa", "sa"])
@pytest.mark.parametrize("reparam", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_forward_close_to_float32(dtype, reparam, attention):
    m = make(16, 16, 2, dtype=torch.float32, attention=attention, sa_head_dim=8)
    if reparam:
        m.reparameterize()
    x = torch.randn(2, 16, 9, 7)
    expected = m(x)
    y = m.to(dtype)(x.to(dtype))
    assert y.dtype == dtype
    assert_close_scaled(y.float(), expected, 3e-2)


@pytest.mark.parametrize("reparam", [False, True])
def test_float16_products_do_not_overflow(reparam):
    """x ~ 400 gives products ~ 1.6e5 > 65504: they are formed in float32 (§2)."""
    m = XVolution(4, 4).eval()
    with torch.no_grad():
        m.conv.weight.mul_(1e-3)
        m.attn.weight.fill_(1e-4)
        m.attn_bn.running_var.fill_(100.0)
    if reparam:
        m.reparameterize()
    x = torch.full((1, 4, 5, 5), 400.0)
    expected = m(x)
    assert expected.abs().max() < 1e3
    y = m.half()(x.half())
    assert torch.isfinite(y).all()
    assert_close_scaled(y.float(), expected, 1e-2)
    m.float()
    with torch.autocast("cpu", dtype=torch.float16):
        y = m(x)
    assert torch.isfinite(y).all()


# --------------------------------------------------------------------------- costs, §4


def _conv_bn_params(c_in, c_out):
    return count_params(nn.Conv2d(c_in, c_out, 3, bias=False)) + count_params(nn.BatchNorm2d(c_out))


@pytest.mark.parametrize(
    "name,layers,expected_delta",
    [
        # ResNet-50 layer3: conv2 of 6 bottlenecks, 256 -> 256, the first with stride 2.
        ("resnet50", [(256, 256, 2)] + [(256, 256, 1)] * 5, 3.15e6),
        # ResNet-34 layer3: both 3x3 convs of 6 BasicBlocks, the first 128 -> 256 stride 2.
        ("resnet34", [(128, 256, 2)] + [(256, 256, 1)] * 11, 6.04e6),
    ],
)
def test_parameter_delta_matches_spec_table(name, layers, expected_delta):
    with torch.device("meta"):
        delta = sum(
            count_params(XVolution(c_in, c_out, s)) - _conv_bn_params(c_in, c_out)
            for c_in, c_out, s in layers
        )
    assert abs(delta - expected_delta) <= 0.01 * expected_delta, (name, delta)


@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("stride", [1, 2])
def test_macs_formula_pssa(weighting, stride):
    """MACs = conv (C_out·C_in·K² per output pixel) + the weighting; products are elementwise
    and not counted by FlopCounterMode. Weighting: 'full' = 1x1 conv C_out·|D|·C_in per pixel;
    'depthwise'/'none' = a 3x3 depthwise conv, C·9 per pixel."""
    c_in, c_out = (6, 10) if weighting == "full" else (8, 8)
    h, w, k = 9, 7, 3
    m = XVolution(c_in, c_out, stride, k, pssa_weighting=weighting)
    pixels = -(-h // stride) * -(-w // stride)
    weighting_macs = c_out * 8 * c_in if weighting == "full" else c_in * 9
    expected = pixels * (c_out * c_in * k * k + weighting_macs)
    assert count_macs(m, (1, c_in, h, w)) == expected
    if weighting == "full":  # the deploy form computes the same GEMMs
        m.reparameterize()
        assert count_macs(m, (1, c_in, h, w)) == expected


@pytest.mark.parametrize("stride", [1, 2])
def test_macs_formula_sa(stride):
    c_in, c_out, h, w = 6, 8, 9, 7
    m = XVolution(c_in, c_out, stride, attention="sa", sa_head_dim=3)
    pixels = -(-h // stride) * -(-w // stride)  # also the token count after pooling
    conv = pixels * c_out * c_in * 9
    attention = 3 * c_in * c_in * pixels + 2 * pixels * pixels * c_in + c_in * c_out * pixels
    assert count_macs(m, (1, c_in, h, w)) == conv + attention


def test_resnet50_layer3_mac_delta_matches_spec_table():
    """§4: +0.62 G MACs for the six 256-channel layers at 14x14 (first: 28x28 input, s2)."""
    layers = [(2, 28)] + [(1, 14)] * 5
    delta = 0
    for s, size in layers:
        m = XVolution(256, 256, s).to("meta")
        plain = nn.Conv2d(256, 256, 3, s, 1, bias=False).to("meta")
        x = (1, 256, size, size)
        delta += count_macs(m, inputs=torch.empty(x, device="meta")) - count_macs(
            plain, inputs=torch.empty(x, device="meta")
        )
    assert abs(delta - 0.62e9) <= 0.01 * 0.62e9


# --------------------------------------------------------------------------- visualisation helper


@pytest.mark.parametrize("weighting", ["full", "depthwise"])
@pytest.mark.parametrize("reparam", [False, True])
def test_kernel_magnitudes_match_explicit_kernels(weighting, reparam):
    m = make(4, 4, 2, 5, pssa_weighting=weighting)
    x = torch.randn(2, 4, 5, 6, dtype=F64)
    static, dynamic, _ = m.get_equivalent_kernel_bias()
    if reparam:
        m.reparameterize()
    s_map, d_map = m.kernel_magnitudes(x)
    assert s_map.shape == d_map.shape == (2, 3, 3)
    if weighting != "full":
        dynamic = torch.diag_embed(dynamic[:, 0].permute(1, 2, 0)).permute(2, 3, 0, 1)
    mask = torch.zeros(5, 5, dtype=F64)
    for di, dj in m.directions:
        mask[di + 2, dj + 2] = 1
    for b in range(2):
        for i in range(3):
            for j in range(3):
                part = mask * dynamic * x[b, :, 2 * i, 2 * j].view(1, 4, 1, 1)
                torch.testing.assert_close(d_map[b, i, j], part.norm())
                torch.testing.assert_close(s_map[b, i, j], static.norm())
    with pytest.raises(ValueError, match="attention='pssa'"):
        XVolution(4, 4, attention="sa", sa_head_dim=2).kernel_magnitudes(x.float())


# --------------------------------------------------------------------------- inference fast path


@pytest.mark.parametrize("route", ["planar", "channels_last"])
@pytest.mark.parametrize(
    "budget_rows,stride,batch,k",
    [(1, 1, 3, 3), (2, 2, 1, 5), (2, 1, 3, 3), (18, 1, 3, 5), (10, 2, 3, 3), (1000, 1, 3, 5)],
)
def test_chunked_inference_matches_reference(monkeypatch, budget_rows, stride, batch, k, route):
    """The no-grad CPU path forms products in bounded chunks (rows of one image, or whole images).

    The budget is counted in product rows of this shape: 1 and 2 rows (with a remainder), two
    whole images (9 output rows at stride 1, 5 at stride 2; batch 3 leaves a remainder), and one
    chunk for everything. The deploy form takes its channels-last route on large maps only; the
    threshold is moved so both routes run on this small map.
    """
    c_in, c_out, size = 3, 5, (9, 7)
    m = make(c_in, c_out, stride, k)
    row_bytes = -(-size[1] // stride) * 8 * c_in * 8  # float64
    monkeypatch.setattr(xvolution, "_PRODUCTS_CHUNK_BYTES", budget_rows * row_bytes)
    min_pixels = 0 if route == "channels_last" else 10**9
    monkeypatch.setattr(xvolution, "_CHANNELS_LAST_MIN_PIXELS", min_pixels)
    x = torch.randn(batch, c_in, *size, dtype=F64)
    expected = ref.training_forward(m, x)
    with torch.no_grad():
        torch.testing.assert_close(m(x), expected)
        m.reparameterize()
        y = m(x)
        torch.testing.assert_close(y, expected)
        assert y.is_contiguous()  # the output keeps the input's (planar) memory format


@pytest.mark.parametrize("attention", ["pssa", "sa"])
@pytest.mark.parametrize("deploy", [False, True])
def test_channels_last_input(attention, deploy):
    m = make(4, 8, 2, attention=attention, sa_head_dim=4)
    x = torch.randn(2, 4, 7, 6, dtype=F64)
    if deploy:
        m.reparameterize()
    expected = m(x)
    with torch.no_grad():
        torch.testing.assert_close(m(x.contiguous(memory_format=torch.channels_last)), expected)


def test_deploy_footprint_cache_follows_weight_updates():
    conv = CentreModulatedConv2d(3, 4).double()
    x = torch.randn(2, 3, 5, 6, dtype=F64)

    def check(inp):
        expected = centre_modulated_conv2d(inp, conv.weight, conv.dynamic_weight, conv.bias, 1)
        torch.testing.assert_close(conv(inp), expected)

    with torch.no_grad():
        check(x)
        conv.dynamic_weight.mul_(2.0)  # in place, as an optimiser step
        check(x)
        conv.load_state_dict(CentreModulatedConv2d(3, 4).double().state_dict())
        check(x)
        conv.float()
        check(x.float())


# ------------------------------------------------------------- the Involution attention branch
# (c_in, c_out, stride, conv K, involution K_i, group width, size): odd sizes, strides 1 and 2,
# projecting and not, static window smaller and larger than the involution's.
INVOLUTION_CASES = [
    (8, 8, 1, 3, 3, 4, (5, 7)),
    (8, 12, 2, 3, 5, 4, (7, 5)),
    (8, 4, 2, 5, 3, 8, (5, 6)),
    (4, 4, 1, 3, 7, 2, (3, 5)),
]


def make_involution(c_in, c_out, stride, k, k_inv, group, dtype=F64) -> XVolution:
    torch.manual_seed(0)
    m = XVolution(
        c_in,
        c_out,
        stride,
        k,
        attention="involution",
        involution_kernel_size=k_inv,
        involution_group_channels=group,
        involution_reduction=2,
    ).to(dtype)
    with torch.no_grad():
        for p in m.attn.parameters():
            p.normal_(0, 0.4)
    return randomize_bn(m).eval()  # all three BNs (conv, branch, kernel generator) random


@pytest.mark.parametrize("case", INVOLUTION_CASES)
def test_involution_training_form_matches_literal_reference(case):
    c_in, c_out, stride, k, k_inv, group, size = case
    m = make_involution(c_in, c_out, stride, k, k_inv, group)
    x = torch.randn(2, c_in, *size, dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref.training_forward(m, x))


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("case", INVOLUTION_CASES)
def test_involution_merges_exactly_into_one_dynamic_convolution(case, dtype):
    c_in, c_out, stride, k, k_inv, group, size = case
    m = make_involution(c_in, c_out, stride, k, k_inv, group, dtype)
    x = torch.randn(2, c_in, *size, dtype=dtype)
    with torch.no_grad():
        expected = m(x)
        m.reparameterize()
        assert m.deploy and isinstance(m.reparam_conv, InvolutionModulatedConv2d)
        assert not any(isinstance(b, nn.BatchNorm2d) for b in m.modules())  # all BNs folded
        y = m(x)
        if dtype == F64:
            torch.testing.assert_close(y, expected)
            # The literal merged form: per-pixel kernels built from the deploy parameters.
            torch.testing.assert_close(y, ref.involution_deploy_forward(m, x))
            # ... and the module's own per-pixel kernels applied literally.
            kernels = m.reparam_conv.dynamic_kernels(x)
            assert kernels.shape[3] == max(k, k_inv)
            literal = ref.apply_pixel_kernels(x, kernels, stride) + m.reparam_conv.bias.view(
                1, -1, 1, 1
            )
            torch.testing.assert_close(y, literal)
        else:
            assert_close_scaled(y, expected, 1e-5)
        state = {key: v.clone() for key, v in m.state_dict().items()}
        m.reparameterize()  # idempotent
        assert all(m.state_dict()[key].equal(v) for key, v in state.items())
        deployed = XVolution(
            c_in,
            c_out,
            stride,
            k,
            attention="involution",
            involution_kernel_size=k_inv,
            involution_group_channels=group,
            involution_reduction=2,
            deploy=True,
        ).to(dtype)
        deployed.load_state_dict(m.state_dict(), strict=True)
        torch.testing.assert_close(deployed.eval()(x), y, rtol=0, atol=0)


def test_involution_equivalent_kernel_bias_and_macs():
    m = make_involution(8, 8, 2, 3, 5, 4)
    x = torch.randn(1, 8, 9, 7, dtype=F64)
    static, scale, bias = m.get_equivalent_kernel_bias()
    assert static.shape == (8, 8, 3, 3) and scale.shape == bias.shape == (8,)
    macs = count_macs(m, inputs=x)
    m.reparameterize()
    assert count_macs(m, inputs=x) == macs  # same multiply-accumulates in both forms
    torch.testing.assert_close(m.get_equivalent_kernel_bias()[1], scale)


def test_involution_branch_is_trainable_and_reaches_every_parameter():
    m = XVolution(16, 16, attention="involution").train()
    m(torch.randn(2, 16, 6, 6)).square().mean().backward()
    assert all(p.grad is not None for p in m.parameters())
