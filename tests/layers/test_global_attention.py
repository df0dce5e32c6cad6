"""GlobalSelfAttention2d against the literal reference (tests/layers/ref_baselines.py)."""

import math

import pytest
import ref_baselines as ref
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from convattn.bench import count_macs, count_params
from convattn.layers.attention import GlobalSelfAttention2d

from helpers import assert_close_scaled


def _randomize(module: nn.Module, std: float = 0.3) -> nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, std)
    return module


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("hw", [(5, 7), (6, 4), (1, 1), (3, 2)])
@pytest.mark.parametrize("heads", [1, 2, 4])
@pytest.mark.parametrize("batch,c_out", [(1, 8), (3, 12)])
def test_matches_reference(stride, hw, heads, batch, c_out):
    m = _randomize(GlobalSelfAttention2d(8, c_out, stride, num_heads=heads)).double()
    x = torch.randn(batch, 8, *hw, dtype=torch.float64)
    y = m(x)
    assert y.shape == (batch, c_out, math.ceil(hw[0] / stride), math.ceil(hw[1] / stride))
    torch.testing.assert_close(y, ref.global_attention(m, x))


def test_reference_pooling_is_the_literal_window_mean():
    x = torch.arange(2 * 5 * 3, dtype=torch.float64).view(1, 2, 5, 3)
    pooled = ref.avg_pool_ceil(x, 2)
    assert pooled.shape == (1, 2, 3, 2)
    assert pooled[0, 0, 0, 0] == (0 + 1 + 3 + 4) / 4  # full window
    assert pooled[0, 0, 2, 1] == 14  # bottom-right corner window holds one pixel
    assert pooled[0, 0, 0, 1] == (2 + 5) / 2  # right border window: one column


def test_matches_torch_multihead_attention():
    """An independent oracle: nn.MultiheadAttention on the flattened pixels, same weights."""
    m = _randomize(GlobalSelfAttention2d(16, 16, num_heads=4)).double()
    mha = nn.MultiheadAttention(16, 4, batch_first=True).double()
    with torch.no_grad():
        mha.in_proj_weight.copy_(m.qkv.weight)
        mha.in_proj_bias.copy_(m.qkv.bias)
        mha.out_proj.weight.copy_(m.proj.weight)
        mha.out_proj.bias.copy_(m.proj.bias)
    x = torch.randn(2, 16, 5, 3, dtype=torch.float64)
    tokens = x.flatten(2).transpose(1, 2)
    expected, _ = mha(tokens, tokens, tokens, need_weights=False)
    torch.testing.assert_close(m(x), expected.transpose(1, 2).reshape(2, 16, 5, 3))


def test_reference_detects_a_wrong_scale():
    """The comparison can fail: a module with a different softmax temperature is caught."""
    m = _randomize(GlobalSelfAttention2d(8, 8, num_heads=2)).double()
    x = torch.randn(1, 8, 4, 4, dtype=torch.float64)
    wrong = GlobalSelfAttention2d(8, 8, num_heads=1).double()  # head width 8 instead of 4
    wrong.load_state_dict(m.state_dict())
    assert not torch.allclose(wrong(x), ref.global_attention(m, x))


def test_default_heads_follow_head_dim():
    assert (
        GlobalSelfAttention2d(256, 256).num_heads == 4
    )  # docs/notes/xvolution.md §1.5: 4 heads at 256 channels
    assert GlobalSelfAttention2d(64, 128).num_heads == 1
    assert GlobalSelfAttention2d(200, 200).num_heads == 2  # largest divisor of 200 not above 3
    assert GlobalSelfAttention2d(16, 16).head_dim == 16


def test_gradcheck():
    m = _randomize(GlobalSelfAttention2d(4, 6, 2, num_heads=2)).double()
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    stride=st.integers(1, 3),
    heads=st.sampled_from([1, 2, 3, 4]),
    c_in=st.sampled_from([4, 6, 12]),
    c_out=st.integers(1, 9),
    batch=st.integers(1, 3),
)
def test_property_shapes(h, w, stride, heads, c_in, c_out, batch):
    if c_in % heads:
        with pytest.raises(ValueError, match="num_heads"):
            GlobalSelfAttention2d(c_in, c_out, stride, num_heads=heads)
        return
    m = GlobalSelfAttention2d(c_in, c_out, stride, num_heads=heads)
    y = m(torch.randn(batch, c_in, h, w))
    assert y.shape == (batch, c_out, -(-h // stride), -(-w // stride))
    assert torch.isfinite(y).all()


@pytest.mark.parametrize(
    "x,exc,match",
    [
        (torch.randn(1, 5, 4, 4), ValueError, "8 channels"),
        (torch.ones(1, 8, 4, 4, dtype=torch.int64), TypeError, "floating"),
        (torch.randn(8, 4, 4), ValueError, "4-D"),
        (torch.randn(1, 8, 0, 4), ValueError, "spatial size"),
        (torch.randn(0, 8, 4, 4), ValueError, "batch size 0"),
        ([[1.0]], TypeError, "torch.Tensor"),
    ],
)
def test_bad_input(x, exc, match):
    with pytest.raises(exc, match=f"'x'.*{match}|{match}.*'x'"):
        GlobalSelfAttention2d(8, 8)(x)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"in_channels": 0}, "in_channels"),
        ({"out_channels": -1}, "out_channels"),
        ({"stride": 0}, "stride"),
        ({"num_heads": 3}, "num_heads"),
        ({"num_heads": 0}, "num_heads"),
        ({"head_dim": 0}, "head_dim"),
    ],
)
def test_bad_options(kwargs, name):
    args = {"in_channels": 8, "out_channels": 8, **kwargs}
    with pytest.raises(ValueError, match=name):
        GlobalSelfAttention2d(**args)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_forward(dtype):
    m = GlobalSelfAttention2d(16, 24, 2, num_heads=2)
    x = torch.randn(2, 16, 7, 5)
    expected = m(x)
    got = m.to(dtype)(x.to(dtype))
    assert got.dtype == dtype
    assert_close_scaled(got.float(), expected, rtol=3e-2)


@pytest.mark.parametrize("stride,c_out", [(1, 32), (2, 48)])
def test_macs_include_attention_products(stride, c_out):
    c, h, w = 32, 9, 6
    m = GlobalSelfAttention2d(c, c_out, stride, num_heads=2)
    n = math.ceil(h / stride) * math.ceil(w / stride)
    expected = 3 * n * c * c + 2 * n * n * c + n * c * c_out
    assert count_macs(m, (1, c, h, w)) == expected
    assert count_macs(m, (3, c, h, w)) == 3 * expected
    assert count_params(m) == 3 * c * c + 3 * c + c * c_out + c_out
