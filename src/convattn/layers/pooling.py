"""Adaptive average pooling as two matrix products, for traced graphs.

``F.adaptive_avg_pool2d`` has no TorchScript-ONNX translation when the output size does not divide
the input size (GLMix pools every map to an 8 x 8 slot grid, 14 x 14 and 7 x 7 maps included), and
the dynamo ONNX exporter translates it for the traced size only. Written as
``rows @ x @ cols^T`` with averaging matrices built from the (possibly symbolic) input size, it is
exact, traceable by every tool and valid for every input size. Eager calls keep the native kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .tracing import is_tracing

__all__ = ["adaptive_avg_pool2d", "pooling_matrix"]


def pooling_matrix(size, bins: int, like: torch.Tensor) -> torch.Tensor:
    """(bins, size) averaging weights of adaptive pooling: bin i covers [floor(i*size/bins),
    ceil((i+1)*size/bins)), PyTorch's bin rule, computed from a possibly symbolic ``size``."""
    i = torch.arange(bins, device=like.device).view(-1, 1)
    pos = torch.arange(size, device=like.device).view(1, -1)
    start = torch.div(i * size, bins, rounding_mode="floor")
    end = torch.div((i + 1) * size + bins - 1, bins, rounding_mode="floor")
    inside = (pos >= start) & (pos < end)
    return inside.to(like.dtype) / (end - start).to(like.dtype)


def adaptive_avg_pool2d(x: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, output_size)``; matrix products when traced (see above)."""
    if not is_tracing():
        return F.adaptive_avg_pool2d(x, output_size)
    rows = pooling_matrix(x.shape[-2], output_size[0], x)
    cols = pooling_matrix(x.shape[-1], output_size[1], x)
    return torch.matmul(torch.matmul(rows, x), cols.transpose(0, 1))
