import json

import pytest
import torch
from ref_acmix import (
    acmix_window_reference,
    official_window_state_dict,
    relative_index_loops,
    shifted_mask_loops,
)

from convattn.bench import count_macs
from convattn.layers.window_attention import (
    WindowAttention,
    relative_position_index,
    shifted_window_mask,
    window_partition,
    window_reverse,
)

from helpers import OFFICIAL_KEYS

SWIN_TINY_KEYS = OFFICIAL_KEYS / "acmix_swin_tiny.json"


@pytest.fixture(autouse=True)
def _one_thread():
    # These shapes are tiny: a second intra-op thread only adds synchronisation (which stalls badly
    # when other jobs share the cores), so the tests run single-threaded.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _window_attention_from_official(dim, heads, window):
    """WindowAttention with the attention weights of a random official ACmix-Swin state dict."""
    sd = official_window_state_dict(dim, heads, window)
    sd["rate1"].fill_(1.0)
    sd["rate2"].fill_(0.0)  # the reference then returns the attention path alone
    keys = ("qkv.weight", "qkv.bias", "proj.weight", "proj.bias", "relative_position_bias_table")
    m = WindowAttention(dim, window, heads).double()
    m.load_state_dict({k: sd[k] for k in (*keys, "relative_position_index")}, strict=True)
    return m, sd


@pytest.mark.parametrize("h,w,window", [(4, 6, 2), (7, 14, 7), (3, 3, 3)])
def test_partition_reverse_roundtrip_and_order(h, w, window):
    x = torch.randn(2, h, w, 5)
    windows = window_partition(x, window)
    assert windows.shape == (2 * (h // window) * (w // window), window, window, 5)
    # window 1 of image 0 is the second window of the first window row
    if w // window > 1:
        torch.testing.assert_close(windows[1], x[0, :window, window : 2 * window])
    torch.testing.assert_close(window_reverse(windows, window, h, w), x)


def test_partition_is_contiguous_for_a_single_row_of_windows():
    windows = window_partition(torch.randn(1, 4, 20, 3), 4)
    assert windows.is_contiguous()
    windows.view(-1, 16, 3)  # what the attention modules do with it


def test_partition_rejects_indivisible_map():
    with pytest.raises(ValueError, match="multiple of window_size"):
        window_partition(torch.randn(1, 5, 6, 2), 3)


@pytest.mark.parametrize("window", [1, 2, 3, 7])
def test_relative_position_index_matches_loops(window):
    torch.testing.assert_close(relative_position_index(window), relative_index_loops(window))


@pytest.mark.parametrize(
    "h,w,window,shift", [(14, 21, 7, 3), (4, 4, 2, 1), (6, 9, 3, 1), (3, 3, 3, 2)]
)
def test_shifted_window_mask_matches_loops(h, w, window, shift):
    mask = shifted_window_mask(h, w, window, shift)
    torch.testing.assert_close(mask, shifted_mask_loops(h, w, window, shift))
    assert set(mask.unique().tolist()) <= {0.0, -100.0}


def test_shifted_window_mask_rejects_bad_shift():
    with pytest.raises(ValueError, match="shift"):
        shifted_window_mask(8, 8, 4, 4)


@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize("dim,heads,window,h,w", [(12, 3, 2, 4, 6), (16, 2, 7, 7, 14)])
def test_matches_loop_reference(dim, heads, window, h, w, shifted):
    m, sd = _window_attention_from_official(dim, heads, window)
    x = torch.randn(2, h, w, dim, dtype=torch.float64)
    mask = shifted_window_mask(h, w, window, window // 2).double() if shifted else None
    out = m(window_partition(x, window).flatten(1, 2), mask)
    out = window_reverse(out.view(-1, window, window, dim), window, h, w)
    torch.testing.assert_close(out, acmix_window_reference(x, sd, heads, window, mask))


def test_mask_blocks_cross_region_attention():
    # Changing one token must not change the others: each pixel is its own region here.
    m = WindowAttention(4, 2, 1).double()
    mask = shifted_window_mask(2, 2, 2, 1).double()  # one window, four regions of one pixel
    x = torch.randn(1, 4, 4, dtype=torch.float64)
    ref = m(x, mask)
    x2 = x.clone()
    x2[0, 3] += 3.0
    torch.testing.assert_close(m(x2, mask)[0, :3], ref[0, :3])


def test_keys_match_official_swin():
    m = WindowAttention(96, 7, 3)
    expected = {
        "relative_position_bias_table": (169, 3),
        "relative_position_index": (49, 49),
        "qkv.weight": (288, 96),
        "qkv.bias": (288,),
        "proj.weight": (96, 96),
        "proj.bias": (96,),
    }
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == expected
    official = json.loads(SWIN_TINY_KEYS.read_text())["keys"]
    for key, shape in expected.items():
        assert tuple(official[f"layers.0.blocks.0.attn.{key}"]) == shape


def test_macs_include_attention_products():
    dim, heads, window, windows = 32, 2, 7, 4
    n = window * window
    macs = count_macs(WindowAttention(dim, window, heads), (windows, n, dim))
    projections = windows * n * (3 * dim * dim + dim * dim)
    attention = windows * 2 * n * n * dim
    assert macs == projections + attention


@pytest.mark.parametrize("masked", [False, True])
def test_gradcheck(masked):
    m = WindowAttention(4, 2, 2).double()
    x = torch.randn(2, 4, 4, dtype=torch.float64, requires_grad=True)
    mask = shifted_window_mask(2, 4, 2, 1).double() if masked else None
    assert torch.autograd.gradcheck(lambda t: m(t, mask), (x,))


def test_attention_dropout_only_in_training():
    m = WindowAttention(8, 2, 2, attn_drop=0.5)
    x = torch.randn(3, 4, 8)
    m.eval()
    torch.testing.assert_close(m(x), m(x))
    m.train()
    assert not torch.allclose(m(x), m(x))


def test_bfloat16_close_to_float32():
    m = WindowAttention(16, 2, 2)
    x = torch.randn(4, 4, 16)
    mask = shifted_window_mask(4, 4, 2, 1)
    ref = m(x, mask)
    out = m.to(torch.bfloat16)(x.bfloat16(), mask)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_heads"):
        WindowAttention(10, 7, 3)
    with pytest.raises(ValueError, match="window_size"):
        WindowAttention(8, 0, 2)
    with pytest.raises(ValueError, match="attn_drop"):
        WindowAttention(8, 2, 2, attn_drop=1.5)
    m = WindowAttention(8, 2, 2)
    with pytest.raises(ValueError, match="windows"):
        m(torch.randn(3, 5, 8))
    with pytest.raises(TypeError, match="windows"):
        m(torch.ones(3, 4, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="mask"):
        m(torch.randn(3, 4, 8), torch.zeros(2, 4, 4))
