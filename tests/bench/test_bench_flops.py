"""MAC counting is exact on layers with hand-countable cost (conv, linear, SDPA attention)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convattn.bench import count_macs, count_params, count_train_macs
from convattn.layers.attention import GlobalSelfAttention2d


@pytest.mark.parametrize(
    "c_in, c_out, k, stride, groups, size",
    [(16, 16, 3, 1, 1, 14), (8, 12, 3, 2, 1, 15), (12, 12, 5, 1, 12, 9), (6, 4, 1, 1, 2, 7)],
)
def test_conv2d_macs_match_hand_formula(c_in, c_out, k, stride, groups, size):
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, groups=groups)
    out = math.floor((size + 2 * (k // 2) - k) / stride) + 1
    expected = 2 * out * out * c_out * (c_in // groups) * k * k  # batch 2, bias not counted
    assert count_macs(conv, (2, c_in, size, size)) == expected


def test_hand_counted_conv_16_to_16_3x3_on_14x14():
    # A hand count: 16 * 16 * 9 MACs at each of 196 pixels; FlopCounterMode reports twice that.
    assert count_macs(nn.Conv2d(16, 16, 3, padding=1), (1, 16, 14, 14)) == 451_584


def test_linear_macs_match_hand_formula():
    assert count_macs(nn.Linear(24, 10), (3, 5, 24)) == 3 * 5 * 24 * 10


class _Sdpa(nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


@pytest.mark.parametrize("b, h, n, m, d, dv", [(2, 3, 17, 17, 8, 8), (1, 2, 5, 11, 4, 6)])
def test_sdpa_macs_are_counted_on_cpu(b, h, n, m, d, dv):
    q, k, v = torch.randn(b, h, n, d), torch.randn(b, h, m, d), torch.randn(b, h, m, dv)
    # Q K^T: b h n m d; A V: b h n m dv. CPU flash SDPA would be invisible without the math backend.
    assert count_macs(_Sdpa(), inputs=(q, k, v)) == b * h * n * m * (d + dv)


@pytest.mark.parametrize("c_in, c_out, stride, size", [(16, 16, 1, 6), (8, 12, 2, 9)])
def test_global_attention_macs_match_documented_formula(c_in, c_out, stride, size):
    module = GlobalSelfAttention2d(c_in, c_out, stride, num_heads=2)
    n = math.ceil(size / stride) ** 2
    expected = 3 * n * c_in**2 + 2 * n * n * c_in + n * c_in * c_out
    assert count_macs(module, (1, c_in, size, size)) == expected


def test_train_macs_linear_chain_is_forward_plus_weight_and_input_grads():
    a, b, c, n = 7, 5, 3, 4
    model = nn.Sequential(nn.Linear(a, b), nn.Linear(b, c))
    forward = n * (a * b + b * c)
    assert count_macs(model, (n, a)) == forward
    # Backward: both weight gradients, and the input gradient of the second layer only (the
    # network input needs no gradient in training).
    assert count_train_macs(model, (n, a)) == forward + n * (a * b + b * c) + n * b * c


def test_train_macs_restore_mode_and_leave_gradients_untouched():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    count_train_macs(model, (1, 3, 5, 5))
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def test_count_params_trainable_only():
    model = nn.Linear(4, 3)
    model.bias.requires_grad_(False)
    assert count_params(model) == 15
    assert count_params(model, trainable_only=True) == 12


def test_count_functions_need_exactly_one_input_description():
    with pytest.raises(ValueError, match="exactly one"):
        count_train_macs(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="exactly one"):
        count_macs(nn.Linear(2, 2), (1, 2), inputs=torch.zeros(1, 2))


@pytest.mark.parametrize("groups", [1, 4, 32])
@pytest.mark.parametrize("transposed", [False, True])
def test_train_macs_of_grouped_conv_count_each_gradient_once(groups, transposed):
    # torch's own convolution_backward formula ignores groups in the weight gradient (a depthwise
    # conv would be overcounted 32x here); each gradient costs exactly the forward's products.
    ctor = nn.ConvTranspose2d if transposed else nn.Conv2d
    conv = ctor(32, 32, 3, stride=2, padding=1, groups=groups, bias=False)
    x = torch.randn(2, 32, 9, 9)
    forward = count_macs(conv, inputs=x)
    per_element = (32 // groups) * 9
    assert forward == (x.numel() if transposed else conv(x).numel()) * per_element
    assert count_train_macs(conv, inputs=x) == 2 * forward  # forward + weight gradient
    stem = nn.Conv2d(32, 32, 1, bias=False)
    chain = nn.Sequential(stem, conv)
    stem_macs = 2 * 32 * 81 * 32
    # stem: forward + weight grad; conv: forward + weight grad + input grad.
    assert count_train_macs(chain, inputs=x) == 2 * stem_macs + 3 * forward
