"""SAN patchwise self-attention and ACmix-SAN: literal references, window machinery, gradcheck,
dtypes, bad input, re-parameterisation, official keys."""

import copy
import json

import pytest
import torch
from ref_acmix import bounce
from ref_san import acmix_san_reference, official_sam_state_dict, san_reference

from convattn.layers import _window_tiles
from convattn.layers._window_tiles import window_aggregate, window_gather
from convattn.layers.san import ACmixPatchwiseAttention, PatchwiseSelfAttention, san_window_index

from helpers import OFFICIAL_KEYS, assert_close_scaled, randomize_bn


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _aggregate_loops(value, weights, k, s):
    """out[m, :, y, x] = sum_j weights[m, j, y, x] * value[m, :, bounce(window slot j)]."""
    m, d, h, w = value.shape
    pad = k // 2
    out = torch.zeros(m, d, -(-h // s), -(-w // s), dtype=value.dtype)
    for y in range(out.shape[2]):
        for x in range(out.shape[3]):
            for dy in range(k):
                for dx in range(k):
                    r, c = bounce(s * y + dy - pad, h), bounce(s * x + dx - pad, w)
                    out[:, :, y, x] += weights[:, dy * k + dx, y, x, None] * value[:, :, r, c]
    return out


def _acmix_sd(in_ch, rel, out, share, k, kernel_conv=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = official_sam_state_dict(in_ch, rel, out, share, k, generator=g)
    heads = out // rel
    sd["conv_path.fc.weight"] = torch.randn(kernel_conv**2, 2 + heads, 1, 1, generator=g).double()
    sd["conv_path.dep_conv.weight"] = torch.randn(
        out, kernel_conv**2, kernel_conv, kernel_conv, generator=g
    ).double()
    sd["rate1"] = torch.tensor([0.7], dtype=torch.float64)
    sd["rate2"] = torch.tensor([-1.3], dtype=torch.float64)
    return sd


def _san(in_ch, rel, out, share, k, stride=1, seed=0):
    sd = official_sam_state_dict(
        in_ch, rel, out, share, k, generator=torch.Generator().manual_seed(seed)
    )
    m = PatchwiseSelfAttention(in_ch, out, stride, k, rel, share).double()
    m.load_state_dict(dict(sd), strict=True)
    return m.eval(), sd


# --- the window machinery -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "h,w,k,s,tile",
    [
        (5, 6, 3, 1, None),  # whole map
        (3, 2, 7, 1, None),  # map smaller than the window: repeated reflection
        (1, 4, 3, 1, None),  # one-pixel axis
        (20, 18, 7, 1, None),  # tiles
        (20, 18, 7, 2, None),  # tiles, stride 2
        (9, 11, 5, 2, (3, 2)),  # forced tiles, ragged last tile
        (4, 5, 7, 1, (2, 3)),  # forced tiles on a tiny map
    ],
)
def test_window_aggregate_matches_loops(h, w, k, s, tile):
    g = torch.Generator().manual_seed(0)
    value = torch.randn(3, 4, h, w, generator=g, dtype=torch.float64)
    weights = torch.randn(3, k * k, -(-h // s), -(-w // s), generator=g, dtype=torch.float64)
    out = window_aggregate(value, weights, k, s, tile)
    torch.testing.assert_close(out, _aggregate_loops(value, weights, k, s))


@pytest.mark.parametrize("h,w,k,s", [(6, 5, 3, 1), (3, 2, 7, 1), (9, 8, 5, 2)])
def test_window_gather_matches_loops(h, w, k, s):
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    out = window_gather(x, k, s)
    pad = k // 2
    for y in range(out.shape[2]):
        for xx in range(out.shape[3]):
            for j in range(k * k):
                r, c = bounce(s * y + j // k - pad, h), bounce(s * xx + j % k - pad, w)
                torch.testing.assert_close(out[:, j :: k * k, y, xx], x[:, :, r, c])


def test_window_aggregate_chunks_the_batch_on_cpu(monkeypatch):
    monkeypatch.setattr(_window_tiles, "_CPU_LOGITS_PER_CHUNK", 1)  # one item per slice
    value = torch.randn(3, 2, 20, 17, dtype=torch.float64)
    weights = torch.randn(3, 9, 20, 17, dtype=torch.float64)
    torch.testing.assert_close(
        window_aggregate(value, weights, 3, 1), _aggregate_loops(value, weights, 3, 1)
    )


@pytest.mark.parametrize("tile", [None, (2, 3)])
def test_window_aggregate_gradcheck(tile):
    g = torch.Generator().manual_seed(0)
    value = torch.randn(2, 2, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 9, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda v, wt: window_aggregate(v, wt, 3, 2, tile), (value, weights)
    )
    assert torch.autograd.gradgradcheck(
        lambda v, wt: window_aggregate(v, wt, 3, 2, tile), (value, weights)
    )


def test_window_aggregate_in_inference_mode_then_training():
    """Index tensors cached under inference mode must still serve a later backward pass."""
    _window_tiles._window_sources.cache_clear()
    value = torch.randn(1, 2, 6, 6)
    weights = torch.randn(1, 9, 6, 6)
    with torch.inference_mode():
        window_aggregate(value, weights, 3)
        window_gather(value, 3)
    v = value.clone().requires_grad_()
    (window_aggregate(v, weights, 3).sum() + window_gather(v, 3).sum()).backward()
    assert v.grad is not None


# --- the operators against the literal references ------------------------------------------------


@pytest.mark.parametrize(
    "k,stride,h,w",
    [(7, 1, 9, 11), (3, 1, 6, 5), (7, 1, 3, 4), (7, 1, 18, 17), (7, 2, 10, 9), (5, 2, 7, 8)],
)
def test_patchwise_matches_reference(k, stride, h, w):
    m, sd = _san(16, 2, 16, 8, k, stride)
    x = torch.randn(2, 16, h, w, dtype=torch.float64)
    out = m(x)
    assert out.shape == (2, 16, -(-h // stride), -(-w // stride))
    assert_close_scaled(out, san_reference(x, sd, k, 8, stride), rtol=1e-10)


@pytest.mark.parametrize("share", [4, 8])
def test_patchwise_weight_groups_interleave(share):
    """Channel c uses weight group c mod G (checked with more than one group)."""
    m, sd = _san(24, 3, 24, share, 3)
    x = torch.randn(1, 24, 5, 6, dtype=torch.float64)
    assert_close_scaled(m(x), san_reference(x, sd, 3, share), rtol=1e-10)


@pytest.mark.parametrize("k,stride,h,w", [(7, 1, 9, 11), (3, 1, 6, 5), (7, 2, 10, 9), (7, 1, 2, 3)])
def test_acmix_patchwise_matches_reference(k, stride, h, w):
    sd = _acmix_sd(16, 4, 16, 8, k)
    m = ACmixPatchwiseAttention(16, 16, stride, k, 4, 8).double().eval()
    m.load_state_dict(dict(sd), strict=True)
    x = torch.randn(2, 16, h, w, dtype=torch.float64)
    assert_close_scaled(m(x), acmix_san_reference(x, sd, k, 8, stride), rtol=1e-10)


def test_acmix_patchwise_starts_as_a_shift_with_half_rates():
    m = ACmixPatchwiseAttention(32, 16, kernel_size=7, rel_channels=2)
    assert m.rate1.item() == m.rate2.item() == 0.5
    assert m.num_heads == 8 and m.conv_path.fc.weight.shape == (9, 10, 1, 1)
    w = m.conv_path.dep_conv.weight
    assert w.shape == (16, 9, 3, 3)
    torch.testing.assert_close(w, torch.eye(9).view(1, 9, 3, 3).expand_as(w))


def test_return_weights_and_window_index_rebuild_the_output():
    m, _ = _san(16, 2, 16, 8, 7, stride=2)
    x = torch.randn(1, 16, 9, 8, dtype=torch.float64)
    qkv = m.qkv(x)
    out, weights = m.attention(qkv, return_weights=True)
    assert weights.shape == (1, 2, 49, 5, 4)
    index = m.window_index(9, 8)  # (49, 5, 4)
    torch.testing.assert_close(index, san_window_index(9, 8, 7, 2))
    v = m.split_projections(qkv)[2].flatten(2)  # (1, 16, 72)
    gathered = v[:, :, index.flatten()].view(1, 16, 49, 5, 4)
    group = torch.arange(16) % 2
    rebuilt = (weights[:, group] * gathered).sum(2)
    torch.testing.assert_close(rebuilt, out)


def test_channels_last_and_batch_one():
    m, _ = _san(16, 2, 16, 8, 7)
    x = torch.randn(1, 16, 10, 9, dtype=torch.float64)
    expected = m(x)
    torch.testing.assert_close(m(x.to(memory_format=torch.channels_last)), expected)


# --- gradients and dtypes -------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [PatchwiseSelfAttention, ACmixPatchwiseAttention])
@pytest.mark.parametrize("k,stride,h,w", [(3, 1, 4, 5), (7, 2, 3, 4)])
def test_gradcheck_float64(cls, k, stride, h, w):
    torch.manual_seed(0)
    m = cls(8, 8, stride, k, rel_channels=2, share_planes=4).double().eval()
    # Random BN statistics and shifts: no pre-ReLU value sits exactly on the kink at 0 (an
    # all-negative hidden pixel would make conv_w.2's output exactly 0 at BN defaults).
    randomize_bn(m)
    x = torch.randn(1, 8, h, w, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))
    params = [p for p in m.parameters()]
    assert torch.autograd.gradcheck(
        lambda *ps: torch.func.functional_call(
            m, dict(zip([n for n, _ in m.named_parameters()], ps)), (x.detach(),)
        ),
        tuple(p.detach().requires_grad_() for p in params),
    )


@pytest.mark.parametrize(
    "dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 5e-2), (torch.float16, 1e-2)]
)
@pytest.mark.parametrize("cls", [PatchwiseSelfAttention, ACmixPatchwiseAttention])
def test_dtypes(cls, dtype, tol):
    torch.manual_seed(0)
    m = cls(16, 16, 1, 7, rel_channels=2).eval()
    x = torch.randn(2, 16, 18, 17)  # tiled path
    expected = copy.deepcopy(m).double()(x.double())
    out = m.to(dtype)(x.to(dtype))
    assert out.dtype == dtype
    assert_close_scaled(out.double(), expected, rtol=tol)


def test_float64_module_on_float64_input_whole_map():
    m, _ = _san(16, 2, 16, 8, 7)
    x = torch.randn(1, 16, 4, 4, dtype=torch.float64)
    assert m(x).dtype == torch.float64


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(in_channels=0, out_channels=16), "'in_channels' must be a positive integer"),
        (dict(in_channels=16, out_channels=16, kernel_size=4), "'kernel_size' must be odd"),
        (
            dict(in_channels=16, out_channels=12),
            "'out_channels' \\(12\\) must be divisible by 'share_planes'",
        ),
        (dict(in_channels=16, out_channels=16, stride=0), "'stride' must be a positive integer"),
        (
            dict(in_channels=16, out_channels=16, rel_channels=0),
            "'rel_channels' must be a positive",
        ),
        (
            dict(in_channels=16, out_channels=16, share_planes=2.0),
            "'share_planes' must be a positive",
        ),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PatchwiseSelfAttention(**kwargs)


def test_acmix_bad_arguments():
    with pytest.raises(
        ValueError, match="'out_channels' \\(16\\) must be divisible by 'rel_channels' \\(3\\)"
    ):
        ACmixPatchwiseAttention(16, 16, rel_channels=3)
    with pytest.raises(ValueError, match="'kernel_conv' must be odd"):
        ACmixPatchwiseAttention(16, 16, kernel_conv=2)


@pytest.mark.parametrize("cls", [PatchwiseSelfAttention, ACmixPatchwiseAttention])
def test_bad_input(cls):
    m = cls(16, 16)
    with pytest.raises(ValueError, match="argument 'x' must have 16 channels"):
        m(torch.randn(1, 8, 5, 5))
    with pytest.raises(TypeError, match="floating dtype"):
        m(torch.ones(1, 16, 5, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="4-D"):
        m(torch.randn(16, 5, 5))
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        m([1.0])


# --- re-parameterisation and keys -----------------------------------------------------------------


@pytest.mark.parametrize("cls", [PatchwiseSelfAttention, ACmixPatchwiseAttention])
def test_reparameterize_is_exact_and_loads_into_deploy_form(cls):
    torch.manual_seed(0)
    m = cls(16, 16, 1, 7, rel_channels=2).double().eval()
    for bn in (m.conv_w[0], m.conv_w[3]):
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
    if cls is ACmixPatchwiseAttention:
        with torch.no_grad():
            m.rate1.fill_(1.7)
            m.rate2.fill_(-0.4)
    x = torch.randn(2, 16, 9, 10, dtype=torch.float64)
    with torch.no_grad():
        before = m(x)
        m.reparameterize()
        after = m(x)
        m.reparameterize()
        again = m(x)
    assert_close_scaled(after, before, rtol=1e-12)
    torch.testing.assert_close(again, after, rtol=0, atol=0)
    assert isinstance(m.conv_w[3], torch.nn.Identity) and m.conv_w[2].bias is not None
    deployed = cls(16, 16, 1, 7, rel_channels=2, deploy=True).double().eval()
    deployed.load_state_dict(m.state_dict(), strict=True)
    torch.testing.assert_close(deployed(x), after)


def test_module_keys_match_the_official_sam():
    spec = json.loads(
        (OFFICIAL_KEYS / "san_sam_patchwise_in64_rel4_out16_share8_k7.json").read_text()
    )
    shapes = spec["keys"]
    m = PatchwiseSelfAttention(64, 16, kernel_size=7, rel_channels=4, share_planes=8)
    assert sum(p.numel() for p in m.parameters()) == spec["_meta"]["num_params"]
    sd = {k: torch.zeros(s) if s else torch.tensor(1) for k, s in shapes.items()}
    m.load_state_dict(sd, strict=True)
    ours = {k: list(v.shape) for k, v in m.state_dict().items()}
    assert ours.pop("qkv.weight") == [24, 64, 1, 1] and ours.pop("qkv.bias") == [24]
    assert ours == {
        k: s for k, s in shapes.items() if not k.startswith(("conv1", "conv2", "conv3"))
    }
