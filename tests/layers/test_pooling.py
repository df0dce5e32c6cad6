"""Adaptive average pooling as matrix products (the traced form GLMix uses)."""

import io
import warnings

import pytest
import torch
import torch.nn.functional as F

from convattn.layers import GLMix
from convattn.layers.pooling import adaptive_avg_pool2d, pooling_matrix


@pytest.mark.parametrize(
    "size,out", [((16, 16), (4, 4)), ((19, 18), (4, 4)), ((7, 5), (4, 3)), ((7, 7), (8, 8))]
)
def test_pooling_matrices_match_adaptive_avg_pool(size, out):
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    rows, cols = pooling_matrix(size[0], out[0], x), pooling_matrix(size[1], out[1], x)
    torch.testing.assert_close(rows @ x @ cols.T, F.adaptive_avg_pool2d(x, out))


def test_traced_form_is_exported_for_sizes_that_do_not_divide():
    # 14 -> 8 and 7 -> 8: no TorchScript-ONNX translation for the native op at these sizes.
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    mixer = GLMix(32, 32, num_heads=2, num_slots=64).eval()
    for size in (14, 7):
        x = torch.randn(2, 32, size, size)
        with torch.no_grad():
            expected = mixer(x)
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(mixer, (x,), buffer, dynamo=False)
        session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-4, atol=1e-5)
    eager = adaptive_avg_pool2d(x, (8, 8))
    torch.testing.assert_close(eager, F.adaptive_avg_pool2d(x, (8, 8)))
