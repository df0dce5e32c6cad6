"""Speed kernel for sliding-window attention: exact k x k windows, evaluated tile by tile.

This module is the "how" behind :meth:`convattn.layers.ACmix.attention`; the "what" (the paper's
equation) is written in that file. Everything here is plain ATen (``unfold``, ``baddbmm``,
``softmax``, ``bmm``, padding, indexing), so ``torch.export``, both ONNX exporters,
``torch.compile`` and every device see ordinary operators.

Geometry. The output grid (H' x W', H' = ceil(H / s)) is cut into tiles of ``tile_h x tile_w``
queries. A query at output (y, x) sits on input pixel (s*y, s*x) and attends to the k x k input
window centred there, so the queries of one tile together read an ``(s*(tile_h-1)+k) x
(s*(tile_w-1)+k)`` region of the padded keys: the tile's *halo region*. ``unfold`` takes every
tile's region as a view; one batched matrix product gives each query's logits against its tile's
whole region, and a constant additive mask (-inf outside the query's own window, identical for
every tile) restricts the softmax to the k x k window. A second batched product applies the
weights to the values. The result equals the per-window formula exactly (the masked terms are
exp(-inf) = 0); the price is the masked products, ``region / k^2`` times the useful ones, which
is why the tiles are small and chosen per shape (:func:`tile_size`).

Border rule. Keys and values are reflect-padded by k // 2 (``ReflectionPad2d``); where one
reflection is not enough (maps smaller than the window), the index keeps reflecting
(:func:`reflect_index`). Rows and columns added only to complete the last tile feed queries that
are cropped from the output.

Given weights. :func:`window_aggregate` is the second half alone, for operators that compute each
query's k x k window weights themselves (SAN's patchwise attention): the weights are scattered into
the same (queries x halo region) matrices, zero outside each query's window, and applied to the
values with the same batched product (small maps are one tile). :func:`window_gather` lays out every query's k x k window of a
map as channels (``nn.Unfold`` order) under the same border rule.

Chunking. On the CPU in eager mode the batch is processed in slices whose logits fit in the
last-level cache (2-3x faster at 56 x 56 on a 2-core EPYC); under tracing (``torch.export``,
ONNX, ``torch.compile``) and on other devices the whole batch is one slice, so no graph depends
on a cache size or specialises on the batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .tracing import cached_in_eager, is_tracing

__all__ = [
    "is_tracing",
    "reflect_index",
    "reflect_pad",
    "tile_size",
    "tiled_window_attention",
    "window_aggregate",
    "window_gather",
    "window_mask",
]

# Logit elements per slice of the batch on the CPU (4 MiB of float32): measured at the ACmix-ResNet
# stage shapes on a 2-core EPYC, 2^20 was within noise of the best of 2^18 .. 2^22.
_CPU_LOGITS_PER_CHUNK = 1 << 20


def _sizes(x: Tensor) -> tuple:
    """``x.shape``; as Python ints under TorchScript tracing, which would otherwise record the size
    arithmetic as ONNX ops (whose integer division truncates instead of flooring)."""
    return tuple(int(v) for v in x.shape) if torch.jit.is_tracing() else tuple(x.shape)


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


@cached_in_eager
def _reflected(size: int, start: int, stop: int, device: torch.device) -> Tensor:
    # Built outside inference mode: cached tensors are reused by later training steps.
    with torch.inference_mode(False):
        index = torch.arange(start, stop, device=device)
        if size == 1:
            return torch.zeros_like(index)
        period = 2 * (size - 1)
        index = index.remainder(period)
        return torch.where(index < size, index, period - index)


def reflect_pad(x: Tensor, pad: int, bottom: int, right: int) -> Tensor:
    """Reflect-pad (n, c, H, W) by ``pad`` on top/left and ``bottom``/``right`` (repeating if needed)."""
    h, w = x.shape[-2:]
    if max(pad, bottom) < h and max(pad, right) < w:  # one reflection suffices
        return F.pad(x, (pad, right, pad, bottom), mode="reflect")
    rows = _reflected(h, -pad, h + bottom, x.device)
    cols = _reflected(w, -pad, w + right, x.device)
    return x.index_select(2, rows).index_select(3, cols)


def _region(tile: int, kernel_size: int, stride: int) -> int:
    return stride * (tile - 1) + kernel_size


def _window_rows(tile: int, kernel_size: int, stride: int, device) -> Tensor:
    """(tile, region) bool: query i of the tile sees region positions s*i .. s*i + k - 1."""
    i = torch.arange(tile, device=device).view(-1, 1)
    r = torch.arange(_region(tile, kernel_size, stride), device=device).view(1, -1)
    return (r >= stride * i) & (r < stride * i + kernel_size)


@cached_in_eager
def window_mask(
    tile_h: int, tile_w: int, kernel_size: int, stride: int, dtype: torch.dtype, device
) -> Tensor:
    """Additive mask (tile_h*tile_w, region_h*region_w): 0 inside each query's window, -inf outside."""
    with torch.inference_mode(False):
        rows = _window_rows(tile_h, kernel_size, stride, device)
        cols = _window_rows(tile_w, kernel_size, stride, device)
        inside = rows.view(tile_h, 1, -1, 1) & cols.view(1, tile_w, 1, -1)
        inside = inside.reshape(tile_h * tile_w, -1)
        zeros = torch.zeros(inside.shape, dtype=dtype, device=device)
        return zeros.masked_fill(~inside, float("-inf"))


@cached_in_eager
def _window_columns(tile_h: int, tile_w: int, kernel_size: int, stride: int, device) -> Tensor:
    """(tile_h*tile_w, k*k) region column of window slot (dy, dx) of every query of a tile."""
    k, s = kernel_size, stride
    region_w = _region(tile_w, k, s)
    with torch.inference_mode(False):  # cached, and saved for backward by later training steps
        i = torch.arange(tile_h, device=device).view(-1, 1, 1, 1)
        j = torch.arange(tile_w, device=device).view(1, -1, 1, 1)
        dy = torch.arange(k, device=device).view(1, 1, -1, 1)
        dx = torch.arange(k, device=device).view(1, 1, 1, -1)
        return ((s * i + dy) * region_w + s * j + dx).reshape(tile_h * tile_w, k * k)


# Tile sides per output-map size, measured (benchmarks/bench_acmix.py, "tile sizes") on a 2-core
# AMD EPYC at ACmix-ResNet-50's stage shapes: small square tiles, smaller for stride 2 where the
# halo region grows twice as fast. (Maps up to _WHOLE_MAP_MAX_PIXELS never reach the tiles.)
def tile_size(out_h: int, out_w: int, stride: int) -> tuple[int, int]:
    """The (tile_h, tile_w) used for an out_h x out_w output grid at this stride."""
    side = 7 if stride == 1 else 4
    return min(side, out_h), min(side, out_w)


def _to_tiles(
    x: Tensor, tiles_h: int, tiles_w: int, region: tuple[int, int], step: tuple[int, int]
) -> Tensor:
    """(n, c, Hp, Wp) padded map -> (n * tiles, c, region_h * region_w) halo regions (one copy)."""
    c = x.shape[1]
    if torch.jit.is_tracing():  # the TorchScript ONNX exporter cannot translate unfold: gather
        rows = _halo_index(tiles_h, region[0], step[0], x.device)
        cols = _halo_index(tiles_w, region[1], step[1], x.device)
        regions = x.index_select(2, rows).index_select(3, cols)
        regions = regions.view(-1, c, tiles_h, region[0], tiles_w, region[1]).transpose(3, 4)
    else:  # overlapping views, copied once below
        regions = x.unfold(2, region[0], step[0]).unfold(3, region[1], step[1])
        regions = regions[:, :, :tiles_h, :tiles_w]  # (n, c, th, tw, rh, rw)
    return regions.permute(0, 2, 3, 1, 4, 5).reshape(-1, c, region[0] * region[1])


def _halo_index(tiles: int, region: int, step: int, device) -> Tensor:
    """Padded-axis index of position r of tile t's halo region, flattened (t, r)."""
    starts = torch.arange(tiles, device=device).view(-1, 1) * step
    return (starts + torch.arange(region, device=device)).flatten()


# Maps of at most this many pixels attend over the whole map instead of tiles (see
# :func:`_whole_map_attention`): measured faster at every ACmix-ResNet stage shape up to 14 x 14.
_WHOLE_MAP_MAX_PIXELS = 256


@cached_in_eager
def _window_sources(height: int, width: int, kernel_size: int, stride: int, device) -> Tensor:
    """(H'*W', k*k) flat input pixel read by window slot (dy, dx) of every query (border rule)."""
    k, pad = kernel_size, kernel_size // 2
    out_h, out_w = -(-height // stride), -(-width // stride)
    with torch.inference_mode(False):  # cached, and saved for backward by later training steps
        offsets = torch.arange(k, device=device)
        rows = _reflected(height, -pad, height + pad, device)
        cols = _reflected(width, -pad, width + pad, device)
        row = rows[stride * torch.arange(out_h, device=device).view(-1, 1) + offsets]  # (H', k)
        col = cols[stride * torch.arange(out_w, device=device).view(-1, 1) + offsets]  # (W', k)
        index = row.view(out_h, 1, k, 1) * width + col.view(1, out_w, 1, k)
        return index.reshape(out_h * out_w, k * k)


@cached_in_eager
def _multiplicity_bias(
    height: int, width: int, kernel_size: int, stride: int, dtype: torch.dtype, device
) -> Tensor:
    """(H'*W', H*W): log of how many window slots of each query read each pixel (-inf: none)."""
    with torch.inference_mode(False):
        sources = _window_sources(height, width, kernel_size, stride, device)
        pixels = torch.arange(height * width, device=device)
        count = (sources.unsqueeze(-1) == pixels).sum(dim=1)  # (H'*W', H*W)
        return count.to(dtype).log()


def _whole_map_attention(
    q: Tensor, key: Tensor, value: Tensor, kernel_size: int, stride: int, scale: float
) -> tuple[Tensor, Tensor]:
    """The window softmax as attention over every pixel of a small map, exactly.

    A query's k*k window slots read pixels (reflected at the border, so some pixel may be read by
    several slots). ``sum_j exp(l_src(j)) = sum_p count(p) exp(l_p)``, so the window softmax equals a
    softmax over all pixels p with the constant bias ``log count(p)`` (-inf where a pixel is outside
    the window). On small maps this needs no padding, no halo copies and fewer products than tiles.
    """
    d, h, w = _sizes(key)[1:]
    queries = q[..., ::stride, ::stride]
    out_h, out_w = -(-h // stride), -(-w // stride)
    bias = _multiplicity_bias(h, w, kernel_size, stride, q.dtype, q.device)
    logits = torch.baddbmm(bias, queries.flatten(2).transpose(1, 2), key.flatten(2), alpha=scale)
    attn = logits.softmax(dim=-1)  # (n, H'*W', H*W)
    out = torch.bmm(value.flatten(2), attn.transpose(1, 2))  # (n, d, H'*W')
    return out.view(-1, d, out_h, out_w), attn


def _whole_map_slot_weights(attn: Tensor, shape: tuple[int, ...], kernel_size: int, stride: int):
    """Per-slot weights (n, k*k, H', W') from the whole-map attention: weight / multiplicity."""
    h, w, out_h, out_w = shape
    sources = _window_sources(h, w, kernel_size, stride, attn.device)
    count = _multiplicity_bias(h, w, kernel_size, stride, attn.dtype, attn.device).exp()
    per_slot = attn.gather(2, sources.expand(attn.shape[0], -1, -1)) / count.gather(1, sources)
    return per_slot.transpose(1, 2).reshape(-1, kernel_size * kernel_size, out_h, out_w)


def tiled_window_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    kernel_size: int,
    stride: int,
    scale: float,
    tile: tuple[int, int] | None = None,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Softmax attention of every query over its k x k window of keys, with the border rule above.

    ``out[n, :, y, x] = sum_j softmax_j(scale * q(s*y, s*x) . k_j) v_j`` over the window j centred
    on input pixel (s*y, s*x).

    Args:
        query: (n, d, H, W) queries at input resolution (the stride picks every s-th pixel).
        key, value: (n, d, H, W).
        kernel_size: window side k (odd).
        stride: s.
        scale: logit scale.
        tile: (tile_h, tile_w) queries per tile (default: :func:`tile_size`).
        return_weights: also return the softmax weights of every query's window slots.

    Returns:
        (n, d, ceil(H/s), ceil(W/s)); with ``return_weights`` also (n, k*k, H', W'), slot
        ``dy * k + dx`` (the ``nn.Unfold`` order).
    """
    d, h, w = _sizes(key)[1:]
    k, s = kernel_size, stride
    out_h, out_w = -(-h // s), -(-w // s)
    if tile is None and h * w <= _WHOLE_MAP_MAX_PIXELS:
        return _chunked(
            lambda q_, k_, v_: _whole_map(q_, k_, v_, k, s, scale, return_weights),
            (query, key, value),
            out_h * out_w * h * w,
            return_weights,
        )
    tile_h, tile_w = tile or tile_size(out_h, out_w, s)
    tiles_h, tiles_w = -(-out_h // tile_h), -(-out_w // tile_w)
    region = (_region(tile_h, k, s), _region(tile_w, k, s))
    step = (s * tile_h, s * tile_w)
    pad = k // 2
    bottom = step[0] * (tiles_h - 1) + region[0] - pad - h
    right = step[1] * (tiles_w - 1) + region[1] - pad - w
    mask = window_mask(tile_h, tile_w, k, s, query.dtype, query.device)
    columns = _window_columns(tile_h, tile_w, k, s, query.device) if return_weights else None

    def attend(q: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor | None]:
        keys = _to_tiles(reflect_pad(key, pad, bottom, right), tiles_h, tiles_w, region, step)
        values = _to_tiles(reflect_pad(value, pad, bottom, right), tiles_h, tiles_w, region, step)
        q = F.pad(q[..., ::s, ::s], (0, tiles_w * tile_w - out_w, 0, tiles_h * tile_h - out_h))
        q = q.view(-1, d, tiles_h, tile_h, tiles_w, tile_w).permute(0, 2, 4, 3, 5, 1)
        q = q.reshape(-1, tile_h * tile_w, d)
        attn = torch.baddbmm(mask, q, keys, alpha=scale).softmax(dim=-1)
        out = torch.bmm(attn, values.transpose(1, 2))  # (m * tiles, tile_h * tile_w, d)
        out = out.view(-1, tiles_h, tiles_w, tile_h, tile_w, d).permute(0, 5, 1, 3, 2, 4)
        out = out.reshape(-1, d, tiles_h * tile_h, tiles_w * tile_w)[..., :out_h, :out_w]
        weights = None
        if columns is not None:
            weights = attn.gather(2, columns.expand(attn.shape[0], -1, -1))
            weights = weights.view(-1, tiles_h, tiles_w, tile_h, tile_w, k * k)
            weights = weights.permute(0, 5, 1, 3, 2, 4).reshape(
                -1, k * k, tiles_h * tile_h, tiles_w * tile_w
            )
            weights = weights[..., :out_h, :out_w]
        return out, weights

    return _chunked(attend, (query, key, value), tiles_h * tiles_w * mask.numel(), return_weights)


def _whole_map(q, key, value, kernel_size, stride, scale, return_weights):
    out, attn = _whole_map_attention(q, key, value, kernel_size, stride, scale)
    if not return_weights:
        return out, None
    shape = (*_sizes(key)[-2:], *_sizes(out)[-2:])
    return out, _whole_map_slot_weights(attn, shape, kernel_size, stride)


def _chunked(attend, tensors: tuple[Tensor, ...], logits_per_item: int, return_weights: bool):
    """``attend`` over slices of the batch (see the module notes), results concatenated."""
    n = tensors[0].shape[0]
    step_n = _chunk_length(tensors[0], n, logits_per_item)
    if step_n >= n:
        out, weights = attend(*tensors)
    else:
        parts = [attend(*(t[i : i + step_n] for t in tensors)) for i in range(0, n, step_n)]
        out = torch.cat([p[0] for p in parts])
        weights = torch.cat([p[1] for p in parts]) if return_weights else None
    return (out, weights) if return_weights else out


def _chunk_length(like: Tensor, n: int, logits_per_item: int) -> int:
    """Items per slice of the batch: all of them unless on the CPU in eager mode."""
    if like.device.type != "cpu" or is_tracing():
        return n
    return max(1, min(n, math.ceil(_CPU_LOGITS_PER_CHUNK / max(1, logits_per_item))))


# --------------------------------------------------------------------------------------------------
# Window weights given per slot (aggregation without a softmax of our own)
# --------------------------------------------------------------------------------------------------


def window_gather(x: Tensor, kernel_size: int, stride: int = 1) -> Tensor:
    """Every output pixel's k x k window of ``x`` as channels, with the border rule above.

    ``out[n, c * k*k + j, y, x]`` is ``x[n, c]`` at window slot j = dy * k + dx of input pixel
    (s*y, s*x): the ``nn.Unfold`` order on the reflect-padded map, defined on maps of any size.

    Args:
        x: (n, c, H, W).
        kernel_size: window side k (odd).
        stride: s.

    Returns:
        (n, c * k*k, ceil(H/s), ceil(W/s)).
    """
    c, h, w = _sizes(x)[1:]
    out_h, out_w = -(-h // stride), -(-w // stride)
    sources = _window_sources(h, w, kernel_size, stride, x.device)  # (H'*W', k*k)
    windows = x.flatten(2).index_select(2, sources.t().flatten())  # (n, c, k*k * H'*W')
    return windows.view(-1, c * kernel_size * kernel_size, out_h, out_w)


def window_aggregate(
    value: Tensor,
    weights: Tensor,
    kernel_size: int,
    stride: int = 1,
    tile: tuple[int, int] | None = None,
) -> Tensor:
    """Weighted sum over every query's k x k window of values, the weights given per slot.

    ``out[m, :, y, x] = sum_j weights[m, j, y, x] * value[m, :, slot j of input pixel (s*y, s*x)]``,
    slot j = dy * k + dx (the ``nn.Unfold`` order), with the border rule above (reflection,
    repeated on maps smaller than the window). This is :func:`tiled_window_attention` after its
    softmax: the weights are scattered into the (queries x halo region) matrix of each tile (zero
    outside a query's window) and applied with one batched product; maps of at most
    ``_WHOLE_MAP_MAX_PIXELS`` pixels are one tile.

    Args:
        value: (m, d, H, W).
        weights: (m, k*k, ceil(H/s), ceil(W/s)).
        kernel_size: window side k (odd).
        stride: s.
        tile: (tile_h, tile_w) queries per tile (default: :func:`tile_size`; giving it forces the
            tiled path).

    Returns:
        (m, d, ceil(H/s), ceil(W/s)) in the dtype of ``value``.
    """
    d, h, w = _sizes(value)[1:]
    k, s = kernel_size, stride
    out_h, out_w = -(-h // s), -(-w // s)
    slots = k * k
    if tile is None and h * w <= _WHOLE_MAP_MAX_PIXELS:
        # One tile over the whole (padded) map: each query's slots are distinct padded pixels, so
        # the weights are placed with a plain scatter (a scatter-add over reflected duplicates is
        # exported to ONNX without its reduction by some exporters).
        tile = (out_h, out_w)
    tile_h, tile_w = tile or tile_size(out_h, out_w, s)
    tiles_h, tiles_w = -(-out_h // tile_h), -(-out_w // tile_w)
    region = (_region(tile_h, k, s), _region(tile_w, k, s))
    step = (s * tile_h, s * tile_w)
    pad = k // 2
    bottom = step[0] * (tiles_h - 1) + region[0] - pad - h
    right = step[1] * (tiles_w - 1) + region[1] - pad - w
    columns = _window_columns(tile_h, tile_w, k, s, value.device)  # (tile_h*tile_w, k*k)
    queries, region_size = tile_h * tile_w, region[0] * region[1]

    def tiled(v: Tensor, wts: Tensor) -> tuple[Tensor, None]:
        values = _to_tiles(reflect_pad(v, pad, bottom, right), tiles_h, tiles_w, region, step)
        wts = F.pad(wts, (0, tiles_w * tile_w - out_w, 0, tiles_h * tile_h - out_h))
        wts = wts.view(-1, slots, tiles_h, tile_h, tiles_w, tile_w).permute(0, 2, 4, 3, 5, 1)
        wts = wts.reshape(-1, queries, slots)  # (m * tiles, queries, k*k)
        index = columns.expand(wts.shape[0], -1, -1)
        dense = wts.new_zeros(wts.shape[0], queries, region_size).scatter(2, index, wts)
        out = torch.bmm(dense, values.transpose(1, 2))  # (m * tiles, queries, d)
        out = out.view(-1, tiles_h, tiles_w, tile_h, tile_w, d).permute(0, 5, 1, 3, 2, 4)
        out = out.reshape(-1, d, tiles_h * tile_h, tiles_w * tile_w)[..., :out_h, :out_w]
        return out, None

    per_item = tiles_h * tiles_w * queries * region_size
    return _chunked(tiled, (value, weights), per_item, False)
