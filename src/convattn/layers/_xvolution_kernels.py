"""X-volution's CPU speed kernels and their tuned constants (private; the maths is in ``xvolution``).

Everything here computes a formula of :mod:`convattn.layers.xvolution` faster, with the same result:
the PSSA weighted sum of pixel-shift products (§1.4) and the deployed centre-modulated convolution
(§3). The tricks: the products are formed channels-last so the 1x1 weighting is one GEMM; in eager
CPU inference they are formed chunk by chunk into one reused buffer and accumulated in place;
float16 work is widened to float32 (the products are second order). Traced graphs
(``torch.compile`` / ``torch.export``) and autograd take the plain functional forms.

The tuned constants are read by ``xvolution`` at call time and passed in, so tests can move them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

Direction = tuple[int, int]

# Inference on CPU forms the products in chunks of at most this many bytes, reusing one buffer:
# a single larger temporary (glibc serves > 32 MB by mmap) is page-faulted afresh at every call,
# which cost more than the GEMM itself at 64ch@56x56 batch 8 (51 MB of products). Measured 4-32 MB
# on 2 cores: larger chunks (fewer, bigger ops) were slightly faster, 16 MB keeps a margin.
PRODUCTS_CHUNK_BYTES = 16 << 20

# The deploy form switches planar (NCHW) inputs to channels-last from this many output pixels on:
# oneDNN's channels-last 3x3 conv was 10-50% faster at 28x28 and 56x56 (batch 8, 2 cores) but
# slower at 7x7, where the planar conv plus the in-place PSSA accumulation wins.
CHANNELS_LAST_MIN_PIXELS = 28 * 28


def wide_dtype(x: torch.Tensor) -> torch.dtype | None:
    """float32 where second-order products would be formed in float16 (overflow past 65504).

    bfloat16 has float32's range, so it is left alone (§2 of docs/operators/xvolution.md, mixed precision).
    """
    device = x.device.type
    half_autocast = (
        torch.amp.is_autocast_available(device)
        and torch.is_autocast_enabled(device)
        and torch.get_autocast_dtype(device) == torch.float16
    )
    return torch.float32 if x.dtype == torch.float16 or half_autocast else None


def tap_indices(directions: Sequence[Direction], kernel_size: int) -> list[int]:
    """Flat K*K tap index of each offset d (tap d + K//2, row-major)."""
    r = kernel_size // 2
    return [(di + r) * kernel_size + (dj + r) for di, dj in directions]


def directions_to_kernel(
    weights: torch.Tensor, directions: Sequence[Direction], kernel_size: int
) -> torch.Tensor:
    """Lay per-direction weights onto the taps of a KxK kernel (zero at taps outside D).

    Args:
        weights: (..., |D|), the last dim ordered as ``directions``.
        directions: the offsets d; each must lie inside the KxK window.
        kernel_size: K (odd).

    Returns:
        (..., K, K) with ``out[..., d + K//2] = weights[..., i_d]``. Differentiable.
    """
    index = torch.tensor(tap_indices(directions, kernel_size), device=weights.device)
    kernel = weights.new_zeros(*weights.shape[:-1], kernel_size * kernel_size)
    return kernel.index_copy(-1, index, weights).unflatten(-1, (kernel_size, kernel_size))


def _pad_nhwc(x: torch.Tensor) -> torch.Tensor:
    """(B, H+2, W+2, C): the zero fill of S_d (as the conv's zero padding), channels last."""
    return F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))


def _products_from_padded(
    padded: torch.Tensor,
    rows: int,
    cols: int,
    stride: int,
    directions: Sequence[Direction],
    buffer: torch.Tensor | None = None,
) -> torch.Tensor:
    """(b, rows, cols, |D|, C) products at the centres ``padded[:, 1 + s·i, 1 + s·j]``."""

    def neighbour(d: Direction) -> torch.Tensor:
        return padded[:, 1 + d[0] :: stride, 1 + d[1] :: stride][:, :rows, :cols]

    centre = neighbour((0, 0))
    if (torch.is_grad_enabled() and padded.requires_grad) or torch.compiler.is_compiling():
        # Traced graphs get the functional form (compilers reject ``out=`` into strided slices).
        return torch.stack([centre * neighbour(d) for d in directions], dim=3)
    # Inference: write each product straight into its slot, no temporaries.
    shape = (*centre.shape[:3], len(directions), centre.shape[3])
    out = padded.new_empty(shape) if buffer is None else buffer[: math.prod(shape)].view(shape)
    for i, d in enumerate(directions):
        torch.mul(centre, neighbour(d), out=out[:, :, :, i])
    return out


def pssa(
    x: torch.Tensor,
    weights: torch.Tensor,
    stride: int,
    directions: Sequence[Direction],
    accumulate: torch.Tensor | None = None,
    chunk_bytes: int = PRODUCTS_CHUNK_BYTES,
) -> torch.Tensor:
    """Σ_d Σ_c W_d[o,c] X[c,q] X[c,q+d] (§1.4), optionally added in place into ``accumulate``.

    ``weights`` are per direction: (C_out, C_in, |D|) for a full weighting, one 1x1 conv over the
    stacked products; or (C, 1, |D|) diagonal, computed as X[c,q] · (depthwise conv of X)[c,q].
    Float16 work runs in float32 (§2: the products are second order and overflow 65504).
    """
    wide = wide_dtype(x)
    if wide is not None:
        with torch.autocast(x.device.type, enabled=False):
            out = pssa(x.to(wide), weights.to(wide), stride, directions).to(x.dtype)
        return out if accumulate is None else accumulate + out
    if weights.shape[1] == 1 and x.shape[1] > 1:
        kernel = directions_to_kernel(weights, directions, 3)
        centre = x[:, :, ::stride, ::stride]
        out = centre * F.conv2d(x, kernel, None, stride, 1, groups=x.shape[1])
        return out if accumulate is None else accumulate.add_(out)

    # Direction-major input channels, matching the products' layout (a view for PSSA's weight).
    pointwise = weights.transpose(1, 2).reshape(weights.shape[0], -1, 1, 1)
    b, _, h, w = x.shape
    rows, cols = -(-h // stride), -(-w // stride)
    if not chunked_inference(x, weights):
        products = _products_from_padded(_pad_nhwc(x), rows, cols, stride, directions)
        out = F.conv2d(products.permute(0, 3, 4, 1, 2).flatten(1, 2), pointwise)
        return out if accumulate is None else accumulate.add_(out)

    if accumulate is None:
        # Channels-last, the layout the chunk GEMMs produce: the copies are contiguous.
        accumulate = x.new_empty(b, rows, cols, weights.shape[0]).permute(0, 3, 1, 2)
        return add_pssa_chunks_(
            accumulate, _pad_nhwc(x), pointwise, stride, directions, False, chunk_bytes
        )
    return add_pssa_chunks_(
        accumulate, _pad_nhwc(x), pointwise, stride, directions, True, chunk_bytes
    )


def chunked_inference(x: torch.Tensor, *weights: torch.Tensor) -> bool:
    """Whether the eager CPU inference path (chunked products, in-place accumulation) applies.

    Not under autograd (it writes into buffers) and not while traced by torch.compile /
    torch.export: its Python loop over chunks would bake the batch and map size into the graph.
    """
    if x.device.type != "cpu" or torch.compiler.is_compiling():
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in (x, *weights)))


def add_pssa_chunks_(
    out: torch.Tensor,
    padded: torch.Tensor,
    pointwise: torch.Tensor,
    stride: int,
    directions: Sequence[Direction],
    accumulate: bool,
    chunk_bytes: int = PRODUCTS_CHUNK_BYTES,
) -> torch.Tensor:
    """``out += PSSA`` (or ``out = PSSA``), forming the products chunk by chunk in one buffer.

    Args:
        out: (B, C_out, rows, cols), written in place (channels-last memory is fastest).
        padded: (B, ·, ·, C_in) channels-last input with a one-pixel zero border around the
            pixels the products read (``_pad_nhwc``).
        pointwise: (C_out, |D|·C_in, 1, 1) direction-major weight.
    """
    b, _, rows, cols = out.shape
    c = padded.shape[-1]
    row_bytes = cols * len(directions) * c * padded.element_size()
    chunk_rows = max(1, min(rows, chunk_bytes // row_bytes))
    chunk_images = max(1, min(b, chunk_bytes // (row_bytes * rows)))
    if chunk_rows < rows:
        chunk_images = 1
    buffer = padded.new_empty(chunk_images * chunk_rows * row_bytes // padded.element_size())
    write = torch.Tensor.add_ if accumulate else torch.Tensor.copy_
    for b0 in range(0, b, chunk_images):
        for r0 in range(0, rows, chunk_rows):
            r1 = min(rows, r0 + chunk_rows)
            window = padded[b0 : b0 + chunk_images, stride * r0 : stride * (r1 - 1) + 3]
            products = _products_from_padded(window, r1 - r0, cols, stride, directions, buffer)
            chunk = F.conv2d(products.flatten(3).permute(0, 3, 1, 2), pointwise)
            write(out[b0 : b0 + chunk_images, :, r0:r1], chunk)
    return out


def centre_modulated(
    x: torch.Tensor,
    weight: torch.Tensor,
    taps: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int,
    directions: Sequence[Direction],
    chunk_bytes: int = PRODUCTS_CHUNK_BYTES,
    channels_last_min_pixels: int = CHANNELS_LAST_MIN_PIXELS,
) -> torch.Tensor:
    """``xvolution.centre_modulated_conv2d`` with the dynamic kernel already gathered on D (``taps``)."""
    padding = weight.shape[-1] // 2
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    large = x.shape[-2] * x.shape[-1] >= channels_last_min_pixels * stride * stride
    if (
        taps.shape[1] == 1
        or not (channels_last or large)
        or wide_dtype(x) is not None
        or not chunked_inference(x, weight, taps)
    ):
        out = F.conv2d(x, weight, bias, stride, padding)
        return pssa(x, taps, stride, directions, accumulate=out, chunk_bytes=chunk_bytes)
    # Eager CPU inference on larger maps: one channels-last zero-padded copy of x feeds both
    # GEMMs; the conv's output is channels-last too, so the PSSA chunks add into contiguous
    # slices.
    padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, padding, padding, padding, padding))
    out = F.conv2d(padded.permute(0, 3, 1, 2), weight, bias, stride)
    border = padding - 1  # the products need a one-pixel border only
    inner = padded[:, border : padded.shape[1] - border, border : padded.shape[2] - border]
    pointwise = taps.transpose(1, 2).reshape(taps.shape[0], -1, 1, 1)
    add_pssa_chunks_(out, inner, pointwise, stride, directions, True, chunk_bytes)
    # Like nn.Conv2d, the output follows the input's memory format.
    return out if channels_last else out.contiguous()


def footprint_taps(dynamic_weight: torch.Tensor, directions: Sequence[Direction]) -> torch.Tensor:
    """(O, C or 1, |D|): the dynamic kernel at the taps of D, i.e. 1[δ∈D] applied.

    Gathered in (O, |D|, C) memory order, so the GEMM weight that :func:`pssa` builds is a view.
    """
    k = dynamic_weight.shape[-1]
    index = torch.tensor(tap_indices(directions, k), device=dynamic_weight.device)
    return dynamic_weight.flatten(2).transpose(1, 2).index_select(1, index).transpose(1, 2)
