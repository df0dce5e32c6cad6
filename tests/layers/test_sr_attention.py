"""PVT spatial-reduction attention and its ACmix form against the literal reference (ref_pvt)."""

import pytest
import torch
from ref_pvt import acmix_sra_reference, sra_reference

from convattn.bench import count_macs
from convattn.layers import ACmixSpatialReductionAttention, SpatialReductionAttention
from convattn.layers.sr_attention import patch_owner_index


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _randomised(module: torch.nn.Module, seed: int = 0) -> dict:
    """Random parameters (rates, norms and ACmix's dep_conv too, so nothing is at its init)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(
                0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype)
                + (name.endswith("norm.weight"))
            )
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _official_names(sd: dict) -> dict:
    return {k.replace("conv_path.", ""): v for k, v in sd.items()}


CASES = [  # dim, heads, sr_ratio, (H, W), prefix tokens
    (8, 1, 1, (4, 4), 0),
    (8, 2, 2, (4, 6), 0),
    (12, 3, 4, (8, 8), 0),
    (8, 2, 2, (5, 7), 0),  # not divisible: floor, remainder pixels take the last patch
    (8, 2, 3, (3, 3), 0),  # one reduced token
    (8, 2, 1, (3, 2), 1),  # class token (sr_ratio 1 only)
]


@pytest.mark.parametrize("acmix", [False, True], ids=["sra", "acmix"])
@pytest.mark.parametrize("dim,heads,r,size,prefix", CASES)
def test_matches_literal_reference(acmix, dim, heads, r, size, prefix):
    cls = ACmixSpatialReductionAttention if acmix else SpatialReductionAttention
    m = cls(dim, heads, r).double().eval()
    sd = _official_names(_randomised(m))
    x = torch.randn(2, prefix + size[0] * size[1], dim, dtype=torch.float64)
    if acmix:
        expected = acmix_sra_reference(x, size, sd, heads, r)
    else:
        expected = sra_reference(x, size, sd, heads, r)[0]
    torch.testing.assert_close(m(x, size), expected, rtol=1e-10, atol=1e-10)


def test_attention_weights_hook_matches_the_reference():
    m = SpatialReductionAttention(8, 2, 2).double()
    sd = _randomised(m)
    x = torch.randn(1, 16, 8, dtype=torch.float64)
    weights = m.attention_weights(x, (4, 4))
    assert weights.shape == (1, 2, 16, 4)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 2, 16, dtype=torch.float64))
    # the head outputs rebuilt from the weights and the values give the reference output
    _, _, kv = sra_reference(x, (4, 4), sd, 2, 2)
    v = kv[..., 8:].view(1, 4, 2, 4).transpose(1, 2)
    heads = (weights @ v).transpose(1, 2).reshape(1, 16, 8)
    torch.testing.assert_close(m.proj(heads), m(x, (4, 4)))


@pytest.mark.parametrize(("r", "size", "prefix"), [(2, (5, 6), 0), (3, (7, 6), 0), (1, (2, 3), 1)])
def test_key_index_names_the_key_each_pixel_feeds(r, size, prefix):
    """Perturbing one pixel changes exactly the key key_index names (none for -1)."""
    m = SpatialReductionAttention(8, 2, r).double().eval()
    h, w = size
    x = torch.randn(1, prefix + h * w, 8, dtype=torch.float64)
    index = m.key_index(h, w, prefix)
    assert index.shape == size and index.dtype == torch.long
    with torch.no_grad():
        keys = m.project(x, size)[1]  # (1, m, 2C), prefix tokens first
        for y in range(h):
            for xx in range(w):
                bumped = x.clone()
                bumped[0, prefix + y * w + xx] += 1.0
                changed = (m.project(bumped, size)[1] - keys).abs().amax(-1)[0] > 1e-9
                expected = [] if index[y, xx] < 0 else [int(index[y, xx])]
                assert changed.nonzero().flatten().tolist() == expected, (y, xx)
    uncovered = (index < 0).sum().item()
    assert uncovered == h * w - (h // r) * (w // r) * r * r  # rows/columns past the last patch
    with pytest.raises(ValueError, match="'height'"):
        m.key_index(0, w)
    with pytest.raises(ValueError, match="'prefix'"):
        m.key_index(h, w, -1)


def test_patch_owner_index():
    assert patch_owner_index(7, 2).tolist() == [0, 0, 1, 1, 2, 2, 2]
    assert patch_owner_index(4, 4).tolist() == [0, 0, 0, 0]
    assert patch_owner_index(5, 1).tolist() == [0, 1, 2, 3, 4]


def test_acmix_conv_path_is_the_shift_sum_at_init():
    """At init dep_conv is the shift: with fc picking q only, the conv path sums shifted queries."""
    torch.manual_seed(0)
    m = ACmixSpatialReductionAttention(4, 1, 2).double()
    with torch.no_grad():
        m.rate1.zero_()
        m.rate2.fill_(1.0)
        m.conv_path.fc.weight.zero_()
        m.conv_path.fc.bias.zero_()
        m.conv_path.fc.weight[:, 0] = 1.0  # every slot takes the q map
    x = torch.randn(1, 36, 4, dtype=torch.float64)
    q = m.q(x).view(1, 6, 6, 4).permute(0, 3, 1, 2)
    expected = torch.nn.functional.conv2d(
        q, torch.ones(4, 1, 3, 3, dtype=torch.float64), padding=1, groups=4
    )
    torch.testing.assert_close(m(x, (6, 6)), expected.flatten(2).transpose(1, 2))


@pytest.mark.parametrize("acmix", [False, True], ids=["sra", "acmix"])
@pytest.mark.parametrize("r,size,prefix", [(2, (4, 5), 0), (1, (2, 3), 1)])
def test_gradcheck_float64(acmix, r, size, prefix):
    cls = ACmixSpatialReductionAttention if acmix else SpatialReductionAttention
    torch.manual_seed(0)
    m = cls(4, 2, r).double()
    _randomised(m)
    x = torch.randn(1, prefix + size[0] * size[1], 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: m(t, size), (x,))


def test_parameter_gradients_reach_every_parameter():
    m = ACmixSpatialReductionAttention(8, 2, 2)
    m(torch.randn(2, 16, 8), (4, 4)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


@pytest.mark.parametrize("acmix", [False, True], ids=["sra", "acmix"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_close_to_float32(acmix, dtype):
    cls = ACmixSpatialReductionAttention if acmix else SpatialReductionAttention
    torch.manual_seed(0)
    m = cls(16, 2, 2).eval()
    x = torch.randn(2, 64, 16)
    with torch.no_grad():
        expected = m(x, (8, 8))
        out = m.to(dtype)(x.to(dtype), (8, 8))
    assert out.dtype == dtype
    tol = 0.05 if dtype == torch.bfloat16 else 0.01
    assert (out.float() - expected).abs().max() <= tol * expected.abs().max()


def test_reparameterize_folds_the_rates():
    torch.manual_seed(0)
    m = ACmixSpatialReductionAttention(8, 2, 2).double().eval()
    _randomised(m)
    x = torch.randn(2, 16, 8, dtype=torch.float64)
    expected = m(x, (4, 4))
    m.reparameterize()
    assert m.rate1.item() == m.rate2.item() == 1.0
    torch.testing.assert_close(m(x, (4, 4)), expected)
    m.reparameterize()  # idempotent
    torch.testing.assert_close(m(x, (4, 4)), expected)


def test_acmix_loads_acmix_key_names():
    m = ACmixSpatialReductionAttention(8, 2, 2)
    sd = _official_names(_randomised(m, seed=3))
    fresh = ACmixSpatialReductionAttention(8, 2, 2)
    fresh.load_state_dict(sd, strict=True)
    torch.testing.assert_close(fresh.conv_path.fc.weight, sd["fc.weight"])


def test_macs_count_the_attention_products():
    """n C^2 (q) + m r^2 C^2 (sr) + 2 m C^2 (kv) + 2 n m C (attention) + n C^2 (proj)."""
    c, r, h, w = 16, 2, 8, 8
    n, mm = h * w, (h // r) * (w // r)
    m = SpatialReductionAttention(c, 2, r)
    macs = count_macs(m, inputs=(torch.randn(1, n, c), (h, w)))
    assert macs == n * c * c + mm * r * r * c * c + 2 * mm * c * c + 2 * n * mm * c + n * c * c
    acmix = ACmixSpatialReductionAttention(c, 2, r)
    extra = count_macs(acmix, inputs=(torch.randn(1, n, c), (h, w))) - macs
    # conv path: fc (3N -> 9 per channel-in-head and pixel) + dep_conv (81 per output element)
    assert extra == n * (c // 2) * 9 * 6 + n * c * 81


def test_bad_constructor_options_name_the_option():
    with pytest.raises(ValueError, match="'sr_ratio'"):
        SpatialReductionAttention(8, 2, 0)
    with pytest.raises(ValueError, match="'sr_ratio'"):
        SpatialReductionAttention(8, 2, 1.5)
    with pytest.raises(ValueError, match="'sr_ratio'"):
        SpatialReductionAttention(8, 2, True)
    with pytest.raises(ValueError, match="'num_heads'"):
        SpatialReductionAttention(8, 3, 1)
    with pytest.raises(ValueError, match="'attn_drop'"):
        SpatialReductionAttention(8, 2, 1, attn_drop=1.0)
    with pytest.raises(ValueError, match="'kernel_conv'"):
        ACmixSpatialReductionAttention(8, 2, 1, kernel_conv=2)


@pytest.mark.parametrize("cls", [SpatialReductionAttention, ACmixSpatialReductionAttention])
def test_bad_input_names_the_argument(cls):
    m = cls(8, 2, 2)
    with pytest.raises(TypeError, match="'x'"):
        m(torch.ones(1, 16, 8, dtype=torch.long), (4, 4))
    with pytest.raises(ValueError, match=r"'x'.*\(B, L, 8\)"):
        m(torch.randn(1, 16, 6), (4, 4))
    with pytest.raises(ValueError, match=r"'x'.*\(B, L, 8\)"):
        m(torch.randn(16, 8), (4, 4))
    with pytest.raises(ValueError, match="'size'"):
        m(torch.randn(1, 16, 8), (4, 0))
    with pytest.raises(ValueError, match="'size'"):
        m(torch.randn(1, 16, 8), 16)
    with pytest.raises(ValueError, match=r"fewer than the H\*W"):
        m(torch.randn(1, 15, 8), (4, 4))
    with pytest.raises(ValueError, match="prefix token"):
        m(torch.randn(1, 17, 8), (4, 4))
    with pytest.raises(ValueError, match="at least sr_ratio"):
        m(torch.randn(1, 4, 8), (1, 4))
