"""PVT's spatial-reduction attention (SRA) and its ACmix form.

Wang et al., "Pyramid Vision Transformer: A Versatile Backbone for Dense Prediction without
Convolutions", ICCV 2021 (arXiv 2102.12122), section 3.3, equations (2)-(4). Parameter names follow
the official classification code (whai362/PVT, ``classification/pvt.py``, class ``Attention``) so its
checkpoints load unchanged; ``docs/operators/pvt.md`` states the equations and the conventions.

Both modules work on tokens ``(B, L, C)`` together with the map size ``(H, W)`` of their last H*W
tokens (row-major). The first ``L - H*W`` tokens are prefix tokens without a position (PVT's class
token in its last stage); they are allowed only without spatial reduction, as in PVT.

SRA, for a map X (H*W tokens) and heads i = 1..N of width d = C / N::

    SR(X)      = LayerNorm(Reshape(X, r) W^S)           (r x r patches, stride r: ``sr`` + ``norm``)
    head_i     = softmax(Q_i K_i^T / sqrt(d)) V_i,   Q_i = X W^Q_i,  [K_i | V_i] = SR(X) W^{KV}_i
    SRA(X)     = Concat(head_1, ..., head_N) W^O        (``proj``)

The reduced map is floor(H/r) x floor(W/r) (a stride-r convolution, as in the official code).

ACmix form (:class:`ACmixSpatialReductionAttention`, see ``docs/operators/acmix-pvt.md``): the
convolution path of ACmix (:class:`~convattn.layers.acmix.ACmixConvPath`) runs on the same
projections at full resolution: the queries, and the keys and values of the reduced map carried
back to the pixels of their r x r patch (nearest, i.e. every pixel takes the token of the patch it
lies in; rows/columns beyond the last whole patch take the last patch). Output::

    out = rate1 * SRA(X) + rate2 * ConvPath([Q | K_up | V_up])

with the prefix tokens receiving the attention output only (they have no neighbourhood).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_positive_int
from .acmix import _CONV_PATH_RENAMES, ACmixConvPath, _rename_official_keys
from .fused_attention import scaled_dot_product_attention

__all__ = ["ACmixSpatialReductionAttention", "SpatialReductionAttention", "patch_owner_index"]


def patch_owner_index(size: int, ratio: int, device: torch.device | str = "cpu") -> Tensor:
    """Index of the reduced row (column) whose r-patch covers each of ``size`` rows (columns).

    ``min(y // r, size // r - 1)``: pixels past the last whole patch (dropped by the stride-r
    reduction) take the last patch.
    """
    return torch.clamp(torch.arange(size, device=device) // ratio, max=size // ratio - 1)


def _is_size(s: object) -> bool:
    """A positive int; while traced (TorchScript ONNX export) also a 0-d integer tensor."""
    if isinstance(s, Tensor):
        return s.dim() == 0 and not s.is_floating_point() and not s.is_complex()
    return isinstance(s, (int, torch.SymInt)) and not isinstance(s, bool) and s > 0


class SpatialReductionAttention(nn.Module):
    """PVT v1 spatial-reduction attention (official ``Attention``), on tokens.

    Parameters: ``q`` (Linear C -> C), ``kv`` (Linear C -> 2C, output [K heads | V heads]),
    ``proj`` (Linear C -> C), and for ``sr_ratio`` > 1 ``sr`` (Conv2d C -> C, kernel = stride = r)
    and ``norm`` (LayerNorm, official eps 1e-5).

    MACs per image with n = H*W (+ prefix) tokens and m reduced tokens:
    n C^2 (q) + m r^2 C^2 (sr) + 2 m C^2 (kv) + 2 n m C (the two attention products) + n C^2 (proj).

    Args:
        dim: token width C.
        num_heads: heads N; must divide ``dim``.
        sr_ratio: spatial-reduction ratio r (1: plain global attention).
        qkv_bias: learn biases in ``q`` and ``kv`` (PVT: True).
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after ``proj``.
        norm_eps: epsilon of the LayerNorm after ``sr``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 1,
        sr_ratio: int = 1,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        for name, value in (("dim", dim), ("num_heads", num_heads), ("sr_ratio", sr_ratio)):
            check_positive_int(value, name, owner)
        if dim % num_heads:
            raise ValueError(
                f"{owner}: 'dim' ({dim}) must be divisible by 'num_heads' ({num_heads})"
            )
        for name, p in (("attn_drop", attn_drop), ("proj_drop", proj_drop)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{owner}: '{name}' must be in [0, 1), got {p!r}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.sr_ratio = sr_ratio
        self.attn_drop = attn_drop
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=norm_eps)

    # --- pieces ---------------------------------------------------------------------------------
    def check_input(self, x: object, size: object) -> tuple[int, int, int]:
        """Validate ``x`` (B, L, C) and ``size`` (H, W); returns (H, W, number of prefix tokens)."""
        owner = type(self).__name__
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"{owner}: argument 'x' must be a floating-point tensor (B, L, C)")
        if x.dim() != 3 or x.shape[-1] != self.dim or x.shape[0] == 0:
            raise ValueError(
                f"{owner}: argument 'x' must be a non-empty (B, L, {self.dim}) token tensor, "
                f"got shape {tuple(x.shape)}"
            )
        if (
            not isinstance(size, (tuple, list))
            or len(size) != 2
            or not all(_is_size(s) for s in size)
        ):
            raise ValueError(
                f"{owner}: argument 'size' must be a pair of positive ints (H, W), got {size!r}"
            )
        h, w = size
        prefix = x.shape[1] - h * w
        if prefix < 0:
            raise ValueError(
                f"{owner}: argument 'x' has {x.shape[1]} tokens, fewer than the H*W = {h * w} of "
                f"'size' {tuple(size)}"
            )
        if prefix and self.sr_ratio > 1:
            raise ValueError(
                f"{owner}: argument 'x' has {prefix} prefix token(s) besides the {h}x{w} map; they "
                f"are only supported with sr_ratio=1 (got sr_ratio={self.sr_ratio})"
            )
        if h < self.sr_ratio or w < self.sr_ratio:
            raise ValueError(
                f"{owner}: argument 'size' ({h}x{w}) must be at least sr_ratio x sr_ratio "
                f"({self.sr_ratio}x{self.sr_ratio}) so the reduced map is not empty"
            )
        return h, w, prefix

    def reduce(self, x: Tensor, size: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
        """The tokens keys and values are computed from: LN(sr(map)) for r > 1, else ``x``.

        Returns the (B, m, C) tokens and the reduced map size (floor(H/r), floor(W/r)).
        """
        if self.sr_ratio == 1:
            return x, size
        b, _, c = x.shape
        h, w = size
        reduced = self.sr(x.transpose(1, 2).reshape(b, c, h, w))
        hr, wr = reduced.shape[-2:]
        return self.norm(reduced.flatten(2).transpose(1, 2)), (hr, wr)

    def project(self, x: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor, tuple[int, int]]:
        """Queries (B, L, C) of every token and keys/values (B, m, 2C) of the reduced tokens."""
        reduced, reduced_size = self.reduce(x, size)
        return self.q(x), self.kv(reduced), reduced_size

    def _heads(self, t: Tensor, parts: int) -> tuple[Tensor, ...]:
        b, n, _ = t.shape
        return t.view(b, n, parts, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)

    def attend(self, q: Tensor, kv: Tensor) -> Tensor:
        """softmax(Q K^T / sqrt(d)) V per head: (B, L, C), (B, m, 2C) -> (B, L, C) (before ``proj``)."""
        (qh,) = self._heads(q, 1)
        kh, vh = self._heads(kv, 2)
        drop = self.attn_drop if self.training else 0.0
        out = scaled_dot_product_attention(qh, kh, vh, dropout_p=drop, scale=self.scale)
        return out.transpose(1, 2).reshape(q.shape)

    def attention_weights(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """The softmax weights (B, num_heads, L, m) of every token over the reduced tokens.

        Row-major over the reduced map (after any prefix tokens); the hook visualisation reads.
        """
        self.check_input(x, size)
        q, kv, _ = self.project(x, size)
        (qh,) = self._heads(q, 1)
        kh, _ = self._heads(kv, 2)
        return (torch.matmul(qh, kh.transpose(-2, -1)) * self.scale).softmax(-1)

    def key_index(
        self, height: int, width: int, prefix: int = 0, device: torch.device | str = "cpu"
    ) -> Tensor:
        """Which key of :meth:`attention_weights` covers each pixel of an H x W map: (H, W) long.

        An index into the weights' last dimension (the ``prefix`` tokens come first): for r > 1 the
        reduced token whose r x r patch holds the pixel, -1 for pixels past the last whole patch
        (the stride-r reduction drops them, so no key reads them); for r = 1 the pixel's own token.
        The hook visualisation uses to draw a query's weights on the map.
        """
        owner = type(self).__name__
        for name, value in (("height", height), ("width", width)):
            check_positive_int(value, name, owner)
        if not isinstance(prefix, int) or isinstance(prefix, bool) or prefix < 0:
            raise ValueError(f"{owner}: 'prefix' must be a non-negative int, got {prefix!r}")
        r = self.sr_ratio
        rows = torch.arange(height, device=device) // r
        cols = torch.arange(width, device=device) // r
        reduced_h, reduced_w = height // r, width // r
        index = prefix + rows.view(-1, 1) * reduced_w + cols.view(1, -1)
        covered = (rows < reduced_h).view(-1, 1) & (cols < reduced_w).view(1, -1)
        return torch.where(covered, index, torch.full_like(index, -1))

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """(B, L, C) tokens of an H x W map (after L - H*W prefix tokens) -> (B, L, C)."""
        self.check_input(x, size)
        q, kv, _ = self.project(x, size)
        return self.proj_drop(self.proj(self.attend(q, kv)))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, sr_ratio={self.sr_ratio}"


class ACmixSpatialReductionAttention(SpatialReductionAttention):
    """Spatial-reduction attention with ACmix's convolution path on the shared projections.

    ``out = proj_drop(rate1 * proj(SRA attention) + rate2 * conv_path([Q | K_up | V_up]))`` where
    K_up, V_up are the reduced keys/values carried back to full resolution by
    :func:`patch_owner_index` (identity for r = 1). Prefix tokens get the attention term only.
    See ``docs/operators/acmix-pvt.md`` for how this reading was chosen.

    Parameters: those of :class:`SpatialReductionAttention` plus ``conv_path.fc`` (1x1 with bias,
    3N -> k^2), ``conv_path.dep_conv`` (shift-initialised, no bias), ``rate1``, ``rate2``
    (both 0.5). ``load_state_dict`` also accepts ACmix's names ``fc.*`` / ``dep_conv.weight``.

    Args:
        dim: token width C.
        num_heads: heads N; must divide ``dim``.
        sr_ratio: spatial-reduction ratio r (1: plain global attention).
        qkv_bias: learn biases in ``q`` and ``kv``.
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the combination.
        norm_eps: epsilon of the LayerNorm after ``sr``.
        kernel_conv: kernel side of the shift convolution (odd; ACmix: 3).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 1,
        sr_ratio: int = 1,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_eps: float = 1e-5,
        kernel_conv: int = 3,
    ) -> None:
        super().__init__(dim, num_heads, sr_ratio, qkv_bias, attn_drop, proj_drop, norm_eps)
        owner = type(self).__name__
        check_positive_int(kernel_conv, "kernel_conv", owner)
        if kernel_conv % 2 == 0:
            raise ValueError(f"{owner}: 'kernel_conv' must be odd, got {kernel_conv}")
        self.kernel_conv = kernel_conv
        self.conv_path = ACmixConvPath(num_heads, self.head_dim, kernel_conv, fc_bias=True)
        self.rate1 = nn.Parameter(torch.full((1,), 0.5))
        self.rate2 = nn.Parameter(torch.full((1,), 0.5))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        _rename_official_keys(state_dict, prefix, _CONV_PATH_RENAMES)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def conv_input(
        self, q: Tensor, kv: Tensor, size: tuple[int, int], reduced_size: tuple[int, int]
    ) -> Tensor:
        """(B, 3N, d, H, W) maps [Q heads | K heads | V heads] at full resolution for the conv path."""
        b, length, c = q.shape
        h, w = size
        hr, wr = reduced_size
        q_map = q[:, length - h * w :].reshape(b, h, w, c)
        kv_map = kv[:, kv.shape[1] - hr * wr :].reshape(b, hr, wr, 2 * c)
        if self.sr_ratio > 1:
            rows = patch_owner_index(h, self.sr_ratio, q.device)
            cols = patch_owner_index(w, self.sr_ratio, q.device)
            kv_map = kv_map.index_select(1, rows).index_select(2, cols)
        maps = torch.cat([q_map, kv_map], dim=-1)  # (B, H, W, 3C), [q | k | v], head-major
        return maps.view(b, h, w, 3 * self.num_heads, self.head_dim).permute(0, 3, 4, 1, 2)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """(B, L, C) tokens of an H x W map (after L - H*W prefix tokens) -> (B, L, C)."""
        _, _, prefix = self.check_input(x, size)
        q, kv, reduced_size = self.project(x, size)
        out_att = self.proj(self.attend(q, kv))
        conv = self.conv_path(self.conv_input(q, kv, size, reduced_size))  # (B, C, H, W)
        conv = conv.flatten(2).transpose(1, 2)
        if prefix:
            conv = F.pad(conv, (0, 0, prefix, 0))
        return self.proj_drop(self.rate1 * out_att + self.rate2 * conv)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold ``rate1`` into ``proj`` and ``rate2`` into ``dep_conv`` in place; both then read 1.

        Both follow linear maps (``proj`` with bias, ``dep_conv`` without bias, zero padding), so
        the fold is exact up to rounding; idempotent.
        """
        self.proj.weight.mul_(self.rate1)
        self.proj.bias.mul_(self.rate1)
        self.conv_path.dep_conv.weight.mul_(self.rate2)
        self.rate1.fill_(1.0)
        self.rate2.fill_(1.0)

    switch_to_deploy = reparameterize

    def extra_repr(self) -> str:
        return super().extra_repr() + f", kernel_conv={self.kernel_conv}"
