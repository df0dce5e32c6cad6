"""Half-precision eager inference on the CPU: bfloat16 for every model (deploy form), and float16
for ACmix, whose official code fails there (its position grid is built in float32)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import convattn
from convattn.deploy import reparameterize_model

from helpers import assert_close_scaled

ALL = convattn.list_models()
# One model per family stays in the default suite (half-precision CPU kernels are slow).
DEFAULT = {
    "resnet_nano",
    "xvolution_resnet_nano",
    "acmix_resnet_nano",
    "acmix_swin_nano",
    "glnet_nano",
}


def _params(names):
    return [n if n in DEFAULT else pytest.param(n, marks=pytest.mark.slow) for n in names]


def _half_conv_supported(dtype: torch.dtype) -> bool:
    try:
        F.conv2d(torch.ones(1, 1, 3, 3, dtype=dtype), torch.ones(1, 1, 1, 1, dtype=dtype))
    except RuntimeError:
        return False
    return True


@pytest.mark.parametrize("name", _params(ALL))
def test_bfloat16_inference_of_the_deploy_form(name):
    model = reparameterize_model(convattn.create_model(name, num_classes=10)).eval()
    s = 24 if "nano" in name else 64
    x = torch.randn(2, 3, s, s - 1)
    with torch.no_grad():
        expected = model(x)
        got = copy.deepcopy(model).to(torch.bfloat16)(x.to(torch.bfloat16))
    assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
    # bfloat16 keeps 8 significant bits: ~0.4 % per rounding, a few % through a network.
    assert_close_scaled(got.float(), expected, 5e-2)


@pytest.mark.skipif(
    not _half_conv_supported(torch.float16), reason="this CPU build has no float16 conv kernels"
)
@pytest.mark.parametrize("deploy", [False, True])
def test_acmix_float16_inference(deploy):
    """The official ACmix builds its position grid in float32 and fails in half precision."""
    model = convattn.create_model("acmix_resnet_nano", num_classes=10).eval()
    if deploy:
        model = reparameterize_model(model)
    x = torch.randn(2, 3, 20, 19)
    with torch.no_grad():
        expected = model(x)
        got = copy.deepcopy(model).half()(x.half())
    assert got.dtype == torch.float16 and torch.isfinite(got).all()
    assert_close_scaled(got.float(), expected, 1e-2)
