"""ACmix: self-attention and convolution sharing one set of 1x1 projections.

Pan et al., "On the Integration of Self-Attention and Convolution", CVPR 2022, arXiv 2111.14556.
Semantics follow the official code as described in /work/shared/specs/acmix.md (sections 1 and 3).

Stage I (spec 1.1): one set of 1x1 projections q, k, v (C_in -> C each, with bias), at the input
resolution, split into ``heads`` groups of ``head_dim`` channels (head-major channel order).

Attention path (spec 1.2), for a query pixel c on the stride-s grid and its k_att x k_att window j::

    out_att(c) = sum_j softmax_j( q_c / sqrt(head_dim) . (k_j + pe_c - pe_j) ) v_j

with ``pe = pos_proj(coordinate grid)`` (official ``conv_p``) and the window reflect-padded at the
border. ``q_c . pe_c`` is the same for every j of the window, so it cancels in the softmax; we
therefore fold the position encoding into the keys, ``k' = k - pe``, and never build the k_att^2
position tensors (exact: the logits differ from the official ones by a per-query constant only).

Convolution path (spec 1.3): ``fc`` mixes the 3*heads maps [q heads | k heads | v heads] (per
channel-in-head d and pixel) into k_conv^2 maps, which a shift-initialised grouped k_conv x k_conv
convolution (``dep_conv``, groups = head_dim, channel order d-major) aggregates.

Combination (spec 1.4): ``out = rate1 * out_att + rate2 * out_conv``.

The window attention runs as a loop over the k_att^2 window slots, each a contiguous slice of the
flattened padded keys/values (the "window bank"; three registered operators below), so nothing
k_att^2 times the size of k or v is materialised, the backward pass is as cheap as the forward, and
the operators carry FLOP formulas so ``FlopCounterMode`` counts the attention products.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import register_flop_formula

from ._checks import check_feature_map, check_positive_int
from .window_attention import WindowAttention, window_partition, window_reverse

__all__ = [
    "ACmix",
    "ACmixConvPath",
    "ACmixWindowAttention",
    "WindowLayout",
    "reflect_index",
    "window_bank",
    "window_dot",
    "window_mix",
    "window_scatter",
]

# --------------------------------------------------------------------------------------------------
# Sliding-window attention primitives
#
# Layout ("window bank"). Reflect-pad the H x W map by p = k // 2 to Hp x Wp. For stride 1, flatten
# it: moving the window of output pixel (y, x) by slot (dy, dx) moves the flat index y * Wp + x by
# dy * Wp + dx, so slot (dy, dx) of *every* output pixel is the contiguous slice starting at that
# offset, provided the outputs also live on a Wp-wide grid (columns W..Wp-1 are computed, then
# cropped). For stride s the padded map is first split into its s*s phases (rows = a mod s,
# columns = b mod s), each of size Hq x Wq (Hq = ceil(Hp / s) + 1 spare row, Wq = ceil(Wp / s));
# slot (dy, dx) of output (y, x) is phase (dy % s, dx % s) at flat index
# (y + dy // s) * Wq + x + dx // s, again one contiguous slice per slot. So:
#   bank    (n, c, s*s, Hq*Wq)  keys or values (:func:`window_bank`),
#   query   (n, c, L)           queries on the output grid, L = H' * Wq, columns >= W' zero,
#   weights (n, k*k, L)         logits / attention, slot o = dy * k + dx (the nn.Unfold order).
# The three ops below are each other's gradients, so training never builds k*k copies either; their
# FLOP formulas count the valid output columns only (the official convention).
# --------------------------------------------------------------------------------------------------

# The leading dim is processed in slices of about this many elements per operand, so that a slice
# stays in the last-level cache across the k*k slots while each op stays large enough for the
# intra-op thread pool (measured on a 2-core CPU: 2^20 beats 2^16, 2^18 and no slicing).
_CHUNK_ELEMENTS = 1 << 20


def _slots(kernel_size: int, stride: int, row_length: int) -> list[tuple[int, int, int]]:
    """(slot index, phase, flat offset) of every window slot (dy, dx)."""
    return [
        (
            dy * kernel_size + dx,
            (dy % stride) * stride + dx % stride,
            (dy // stride) * row_length + dx // stride,
        )
        for dy in range(kernel_size)
        for dx in range(kernel_size)
    ]


def _chunks(n: int, elements_per_item: int) -> list[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(1, elements_per_item))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    # Sums over k*k terms are accumulated in float32 for half types.
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _window_dot_kernel(
    query: Tensor, bank: Tensor, kernel_size: int, stride: int, row_length: int, valid_width: int
) -> Tensor:
    n, c, length = query.shape
    out = query.new_empty(n, kernel_size * kernel_size, length)
    for part in _chunks(n, c * length):
        q, keys, o = query[part], bank[part], out[part]
        for slot, phase, offset in _slots(kernel_size, stride, row_length):
            torch.sum(q * keys[:, :, phase, offset : offset + length], dim=1, out=o[:, slot])
    return out


def _window_mix_kernel(
    weights: Tensor, bank: Tensor, kernel_size: int, stride: int, row_length: int, valid_width: int
) -> Tensor:
    n, _, length = weights.shape
    c = bank.shape[1]
    out = bank.new_zeros(n, c, length, dtype=_accumulation_dtype(bank.dtype))
    for part in _chunks(n, c * length):
        w, values, o = weights[part], bank[part], out[part]
        for slot, phase, offset in _slots(kernel_size, stride, row_length):
            view = values[:, :, phase, offset : offset + length]
            o.addcmul_(w[:, slot : slot + 1].expand_as(view), view)
    return out.to(bank.dtype)


def _window_scatter_kernel(
    weights: Tensor,
    values: Tensor,
    kernel_size: int,
    stride: int,
    row_length: int,
    valid_width: int,
    bank_length: int,
) -> Tensor:
    n, c, length = values.shape
    out = values.new_zeros(
        n, c, stride * stride, bank_length, dtype=_accumulation_dtype(values.dtype)
    )
    for part in _chunks(n, c * length):
        w, v, o = weights[part], values[part], out[part]
        for slot, phase, offset in _slots(kernel_size, stride, row_length):
            o[:, :, phase, offset : offset + length].addcmul_(w[:, slot : slot + 1].expand_as(v), v)
    return out.to(values.dtype)


# Registered as operators (not only Python functions) so that FlopCounterMode sees them and counts
# them with the formulas below; the autograd.Functions further down give them their gradients. A
# plain torch.library definition is used because torch.library.custom_op imports torch._dynamo
# (~3 s) on the first call in every process.
_LAYOUT_ARGS = "int kernel_size, int stride, int row_length, int valid_width"
_OPS = {
    "acmix_window_dot": (
        f"(Tensor query, Tensor bank, {_LAYOUT_ARGS}) -> Tensor",
        _window_dot_kernel,
    ),
    "acmix_window_mix": (
        f"(Tensor weights, Tensor bank, {_LAYOUT_ARGS}) -> Tensor",
        _window_mix_kernel,
    ),
    "acmix_window_scatter": (
        f"(Tensor weights, Tensor values, {_LAYOUT_ARGS}, int bank_length) -> Tensor",
        _window_scatter_kernel,
    ),
}
for _name, (_schema, _kernel) in _OPS.items():
    torch.library.define(f"convattn::{_name}", _schema)
    torch.library.impl(f"convattn::{_name}", "CompositeExplicitAutograd", _kernel)


@torch.library.register_fake("convattn::acmix_window_dot")
def _(query, bank, kernel_size, stride, row_length, valid_width):
    return query.new_empty(query.shape[0], kernel_size * kernel_size, query.shape[2])


@torch.library.register_fake("convattn::acmix_window_mix")
def _(weights, bank, kernel_size, stride, row_length, valid_width):
    return bank.new_empty(weights.shape[0], bank.shape[1], weights.shape[2])


@torch.library.register_fake("convattn::acmix_window_scatter")
def _(weights, values, kernel_size, stride, row_length, valid_width, bank_length):
    return values.new_empty(values.shape[0], values.shape[1], stride * stride, bank_length)


class _WindowDot(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, bank, *layout):
        ctx.save_for_backward(query, bank)
        ctx.layout = layout
        return torch.ops.convattn.acmix_window_dot(query, bank, *layout)

    @staticmethod
    def backward(ctx, grad):
        query, bank = ctx.saved_tensors
        grad_query = grad_bank = None
        if ctx.needs_input_grad[0]:
            grad_query = window_mix(grad, bank, *ctx.layout)
        if ctx.needs_input_grad[1]:
            grad_bank = window_scatter(grad, query, *ctx.layout, bank.shape[-1])
        return grad_query, grad_bank, None, None, None, None


class _WindowMix(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weights, bank, *layout):
        ctx.save_for_backward(weights, bank)
        ctx.layout = layout
        return torch.ops.convattn.acmix_window_mix(weights, bank, *layout)

    @staticmethod
    def backward(ctx, grad):
        weights, bank = ctx.saved_tensors
        grad_weights = grad_bank = None
        if ctx.needs_input_grad[0]:
            grad_weights = window_dot(grad, bank, *ctx.layout)
        if ctx.needs_input_grad[1]:
            grad_bank = window_scatter(weights, grad, *ctx.layout, bank.shape[-1])
        return grad_weights, grad_bank, None, None, None, None


class _WindowScatter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weights, values, *layout_and_length):
        ctx.save_for_backward(weights, values)
        ctx.layout = layout_and_length[:4]
        return torch.ops.convattn.acmix_window_scatter(weights, values, *layout_and_length)

    @staticmethod
    def backward(ctx, grad):
        weights, values = ctx.saved_tensors
        grad_weights = grad_values = None
        if ctx.needs_input_grad[0]:
            grad_weights = window_dot(values, grad, *ctx.layout)
        if ctx.needs_input_grad[1]:
            grad_values = window_mix(weights, grad, *ctx.layout)
        return grad_weights, grad_values, None, None, None, None, None


def window_dot(
    query: Tensor, bank: Tensor, kernel_size: int, stride: int, row_length: int, valid_width: int
) -> Tensor:
    """Dot product of every query with each key of its window.

    ``out[n, o, i] = sum_c query[n, c, i] * bank[n, c, phase(o), i + offset(o)]``

    Args:
        query: (n, c, L) on the output grid (rows of ``row_length``).
        bank: (n, c, s*s, M) window bank of the keys.
        kernel_size: window side k.
        stride: step s of the window centres.
        row_length: Wq, the row length of the output grid and of each phase.
        valid_width: W', the number of real output columns per row (for the FLOP count).

    Returns:
        Logits (n, k*k, L).
    """
    return _WindowDot.apply(query, bank, kernel_size, stride, row_length, valid_width)


def window_mix(
    weights: Tensor, bank: Tensor, kernel_size: int, stride: int, row_length: int, valid_width: int
) -> Tensor:
    """Weighted sum over each window.

    ``out[n, c, i] = sum_o weights[n, o, i] * bank[n, c, phase(o), i + offset(o)]``

    Args:
        weights: (n, k*k, L).
        bank: (n, c, s*s, M) window bank of the values.
        kernel_size, stride, row_length, valid_width: as in :func:`window_dot`.

    Returns:
        (n, c, L).
    """
    return _WindowMix.apply(weights, bank, kernel_size, stride, row_length, valid_width)


def window_scatter(
    weights: Tensor,
    values: Tensor,
    kernel_size: int,
    stride: int,
    row_length: int,
    valid_width: int,
    bank_length: int,
) -> Tensor:
    """Transpose of :func:`window_mix` with respect to the bank: spread weighted maps back.

    ``out[n, c, phase(o), i + offset(o)] += weights[n, o, i] * values[n, c, i]``

    Args:
        weights: (n, k*k, L).
        values: (n, c, L).
        kernel_size, stride, row_length, valid_width: as in :func:`window_dot`.
        bank_length: M, the flat length of each phase of the result.

    Returns:
        (n, c, s*s, M).
    """
    return _WindowScatter.apply(
        weights, values, kernel_size, stride, row_length, valid_width, bank_length
    )


def _window_flops(
    n: int, channels: int, slots: int, length: int, row_length: int, valid_width: int
):
    # One multiply-add per (n, channel, window slot, real output pixel); FLOPs = 2 * MACs.
    return 2 * n * channels * slots * (length // row_length) * valid_width


@register_flop_formula(torch.ops.convattn.acmix_window_dot)
def _(query_shape, bank_shape, kernel_size, stride, row_length, valid_width, **kwargs) -> int:
    n, c, length = query_shape
    return _window_flops(n, c, kernel_size**2, length, row_length, valid_width)


@register_flop_formula(torch.ops.convattn.acmix_window_mix)
def _(weights_shape, bank_shape, kernel_size, stride, row_length, valid_width, **kwargs) -> int:
    n, _, length = weights_shape
    return _window_flops(n, bank_shape[1], kernel_size**2, length, row_length, valid_width)


@register_flop_formula(torch.ops.convattn.acmix_window_scatter)
def _(weights_shape, values_shape, kernel_size, stride, row_length, valid_width, *args, **kwargs):
    n, c, length = values_shape
    return _window_flops(n, c, kernel_size**2, length, row_length, valid_width)


# --------------------------------------------------------------------------------------------------
# Border rule, window bank layout and position grid (cached, parameter free)
# --------------------------------------------------------------------------------------------------


def reflect_index(size: int, pad: int, device: torch.device | str = "cpu") -> Tensor:
    """Source index of every position of a reflect-padded axis, for any ``pad``.

    Position i in [-pad, size + pad) maps to a real index by reflecting about the edge pixels
    (edge not repeated, as ``ReflectionPad2d``) and reflecting again until it lands inside, i.e.
    ``numpy.pad(mode="reflect")``. For ``pad < size`` this is exactly ``ReflectionPad2d``; a size-1
    axis maps everything to 0.

    Returns:
        Long tensor of shape (size + 2 * pad,).
    """
    return _reflected(size, -pad, size + pad, torch.device(device))


@functools.lru_cache(maxsize=256)
def _reflected(size: int, start: int, stop: int, device: torch.device) -> Tensor:
    # Built outside inference mode: cached tensors are reused by later training steps.
    with torch.inference_mode(False):
        index = torch.arange(start, stop, device=device)
        if size == 1:
            return torch.zeros_like(index)
        period = 2 * (size - 1)
        index = index.remainder(period)
        return torch.where(index < size, index, period - index)


class WindowLayout(NamedTuple):
    """Geometry of the window bank for an H x W map, window k and stride s (see the notes above)."""

    out_h: int  # H' = ceil(H / s)
    out_w: int  # W' = ceil(W / s)
    row_length: int  # Wq = ceil((W + 2p) / s)
    bank_rows: int  # Hq = ceil((H + 2p) / s) + 1 (the spare row keeps every slot slice in range)

    @staticmethod
    def of(height: int, width: int, kernel_size: int, stride: int) -> WindowLayout:
        pad = kernel_size // 2
        return WindowLayout(
            out_h=-(-height // stride),
            out_w=-(-width // stride),
            row_length=-(-(width + 2 * pad) // stride),
            bank_rows=-(-(height + 2 * pad) // stride) + 1,
        )


def window_bank(x: Tensor, kernel_size: int, stride: int) -> Tensor:
    """Reflect-pad, phase-split and flatten a map: (n, c, H, W) -> (n, c, s*s, Hq*Wq).

    The rows/columns past the reflect-padded map (spare row, rounding up to whole phases) only feed
    output columns that are cropped; the reflection simply continues there.
    """
    n, c, h, w = x.shape
    layout = WindowLayout.of(h, w, kernel_size, stride)
    pad = kernel_size // 2
    bottom = stride * layout.bank_rows - pad - h
    right = stride * layout.row_length - pad - w
    if max(pad, bottom) < h and max(pad, right) < w:  # one reflection suffices: fast kernel
        padded = F.pad(x, (pad, right, pad, bottom), mode="reflect")
    else:  # tiny map: repeated reflection by index
        rows = _reflected(h, -pad, h + bottom, x.device)
        cols = _reflected(w, -pad, w + right, x.device)
        padded = x.index_select(2, rows).index_select(3, cols)
    if stride == 1:
        return padded.view(n, c, 1, -1)
    phases = padded.view(n, c, layout.bank_rows, stride, layout.row_length, stride)
    return phases.permute(0, 1, 3, 5, 2, 4).reshape(n, c, stride * stride, -1)


@functools.lru_cache(maxsize=64)
def _coordinate_grid(height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(2, H, W) normalised coordinates: channel 0 = x in linspace(-1, 1, W), channel 1 = y."""
    with torch.inference_mode(False):
        # Built in float64 and rounded once, so half-precision grids are as exact as they can be.
        xs = torch.linspace(-1.0, 1.0, width, dtype=torch.float64, device=device)
        ys = torch.linspace(-1.0, 1.0, height, dtype=torch.float64, device=device)
        grid = torch.stack([xs.expand(height, width), ys.unsqueeze(1).expand(height, width)])
        return grid.to(dtype)


# --------------------------------------------------------------------------------------------------
# Convolution path (shared by both variants)
# --------------------------------------------------------------------------------------------------


class ACmixConvPath(nn.Module):
    """ACmix convolution path: per-head ``fc`` mixing, then a shift-initialised grouped convolution.

    The input holds the 3*heads projected maps of ``head_dim`` channels each, ordered
    [q heads | k heads | v heads]. ``fc`` (1x1, 3*heads -> k^2) mixes them with one matrix shared by
    every channel-in-head d and pixel; the k^2 maps of every d are stacked d-major (channel
    d*k^2 + i) and ``dep_conv`` (k x k, groups = head_dim, no bias) turns group d into ``heads``
    output channels (output channel d*heads + j). ``dep_conv`` starts as the pure shift (spec 1.3):
    every output of group d is sum_i shift_i(map_{d,i}), shift_i moving by
    (i // k - k//2, i % k - k//2); it is trainable.

    Args:
        heads: number of heads N.
        head_dim: channels per head d (the output has N*d channels).
        kernel_size: k of the shift/aggregation kernel (odd).
        stride: stride of ``dep_conv`` (padding k // 2, so the output is ceil(H/s) x ceil(W/s)).
        fc_bias: learn a bias in ``fc`` (False in the ResNet module, True in the Swin variant).
    """

    def __init__(
        self,
        heads: int,
        head_dim: int,
        kernel_size: int = 3,
        stride: int = 1,
        fc_bias: bool = False,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim
        self.kernel_size = kernel_size
        slots = kernel_size * kernel_size
        self.fc = nn.Conv2d(3 * heads, slots, kernel_size=1, bias=fc_bias)
        self.dep_conv = nn.Conv2d(
            slots * head_dim,
            heads * head_dim,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=head_dim,
            bias=False,
        )
        self.reset_shift()

    @torch.no_grad()
    def reset_shift(self) -> None:
        """Set ``dep_conv`` to the shift kernels: weight[o, i] is one-hot at (i // k, i % k)."""
        k = self.kernel_size
        shift = torch.eye(k * k).view(k * k, k, k)
        self.dep_conv.weight.copy_(shift.expand_as(self.dep_conv.weight))

    def forward(self, qkv: Tensor) -> Tensor:
        """(B, 3*heads, head_dim, H, W) projected maps (any strides) -> (B, heads*head_dim, H', W').

        The output is in channels-last memory format.
        """
        b, m, d, h, w = qkv.shape
        # mixed[b, i, (d, h, w)] = sum_m fc[i, m] * qkv[b, m, (d, h, w)]: one GEMM per image (bmm
        # on the expanded weight: torch.matmul is several times slower when the weight needs grad).
        weight = self.fc.weight.flatten(1).expand(b, -1, -1)
        mixed = torch.bmm(weight, qkv.reshape(b, m, d * h * w))
        if self.fc.bias is not None:
            mixed = mixed + self.fc.bias.view(-1, 1)
        # d-major channels (d * k^2 + i), stored channels-last: the grouped convolution is several
        # times faster in that layout on CPU, in the backward pass above all.
        mixed = mixed.view(b, -1, d, h, w).permute(0, 3, 4, 2, 1).reshape(b, h, w, -1)
        return self.dep_conv(mixed.permute(0, 3, 1, 2))

    def extra_repr(self) -> str:
        return f"heads={self.heads}, head_dim={self.head_dim}, kernel_size={self.kernel_size}"


def _rename_official_keys(state_dict: dict, prefix: str, renames: dict[str, str]) -> None:
    """Move official keys to our names in place (only where ours are absent)."""
    for old, new in renames.items():
        if prefix + old in state_dict and prefix + new not in state_dict:
            state_dict[prefix + new] = state_dict.pop(prefix + old)


_CONV_PATH_RENAMES = {
    "fc.weight": "conv_path.fc.weight",
    "fc.bias": "conv_path.fc.bias",
    "dep_conv.weight": "conv_path.dep_conv.weight",
}


# --------------------------------------------------------------------------------------------------
# ACmix (ResNet/SAN style, sliding-window attention)
# --------------------------------------------------------------------------------------------------


class ACmix(nn.Module):
    """ACmix module with sliding-window attention (official ``ResNet/test_bottleneck.py``).

    Same outputs as the official module wherever that one runs (even H, W for stride 2; maps of at
    least k_att // 2 + 1 pixels), and defined everywhere else:

    * Stride s: window centres / query pixels are (s*y, s*x), starting at (0, 0) as in the official
      code; the output is ceil(H/s) x ceil(W/s). This is the same grid as ``dep_conv`` (stride s,
      padding k_conv // 2), whose output pixel y is centred on input row s*y, so both paths agree on
      every size (the official reshape only works when s divides H and W).
    * Border rule: keys/values (with their positions) are reflect-padded as in the official code; on
      maps smaller than the window, where one reflection is not enough, the index is reflected again
      until it lands inside (``numpy.pad(mode="reflect")``, see :func:`reflect_index`). Every window
      slot then still holds a real pixel carrying its own position and the window keeps its k_att^2
      terms, i.e. the official rule continued, not a second mechanism: masking would change the
      number of softmax terms only on tiny maps, and clamping would replicate the edge pixel, which
      differs from the official result even where reflection works. A 1-pixel axis repeats its
      pixel.
    * Any float dtype and device: the coordinate grid is built on ``x.device`` in ``x.dtype``.

    Parameters: ``qkv`` (fused 1x1 conv, = official conv1/conv2/conv3 stacked), ``pos_proj``
    (= ``conv_p``), ``conv_path.fc`` (= ``fc``, no bias), ``conv_path.dep_conv`` (= ``dep_conv``, no
    bias), ``rate1``, ``rate2``. ``load_state_dict`` accepts the official keys and converts them.
    ``pos_proj.bias`` cancels in the softmax (as in the official code); it is kept for loading.

    Args:
        in_channels: input channels C_in.
        out_channels: output channels C, divisible by ``heads``.
        stride: stride of both paths.
        kernel_att: attention window side (odd).
        heads: number of attention heads.
        kernel_conv: kernel side of the shift convolution (odd; the official code only supports 3).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        kernel_att: int = 7,
        heads: int = 4,
        kernel_conv: int = 3,
    ) -> None:
        super().__init__()
        owner = "ACmix"
        for name, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("stride", stride),
            ("kernel_att", kernel_att),
            ("heads", heads),
            ("kernel_conv", kernel_conv),
        ):
            check_positive_int(value, name, owner)
        if out_channels % heads:
            raise ValueError(
                f"{owner}: 'out_channels' ({out_channels}) must be divisible by 'heads' ({heads})"
            )
        for name, value in (("kernel_att", kernel_att), ("kernel_conv", kernel_conv)):
            if value % 2 == 0:
                raise ValueError(f"{owner}: '{name}' must be odd (centred window), got {value}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.kernel_att = kernel_att
        self.heads = heads
        self.kernel_conv = kernel_conv
        self.head_dim = out_channels // heads
        self.scale = self.head_dim**-0.5

        # Stage I: q, k, v in one GEMM; output channels [q | k | v], each head-major. PyTorch's
        # default init depends on fan_in only, so this draws from the same distribution as three
        # separate convolutions.
        self.qkv = nn.Conv2d(in_channels, 3 * out_channels, kernel_size=1)
        self.pos_proj = nn.Conv2d(2, self.head_dim, kernel_size=1)
        self.conv_path = ACmixConvPath(heads, self.head_dim, kernel_conv, stride, fc_bias=False)
        self.rate1 = nn.Parameter(torch.full((1,), 0.5))
        self.rate2 = nn.Parameter(torch.full((1,), 0.5))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        official = [f"{prefix}conv{i}.{p}" for p in ("weight", "bias") for i in (1, 2, 3)]
        if all(key in state_dict for key in official) and prefix + "qkv.weight" not in state_dict:
            for p in ("weight", "bias"):
                parts = [state_dict.pop(f"{prefix}conv{i}.{p}") for i in (1, 2, 3)]
                state_dict[f"{prefix}qkv.{p}"] = torch.cat(parts, 0)
        renames = {"conv_p.weight": "pos_proj.weight", "conv_p.bias": "pos_proj.bias"}
        _rename_official_keys(state_dict, prefix, {**renames, **_CONV_PATH_RENAMES})
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of the output for an H x W input: (ceil(H/s), ceil(W/s))."""
        return -(-height // self.stride), -(-width // self.stride)

    def _position_encoding(self, height: int, width: int, like: Tensor) -> Tensor:
        """pe = pos_proj(coordinate grid), shape (head_dim, H, W)."""
        grid = _coordinate_grid(height, width, like.device, like.dtype)
        weight = self.pos_proj.weight.flatten(1)  # (d, 2)
        pe = torch.einsum("dc,chw->dhw", weight, grid)
        return pe + self.pos_proj.bias.view(-1, 1, 1)

    def attention(self, qkv: Tensor) -> Tensor:
        """Sliding-window attention path (spec 1.2): (B, 3C, H, W) projections -> (B, C, H', W')."""
        b, _, h, w = qkv.shape
        n, d, s, k = self.heads, self.head_dim, self.stride, self.kernel_att
        layout = WindowLayout.of(h, w, k, s)
        ops_layout = (k, s, layout.row_length, layout.out_w)
        q, key, v = qkv.view(b, 3, n, d, h, w).unbind(1)  # (B, N, d, H, W) views
        # Queries on the Wq-wide output grid (extra columns zero).
        q = F.pad(q[..., ::s, ::s], (0, layout.row_length - layout.out_w)) * self.scale
        q = q.reshape(b * n, d, -1)
        # q_c . (k_j + pe_c - pe_j) = q_c . (k_j - pe_j) + a term constant over the window of c.
        key = window_bank((key - self._position_encoding(h, w, qkv)).view(b * n, d, h, w), k, s)
        v = window_bank(v.reshape(b * n, d, h, w), k, s)
        attn = window_dot(q, key, *ops_layout).softmax(dim=1)  # (B*N, k^2, L)
        out = window_mix(attn, v, *ops_layout).view(b, n * d, layout.out_h, layout.row_length)
        return out[..., : layout.out_w]

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, C, ceil(H/s), ceil(W/s))."""
        check_feature_map(x, self.in_channels, "ACmix")
        b, _, h, w = x.shape
        qkv = self.qkv(x).contiguous()  # channels-last inputs give channels-last projections
        out_att = self.attention(qkv)
        out_conv = self.conv_path(qkv.view(b, 3 * self.heads, self.head_dim, h, w))
        return self.rate1 * out_att + self.rate2 * out_conv

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, stride={self.stride}, "
            f"kernel_att={self.kernel_att}, heads={self.heads}, kernel_conv={self.kernel_conv}"
        )

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold ``rate1`` and ``rate2`` into the adjacent weights in place; both then read 1.

        The conv path is linear after ``fc`` (``dep_conv`` has no bias and zero padding), so
        ``rate2`` scales ``dep_conv``. The attention path is linear in v (its weights depend on q
        and k only), so ``rate1`` scales the v rows of ``qkv`` and ``fc``'s v columns are divided
        by it, leaving the conv path unchanged (skipped if rate1 is 0). Exact up to rounding and
        idempotent. A BatchNorm after ACmix cannot be folded in: a per-channel scale of the
        attention output would need a per-channel change of v, which ``fc`` shares across channels.
        """
        self.conv_path.dep_conv.weight.mul_(self.rate2)
        self.rate2.fill_(1.0)
        rate1 = float(self.rate1)
        if rate1 not in (0.0, 1.0):
            v_rows = slice(2 * self.out_channels, None)
            self.qkv.weight[v_rows].mul_(rate1)
            self.qkv.bias[v_rows].mul_(rate1)
            self.conv_path.fc.weight[:, 2 * self.heads :].div_(rate1)
            self.rate1.fill_(1.0)

    switch_to_deploy = reparameterize


# --------------------------------------------------------------------------------------------------
# ACmix-Swin: window attention + convolution path
# --------------------------------------------------------------------------------------------------


class ACmixWindowAttention(WindowAttention):
    """Swin window attention with the ACmix convolution path (official ``WindowAttention_acmix``).

    ``x = rate1 * proj(window attention) + rate2 * conv_path(qkv)``, then ``proj_drop`` (spec 3).
    The conv path sees the whole map, so unlike :class:`WindowAttention` this module takes the map
    and splits it into windows itself.

    Seam with the Swin block: the block applies ``norm1``, reshapes to (B, H, W, C), pads H and W
    to multiples of the window (if it supports other sizes), rolls by (-shift, -shift) in shifted
    blocks, calls ``attn(x, mask)``, and then undoes the roll and the padding and adds the residual.
    The conv path is evaluated on exactly the map handed in, i.e. on the rolled map in shifted
    blocks (wrap-around neighbours instead of zero padding at the seam), as the official code does.
    The pieces (``qkv``, :meth:`attend`, ``proj``, ``conv_path``) can also be called separately.

    Parameters: those of :class:`WindowAttention` plus ``conv_path.fc`` (1x1 with bias, = official
    ``fc``), ``conv_path.dep_conv`` (= ``dep_conv``, no bias), ``rate1``, ``rate2``.
    ``load_state_dict`` accepts the official key names (``fc.weight``, ``fc.bias``,
    ``dep_conv.weight``).

    Args:
        dim: token width C.
        window_size: side w of the square windows (fixed: the bias table depends on it).
        num_heads: number of heads; ``dim`` must be divisible by it.
        qkv_bias: learn a bias in the packed q/k/v projection.
        attn_drop: dropout probability on the attention weights.
        proj_drop: dropout probability on the combined output.
        kernel_conv: kernel side of the shift convolution (official: 3).
    """

    def __init__(
        self,
        dim: int,
        window_size: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        kernel_conv: int = 3,
    ) -> None:
        super().__init__(dim, window_size, num_heads, qkv_bias, attn_drop, proj_drop)
        check_positive_int(kernel_conv, "kernel_conv", type(self).__name__)
        if kernel_conv % 2 == 0:
            raise ValueError(f"ACmixWindowAttention: 'kernel_conv' must be odd, got {kernel_conv}")
        self.conv_path = ACmixConvPath(num_heads, self.head_dim, kernel_conv, fc_bias=True)
        self.rate1 = nn.Parameter(torch.full((1,), 0.5))
        self.rate2 = nn.Parameter(torch.full((1,), 0.5))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        _rename_official_keys(state_dict, prefix, _CONV_PATH_RENAMES)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """Attention + conv path on a map.

        Args:
            x: (B, H, W, C) map (already rolled in shifted blocks); H and W multiples of the window.
            mask: optional (nW, w*w, w*w) additive mask from :func:`shifted_window_mask`.

        Returns:
            (B, H, W, C).
        """
        owner = type(self).__name__
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"{owner}: argument 'x' must be a floating-point tensor (B, H, W, C)")
        if x.dim() != 4 or x.shape[-1] != self.dim or x.numel() == 0:
            raise ValueError(
                f"{owner}: argument 'x' must be a non-empty (B, H, W, {self.dim}) map, "
                f"got shape {tuple(x.shape)}"
            )
        b, h, w, c = x.shape
        ws = self.window_size
        if h % ws or w % ws:
            raise ValueError(
                f"{owner}: argument 'x' must have H and W divisible by window_size={ws} "
                f"(the Swin block pads), got {h}x{w}"
            )
        qkv = self.qkv(x)  # (B, H, W, 3C)
        heads, d = self.num_heads, self.head_dim
        out_conv = self.conv_path(qkv.view(b, h, w, 3 * heads, d).permute(0, 3, 4, 1, 2))
        windows = window_partition(qkv, ws).view(-1, ws * ws, 3 * c)
        out_att = self.proj(self.attend(windows, mask))
        out_att = window_reverse(out_att.view(-1, ws, ws, c), ws, h, w)
        return self.proj_drop(self.rate1 * out_att + self.rate2 * out_conv.permute(0, 2, 3, 1))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold ``rate1`` into ``proj`` and ``rate2`` into ``dep_conv`` in place; both then read 1.

        Both follow linear maps (``proj`` with bias, ``dep_conv`` without bias, zero padding), so
        the fold is exact up to rounding; idempotent.
        """
        self.proj.weight.mul_(self.rate1)
        if self.proj.bias is not None:
            self.proj.bias.mul_(self.rate1)
        self.conv_path.dep_conv.weight.mul_(self.rate2)
        self.rate1.fill_(1.0)
        self.rate2.fill_(1.0)

    switch_to_deploy = reparameterize
