import pytest
import torch
from torch import nn

from convattn.layers import ConvBN, DropPath, LayerNorm2d, fuse_conv_bn
from convattn.layers._checks import check_feature_map

from helpers import randomize_bn


@pytest.mark.parametrize("stride,groups,k", [(1, 1, 3), (2, 1, 3), (1, 4, 1), (2, 2, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_convbn_reparameterize_matches(stride, groups, k, dtype):
    m = ConvBN(8, 12, k, stride=stride, groups=groups).to(dtype)
    randomize_bn(m)
    m.eval()
    x = torch.randn(2, 8, 9, 7, dtype=dtype)
    y = m(x)
    m.reparameterize()
    m.reparameterize()  # idempotent
    assert m.deployed and not hasattr(m, "bn")
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(m(x), y, rtol=tol, atol=tol)


def test_convbn_deploy_constructor_loads_fused_state():
    m = randomize_bn(ConvBN(4, 6, 3)).eval()
    x = torch.randn(1, 4, 5, 5)
    y = m(x)
    m.reparameterize()
    d = ConvBN(4, 6, 3, deploy=True).eval()
    d.load_state_dict(m.state_dict())
    torch.testing.assert_close(d(x), y)


def test_fuse_conv_bn_pure_function_against_bn():
    conv = nn.Conv2d(3, 5, 3, bias=True)
    bn = randomize_bn(nn.BatchNorm2d(5)).eval()
    w, b = fuse_conv_bn(conv.weight, conv.bias, bn)
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(
        torch.nn.functional.conv2d(x, w, b), bn(conv(x)), rtol=1e-5, atol=1e-5
    )


def test_layernorm2d_matches_channel_layernorm():
    ln = LayerNorm2d(6)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    x = torch.randn(2, 6, 4, 5)
    mean = x.mean(1, keepdim=True)
    var = x.var(1, unbiased=False, keepdim=True)
    ref = (x - mean) / torch.sqrt(var + 1e-6) * ln.weight.view(1, -1, 1, 1) + ln.bias.view(
        1, -1, 1, 1
    )
    torch.testing.assert_close(ln(x), ref, rtol=1e-5, atol=1e-5)


def test_droppath_drops_whole_samples_and_rescales():
    dp = DropPath(0.5).train()
    x = torch.ones(1000, 3, 2, 2)
    y = dp(x)
    per_sample = y.flatten(1)
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert (per_sample == per_sample[:, :1]).all()
    assert 0.35 < (per_sample[:, 0] > 0).float().mean() < 0.65
    dp.eval()
    assert torch.equal(dp(x), x)
    with pytest.raises(ValueError, match="drop_prob"):
        DropPath(1.0)


@pytest.mark.parametrize(
    "x,exc,match",
    [
        ([1.0], TypeError, "torch.Tensor"),
        (torch.zeros(1, 3, 4, 4, dtype=torch.int64), TypeError, "floating dtype"),
        (torch.zeros(3, 4, 4), ValueError, "4-D"),
        (torch.zeros(1, 5, 4, 4), ValueError, "3 channels"),
        (torch.zeros(1, 3, 0, 4), ValueError, "spatial size"),
        (torch.zeros(0, 3, 4, 4), ValueError, "batch size 0"),
    ],
)
def test_check_feature_map_messages(x, exc, match):
    with pytest.raises(exc, match=match):
        check_feature_map(x, 3, "Op")
