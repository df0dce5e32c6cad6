"""Involution: per-pixel, per-group K x K kernels generated from the input.

Li et al., "Involution: Inverting the Inherence of Convolution for Visual Recognition", CVPR 2021,
arXiv 2103.06255; used as a competing operator to X-volution (``docs/notes/xvolution.md`` §1.5) with
the RedNet defaults: kernel 7, group width 16, reduction 4.

For output pixel p with input centre q = s*p, channel c in group g(c) and tap offsets delta::

    H = phi(AvgPool_s(X))                                     (B, G*K*K, H', W')   kernel generation
    phi = Conv1x1(C/r -> K*K*G) . ReLU . BN . Conv1x1(C -> C/r)
    Y[c, p] = sum_{delta in K x K} H[g(c), delta, p] * X[c, q + delta]   (zero padding)  aggregation

The aggregation runs as the custom op ``convattn::involution_aggregate``: a loop over the K*K taps
that multiplies strided views of the padded input by the tap's kernel plane and accumulates into the
output. That is exact, needs O(output) extra memory instead of the K*K-fold ``unfold`` copy, and its
registered backward does the same loop (2.5-40x faster than the ``unfold`` form forward and 2-25x
forward + backward at the stage shapes of ``benchmarks/results/ops.md``, the gap growing with H*W). The op also registers its MAC count (B*C*H'*W'*K*K) with ``FlopCounterMode`` so
``convattn.bench.count_macs`` sees it. It supports autograd and ``torch.compile``/``torch.export``
(fake kernel); while exporting (ONNX, ``torch.export``) ``Involution2d`` switches to the
equivalent ``unfold`` form, so exported files need no custom operator.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import register_flop_formula

from ._checks import check_feature_map, check_positive_int
from .conv_bn import ConvBN

__all__ = ["Involution2d", "involution_aggregate"]


# Output elements accumulated per pass over the K*K taps (about 1 MB of fp32): the partial sums stay
# in cache instead of streaming the whole output through memory K*K times (1.2-2x faster on CPU).
_CHUNK_ELEMENTS = 1 << 18


def _taps(kernel_size: int, stride: int, out_hw: tuple[int, int]) -> Iterator[tuple[int, tuple]]:
    """Yield (tap index, (row slice, col slice)) selecting X[s*p + delta] for all output pixels p."""
    ho, wo = out_hw
    for i in range(kernel_size):
        for j in range(kernel_size):
            rows = slice(i, i + stride * (ho - 1) + 1, stride)
            cols = slice(j, j + stride * (wo - 1) + 1, stride)
            yield i * kernel_size + j, (rows, cols)


def _chunks(n: int, elements_per_item: int) -> list[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(1, elements_per_item))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    # Summing K*K products in bf16/fp16 loses several bits; accumulate in fp32 instead.
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def _grouped(x: torch.Tensor, weight: torch.Tensor, kernel_size: int):
    """Zero-padded input as (B*G, C/G, H+2p, W+2p) and kernels as (B*G, K*K, H', W')."""
    b, c, h = x.shape[:3]
    groups, pad = weight.shape[1], kernel_size // 2
    padded = F.pad(x, (pad, pad, pad, pad)).reshape(b * groups, c // groups, h + 2 * pad, -1)
    return padded, weight.reshape(b * groups, kernel_size * kernel_size, *weight.shape[-2:])


@torch.library.custom_op("convattn::involution_aggregate", mutates_args=())
def involution_aggregate(
    x: torch.Tensor, weight: torch.Tensor, kernel_size: int, stride: int
) -> torch.Tensor:
    """Apply per-pixel, per-group kernels: Y[c, p] = sum_delta weight[g(c), delta, p] X[c, sp + delta].

    Args:
        x: input (B, C, H, W).
        weight: kernels (B, G, K*K, ceil(H/s), ceil(W/s)); G must divide C; taps row-major.
        kernel_size: K (odd); the input is zero-padded by K // 2.
        stride: s.

    Returns:
        (B, C, ceil(H/s), ceil(W/s)) in ``x.dtype``.
    """
    padded, kernels = _grouped(x, weight, kernel_size)
    rows, group_channels = padded.shape[:2]
    ho, wo = weight.shape[-2:]
    acc = _accumulation_dtype(x.dtype)
    out = torch.zeros(rows, group_channels, ho, wo, device=x.device, dtype=acc)
    for part in _chunks(rows, group_channels * ho * wo):
        out_part, x_part, k_part = out[part], padded[part], kernels[part]
        for tap, window in _taps(kernel_size, stride, (ho, wo)):
            out_part.addcmul_(x_part[..., window[0], window[1]], k_part[:, tap].unsqueeze(1))
    return out.reshape(x.shape[0], x.shape[1], ho, wo).to(x.dtype)


@involution_aggregate.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
    return x.new_empty(x.shape[0], x.shape[1], weight.shape[-2], weight.shape[-1])


def _setup_context(ctx, inputs, output) -> None:
    x, weight, kernel_size, stride = inputs
    ctx.save_for_backward(x, weight)
    ctx.kernel_size, ctx.stride = kernel_size, stride


def _backward(ctx, grad_out: torch.Tensor):
    """dL/dX[c, sp + delta] += g[c, p] H[g(c), delta, p];  dL/dH[g, delta, p] = sum_c g[c, p] X[c, sp + delta]."""
    x, weight = ctx.saved_tensors
    k, stride, pad = ctx.kernel_size, ctx.stride, ctx.kernel_size // 2
    h, w = x.shape[-2:]
    padded, kernels = _grouped(x, weight, k)
    rows, group_channels = padded.shape[:2]
    ho, wo = weight.shape[-2:]
    acc = _accumulation_dtype(x.dtype)
    grad = grad_out.reshape(rows, group_channels, ho, wo)
    grad_padded = torch.zeros(padded.shape, device=x.device, dtype=acc)
    grad_kernels = torch.empty(kernels.shape, device=x.device, dtype=acc)
    for part in _chunks(rows, group_channels * ho * wo):
        g, x_part, k_part = grad[part], padded[part], kernels[part]
        gx_part, gk_part = grad_padded[part], grad_kernels[part]
        for tap, (r, c) in _taps(k, stride, (ho, wo)):
            gx_part[..., r, c].addcmul_(g, k_part[:, tap].unsqueeze(1))
            gk_part[:, tap] = (g * x_part[..., r, c]).sum(1, dtype=acc)
    grad_x = grad_padded[..., pad : pad + h, pad : pad + w].reshape(x.shape)
    return grad_x.to(x.dtype), grad_kernels.reshape(weight.shape).to(weight.dtype), None, None


involution_aggregate.register_autograd(_backward, setup_context=_setup_context)


def involution_aggregate_unfold(
    x: torch.Tensor, weight: torch.Tensor, kernel_size: int, stride: int
) -> torch.Tensor:
    """Same result as :func:`involution_aggregate` from plain ops (``unfold``), for ONNX export.

    Materialises the K*K-fold copy of the input, so it is only used while exporting.
    """
    b, c = x.shape[:2]
    groups, ho, wo = weight.shape[1], weight.shape[-2], weight.shape[-1]
    windows = F.unfold(x, kernel_size, padding=kernel_size // 2, stride=stride)
    windows = windows.view(b, groups, c // groups, kernel_size * kernel_size, ho, wo)
    return (windows * weight.unsqueeze(2)).sum(3).view(b, c, ho, wo)


@register_flop_formula(torch.ops.convattn.involution_aggregate)
def _involution_flops(x_shape, weight_shape, kernel_size, stride, *args, out_shape=None, **kwargs):
    b, c = x_shape[0], x_shape[1]
    taps, ho, wo = weight_shape[2], weight_shape[3], weight_shape[4]
    return 2 * b * c * taps * ho * wo  # FLOPs = 2 x MACs


class Involution2d(nn.Module):
    """Involution with the RedNet kernel generator, as a drop-in for a 3x3 conv.

    Involution maps C channels to C channels. For ``out_channels != in_channels`` a bias-free 1x1
    projection ``proj`` (C_in -> C_out) follows the aggregation, on the strided map where it is
    cheapest; with equal widths ``proj`` is an identity. No BN/activation follows (the host block
    supplies them, as in RedNet).

    MACs per image with N' = ceil(H/s) * ceil(W/s) and G = C_in / group_channels (``count_macs``):
    N' (C_in * C_in/r  +  C_in/r * K^2 G  +  C_in K^2  [+ C_in C_out if projecting]).

    Args:
        in_channels: input width C_in; must be divisible by ``group_channels`` and >= ``reduction``.
        out_channels: output width C_out.
        stride: spatial stride; the kernel generator sees the input average-pooled by it
            (``ceil_mode``) and the aggregation samples every s-th centre.
        kernel_size: K, odd.
        group_channels: channels sharing one generated kernel (G = C_in / group_channels groups).
        reduction: channel reduction r of the kernel generator's bottleneck.
        deploy: build the generator's 1x1 reduce conv with its BatchNorm folded (biased conv,
            key ``reduce.conv.bias``, no ``reduce.bn``), the form ``reparameterize()`` leaves.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        *,
        kernel_size: int = 7,
        group_channels: int = 16,
        reduction: int = 4,
        deploy: bool = False,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.in_channels = check_positive_int(in_channels, "in_channels", owner)
        self.out_channels = check_positive_int(out_channels, "out_channels", owner)
        self.stride = check_positive_int(stride, "stride", owner)
        self.kernel_size = check_positive_int(kernel_size, "kernel_size", owner)
        check_positive_int(group_channels, "group_channels", owner)
        check_positive_int(reduction, "reduction", owner)
        if kernel_size % 2 == 0:
            raise ValueError(f"{owner}: 'kernel_size' must be odd, got {kernel_size}")
        if in_channels % group_channels:
            raise ValueError(
                f"{owner}: 'group_channels' ({group_channels}) must divide 'in_channels' "
                f"({in_channels})"
            )
        if in_channels < reduction:
            raise ValueError(
                f"{owner}: 'reduction' ({reduction}) must not exceed 'in_channels' ({in_channels})"
            )
        self.groups = in_channels // group_channels
        hidden = in_channels // reduction
        # Kernel generation phi (RedNet): [pool] -> 1x1 reduce + BN + ReLU -> 1x1 span to K*K*G.
        self.pool = nn.AvgPool2d(stride, stride, ceil_mode=True) if stride > 1 else nn.Identity()
        self.reduce = ConvBN(in_channels, hidden, kernel_size=1, deploy=deploy)
        self.act = nn.ReLU(inplace=True)
        self.span = nn.Conv2d(hidden, kernel_size * kernel_size * self.groups, 1)
        self.proj = (
            nn.Conv2d(in_channels, out_channels, 1, bias=False)
            if out_channels != in_channels
            else nn.Identity()
        )

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the kernel generator's BatchNorm into its reduce conv (idempotent)."""
        self.reduce.reparameterize()

    def generate_kernels(self, x: torch.Tensor) -> torch.Tensor:
        """The per-pixel kernels H = phi(AvgPool_s(X)): (B, G, K*K, ceil(H/s), ceil(W/s))."""
        kernels = self.span(self.act(self.reduce(self.pool(x))))
        b, _, ho, wo = kernels.shape
        return kernels.view(b, self.groups, self.kernel_size**2, ho, wo)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, ceil(H/stride), ceil(W/stride))."""
        check_feature_map(x, self.in_channels, type(self).__name__)
        kernels = self.generate_kernels(x)
        # Exported files (ONNX, and .pt2 loaded without this library) have no kernel for the
        # custom op: trace the equivalent plain-op form there.
        exporting = torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()
        aggregate = involution_aggregate_unfold if exporting else involution_aggregate
        return self.proj(aggregate(x, kernels, self.kernel_size, self.stride))

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, stride={self.stride}, "
            f"kernel_size={self.kernel_size}, groups={self.groups}"
        )
