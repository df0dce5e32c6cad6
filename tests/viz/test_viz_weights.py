"""The attention weights of convattn.viz reproduce each operator's own computation.

Every weight function is checked by rebuilding the module's output (or the attention part of it)
from the weights and the module's values, so a wrong softmax axis, scale, bias or border rule
would fail here.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from convattn.layers.acmix import ACmix
from convattn.layers.attention import GlobalSelfAttention2d, MultiheadSelfAttention
from convattn.layers.glmix import GLMix, GLMixBlock
from convattn.layers.san import ACmixPatchwiseAttention, PatchwiseSelfAttention
from convattn.layers.sr_attention import (
    ACmixSpatialReductionAttention,
    SpatialReductionAttention,
)
from convattn.layers.window_attention import window_partition
from convattn.models.swin import SwinTransformerBlock, _clamped_window_attention
from convattn.viz import (
    acmix_attention_weights,
    acmix_window_index,
    global_attention_weights,
    multihead_attention_weights,
    san_attention_weights,
    san_window_index,
    select_representatives,
    slot_assignments,
    sr_attention_weights,
    sr_key_index,
    swin_window_attention_weights,
)

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("stride", "size"), [(1, (9, 11)), (2, (9, 11)), (2, (3, 2))])
def test_acmix_weights_rebuild_the_attention_path(stride, size):
    module = ACmix(8, 16, stride=stride, kernel_att=7, heads=2).eval()
    x = torch.randn(2, 8, *size)
    weights = acmix_attention_weights(module, x)
    out_h, out_w = -(-size[0] // stride), -(-size[1] // stride)
    assert weights.shape == (2, 2, 49, out_h, out_w)
    torch.testing.assert_close(weights.sum(dim=2), torch.ones(2, 2, out_h, out_w))
    # out = sum over the window of weight * value at the pixel each slot reads (reflection).
    qkv = module.qkv(x)
    values = qkv.view(2, 3, 2, 8, -1)[:, 2]  # (B, heads, d, H*W)
    index = acmix_window_index(module, *size)  # (k*k, H', W')
    assert index.shape == (49, out_h, out_w) and index.min() >= 0 and index.max() < x[0, 0].numel()
    gathered = values[..., index]  # (B, heads, d, k*k, H', W')
    out = (weights.unsqueeze(2) * gathered).sum(dim=3).reshape(2, 16, out_h, out_w)
    torch.testing.assert_close(out, module.attention(qkv.contiguous()), **TOL)


@pytest.mark.parametrize("cls", [PatchwiseSelfAttention, ACmixPatchwiseAttention])
@pytest.mark.parametrize(("stride", "size"), [(1, (6, 7)), (2, (6, 7)), (1, (2, 3))])
def test_san_weights_rebuild_the_attention_path(cls, stride, size):
    module = cls(16, 16, stride=stride, kernel_size=5, rel_channels=4, share_planes=8).eval()
    x = torch.randn(2, 16, *size)
    weights = san_attention_weights(module, x)
    out_h, out_w = -(-size[0] // stride), -(-size[1] // stride)
    assert weights.shape == (2, 2, 25, out_h, out_w)  # 16 / 8 = 2 channel groups, no softmax
    # out_c = sum over the window of the weight of group c % G times v_c at the slot's pixel.
    qkv = module.qkv(x)
    values = module.split_projections(qkv)[2].flatten(2)  # (B, C, H*W)
    index = san_window_index(module, *size)  # (k*k, H', W'), reflected at the border
    assert index.shape == (25, out_h, out_w) and 0 <= index.min() <= index.max() < size[0] * size[1]
    gathered = values[..., index]  # (B, C, k*k, H', W')
    out = (weights[:, torch.arange(16) % 2] * gathered).sum(dim=2)
    torch.testing.assert_close(out, module.attention(qkv), **TOL)


@pytest.mark.parametrize("cls", [SpatialReductionAttention, ACmixSpatialReductionAttention])
@pytest.mark.parametrize(("r", "size", "prefix"), [(2, (5, 6), 0), (1, (3, 2), 1)])
def test_sr_weights_rebuild_the_attention_path(cls, r, size, prefix):
    module = cls(16, 2, r).eval()
    h, w = size
    tokens = torch.randn(2, prefix + h * w, 16)
    weights = sr_attention_weights(module, tokens, size)
    keys = prefix + (h // r) * (w // r)
    assert weights.shape == (2, 2, prefix + h * w, keys)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, prefix + h * w))
    q, kv, _ = module.project(tokens, size)
    values = kv.view(2, keys, 2, 2, 8)[:, :, 1].transpose(1, 2)  # (B, heads, m, d)
    out = (weights @ values).transpose(1, 2).reshape(2, -1, 16)
    torch.testing.assert_close(out, module.attend(q, kv), **TOL)
    index = sr_key_index(module, h, w, prefix)
    assert index.shape == size and int(index.max()) == keys - 1
    assert int(index[index >= 0].min()) == prefix  # the class token covers no pixel


@pytest.mark.parametrize("attn_layer", ["window", "acmix"])
@pytest.mark.parametrize(
    ("shifted", "size"),
    [(False, (8, 8)), (True, (8, 8)), (True, (10, 9)), (False, (3, 3)), (True, (2, 5))],
)
def test_swin_window_weights_rebuild_attend(attn_layer, shifted, size):
    block = SwinTransformerBlock(16, 2, window_size=4, shifted=shifted, attn_layer=attn_layer)
    block.eval()
    torch.nn.init.normal_(block.attn.relative_position_bias_table)  # make the bias matter
    x = torch.randn(2, *size, 16)
    result = swin_window_attention_weights(block, x)
    win, shift, (hp, wp) = result.window, result.shift, result.padded_size
    n = win * win
    assert result.size == size and hp % win == 0 and wp % win == 0
    assert result.weights.shape == (2, hp // win, wp // win, 2, n, n)
    torch.testing.assert_close(result.weights.sum(-1), torch.ones(result.weights.shape[:-1]))
    if shifted and min(size) > 4:
        assert shift == 2
    # Reference: the block's own preparation and attention pieces.
    attn = block.attn
    y = F.pad(block.norm1(x), (0, 0, 0, wp - size[1], 0, hp - size[0]))
    if shift:
        y = torch.roll(y, (-shift, -shift), dims=(1, 2))
    qkv = attn.qkv(y)
    windows = window_partition(qkv, win).view(-1, n, 48)
    if win == attn.window_size:
        from convattn.layers.window_attention import shifted_window_mask

        mask = shifted_window_mask(hp, wp, win, shift) if shift else None
        expected = attn.attend(windows, mask)
    else:
        expected = window_partition(_clamped_window_attention(attn, qkv, win), win).view(-1, n, 16)
    values = windows.view(-1, n, 3, 2, 8)[:, :, 2].transpose(1, 2)  # (B*nW, heads, n, d)
    out = (result.weights.reshape(-1, 2, n, n) @ values).transpose(1, 2).reshape(-1, n, 16)
    torch.testing.assert_close(out, expected, **TOL)


@pytest.mark.parametrize("stride", [1, 2])
def test_global_attention_weights_rebuild_the_output(stride):
    module = GlobalSelfAttention2d(8, 12, stride=stride, num_heads=2).eval()
    x = torch.randn(2, 8, 7, 6)
    weights = global_attention_weights(module, x)
    h, w = -(-7 // stride), -(-6 // stride)
    assert weights.shape == (2, 2, h * w, h * w)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, h * w))
    pooled = F.avg_pool2d(x, stride, stride, ceil_mode=True) if stride > 1 else x
    tokens = pooled.flatten(2).transpose(1, 2)
    values = module.qkv(tokens).view(2, h * w, 3, 2, 4)[:, :, 2].transpose(1, 2)
    out = module.proj((weights @ values).transpose(1, 2).reshape(2, h * w, 8))
    torch.testing.assert_close(out.transpose(1, 2).reshape(2, 12, h, w), module(x), **TOL)


def test_multihead_attention_weights_rebuild_the_output():
    module = MultiheadSelfAttention(16, 2)
    torch.nn.init.normal_(module.in_proj_bias)
    tokens = torch.randn(2, 5, 16)
    weights = multihead_attention_weights(module, tokens)
    assert weights.shape == (2, 2, 5, 5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 5))
    qkv = F.linear(tokens, module.in_proj_weight, module.in_proj_bias)
    values = qkv.view(2, 5, 3, 2, 8)[:, :, 2].transpose(1, 2)
    out = module.out_proj((weights @ values).transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(out, module(tokens), **TOL)


@pytest.mark.parametrize("block", [False, True])
def test_slot_assignments_rebuild_the_glmix_mixer(block):
    """Dispatch = softmax over slots, clustering = softmax over pixels: the mixer's own use."""
    layer = (GLMixBlock(32, num_slots=16) if block else GLMix(32, num_slots=16)).eval()
    with torch.no_grad():
        layer.slot_scale.fill_(8.0)  # sharp, non-uniform logits
    z = torch.randn(2, 32, 5, 6)
    captured = []
    handle = layer.vis_proxy.register_forward_hook(lambda m, a, out: captured.append(out))
    with torch.no_grad():
        expected = layer._mix(z, z)
    handle.remove()
    logits = captured[0]
    assert logits.shape == (2, 16, 30)
    dispatch, clustering = slot_assignments(logits), slot_assignments(logits, "clustering")
    torch.testing.assert_close(dispatch.sum(dim=1), torch.ones(2, 30))
    torch.testing.assert_close(clustering.sum(dim=2), torch.ones(2, 16))
    maps = slot_assignments(logits.view(2, 16, 5, 6), "clustering")  # any pixel layout
    torch.testing.assert_close(maps.flatten(2), clustering)
    tokens = z.flatten(2).transpose(1, 2)
    with torch.no_grad():
        slots = layer.relation_mha(clustering @ tokens)
        local = layer.feature_conv(z).flatten(2).transpose(1, 2)
    fused = dispatch.transpose(1, 2) @ slots + local
    torch.testing.assert_close(fused.transpose(1, 2).reshape(2, 32, 5, 6), expected, **TOL)
    with pytest.raises(ValueError, match="'mode'"):
        slot_assignments(logits, "pixels")


def test_representatives_cover_separated_groups_deterministically():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 1, 8, 8, generator=gen) * 10
    maps = (centres + 0.01 * torch.randn(3, 5, 8, 8, generator=gen)).flatten(0, 1)  # 3 groups of 5
    chosen = select_representatives(maps, 3)
    assert sorted({i // 5 for i in chosen}) == [0, 1, 2]  # one per group
    assert chosen == select_representatives(maps.clone(), 3) == sorted(chosen)
    assert select_representatives(maps, 100) == list(range(15))  # k clamped to S
    same = torch.zeros(6, 4, 4)  # all equal (an untrained block): still k distinct slots
    assert len(set(select_representatives(same, 4))) == 4
