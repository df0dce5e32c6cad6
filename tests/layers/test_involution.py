"""Involution2d and its aggregation op against the literal reference (tests/layers/ref_baselines.py)."""

import math

import pytest
import ref_baselines as ref
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from convattn.bench import count_macs, count_params
from convattn.layers import involution as involution_module
from convattn.layers.involution import Involution2d, involution_aggregate

from helpers import assert_close_scaled, randomize_bn


def _module(c_in, c_out, stride=1, **kwargs) -> Involution2d:
    m = Involution2d(c_in, c_out, stride, **kwargs).double()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    return randomize_bn(m)


def _kernels(batch, groups, k, ho, wo, **kw):
    return torch.randn(batch, groups, k * k, ho, wo, dtype=torch.float64, **kw)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("k", [1, 3, 7])
@pytest.mark.parametrize("hw", [(5, 4), (1, 2)])
def test_reference_unfold_equals_explicit_loops(stride, k, hw):
    """The two literal forms of the aggregation agree (zero padding, strided centres)."""
    x = torch.randn(2, 6, *hw, dtype=torch.float64)
    w = _kernels(2, 3, k, math.ceil(hw[0] / stride), math.ceil(hw[1] / stride))
    torch.testing.assert_close(
        ref.involution_aggregate_unfold(x, w, k, stride),
        ref.involution_aggregate_loops(x, w, k, stride),
    )


@pytest.mark.parametrize("stride,k", [(1, 3), (1, 7), (2, 3), (2, 7), (3, 5)])
@pytest.mark.parametrize("hw", [(5, 7), (8, 6), (1, 1), (2, 3)])
@pytest.mark.parametrize("batch,groups", [(1, 1), (3, 4)])
def test_aggregate_matches_reference_with_gradients(stride, k, hw, batch, groups):
    x = torch.randn(batch, 8, *hw, dtype=torch.float64, requires_grad=True)
    ho, wo = math.ceil(hw[0] / stride), math.ceil(hw[1] / stride)
    w = _kernels(batch, groups, k, ho, wo, requires_grad=True)
    y = involution_aggregate(x, w, k, stride)
    expected = ref.involution_aggregate_unfold(x, w, k, stride)
    torch.testing.assert_close(y, expected)
    grad_out = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, w), grad_out)
    expected_grads = torch.autograd.grad(expected, (x, w), grad_out)
    torch.testing.assert_close(grads, expected_grads)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("k", [3, 7])
@pytest.mark.parametrize("hw", [(5, 7), (6, 4), (1, 1)])
@pytest.mark.parametrize("batch,c_out", [(1, 16), (3, 24)])
@pytest.mark.parametrize("train", [False, True])
def test_module_matches_reference(stride, k, hw, batch, c_out, train):
    if train and batch * math.ceil(hw[0] / stride) * math.ceil(hw[1] / stride) == 1:
        pytest.skip("BatchNorm needs more than one value per channel in training mode")
    m = _module(16, c_out, stride, kernel_size=k, group_channels=4).train(train)
    x = torch.randn(batch, 16, *hw, dtype=torch.float64)
    expected = ref.involution(m, x)  # before the forward updates BN running statistics
    y = m(x)
    assert y.shape == (batch, c_out, math.ceil(hw[0] / stride), math.ceil(hw[1] / stride))
    torch.testing.assert_close(y, expected)


@pytest.mark.parametrize("chunk_elements", [1, 40])
def test_aggregate_chunking_is_exact(monkeypatch, chunk_elements):
    """Several (batch x group) chunks per pass give the same values and gradients as one."""
    monkeypatch.setattr(involution_module, "_CHUNK_ELEMENTS", chunk_elements)
    x = torch.randn(3, 8, 5, 4, dtype=torch.float64, requires_grad=True)
    w = _kernels(3, 4, 3, 3, 2, requires_grad=True)
    y = involution_aggregate(x, w, 3, 2)
    expected = ref.involution_aggregate_unfold(x, w, 3, 2)
    torch.testing.assert_close(y, expected)
    grad_out = torch.randn_like(y)
    torch.testing.assert_close(
        torch.autograd.grad(y, (x, w), grad_out), torch.autograd.grad(expected, (x, w), grad_out)
    )


def test_reference_detects_a_wrong_tap_order():
    """The comparison can fail: transposed kernels (column-major taps) are caught."""
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    w = _kernels(1, 1, 3, 5, 5)
    transposed = w.view(1, 1, 3, 3, 5, 5).transpose(2, 3).reshape(1, 1, 9, 5, 5)
    assert not torch.allclose(
        involution_aggregate(x, transposed, 3, 1), ref.involution_aggregate_unfold(x, w, 3, 1)
    )


def test_gradcheck_module_training_form():
    m = _module(4, 6, 2, kernel_size=3, group_channels=2, reduction=2).train()
    x = torch.randn(2, 4, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


@pytest.mark.parametrize("stride,k", [(1, 3), (2, 5)])
def test_gradcheck_aggregate(stride, k):
    x = torch.randn(1, 4, 4, 5, dtype=torch.float64, requires_grad=True)
    w = _kernels(1, 2, k, math.ceil(4 / stride), math.ceil(5 / stride), requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: involution_aggregate(a, b, k, stride), (x, w))


def test_custom_op_registration():
    """Schema, fake (meta) kernel and autograd registration of the op are consistent."""
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    w = _kernels(2, 2, 3, 3, 3, requires_grad=True)
    torch.library.opcheck(
        torch.ops.convattn.involution_aggregate,
        (x, w, 3, 2),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    stride=st.integers(1, 3),
    k=st.sampled_from([1, 2, 3, 5, 7]),
    c_in=st.sampled_from([4, 8, 12]),
    c_out=st.integers(1, 9),
    group_channels=st.sampled_from([2, 4, 8]),
    batch=st.integers(1, 3),
)
def test_property_shapes(h, w, stride, k, c_in, c_out, group_channels, batch):
    kwargs = {"kernel_size": k, "group_channels": group_channels, "reduction": 2}
    if k % 2 == 0:
        with pytest.raises(ValueError, match="kernel_size"):
            Involution2d(c_in, c_out, stride, **kwargs)
        return
    if c_in % group_channels:
        with pytest.raises(ValueError, match="group_channels"):
            Involution2d(c_in, c_out, stride, **kwargs)
        return
    m = Involution2d(c_in, c_out, stride, **kwargs).eval()
    y = m(torch.randn(batch, c_in, h, w))
    assert y.shape == (batch, c_out, -(-h // stride), -(-w // stride))
    assert torch.isfinite(y).all()


@pytest.mark.parametrize(
    "x,exc,match",
    [
        (torch.randn(1, 8, 4, 4), ValueError, "16 channels"),
        (torch.ones(1, 16, 4, 4, dtype=torch.int32), TypeError, "floating"),
        (torch.randn(16, 4, 4), ValueError, "4-D"),
        (torch.randn(1, 16, 4, 0), ValueError, "spatial size"),
        (torch.randn(0, 16, 4, 4), ValueError, "batch size 0"),
    ],
)
def test_bad_input(x, exc, match):
    with pytest.raises(exc, match=f"'x'.*{match}|{match}.*'x'"):
        Involution2d(16, 16).eval()(x)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"in_channels": 0}, "in_channels"),
        ({"out_channels": 0}, "out_channels"),
        ({"stride": 0}, "stride"),
        ({"kernel_size": 4}, "kernel_size"),
        ({"kernel_size": 0}, "kernel_size"),
        ({"group_channels": 5}, "group_channels"),
        ({"reduction": 32}, "reduction"),
        ({"reduction": 0}, "reduction"),
    ],
)
def test_bad_options(kwargs, name):
    args = {"in_channels": 16, "out_channels": 16, **kwargs}
    with pytest.raises(ValueError, match=name):
        Involution2d(**args)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_forward_and_backward(dtype):
    m = Involution2d(32, 48, 2, kernel_size=7).eval()
    randomize_bn(m)
    x = torch.randn(2, 32, 9, 6)
    expected = m(x)
    m = m.to(dtype)
    xl = x.to(dtype).requires_grad_()
    got = m(xl)
    assert got.dtype == dtype
    assert_close_scaled(got.float(), expected, rtol=4e-2)
    got.sum().backward()
    assert xl.grad.dtype == dtype and torch.isfinite(xl.grad.float()).all()


@pytest.mark.parametrize("stride,c_out", [(1, 32), (2, 32), (2, 40)])
def test_macs_and_params_match_formula(stride, c_out):
    c, k, gc, r, h, w = 32, 7, 16, 4, 9, 6
    m = Involution2d(c, c_out, stride, kernel_size=k, group_channels=gc, reduction=r)
    g, hidden = c // gc, c // r
    n = math.ceil(h / stride) * math.ceil(w / stride)
    projection = c * c_out if c_out != c else 0
    expected = n * (c * hidden + hidden * k * k * g + c * k * k + projection)
    assert count_macs(m, (1, c, h, w)) == expected
    assert count_macs(m, (2, c, h, w)) == 2 * expected
    params = c * hidden + 2 * hidden + hidden * k * k * g + k * k * g + projection
    assert count_params(m) == params


def test_rednet_defaults():
    m = Involution2d(64, 64, 2)
    assert (m.kernel_size, m.groups, m.reduce.conv.out_channels) == (7, 4, 16)
    assert m.span.out_channels == 49 * 4


@pytest.mark.filterwarnings("ignore::FutureWarning")  # raised inside the exporter, not by us
def test_onnx_export_matches():
    """ONNX has no kernel for the custom op: the module exports its unfold form, same numbers."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    m = randomize_bn(Involution2d(16, 24, 2, kernel_size=3, group_channels=8)).eval()
    x = torch.randn(2, 16, 7, 6)
    program = torch.onnx.export(m, (x,), dynamo=True, verbose=False)
    session = ort.InferenceSession(program.model_proto.SerializeToString())
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), m(x), rtol=1e-4, atol=1e-5)
