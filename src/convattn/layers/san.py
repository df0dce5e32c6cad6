"""SAN's patchwise self-attention, and its ACmix form.

Zhao, Jia, Koltun, "Exploring Self-attention for Image Recognition", CVPR 2020 (official code:
hszhao/SAN, ``model/san.py``, class ``SAM`` with ``sa_type=1``). ``docs/operators/san.md`` has the
equations and the official code's conventions; ``docs/operators/acmix-san.md`` reconstructs the
ACmix form.

Patchwise attention, for an output pixel i on the stride-s grid and its k x k window R(i) (slots
j = dy * k + dx, reflect-padded at the border)::

    w(i)      = gamma([q_i, k_j for j in R(i)])     (k*k weights for each of G channel groups)
    out_c(i)  = sum_{j in R(i)} w(i)[c mod G, j] * v_c(j)

with ``q, k`` (``rel_channels`` each) and ``v`` (``out_channels``) 1x1 projections of the input
(one fused ``qkv`` convolution here), ``G = out_channels // share_planes``, and ``gamma`` the
official weight MLP ``conv_w``: BN, ReLU, 1x1 conv (no bias) to G channels, BN, ReLU, 1x1 conv to
G * k*k channels (channel ``g * k*k + j``). There is no softmax: the weights are used as they come.
Channel c of v uses the weights of group ``c mod G`` (the official aggregation kernel's rule), so
channels c, c + G, c + 2G, ... share one window.

The window sum is :func:`~convattn.layers._window_tiles.window_aggregate`, the batched-matmul window
machinery of ACmix's attention with the weights given; the k x k windows of the keys that feed the
MLP come from :func:`~convattn.layers._window_tiles.window_gather`. Both are plain ATen operators
(the official kernels are CUDA-only), so every device and every standard tool runs them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._checks import check_feature_map, check_positive_int
from ._window_tiles import reflect_index, window_aggregate, window_gather
from .acmix import ACmixConvPath
from .conv_bn import fuse_conv_bn_module

__all__ = ["ACmixPatchwiseAttention", "PatchwiseSelfAttention", "san_window_index"]

_OFFICIAL_PROJECTIONS = ("conv1", "conv2", "conv3")


def san_window_index(
    height: int, width: int, kernel_size: int, stride: int = 1, device: torch.device | str = "cpu"
) -> Tensor:
    """Flat input index (y * W + x) read by window slot j of every output pixel: (k*k, H', W').

    The border rule (reflection, repeated on maps smaller than the window) made explicit, so the
    weights from :meth:`PatchwiseSelfAttention.attention` can be drawn on the input grid.
    """
    k, s, pad = kernel_size, stride, kernel_size // 2
    rows, cols = reflect_index(height, pad, device), reflect_index(width, pad, device)
    out_h, out_w = -(-height // s), -(-width // s)
    offsets = torch.arange(k, device=device)
    row = rows[s * torch.arange(out_h, device=device).view(1, -1) + offsets.view(-1, 1)]
    col = cols[s * torch.arange(out_w, device=device).view(1, -1) + offsets.view(-1, 1)]
    return (row.view(k, 1, out_h, 1) * width + col.view(1, k, 1, out_w)).reshape(
        k * k, out_h, out_w
    )


class PatchwiseSelfAttention(nn.Module):
    """SAN patchwise self-attention (official ``SAM``, ``sa_type=1``), a drop-in for a k x k conv.

    Defined on every input size and stride: output pixel (y, x) sits on input pixel (s*y, s*x), the
    output is ceil(H/s) x ceil(W/s) (the official module only runs at stride 1), and windows are
    reflect-padded, the reflection repeated on maps smaller than the window (the official kernel
    reflects once, so it needs maps of at least k // 2 + 1 pixels).

    Parameters: ``qkv`` (1x1 with bias, = official ``conv1`` / ``conv2`` / ``conv3`` stacked:
    channels [q | k | v]) and ``conv_w`` (the official weight MLP, same keys).
    ``load_state_dict`` accepts the official keys. ``reparameterize()`` folds the MLP's inner BN
    (``conv_w.3``) into the convolution before it (``conv_w.2`` gains a bias).

    Args:
        in_channels: input channels C_in.
        out_channels: output channels C (= v's channels), divisible by ``share_planes``.
        stride: stride s.
        kernel_size: window side k (odd; SAN uses 3 in its first stage and 7 elsewhere).
        rel_channels: channels of q and k (default ``in_channels // 16``, at least 1, as SAN).
        share_planes: channels sharing one set of window weights (C / G; SAN: 8).
        deploy: build the folded form (``conv_w.2`` with bias, ``conv_w.3`` an Identity).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        kernel_size: int = 7,
        rel_channels: int | None = None,
        share_planes: int = 8,
        deploy: bool = False,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        if rel_channels is None:
            rel_channels = max(1, in_channels // 16) if isinstance(in_channels, int) else 0
        for name, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("stride", stride),
            ("kernel_size", kernel_size),
            ("rel_channels", rel_channels),
            ("share_planes", share_planes),
        ):
            check_positive_int(value, name, owner)
        if kernel_size % 2 == 0:
            raise ValueError(
                f"{owner}: 'kernel_size' must be odd (centred window), got {kernel_size}"
            )
        if out_channels % share_planes:
            raise ValueError(
                f"{owner}: 'out_channels' ({out_channels}) must be divisible by "
                f"'share_planes' ({share_planes})"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.kernel_size = kernel_size
        self.rel_channels = rel_channels
        self.share_planes = share_planes
        self.groups = out_channels // share_planes
        slots = kernel_size * kernel_size
        self.qkv = nn.Conv2d(in_channels, 2 * rel_channels + out_channels, kernel_size=1)
        hidden = rel_channels * (slots + 1)
        self.conv_w = nn.Sequential(
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, self.groups, kernel_size=1, bias=deploy),
            nn.Identity() if deploy else nn.BatchNorm2d(self.groups),
            nn.ReLU(inplace=True),
            nn.Conv2d(self.groups, self.groups * slots, kernel_size=1),
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        official = [f"{prefix}{c}.{p}" for p in ("weight", "bias") for c in _OFFICIAL_PROJECTIONS]
        if all(key in state_dict for key in official) and prefix + "qkv.weight" not in state_dict:
            for p in ("weight", "bias"):
                parts = [state_dict.pop(f"{prefix}{c}.{p}") for c in _OFFICIAL_PROJECTIONS]
                state_dict[f"{prefix}qkv.{p}"] = torch.cat(parts, 0)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of the output for an H x W input: (ceil(H/s), ceil(W/s))."""
        return -(-height // self.stride), -(-width // self.stride)

    def split_projections(self, qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, 2*rel + C, H, W) -> q, k (B, rel, H, W) and v (B, C, H, W) views."""
        rel = self.rel_channels
        q, key, v = qkv.split((rel, rel, self.out_channels), dim=1)
        return q, key, v

    def window_weights(self, q: Tensor, key: Tensor) -> Tensor:
        """The MLP's weights (B, G, k*k, H', W') from q (its strided pixels) and k's windows."""
        s, k = self.stride, self.kernel_size
        features = torch.cat([q[..., ::s, ::s], window_gather(key, k, s)], dim=1)
        weights = self.conv_w(features)  # (B, G * k*k, H', W'), channel g * k*k + j
        return weights.view(weights.shape[0], self.groups, k * k, *weights.shape[-2:])

    def attention(
        self, qkv: Tensor, return_weights: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Patchwise attention on the projections: (B, 2*rel + C, H, W) -> (B, C, H', W').

        With ``return_weights`` also the window weights (B, G, k*k, H', W') (slot ``dy * k + dx``;
        :func:`san_window_index` says which input pixel each slot reads): the hook that
        visualisation reads. Channel c of the output uses group ``c % G``.
        """
        q, key, v = self.split_projections(qkv)
        weights = self.window_weights(q, key)
        b, c, h, w = v.shape
        g, share = self.groups, self.share_planes
        # Channel c = m * G + g uses group g: one (share_planes x H x W) value map per group.
        values = v.reshape(b, share, g, h, w).transpose(1, 2).reshape(b * g, share, h, w)
        out = window_aggregate(
            values, weights.reshape(b * g, *weights.shape[2:]), self.kernel_size, self.stride
        )
        out = out.view(b, g, share, *out.shape[-2:]).transpose(1, 2).reshape(b, c, *out.shape[-2:])
        return (out, weights) if return_weights else out

    def window_index(self, height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
        """Flat input index read by window slot j of every output pixel (see :func:`san_window_index`)."""
        return san_window_index(height, width, self.kernel_size, self.stride, device)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, C, ceil(H/s), ceil(W/s))."""
        check_feature_map(x, self.in_channels, type(self).__name__)
        return self.attention(self.qkv(x))

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, stride={self.stride}, "
            f"kernel_size={self.kernel_size}, rel_channels={self.rel_channels}, "
            f"share_planes={self.share_planes}"
        )

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the weight MLP's inner BN (``conv_w.3``) into ``conv_w.2`` in place (idempotent).

        The MLP's first BN precedes a ReLU and sees k's window slots as separate channels, so it
        cannot move into ``qkv``; it stays.
        """
        if isinstance(self.conv_w[3], nn.BatchNorm2d):
            self.conv_w[2] = fuse_conv_bn_module(self.conv_w[2], self.conv_w[3])
            self.conv_w[3] = nn.Identity()

    switch_to_deploy = reparameterize


class ACmixPatchwiseAttention(PatchwiseSelfAttention):
    """ACmix with SAN's patchwise attention (ACmix paper, section 4.5; reconstruction).

    ``out = rate1 * patchwise_attention(q, k, v) + rate2 * conv_path(q, k, v)`` on the one set of
    1x1 projections ``qkv``. The convolution path is ACmix's (:class:`ACmixConvPath`) on the
    projections cut into heads of ``rel_channels`` channels: q and k are one head each, v is
    ``C / rel_channels`` heads; ``fc`` (1x1, no bias) mixes those 2 + C / rel maps into k_conv^2 maps
    per channel-in-head, and the shift-initialised grouped convolution ``dep_conv`` turns them into
    C channels. ``docs/operators/acmix-san.md`` gives the reasons (and the published sizes that
    decide between the readings).

    Extra parameters: ``conv_path.fc``, ``conv_path.dep_conv``, ``rate1``, ``rate2`` (0.5 each at
    init, as ACmix). ``reparameterize()`` also folds the rates (both then read 1).

    The other arguments are those of :class:`PatchwiseSelfAttention`; ``out_channels`` must also
    be divisible by ``rel_channels``.

    Args:
        kernel_conv: kernel side of the shift convolution (odd; ACmix: 3).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        kernel_size: int = 7,
        rel_channels: int | None = None,
        share_planes: int = 8,
        kernel_conv: int = 3,
        deploy: bool = False,
    ) -> None:
        super().__init__(
            in_channels, out_channels, stride, kernel_size, rel_channels, share_planes, deploy
        )
        owner = type(self).__name__
        check_positive_int(kernel_conv, "kernel_conv", owner)
        if kernel_conv % 2 == 0:
            raise ValueError(f"{owner}: 'kernel_conv' must be odd, got {kernel_conv}")
        if out_channels % self.rel_channels:
            raise ValueError(
                f"{owner}: 'out_channels' ({out_channels}) must be divisible by 'rel_channels' "
                f"({self.rel_channels}): v is cut into heads of rel_channels channels"
            )
        self.kernel_conv = kernel_conv
        self.num_heads = out_channels // self.rel_channels  # heads of v
        self.conv_path = ACmixConvPath(
            self.num_heads, self.rel_channels, kernel_conv, stride, fc_bias=False
        )
        # q and k add one head each to the maps fc mixes: 2 + num_heads inputs, not 3 * num_heads.
        self.conv_path.fc = nn.Conv2d(2 + self.num_heads, kernel_conv**2, 1, bias=False)
        self.rate1 = nn.Parameter(torch.full((1,), 0.5))
        self.rate2 = nn.Parameter(torch.full((1,), 0.5))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, C, ceil(H/s), ceil(W/s))."""
        check_feature_map(x, self.in_channels, type(self).__name__)
        b, _, h, w = x.shape
        qkv = self.qkv(x).contiguous()
        out_att = self.attention(qkv)
        maps = qkv.view(b, 2 + self.num_heads, self.rel_channels, h, w)
        out_conv = self.conv_path(maps)
        return self.rate1 * out_att + self.rate2 * out_conv

    def extra_repr(self) -> str:
        return super().extra_repr() + f", kernel_conv={self.kernel_conv}"

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the MLP's inner BN, ``rate2`` into ``dep_conv`` and ``rate1`` into v (idempotent).

        The patchwise attention is linear in v (its weights depend on q and k only), so ``rate1``
        scales the v rows of ``qkv``; ``fc``'s v columns are divided by it, leaving the conv path
        unchanged (skipped if rate1 is 0). ``dep_conv`` has no bias and zero padding, so ``rate2``
        scales it.
        """
        super().reparameterize()
        self.conv_path.dep_conv.weight.mul_(self.rate2)
        self.rate2.fill_(1.0)
        rate1 = float(self.rate1)
        if rate1 not in (0.0, 1.0):
            v_rows = slice(2 * self.rel_channels, None)
            self.qkv.weight[v_rows].mul_(rate1)
            self.qkv.bias[v_rows].mul_(rate1)
            self.conv_path.fc.weight[:, 2:].div_(rate1)
            self.rate1.fill_(1.0)

    switch_to_deploy = reparameterize
