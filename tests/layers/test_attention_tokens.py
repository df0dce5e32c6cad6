import pytest
import torch
from torch import nn

from convattn.bench import count_macs
from convattn.layers.attention import MultiheadSelfAttention


@pytest.mark.parametrize("heads,n", [(1, 5), (4, 17)])
def test_matches_torch_multihead_attention_with_same_state(heads, n):
    ours = MultiheadSelfAttention(32, heads).double()
    ref = nn.MultiheadAttention(32, heads, batch_first=True).double()
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.2)
    missing = ref.load_state_dict(ours.state_dict(), strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    x = torch.randn(3, n, 32, dtype=torch.float64)
    expected, _ = ref(x, x, x, need_weights=False)
    torch.testing.assert_close(ours(x), expected)


def test_macs_include_attention_products():
    m = MultiheadSelfAttention(64, 2)
    n = 49
    macs = count_macs(m, (1, n, 64))
    projections = 4 * n * 64 * 64
    attention = 2 * n * n * 64
    assert macs == projections + attention


def test_gradcheck():
    m = MultiheadSelfAttention(8, 2).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


def test_bad_width_and_heads():
    with pytest.raises(ValueError, match="num_heads"):
        MultiheadSelfAttention(10, 3)
    with pytest.raises(ValueError, match="tokens"):
        MultiheadSelfAttention(8, 2)(torch.randn(1, 4, 6))
