"""ACmix: self-attention and convolution sharing one set of 1x1 projections.

Pan et al., "On the Integration of Self-Attention and Convolution", CVPR 2022, arXiv 2111.14556.
Semantics follow the official code (LeapLabTHU/ACmix); ``docs/operators/acmix.md`` lists them with
the official code's quirks.

Stage I: one set of 1x1 projections q, k, v (C_in -> C each, with bias), at the input resolution,
split into ``num_heads`` groups of ``head_dim`` channels (head-major channel order).

Attention path, for a query pixel c on the stride-s grid and its k_att x k_att window j::

    out_att(c) = sum_j softmax_j( q_c / sqrt(head_dim) . (k_j + pe_c - pe_j) ) v_j

with ``pe = pos_proj(coordinate grid)`` (official ``conv_p``) and the window reflect-padded at the
border. ``q_c . pe_c`` is the same for every j of the window, so it cancels in the softmax; we
therefore fold the position encoding into the keys, ``k' = k - pe``, and never build the k_att^2
position tensors (exact: the logits differ from the official ones by a per-query constant only).

Convolution path: ``fc`` mixes the 3*heads maps [q heads | k heads | v heads] (per channel-in-head
d and pixel) into k_conv^2 maps, which a shift-initialised grouped k_conv x k_conv convolution
(``dep_conv``, groups = head_dim, channel order d-major) aggregates.

Combination: ``out = rate1 * out_att + rate2 * out_conv``.

The window attention is evaluated by :func:`~convattn.layers._window_tiles.tiled_window_attention`:
batched matrix products over small tiles of queries with a constant window mask, in plain ATen
operators, so every standard tool (``torch.export``, both ONNX exporters, ``torch.compile``) and
every device runs it as it is.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._checks import check_feature_map, check_positive_int
from ._window_tiles import reflect_index, tiled_window_attention
from .attention import resolve_num_heads
from .tracing import cached_in_eager
from .window_attention import WindowAttention, window_partition, window_reverse

__all__ = [
    "ACmix",
    "ACmixConvPath",
    "ACmixWindowAttention",
    "reflect_index",
]

# --------------------------------------------------------------------------------------------------
# Position grid (cached, parameter free)
# --------------------------------------------------------------------------------------------------


@cached_in_eager
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
    output channels (output channel d*heads + j). ``dep_conv`` starts as the pure shift:
    every output of group d is sum_i shift_i(map_{d,i}), shift_i moving by
    (i // k - k//2, i % k - k//2); it is trainable.

    Args:
        num_heads: number of heads N (``heads`` is accepted as an alias).
        head_dim: channels per head d (the output has N*d channels).
        kernel_size: k of the shift/aggregation kernel (odd).
        stride: stride of ``dep_conv`` (padding k // 2, so the output is ceil(H/s) x ceil(W/s)).
        fc_bias: learn a bias in ``fc`` (False in the ResNet module, True in the Swin variant).
    """

    def __init__(
        self,
        num_heads: int | None = None,
        head_dim: int | None = None,
        kernel_size: int = 3,
        stride: int = 1,
        fc_bias: bool = False,
        *,
        heads: int | None = None,
    ) -> None:
        super().__init__()
        heads = _num_heads(num_heads, heads, type(self).__name__)
        check_positive_int(head_dim, "head_dim", type(self).__name__)
        self.num_heads = heads
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
        return (
            f"num_heads={self.num_heads}, head_dim={self.head_dim}, kernel_size={self.kernel_size}"
        )


def _num_heads(num_heads: int | None, heads: int | None, owner: str, default: int = 4) -> int:
    """``num_heads``, or its alias ``heads`` (the name used before; official: ``head``)."""
    if heads is not None and num_heads is not None and heads != num_heads:
        raise ValueError(
            f"{owner}: 'heads' is an alias of 'num_heads'; got both ({heads} and {num_heads})"
        )
    value = num_heads if num_heads is not None else heads
    return default if value is None else value


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
        out_channels: output channels C, divisible by ``num_heads``.
        stride: stride of both paths.
        kernel_att: attention window side (odd).
        num_heads: number of attention heads (``heads`` and the official ``head`` are aliases).
        kernel_conv: kernel side of the shift convolution (odd; the official code only supports 3).
    """

    # Read by convattn.deploy.export.dynamic_size_blockers: why an exported graph is size-specific.
    fixed_input_size_reason = (
        "ACmix's window tiles (reflect padding, tile grid and halo regions) are laid out "
        "for one input size"
    )

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        kernel_att: int = 7,
        num_heads: int | None = None,
        kernel_conv: int = 3,
        *,
        heads: int | None = None,
        head: int | None = None,
    ) -> None:
        super().__init__()
        owner = "ACmix"
        heads = _num_heads(num_heads, heads if head is None else head, owner)
        for name, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("stride", stride),
            ("kernel_att", kernel_att),
            ("kernel_conv", kernel_conv),
        ):
            check_positive_int(value, name, owner)
        resolve_num_heads(out_channels, heads, 1, owner, "out_channels")
        for name, value in (("kernel_att", kernel_att), ("kernel_conv", kernel_conv)):
            if value % 2 == 0:
                raise ValueError(f"{owner}: '{name}' must be odd (centred window), got {value}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.kernel_att = kernel_att
        self.num_heads = heads
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

    def attention(
        self, qkv: Tensor, return_weights: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Sliding-window attention path: (B, 3C, H, W) projections -> (B, C, H', W').

        With ``return_weights`` also the softmax weights (B, heads, k_att^2, H', W') of every
        query's window slots (slot ``dy * k_att + dx``; :meth:`window_index` says which input
        pixel each slot reads): the hook that visualisation reads.
        """
        b, _, h, w = qkv.shape
        n, d = self.num_heads, self.head_dim
        q, key, v = qkv.view(b, 3, n, d, h, w).unbind(1)  # (B, N, d, H, W) views
        # q_c . (k_j + pe_c - pe_j) = q_c . (k_j - pe_j) + a term constant over the window of c.
        key = key - self._position_encoding(h, w, qkv)
        result = tiled_window_attention(
            q.reshape(b * n, d, h, w),
            key.reshape(b * n, d, h, w),
            v.reshape(b * n, d, h, w),
            self.kernel_att,
            self.stride,
            self.scale,
            return_weights=return_weights,
        )
        if not return_weights:
            return result.reshape(b, n * d, *result.shape[-2:])
        out, weights = result
        return out.reshape(b, n * d, *out.shape[-2:]), weights.reshape(b, n, *weights.shape[1:])

    def window_index(self, height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
        """Flat input index (y * W + x) read by window slot o of every query: (k_att^2, H', W').

        The border rule (reflection, repeated on maps smaller than the window) made explicit, so
        attention weights from :meth:`attention` can be drawn on the input grid.
        """
        k, s, pad = self.kernel_att, self.stride, self.kernel_att // 2
        rows = reflect_index(height, pad, device)  # padded row -> source row
        cols = reflect_index(width, pad, device)
        out_h, out_w = self.output_size(height, width)
        offsets = torch.arange(k, device=device)
        row = rows[s * torch.arange(out_h, device=device).view(1, -1) + offsets.view(-1, 1)]
        col = cols[s * torch.arange(out_w, device=device).view(1, -1) + offsets.view(-1, 1)]
        index = row.view(k, 1, out_h, 1) * width + col.view(1, k, 1, out_w)
        return index.reshape(k * k, out_h, out_w)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, C, ceil(H/s), ceil(W/s))."""
        check_feature_map(x, self.in_channels, "ACmix")
        b, _, h, w = x.shape
        qkv = self.qkv(x).contiguous()  # channels-last inputs give channels-last projections
        out_att = self.attention(qkv)
        out_conv = self.conv_path(qkv.view(b, 3 * self.num_heads, self.head_dim, h, w))
        return self.rate1 * out_att + self.rate2 * out_conv

    @property
    def heads(self) -> int:
        """Alias of ``num_heads`` (the attribute's earlier name)."""
        return self.num_heads

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, stride={self.stride}, "
            f"kernel_att={self.kernel_att}, num_heads={self.num_heads}, kernel_conv={self.kernel_conv}"
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
            self.conv_path.fc.weight[:, 2 * self.num_heads :].div_(rate1)
            self.rate1.fill_(1.0)

    switch_to_deploy = reparameterize


# --------------------------------------------------------------------------------------------------
# ACmix-Swin: window attention + convolution path
# --------------------------------------------------------------------------------------------------


class ACmixWindowAttention(WindowAttention):
    """Swin window attention with the ACmix convolution path (official ``WindowAttention_acmix``).

    ``x = rate1 * proj(window attention) + rate2 * conv_path(qkv)``, then ``proj_drop`` (the official Swin variant).
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
        _, h, w, c = x.shape
        ws = self.window_size
        if h % ws or w % ws:
            raise ValueError(
                f"{owner}: argument 'x' must have H and W divisible by window_size={ws} "
                f"(the Swin block pads), got {h}x{w}"
            )
        qkv = self.qkv(x)  # (B, H, W, 3C)
        windows = window_partition(qkv, ws).view(-1, ws * ws, 3 * c)
        out_att = self.proj(self.attend(windows, mask))
        return self.combine(window_reverse(out_att.view(-1, ws, ws, c), ws, h, w), qkv)

    def combine(self, attended: Tensor, qkv: Tensor) -> Tensor:
        """``proj_drop(rate1 * attended + rate2 * conv_path(qkv))``: the ACmix combination.

        Args:
            attended: (B, H, W, C) ``proj`` of the window attention, windows put back in place.
            qkv: (B, H, W, 3C) the projections; the convolution path reads them on the whole map.
        """
        b, h, w, _ = qkv.shape
        heads, d = self.num_heads, self.head_dim
        out_conv = self.conv_path(qkv.view(b, h, w, 3 * heads, d).permute(0, 3, 4, 1, 2))
        return self.proj_drop(self.rate1 * attended + self.rate2 * out_conv.permute(0, 2, 3, 1))

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
