import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ref_acmix import (
    acmix_pixel_reference,
    acmix_reference,
    acmix_window_reference,
    official_module_state_dict,
    official_window_state_dict,
)
from torch import nn

from convattn.bench import count_macs
from convattn.layers import _window_tiles
from convattn.layers._window_tiles import tiled_window_attention, window_mask
from convattn.layers.acmix import ACmix, ACmixConvPath, ACmixWindowAttention, reflect_index
from convattn.layers.window_attention import shifted_window_mask

from helpers import OFFICIAL_KEYS

KEYS = OFFICIAL_KEYS


@pytest.fixture(autouse=True)
def _one_thread():
    # These shapes are tiny: a second intra-op thread only adds synchronisation (which stalls badly
    # when other jobs share the cores), so the tests run single-threaded.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _loaded(in_ch, out_ch, heads, kernel_att, stride, kernel_conv=3, dtype=torch.float64):
    sd = official_module_state_dict(in_ch, out_ch, heads, kernel_conv, dtype=dtype)
    m = ACmix(in_ch, out_ch, stride, kernel_att, heads, kernel_conv).to(dtype)
    m.load_state_dict(dict(sd), strict=True)
    return m, sd


# ------------------------------------------------------------------------------------------------
# Equality with the literal reference
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel_att", [3, 5, 7])
@pytest.mark.parametrize("heads", [1, 2, 4])
@pytest.mark.parametrize(
    "stride,h,w", [(1, 8, 8), (1, 6, 10), (1, 9, 7), (2, 8, 8), (2, 6, 10), (2, 4, 12)]
)
def test_matches_reference_grid(stride, h, w, heads, kernel_att):
    m, sd = _loaded(12, 16, heads, kernel_att, stride)
    x = torch.randn(3, 12, h, w, dtype=torch.float64)
    expected = acmix_reference(x, sd, heads, kernel_att, stride)
    out = m(x)
    assert out.shape == (3, 16, -(-h // stride), -(-w // stride))
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("stride", [1, 2])
def test_matches_reference_module_defaults(stride, batch):
    m, sd = _loaded(16, 16, 4, 7, stride)
    x = torch.randn(batch, 16, 10, 8, dtype=torch.float64)
    torch.testing.assert_close(m(x), acmix_reference(x, sd, 4, 7, stride))


@pytest.mark.parametrize("h,w", [(9, 7), (7, 8), (5, 5), (11, 4)])
def test_odd_maps_with_stride_two(h, w):
    # Official code fails here; ours samples centres (2y, 2x) like dep_conv's stride-2/pad-1 grid.
    m, sd = _loaded(8, 8, 2, 5, 2)
    x = torch.randn(2, 8, h, w, dtype=torch.float64)
    out = m(x)
    assert out.shape == (2, 8, (h + 1) // 2, (w + 1) // 2)
    torch.testing.assert_close(out, acmix_reference(x, sd, 2, 5, 2))
    torch.testing.assert_close(out, acmix_pixel_reference(x, sd, 2, 5, 2))


def test_stride_three():
    m, sd = _loaded(8, 8, 2, 7, 3)
    x = torch.randn(1, 8, 10, 8, dtype=torch.float64)
    out = m(x)
    assert out.shape == (1, 8, 4, 3)
    torch.testing.assert_close(out, acmix_pixel_reference(x, sd, 2, 7, 3))


@pytest.mark.parametrize(
    "h,w,stride", [(1, 1, 1), (2, 3, 1), (3, 3, 1), (1, 6, 1), (3, 2, 2), (1, 1, 2), (2, 5, 2)]
)
def test_maps_smaller_than_window_follow_repeated_reflection(h, w, stride):
    # Second literal oracle: per-pixel loops with explicit bouncing indices.
    m, sd = _loaded(8, 8, 2, 7, stride)
    x = torch.randn(2, 8, h, w, dtype=torch.float64)
    out = m(x)
    assert out.shape == (2, 8, -(-h // stride), -(-w // stride))
    torch.testing.assert_close(out, acmix_pixel_reference(x, sd, 2, 7, stride))
    torch.testing.assert_close(out, acmix_reference(x, sd, 2, 7, stride))


def test_channels_last_and_strided_inputs():
    m, sd = _loaded(8, 8, 2, 5, 2)
    x = torch.randn(2, 8, 9, 7, dtype=torch.float64)
    expected = acmix_reference(x, sd, 2, 5, 2)
    torch.testing.assert_close(m(x.to(memory_format=torch.channels_last)), expected)
    wide = torch.randn(2, 8, 9, 14, dtype=torch.float64)
    torch.testing.assert_close(m(wide[..., ::2]), acmix_reference(wide[..., ::2], sd, 2, 5, 2))


def test_pixel_reference_agrees_with_unfold_reference():
    # The two oracles are independent; check them against each other where reflection is defined.
    sd = official_module_state_dict(8, 8, 2)
    x = torch.randn(1, 8, 6, 5, dtype=torch.float64)
    torch.testing.assert_close(acmix_pixel_reference(x, sd, 2, 5, 1), acmix_reference(x, sd, 2, 5))


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("pad", [0, 1, 3, 8])
def test_reflect_index_is_numpy_reflect(size, pad):
    expected = np.pad(np.arange(size), pad, mode="reflect")
    np.testing.assert_array_equal(reflect_index(size, pad).numpy(), expected)


# ------------------------------------------------------------------------------------------------
# State dicts
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,args",
    [
        ("acmix_module_in64_out64_katt7_head4_kconv3.json", (64, 64, 1)),
        ("acmix_module_in256_out256_katt7_head4_kconv3_stride2.json", (256, 256, 2)),
    ],
)
def test_official_key_map_loads_strictly(name, args):
    path = KEYS / name
    shapes = json.loads(path.read_text())["keys"]
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(s, generator=g) * 0.1 for k, s in shapes.items()}
    m = ACmix(*args)
    result = m.load_state_dict(dict(sd), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    torch.testing.assert_close(
        m.qkv.weight, torch.cat([sd["conv1.weight"], sd["conv2.weight"], sd["conv3.weight"]])
    )
    torch.testing.assert_close(m.conv_path.dep_conv.weight, sd["dep_conv.weight"])
    x = torch.randn(1, args[0], 8, 8)
    torch.testing.assert_close(m(x), acmix_reference(x, sd, 4, 7, args[2]), rtol=1e-4, atol=1e-4)


def test_own_state_dict_roundtrips():
    m, _ = _loaded(12, 16, 2, 5, 2)
    keys = set(m.state_dict())
    assert keys == {
        "rate1",
        "rate2",
        "qkv.weight",
        "qkv.bias",
        "pos_proj.weight",
        "pos_proj.bias",
        "conv_path.fc.weight",
        "conv_path.dep_conv.weight",
    }
    m2 = ACmix(12, 16, 2, 5, 2).double()
    m2.load_state_dict(m.state_dict(), strict=True)
    x = torch.randn(2, 12, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(m2(x), m(x))


def test_incomplete_official_state_dict_is_reported():
    sd = official_module_state_dict(8, 8, 2)
    del sd["conv3.bias"]
    with pytest.raises(RuntimeError, match=r"qkv\.weight"):
        ACmix(8, 8, heads=2).double().load_state_dict(sd, strict=True)


# ------------------------------------------------------------------------------------------------
# Initialisation, options
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel_conv", [1, 3, 5])
def test_shift_initialisation(kernel_conv):
    m = ACmix(8, 8, heads=2, kernel_conv=kernel_conv)
    k = kernel_conv
    w = m.conv_path.dep_conv.weight
    assert w.shape == (8, k * k, k, k) and w.requires_grad
    assert m.conv_path.dep_conv.bias is None and m.conv_path.fc.bias is None
    for i in range(k * k):
        onehot = torch.zeros(k, k)
        onehot[i // k, i % k] = 1.0
        torch.testing.assert_close(w[:, i], onehot.expand(8, k, k))
    assert m.rate1.item() == 0.5 and m.rate2.item() == 0.5


def test_conv_path_at_init_is_a_sum_of_shifts():
    # With fc selecting one map per slot, the output is that map shifted by the slot's offset.
    path = ACmixConvPath(heads=1, head_dim=1, kernel_size=3).double()
    with torch.no_grad():
        path.fc.weight.zero_()
        path.fc.weight[1, 0] = 1.0  # slot 1 = (0, 1): reads the pixel to the right... of q only
    q = torch.randn(1, 1, 1, 4, 5, dtype=torch.float64)
    qkv = torch.cat([q, torch.zeros_like(q), torch.zeros_like(q)], 1)
    out = path(qkv)
    # one-hot at kernel position (0, 1) with padding 1: out[y, x] = q[y - 1, x]
    expected = torch.zeros(1, 1, 4, 5, dtype=torch.float64)
    expected[..., 1:, :] = q[0, 0, :, :-1, :]
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("kernel_conv", [1, 5])
def test_other_conv_kernels_keep_the_output_size(kernel_conv):
    m = ACmix(8, 8, stride=2, heads=2, kernel_conv=kernel_conv)
    assert m(torch.randn(1, 8, 9, 6)).shape == (1, 8, 5, 3)


# ------------------------------------------------------------------------------------------------
# Training form
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stride,h,w,kernel_att", [(1, 4, 3, 3), (2, 5, 4, 3), (1, 2, 3, 5)])
def test_gradcheck_module(stride, h, w, kernel_att):
    m, _ = _loaded(4, 4, 2, kernel_att, stride)
    x = torch.randn(1, 4, h, w, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,), fast_mode=True)


def test_parameter_gradients_match_reference():
    m, sd = _loaded(6, 8, 2, 5, 2)
    ref_sd = {k: v.clone().requires_grad_(True) for k, v in sd.items()}
    x = torch.randn(2, 6, 6, 8, dtype=torch.float64)
    m(x).square().sum().backward()
    acmix_reference(x, ref_sd, 2, 5, 2).square().sum().backward()
    torch.testing.assert_close(
        m.qkv.weight.grad,
        torch.cat([ref_sd[f"conv{i}.weight"].grad for i in (1, 2, 3)]),
    )
    torch.testing.assert_close(m.pos_proj.weight.grad, ref_sd["conv_p.weight"].grad)
    torch.testing.assert_close(m.conv_path.fc.weight.grad, ref_sd["fc.weight"].grad)
    torch.testing.assert_close(m.rate1.grad, ref_sd["rate1"].grad)


def _window_attention_by_unfold(q, k, v, kernel, stride, scale):
    """Oracle: every query's k x k window materialised with the border rule, then softmax."""
    n, d, h, w = k.shape
    pad = kernel // 2
    rows, cols = reflect_index(h, pad), reflect_index(w, pad)

    def windows(t):
        padded = t[..., rows, :][..., :, cols]
        out = nn.functional.unfold(padded, kernel, stride=stride)
        return out.view(n, d, kernel * kernel, -(-h // stride), -(-w // stride))

    query = q[..., ::stride, ::stride].unsqueeze(2)
    attn = (scale * query * windows(k)).sum(1).softmax(dim=1)
    return (attn.unsqueeze(1) * windows(v)).sum(2), attn


@pytest.mark.parametrize("tile", [(1, 1), (2, 3), (4, 4), (3, 5), (8, 8), (16, 2)])
@pytest.mark.parametrize(
    "h,w,stride,kernel", [(9, 11, 1, 7), (10, 7, 2, 7), (13, 12, 3, 5), (3, 2, 1, 7), (1, 5, 2, 3)]
)
def test_tiled_window_attention_matches_unfold_oracle_for_every_tile(h, w, stride, kernel, tile):
    g = torch.Generator().manual_seed(h * w + stride)
    q, k, v = (torch.randn(3, 4, h, w, generator=g, dtype=torch.float64) for _ in range(3))
    out, weights = tiled_window_attention(q, k, v, kernel, stride, 0.7, tile, return_weights=True)
    expected, expected_weights = _window_attention_by_unfold(q, k, v, kernel, stride, 0.7)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(weights, expected_weights)


def test_window_mask_allows_exactly_each_querys_window():
    mask = window_mask(2, 3, 5, 2, torch.float32, "cpu")
    assert mask.shape == (2 * 3, 7 * 9)
    assert ((mask == 0).sum(dim=1) == 25).all()
    assert torch.isinf(mask).sum() == mask.numel() - 6 * 25


def test_batch_chunks_on_the_cpu_give_the_same_result(monkeypatch):
    m, sd = _loaded(8, 8, 2, 7, 1)
    x = torch.randn(5, 8, 10, 9, dtype=torch.float64, requires_grad=True)
    whole = m(x)
    monkeypatch.setattr(_window_tiles, "_CPU_LOGITS_PER_CHUNK", 1)  # one item per slice
    chunked = m(x)
    torch.testing.assert_close(chunked, whole)
    torch.testing.assert_close(chunked, acmix_reference(x, sd, 2, 7, 1))
    (grad_chunked,) = torch.autograd.grad(chunked.square().sum(), x)
    (grad_whole,) = torch.autograd.grad(whole.square().sum(), x)
    torch.testing.assert_close(grad_chunked, grad_whole)


@pytest.mark.parametrize("stride,tile", [(1, (2, 3)), (2, (2, 2)), (1, None)])
def test_gradcheck_tiled_window_attention(stride, tile):
    dd = dict(dtype=torch.float64, requires_grad=True)
    q, k, v = (torch.randn(2, 2, 5, 4, **dd) for _ in range(3))

    def attend(q, k, v):
        return tiled_window_attention(q, k, v, 3, stride, 0.5, tile)

    assert torch.autograd.gradcheck(attend, (q, k, v))
    assert torch.autograd.gradgradcheck(attend, (q, k, v))


def test_cached_tables_built_in_inference_mode_work_for_training():
    m = ACmix(4, 4, heads=2, kernel_att=3)
    x = torch.randn(1, 4, 13, 11, requires_grad=True)
    with torch.inference_mode():
        expected = m(x)  # first use of these sizes fills the caches
    out = m(x)
    out.sum().backward()
    torch.testing.assert_close(out, expected)
    assert x.grad is not None and m.pos_proj.weight.grad is not None


# ------------------------------------------------------------------------------------------------
# Properties, bad input, dtypes, cost
# ------------------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    in_ch=st.integers(1, 6),
    heads=st.integers(1, 3),
    head_dim=st.integers(1, 3),
    kernel_att=st.sampled_from([1, 3, 5, 7]),
    kernel_conv=st.sampled_from([1, 3]),
    stride=st.integers(1, 3),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    batch=st.integers(1, 2),
)
def test_property_shapes(in_ch, heads, head_dim, kernel_att, kernel_conv, stride, h, w, batch):
    m = ACmix(in_ch, heads * head_dim, stride, kernel_att, heads, kernel_conv)
    out = m(torch.randn(batch, in_ch, h, w))
    assert out.shape == (batch, heads * head_dim, -(-h // stride), -(-w // stride))
    assert torch.isfinite(out).all()


@settings(max_examples=25, deadline=None)
@given(
    out_ch=st.integers(1, 12),
    heads=st.integers(1, 5),
    kernel_att=st.integers(0, 8),
    kernel_conv=st.integers(0, 6),
    stride=st.integers(0, 3),
)
def test_property_constructor_accepts_or_raises_value_error(
    out_ch, heads, kernel_att, kernel_conv, stride
):
    valid = out_ch % heads == 0 and kernel_att % 2 == 1 and kernel_conv % 2 == 1 and stride >= 1
    if valid:
        ACmix(3, out_ch, stride, kernel_att, heads, kernel_conv)
    else:
        with pytest.raises(ValueError):
            ACmix(3, out_ch, stride, kernel_att, heads, kernel_conv)


def test_bad_constructor_options_name_the_option():
    with pytest.raises(ValueError, match=r"out_channels.*heads"):
        ACmix(8, 10, heads=4)
    with pytest.raises(ValueError, match="kernel_att"):
        ACmix(8, 8, kernel_att=4)
    with pytest.raises(ValueError, match="kernel_conv"):
        ACmix(8, 8, kernel_conv=2)
    with pytest.raises(ValueError, match="stride"):
        ACmix(8, 8, stride=0)
    with pytest.raises(ValueError, match="in_channels"):
        ACmix(0, 8)


def test_bad_input_names_the_argument():
    m = ACmix(8, 8, heads=2)
    with pytest.raises(ValueError, match=r"'x'.*8 channels"):
        m(torch.randn(1, 4, 5, 5))
    with pytest.raises(TypeError, match=r"'x'.*floating"):
        m(torch.ones(1, 8, 5, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"'x'.*4-D"):
        m(torch.randn(8, 5, 5))
    with pytest.raises(ValueError, match="'x'"):
        m(torch.randn(1, 8, 0, 5))
    with pytest.raises(ValueError, match=r"'x'.*batch"):
        m(torch.randn(0, 8, 5, 5))
    with pytest.raises(TypeError, match="'x'"):
        m([[1.0]])


@pytest.mark.parametrize("stride", [1, 2])
def test_bfloat16_close_to_float32(stride):
    m = ACmix(16, 16, stride, heads=4)
    x = torch.randn(2, 16, 9, 10)
    ref = m(x)
    out = m.to(torch.bfloat16)(x.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)


def test_float16_forward():
    m = ACmix(8, 8, heads=2).half()
    x = torch.randn(1, 8, 6, 6).half()
    try:
        out = m(x)
    except (NotImplementedError, RuntimeError) as err:
        if "Half" in str(err) or "not implemented" in str(err):
            pytest.skip(f"CPU float16 kernel missing: {err}")
        raise
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), m.float()(x.float()), rtol=0.02, atol=0.02)


@pytest.mark.parametrize("stride,size", [(1, 10), (2, 12), (1, 7), (1, 20), (2, 33)])
def test_macs_count_the_executed_products(stride, size):
    # FlopCounterMode sees the two batched products, masked slots included: the count is the work
    # done (every pixel of a small map per query; the tile's halo region per query otherwise), at
    # least the official k*k per query.
    c, heads, k, batch = 16, 4, 7, 2
    m, sd = _loaded(c, c, heads, k, stride, dtype=torch.float32)

    class Reference(nn.Module):
        def forward(self, x):
            return acmix_reference(x, sd, heads, k, stride)

    macs = count_macs(m, (batch, c, size, size))
    counted_by_reference = count_macs(Reference(), (batch, c, size, size))  # convolutions only
    out = -(-size // stride)
    if size * size <= _window_tiles._WHOLE_MAP_MAX_PIXELS:
        keys_per_query = size * size
    else:
        tile_h, tile_w = _window_tiles.tile_size(out, out, stride)
        tiles = -(-out // tile_h) * -(-out // tile_w)
        region = (stride * (tile_h - 1) + k) * (stride * (tile_w - 1) + k)
        keys_per_query = tiles * tile_h * tile_w * region / (out * out)
    products = 2 * batch * c * out * out * keys_per_query
    assert macs == counted_by_reference + products
    assert products >= 2 * batch * k * k * c * out * out or size * size < k * k


# ------------------------------------------------------------------------------------------------
# ACmix-Swin window variant
# ------------------------------------------------------------------------------------------------


def _window_loaded(dim, heads, window):
    sd = official_window_state_dict(dim, heads, window)
    m = ACmixWindowAttention(dim, window, heads).double()
    m.load_state_dict(dict(sd), strict=True)
    return m, sd


@pytest.mark.parametrize(
    "dim,heads,window,h,w,shift",
    [
        (12, 3, 7, 7, 14, 0),
        (12, 3, 7, 7, 14, 3),
        (8, 2, 2, 4, 6, 0),
        (8, 2, 2, 4, 6, 1),
        (8, 2, 4, 4, 20, 2),  # one window row
    ],
)
def test_window_variant_matches_reference(dim, heads, window, h, w, shift):
    m, sd = _window_loaded(dim, heads, window)
    x = torch.randn(1 if h == window else 2, h, w, dim, dtype=torch.float64)
    mask = None
    if shift:
        # What a shifted Swin block hands in: the rolled map and the shifted-window mask.
        x = torch.roll(x, (-shift, -shift), (1, 2))
        mask = shifted_window_mask(h, w, window, shift).double()
    expected = acmix_window_reference(x, sd, heads, window, mask)
    torch.testing.assert_close(m(x, mask), expected)


def test_window_variant_keys_match_official_swin_tiny():
    m = ACmixWindowAttention(96, 7, 3)
    renames = {
        "conv_path.fc.weight": "fc.weight",
        "conv_path.fc.bias": "fc.bias",
        "conv_path.dep_conv.weight": "dep_conv.weight",
    }
    ours = {renames.get(k, k): tuple(v.shape) for k, v in m.state_dict().items()}
    path = KEYS / "acmix_swin_tiny.json"
    keys = json.loads(path.read_text())["keys"]
    prefix = "layers.0.blocks.1.attn."
    official = {k[len(prefix) :]: tuple(s) for k, s in keys.items() if k.startswith(prefix)}
    assert ours == official
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(s, generator=g) for k, s in official.items()}
    sd["relative_position_index"] = m.relative_position_index.clone()
    m.load_state_dict(sd, strict=True)


def test_window_variant_conv_path_sees_the_rolled_map():
    # The conv path is evaluated on the map handed in (wrap-around at the seam), not on the unrolled
    # one: rolling the output back differs from running on the unrolled map.
    m = ACmixWindowAttention(8, 2, 2).double()
    with torch.no_grad():
        m.rate1.zero_()  # conv path only
    x = torch.randn(1, 6, 6, 8, dtype=torch.float64)
    rolled = torch.roll(m(torch.roll(x, (-1, -1), (1, 2))), (1, 1), (1, 2))
    direct = m(x)
    torch.testing.assert_close(rolled[:, 2:-1, 2:-1], direct[:, 2:-1, 2:-1])  # interior agrees
    assert not torch.allclose(rolled, direct)


def test_window_variant_gradcheck_and_bfloat16():
    m, _ = _window_loaded(4, 2, 2)
    x = torch.randn(1, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    mask = shifted_window_mask(4, 4, 2, 1).double()
    assert torch.autograd.gradcheck(lambda t: m(t, mask), (x,), fast_mode=True)
    m32 = ACmixWindowAttention(16, 2, 2)
    xf = torch.randn(2, 4, 6, 16)
    out = m32.to(torch.bfloat16)(xf.bfloat16())
    torch.testing.assert_close(out.float(), m32.float()(xf), rtol=0.05, atol=0.05)


@settings(max_examples=20, deadline=None)
@given(
    heads=st.integers(1, 3),
    head_dim=st.integers(1, 4),
    window=st.integers(1, 4),
    rows=st.integers(1, 3),
    cols=st.integers(1, 3),
    shifted=st.booleans(),
    kernel_conv=st.sampled_from([1, 3, 5]),
)
def test_window_variant_property_shapes(heads, head_dim, window, rows, cols, shifted, kernel_conv):
    dim = heads * head_dim
    m = ACmixWindowAttention(dim, window, heads, kernel_conv=kernel_conv)
    h, w = rows * window, cols * window
    mask = shifted_window_mask(h, w, window, window // 2) if shifted and window > 1 else None
    out = m(torch.randn(2, h, w, dim), mask)
    assert out.shape == (2, h, w, dim) and torch.isfinite(out).all()


def test_window_variant_macs():
    dim, heads, window, h, w = 32, 2, 7, 14, 7
    m = ACmixWindowAttention(dim, window, heads)
    macs = count_macs(m, (1, h, w, dim))
    hw, n, d = h * w, window * window, dim // heads
    expected = (
        hw * 3 * dim * dim  # qkv
        + 2 * hw * n * dim  # q k^T and attn v inside the windows
        + hw * dim * dim  # proj
        + 9 * 3 * heads * d * hw  # fc
        + dim * 9 * 9 * hw  # dep_conv
    )
    assert macs == expected


def test_window_variant_bad_input():
    m = ACmixWindowAttention(8, 2, 2)
    with pytest.raises(ValueError, match="window_size"):
        m(torch.randn(1, 3, 4, 8))
    with pytest.raises(ValueError, match="'x'"):
        m(torch.randn(1, 4, 4, 6))
    with pytest.raises(TypeError, match="'x'"):
        m(torch.ones(1, 4, 4, 8, dtype=torch.int32))
    with pytest.raises(ValueError, match="kernel_conv"):
        ACmixWindowAttention(8, 2, 2, kernel_conv=2)
    with pytest.raises(ValueError, match="num_heads"):
        ACmixWindowAttention(9, 2, 2)


def test_num_heads_is_the_name_and_heads_an_alias():
    m = ACmix(8, 8, num_heads=2)
    assert m.num_heads == m.heads == 2 and m.conv_path.num_heads == 2
    assert ACmix(8, 8, heads=2).num_heads == ACmix(8, 8, head=2).num_heads == 2  # old / official
    assert ACmix(8, 8).num_heads == 4
    with pytest.raises(ValueError, match="alias of 'num_heads'"):
        ACmix(8, 8, num_heads=2, heads=4)
    assert "num_heads=2" in repr(m)
