"""X-volution: convolution and self-attention merged into one dynamic convolution.

Paper: Xuanhong Chen, Hang Wang, Bingbing Ni, "X-volution: On the Unification of Convolution and
Self-attention", arXiv:2106.02253. No official code exists; this implements the reconstruction documented in
``docs/notes/xvolution.md`` (the § numbers below name its sections):

- §1.4 Pixel Shift Self-Attention (PSSA), with ``q = s·p`` the input centre of output pixel ``p``::

      PSSA(X)[o, p] = Σ_{d∈D} Σ_c W^a_d[o, c] · X[c, q] · X[c, q + d]      (zero fill outside)

  ``pssa_directions``, ``pixel_shift_products``, ``PixelShiftAttention``.
- §1.5 X-volution(SA): the attention branch is the library's ``GlobalSelfAttention2d``
  (``layers/attention.py``), also the "SA alone" baseline.
- X-volution with Involution (the paper's other general form): the attention branch is the
  library's ``Involution2d`` (``layers/involution.py``). Its kernel at output pixel p is generated
  from the input at p (average-pooled by the stride) and the branch is linear in the neighbours,
  so both branches merge exactly into one dynamic convolution, ``InvolutionModulatedConv2d``::

      K_p[o, c, δ] = Ŵ^s[o, c, δ] + a[o] · P[o, c] · H[g(c), δ, p]

  (P the involution's output projection, identity when C_in == C_out; a the folded BN scale).
- §2 the training module ``XVolution``: ``BN_c(Conv_KxK(X)) + BN_a(Attn(X))``, no activation.
- §3 re-parameterisation. Pure fusion maths (``fuse_xvolution_kernels``, ``directions_to_kernel``)
  and the deploy operator, one dynamic convolution whose kernel at output pixel ``p`` is::

      K_p[o, c, δ] = Ŵ^s[o, c, δ] + 1[δ∈D] · Ŵ^a[o, c, δ] · X[c, q]

  ``centre_modulated_conv2d`` / ``CentreModulatedConv2d``. Per-pixel kernels are never built: the
  dynamic part is a weighting of the products X[c,q]·X[c,q+δ], computed as for PSSA.

This file holds the operator as the paper defines it (the training module first, then PSSA and the
deploy forms). How the PSSA sums are computed fast on CPU (channels-last products, chunked in-place
accumulation, float16 widening) and the tuned constants live in the private
``_xvolution_kernels`` module; both routes give the same result.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import _xvolution_kernels as _kernels
from ._checks import check_choice, check_drop_in, check_feature_map, check_positive_int
from ._xvolution_kernels import directions_to_kernel, footprint_taps, tap_indices
from .attention import GlobalSelfAttention2d, resolve_num_heads
from .conv_bn import bn_scale_shift, fuse_conv_bn
from .involution import Involution2d

__all__ = [
    "CentreModulatedConv2d",
    "InvolutionModulatedConv2d",
    "PixelShiftAttention",
    "XVolution",
    "centre_modulated_conv2d",
    "directions_to_kernel",
    "fuse_xvolution_kernels",
    "pixel_shift_products",
    "pssa_directions",
]

PSSA_WEIGHTINGS = ("full", "depthwise", "none")
ATTENTIONS = ("pssa", "sa", "involution")

Direction = tuple[int, int]


def pssa_directions(include_center: bool = False) -> tuple[Direction, ...]:
    """The shift set D_1 of §1.4: the 8 neighbour offsets (di, dj), row-major over the 3x3 window.

    Args:
        include_center: also include d = (0, 0), i.e. the term X ⊙ X (at its row-major place).
    """
    return tuple(
        (i, j) for i in (-1, 0, 1) for j in (-1, 0, 1) if include_center or (i, j) != (0, 0)
    )


NEIGHBOURS: tuple[Direction, ...] = pssa_directions()
"""The default D_1: the 8 neighbours at distance 1, centre excluded."""


# Tuned constants of the CPU inference kernels (measured and explained in ``_xvolution_kernels``),
# read at every call so that they can be moved (tests do, to run every chunking route).
_PRODUCTS_CHUNK_BYTES = _kernels.PRODUCTS_CHUNK_BYTES
_CHANNELS_LAST_MIN_PIXELS = _kernels.CHANNELS_LAST_MIN_PIXELS


def _tuning() -> dict[str, int]:
    return dict(
        chunk_bytes=_PRODUCTS_CHUNK_BYTES, channels_last_min_pixels=_CHANNELS_LAST_MIN_PIXELS
    )


# --------------------------------------------------------------------------------------------------
# §2 the training module, and its re-parameterisation (§3)
# --------------------------------------------------------------------------------------------------


class XVolution(nn.Module):
    """X-volution (arXiv:2106.02253): a KxK conv and an attention branch, each with a BatchNorm.

    Training form (§2): ``BN_c(Conv_KxK(X)) + BN_a(Attn(X))``, no activation and no BN after the
    sum (it replaces a "3x3 conv + BN" pair). ``reparameterize()`` folds both BNs and, for PSSA,
    merges the branches into one dynamic convolution (§3, :class:`CentreModulatedConv2d`); for
    ``attention="involution"`` likewise (:class:`InvolutionModulatedConv2d`, the involution's own
    generator BN folded too). For ``attention="sa"`` the global branch cannot become a KxK kernel: re-parameterisation folds the
    conv BN into the conv and the attention BN into the output projection and keeps both branches.

    Args:
        in_channels: C_in.
        out_channels: C_out.
        stride: 1 or more; output is ceil(H/stride) x ceil(W/stride).
        kernel_size: K of the conv branch, odd and >= 3 (the PSSA footprint must fit inside it).
        pssa_weighting: ``"full"`` | ``"depthwise"`` | ``"none"`` (see :class:`PixelShiftAttention`).
        include_center: PSSA also uses d = (0, 0), the term X ⊙ X.
        attention: ``"pssa"`` (X-volution proper), ``"sa"`` (X-volution(SA), global attention) or
            ``"involution"`` (the attention branch is an :class:`Involution2d`).
        sa_head_dim: head width of the ``"sa"`` branch, whose attention width is ``in_channels``
            (:class:`GlobalSelfAttention2d`); ``in_channels`` must be divisible by it.
        involution_kernel_size: kernel K_i of the ``"involution"`` branch (RedNet: 7).
        involution_group_channels: channels sharing one generated kernel (RedNet: 16);
            ``in_channels`` must be divisible by it.
        involution_reduction: channel reduction of the kernel generator (RedNet: 4).
        attn_bn_zero_init: start the attention BN's gamma at 0 (training starts from the plain CNN);
            a stability knob, not in the paper (§2).
        deploy: build the re-parameterised form directly (for loading deploy state dicts).

    Submodules (state-dict keys):
        training: ``conv`` (no bias), ``conv_bn``, ``attn``, ``attn_bn``;
        deploy, PSSA: ``reparam_conv`` (:class:`CentreModulatedConv2d`);
        deploy, SA: ``reparam_conv`` (biased conv) and ``attn`` (``proj`` holds the folded BN);
        deploy, involution: ``reparam_conv`` (:class:`InvolutionModulatedConv2d`).

    MACs (as ``count_macs`` / FlopCounterMode counts them), per output pixel, N' = Ho·Wo:
        conv ``C_out·C_in·K²``, plus for PSSA ``'full'`` the 1x1 weighting ``C_out·|D|·C_in``, or
        for ``'depthwise'``/``'none'`` a 3x3 depthwise conv ``9·C``. The ``|D|·C_in`` products
        X ⊙ S_d(X) are elementwise and not counted (nor is BatchNorm). The deploy form of
        ``'full'`` counts the same. For ``'sa'``: ``3·C_in²`` (q/k/v) + ``2·N'·C_in`` (QK^T and
        AV) + ``C_in·C_out`` (projection) on top of the conv. For ``'involution'``: the
        involution's ``C_in·C_in/r + C_in/r·K_i²·G + C_in·K_i²`` (+ ``C_in·C_out`` if projecting)
        on top of the conv, in both forms.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        kernel_size: int = 3,
        *,
        pssa_weighting: str = "full",
        include_center: bool = False,
        attention: str = "pssa",
        sa_head_dim: int = 64,
        involution_kernel_size: int = 7,
        involution_group_channels: int = 16,
        involution_reduction: int = 4,
        attn_bn_zero_init: bool = False,
        deploy: bool = False,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        check_drop_in(owner, in_channels, out_channels, stride)
        _check_kernel_size(kernel_size, owner)
        check_choice(attention, "attention", ATTENTIONS, owner)
        check_choice(pssa_weighting, "pssa_weighting", PSSA_WEIGHTINGS, owner)
        if attention != "pssa" and (pssa_weighting != "full" or include_center):
            raise ValueError(
                f"{owner}: 'pssa_weighting' and 'include_center' only apply to attention='pssa'"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.kernel_size = kernel_size
        self.attention = attention
        self.pssa_weighting = pssa_weighting
        self.directions = pssa_directions(include_center)
        self.involution_kernel_size = involution_kernel_size
        self._involution_options = dict(
            involution_kernel_size=involution_kernel_size,
            involution_group_channels=involution_group_channels,
            involution_reduction=involution_reduction,
        )
        self.deploy = deploy

        if attention == "pssa" and pssa_weighting != "full" and in_channels != out_channels:
            raise ValueError(
                f"{owner}: pssa_weighting={pssa_weighting!r} needs in_channels == out_channels, "
                f"got {in_channels} -> {out_channels}; use pssa_weighting='full'"
            )

        if attention == "sa":
            # The 'sa' branch attends at width in_channels: in_channels / sa_head_dim heads.
            heads = resolve_num_heads(
                in_channels, None, sa_head_dim, owner, "in_channels", head_dim_name="sa_head_dim"
            )
            # Same module in both forms: the deploy form folds the attention BN into `proj`.
            self.attn = GlobalSelfAttention2d(in_channels, out_channels, stride, num_heads=heads)
        if attention == "involution":
            check_positive_int(involution_group_channels, "involution_group_channels", owner)
            if in_channels % involution_group_channels:
                raise ValueError(
                    f"{owner}: the 'involution' branch needs in_channels ({in_channels}) divisible "
                    f"by 'involution_group_channels' ({involution_group_channels})"
                )
        if deploy:
            if attention == "involution":
                self.reparam_conv = InvolutionModulatedConv2d(
                    in_channels, out_channels, kernel_size, stride, **self._involution_options
                )
            elif attention == "pssa":
                self.reparam_conv = CentreModulatedConv2d(
                    in_channels,
                    out_channels,
                    kernel_size,
                    stride,
                    self.directions,
                    depthwise_dynamic=pssa_weighting != "full",
                )
            else:
                self.reparam_conv = self._make_conv(bias=True)
            return

        self.conv = self._make_conv(bias=False)
        self.conv_bn = nn.BatchNorm2d(out_channels)
        if attention == "pssa":
            self.attn = PixelShiftAttention(
                in_channels, out_channels, stride, pssa_weighting, include_center
            )
        elif attention == "involution":
            self.attn = Involution2d(
                in_channels,
                out_channels,
                stride,
                kernel_size=involution_kernel_size,
                group_channels=involution_group_channels,
                reduction=involution_reduction,
            )
        self.attn_bn = nn.BatchNorm2d(out_channels)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        if attn_bn_zero_init:
            nn.init.zeros_(self.attn_bn.weight)

    def _make_conv(self, bias: bool) -> nn.Conv2d:
        k = self.kernel_size
        return nn.Conv2d(self.in_channels, self.out_channels, k, self.stride, k // 2, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.in_channels, type(self).__name__)
        if self.deploy:
            if self.attention == "sa":
                return self.reparam_conv(x) + self.attn(x)
            return self.reparam_conv(x)
        return self.conv_bn(self.conv(x)) + self.attn_bn(self.attn(x))

    def get_equivalent_kernel_bias(
        self,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """The folded (static kernel, dynamic kernel on KxK taps, bias); differentiable.

        For ``attention="sa"`` the dynamic kernel is None (the global branch has no KxK kernel) and
        the bias is the conv branch's only. For ``attention="involution"`` the second item is the
        per-output-channel scale ``a`` of the involution branch (its kernels are generated per
        pixel, see :class:`InvolutionModulatedConv2d`) and the bias is both branches'.
        """
        if self.deploy:
            conv = self.reparam_conv
            dynamic = {"pssa": "dynamic_weight", "involution": "dynamic_scale"}.get(self.attention)
            return conv.weight, getattr(conv, dynamic) if dynamic else None, conv.bias
        if self.attention == "sa":
            static, bias = fuse_conv_bn(self.conv.weight, None, self.conv_bn)
            return static, None, bias
        if self.attention == "involution":
            static, bias = fuse_conv_bn(self.conv.weight, None, self.conv_bn)
            scale, shift = bn_scale_shift(self.attn_bn)
            return static, scale, bias + shift
        return fuse_xvolution_kernels(
            self.conv.weight,
            self.conv_bn,
            self.attn.direction_weights(),
            self.attn_bn,
            self.directions,
        )

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Switch to the deploy form in place (idempotent), folding BNs with running statistics."""
        if self.deploy:
            return
        static, dynamic, bias = self.get_equivalent_kernel_bias()
        if self.attention == "involution":
            inv = self.attn
            fused = InvolutionModulatedConv2d(
                self.in_channels,
                self.out_channels,
                self.kernel_size,
                self.stride,
                **self._involution_options,
            ).to(device=static.device, dtype=static.dtype)
            inv.reparameterize()  # the kernel generator's own BN
            fused.involution.load_state_dict(inv.state_dict())
            fused.dynamic_scale = nn.Parameter(dynamic.detach().clone())
        elif self.attention == "pssa":
            fused = CentreModulatedConv2d(
                self.in_channels,
                self.out_channels,
                self.kernel_size,
                self.stride,
                self.directions,
                depthwise_dynamic=self.pssa_weighting != "full",
            )
            fused.dynamic_weight = nn.Parameter(dynamic.detach().clone())
        else:
            fused = self._make_conv(bias=True)
            proj = self.attn.proj
            proj_weight, proj_bias = fuse_conv_bn(proj.weight, proj.bias, self.attn_bn)
            proj.weight.copy_(proj_weight)
            proj.bias.copy_(proj_bias)
        fused.weight = nn.Parameter(static.detach().clone())
        fused.bias = nn.Parameter(bias.detach().clone())
        self.reparam_conv = fused.to(device=static.device, dtype=static.dtype)
        for name in ("conv", "conv_bn", "attn_bn"):
            delattr(self, name)
        if self.attention != "sa":
            del self.attn
        self.deploy = True

    switch_to_deploy = reparameterize

    @torch.no_grad()
    def kernel_magnitudes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-pixel Frobenius norms of the static and the dynamic part of the deploy kernel K_p.

        ``static[b, p] = ||Ŵ^s||`` (content-independent, the same at every pixel) and
        ``dynamic[b, p] = ||1[δ∈D] Ŵ^a ⊙ X[b, :, s·p]|| = sqrt(Σ_c X[b,c,s·p]² Σ_{o,δ∈D} Ŵ^a[o,c,δ]²)``,
        computed without building any kernel. PSSA only.

        Args:
            x: (B, C_in, H, W) input of this layer.

        Returns:
            ``(static, dynamic)``, each (B, ceil(H/s), ceil(W/s)), in float32 or x's wider dtype.
        """
        check_feature_map(x, self.in_channels, type(self).__name__)
        if self.attention != "pssa":
            raise ValueError(
                "XVolution.kernel_magnitudes: only defined for attention='pssa' (the 'sa' branch "
                "has a global, not a KxK, dynamic kernel)"
            )
        static, dynamic, _ = self.get_equivalent_kernel_bias()
        dtype = torch.promote_types(x.dtype, torch.float32)
        taps = dynamic.flatten(2)[:, :, tap_indices(self.directions, self.kernel_size)]
        # Σ_{o,δ∈D} Ŵ^a[o,c,δ]² per input channel c; a depthwise kernel is indexed (c, 1, δ).
        reduce = (0, 2) if self.pssa_weighting == "full" else (1, 2)
        col_sq = taps.to(dtype).square().sum(dim=reduce)
        centre = x[:, :, :: self.stride, :: self.stride].to(dtype)
        dyn = torch.einsum("bchw,c->bhw", centre.square(), col_sq).sqrt()
        return static.to(dtype).norm().expand_as(dyn).clone(), dyn

    def extra_repr(self) -> str:
        opts = f"attention={self.attention!r}, deploy={self.deploy}"
        if self.attention == "pssa":
            opts += f", pssa_weighting={self.pssa_weighting!r}, directions={len(self.directions)}"
        elif self.attention == "involution":
            opts += f", involution_kernel_size={self.involution_kernel_size}"
        return (
            f"{self.in_channels}, {self.out_channels}, stride={self.stride}, "
            f"kernel_size={self.kernel_size}, {opts}"
        )


# --------------------------------------------------------------------------------------------------
# §1.4 Pixel Shift Self-Attention
# --------------------------------------------------------------------------------------------------


def pixel_shift_products(
    x: torch.Tensor, stride: int = 1, directions: Sequence[Direction] = NEIGHBOURS
) -> torch.Tensor:
    """Transformed features P_d = X ⊙ S_d(X) of §1.4, evaluated at the strided centres.

    Args:
        x: (B, C, H, W) input.
        stride: evaluate at centres ``q = stride · p`` only.
        directions: offsets d with |di|, |dj| <= 1; S_d fills with zeros outside the image.

    Returns:
        (B, |D|, C, ceil(H/stride), ceil(W/stride)), direction-major, so that ``flatten(1, 2)`` is
        the channel concatenation of the maps P_d of §1.4. The memory is channels-last
        (B, Ho, Wo, |D|, C): the 1x1 weighting then runs as one GEMM over |D|·C contiguous
        channels, about twice as fast on CPU (oneDNN) as from planar maps.
    """
    directions = _check_directions(directions, "pixel_shift_products")
    h, w = x.shape[-2:]
    padded = _kernels._pad_nhwc(x)
    out = _kernels._products_from_padded(
        padded, -(-h // stride), -(-w // stride), stride, directions
    )
    return out.permute(0, 3, 4, 1, 2)


class PixelShiftAttention(nn.Module):
    """Pixel Shift Self-Attention (§1.4): weighted products of each pixel with its neighbours.

    No softmax, no scaling, no q/k projections: the branch's BatchNorm (in ``XVolution``) is its only
    normalisation.

    Args:
        in_channels: C_in.
        out_channels: C_out.
        stride: the products are evaluated at the centres ``stride · p``.
        weighting: ``"full"`` (one C_out x C_in pointwise weight per direction, i.e. a 1x1 conv over
            the concatenated products, ``|D|·C_in -> C_out``), ``"depthwise"`` (one weight per
            channel and direction) or ``"none"`` (plain sum over directions). The last two need
            ``in_channels == out_channels``.
        include_center: add the d = (0, 0) term X ⊙ X.

    Attributes:
        weight: ``"full"``: (C_out, |D|·C_in, 1, 1), input channels direction-major (d·C_in + c);
            ``"depthwise"``: (C, 1, |D|). ``"none"`` keeps a constant all-ones buffer of that shape
            (not in the state dict).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        weighting: str = "full",
        include_center: bool = False,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        check_drop_in(owner, in_channels, out_channels, stride)
        check_choice(weighting, "pssa_weighting", PSSA_WEIGHTINGS, owner)
        if weighting != "full" and in_channels != out_channels:
            raise ValueError(
                f"{owner}: pssa_weighting={weighting!r} needs in_channels == out_channels, got "
                f"{in_channels} -> {out_channels}; use pssa_weighting='full'"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.weighting = weighting
        self.directions = pssa_directions(include_center)
        n = len(self.directions)
        if weighting == "full":
            self.weight = nn.Parameter(torch.empty(out_channels, n * in_channels, 1, 1))
        elif weighting == "depthwise":
            self.weight = nn.Parameter(torch.empty(out_channels, 1, n))
        else:
            self.register_buffer("weight", torch.ones(out_channels, 1, n), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if isinstance(self.weight, nn.Parameter):
            nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")

    def direction_weights(self) -> torch.Tensor:
        """W^a per direction: (C_out, C_in, |D|), or (C, 1, |D|) for depthwise / none."""
        if self.weighting == "full":
            return self.weight.view(self.out_channels, len(self.directions), -1).transpose(1, 2)
        return self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.in_channels, type(self).__name__)
        chunk_bytes = _tuning()["chunk_bytes"]
        return _kernels.pssa(
            x, self.direction_weights(), self.stride, self.directions, None, chunk_bytes
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, stride={self.stride}, "
            f"weighting={self.weighting!r}, directions={len(self.directions)}"
        )


# --------------------------------------------------------------------------------------------------
# §3 the deploy forms: fusion maths and the merged dynamic convolutions
# --------------------------------------------------------------------------------------------------


def fuse_xvolution_kernels(
    conv_weight: torch.Tensor,
    conv_bn: nn.BatchNorm2d,
    pssa_weights: torch.Tensor,
    attn_bn: nn.BatchNorm2d,
    directions: Sequence[Direction],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fold both BatchNorms of the training form into one dynamic convolution (§3, step 1).

    Args:
        conv_weight: (C_out, C_in, K, K), the conv branch (no bias).
        conv_bn: the conv branch's BatchNorm (running statistics are used).
        pssa_weights: W^a per direction, (C_out, C_in, |D|), or (C, 1, |D|) for a depthwise
            (diagonal) weighting.
        attn_bn: the PSSA branch's BatchNorm.
        directions: the offsets d, in the order of ``pssa_weights``' last dim.

    Returns:
        ``(static, dynamic, bias)``: the static kernel Ŵ^s (C_out, C_in, K, K), the dynamic kernel
        Ŵ^a laid out on the KxK taps (C_out, C_in or 1, K, K; zero outside D) and the bias (C_out,).
        Differentiable.
    """
    static, conv_bias = fuse_conv_bn(conv_weight, None, conv_bn)
    dynamic, attn_bias = fuse_conv_bn(pssa_weights, None, attn_bn)
    dynamic = directions_to_kernel(dynamic, directions, conv_weight.shape[-1])
    return static, dynamic, conv_bias + attn_bias


def centre_modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    dynamic_weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int = 1,
    directions: Sequence[Direction] = NEIGHBOURS,
) -> torch.Tensor:
    """The deployed X-volution (§3): a KxK conv whose kernel is modulated by the centre pixel.

    ``Y[o,p] = b[o] + Σ_{c,δ} (W[o,c,δ] + 1[δ∈D] · W_dyn[o,c,δ] · X[c,q]) · X[c,q+δ]``, q = s·p,
    zero padding K//2. Computed exactly as ``conv2d(X, W) + Σ_d W_dyn_d · (X ⊙ S_d X)``, i.e. one
    conv plus one GEMM over the stacked products (never per-pixel kernels).

    Args:
        x: (B, C_in, H, W).
        weight: static kernel (C_out, C_in, K, K).
        dynamic_weight: (C_out, C_in, K, K), or (C_in, 1, K, K) for a depthwise (diagonal) dynamic
            part (then C_out = C_in). Taps outside ``directions`` are ignored (the indicator 1[δ∈D]).
        bias: (C_out,) or None.
        stride: s.
        directions: the footprint D (offsets with |di|, |dj| <= 1).

    Returns:
        (B, C_out, ceil(H/s), ceil(W/s)).
    """
    directions = _check_directions(directions, "centre_modulated_conv2d")
    taps = footprint_taps(dynamic_weight, directions)
    return _kernels.centre_modulated(x, weight, taps, bias, stride, directions, **_tuning())


class CentreModulatedConv2d(nn.Module):
    """The deploy form of X-volution with PSSA (§3): one dynamic KxK convolution.

    Kernel at output pixel p: ``weight + 1[δ∈D] · dynamic_weight · X[:, s·p]`` (channel-wise
    modulation by the centre pixel), plus ``bias``. See :func:`centre_modulated_conv2d`.

    Args:
        in_channels: C_in.
        out_channels: C_out.
        kernel_size: K, odd and >= 3.
        stride: s.
        directions: the footprint D of the dynamic part (default: the 8 neighbours).
        depthwise_dynamic: store the dynamic kernel as (C, 1, K, K) (diagonal in channels).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        directions: Sequence[Direction] = NEIGHBOURS,
        depthwise_dynamic: bool = False,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        check_drop_in(owner, in_channels, out_channels, stride)
        _check_kernel_size(kernel_size, owner)
        if depthwise_dynamic and in_channels != out_channels:
            raise ValueError(
                f"{owner}: 'depthwise_dynamic' needs in_channels == out_channels, got "
                f"{in_channels} -> {out_channels}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.directions = _check_directions(directions, owner)
        dyn_in = 1 if depthwise_dynamic else in_channels
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.dynamic_weight = nn.Parameter(
            torch.empty(out_channels, dyn_in, kernel_size, kernel_size)
        )
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self._footprint_cache: tuple[torch.Tensor, int, torch.Tensor] | None = None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        taps = torch.empty(*self.dynamic_weight.shape[:2], len(self.directions))
        nn.init.kaiming_normal_(taps, mode="fan_out", nonlinearity="relu")
        self.dynamic_weight.copy_(directions_to_kernel(taps, self.directions, self.kernel_size))
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.in_channels, type(self).__name__)
        taps = self._footprint()
        return _kernels.centre_modulated(
            x, self.weight, taps, self.bias, self.stride, self.directions, **_tuning()
        )

    def _footprint(self) -> torch.Tensor:
        """``_footprint_taps`` of ``dynamic_weight``, cached while it does not change (inference).

        The cache holds the source tensor, so its storage cannot be freed and its address reused;
        in-place updates (``load_state_dict``, optimiser steps) bump ``_version``.
        """
        w = self.dynamic_weight
        if (torch.is_grad_enabled() and w.requires_grad) or torch.compiler.is_compiling():
            return footprint_taps(w, self.directions)
        cached = self._footprint_cache
        if cached is None or cached[0].data_ptr() != w.data_ptr() or cached[1] != w._version:
            source = w.detach()
            cached = (source, w._version, footprint_taps(source, self.directions))
            self._footprint_cache = cached
        return cached[2]

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, directions={len(self.directions)}, "
            f"depthwise_dynamic={self.dynamic_weight.shape[1] == 1 and self.in_channels > 1}"
        )


class InvolutionModulatedConv2d(nn.Module):
    """The deploy form of X-volution with an Involution branch: one dynamic convolution.

    With H the involution's generated kernels (``Involution2d.generate_kernels``, K_i x K_i taps
    per group g, from the input average-pooled by the stride), P its output projection (identity
    when C_in == C_out) and a = ``dynamic_scale``, the kernel at output pixel p is::

        K_p[o, c, δ] = W[o, c, δ] + a[o] · P[o, c] · H[g(c), δ, p]      (δ over max(K, K_i)²)
        Y[o, p]     = b[o] + Σ_{c, δ} K_p[o, c, δ] · X[c, s·p + δ]       (zero padding)

    where W (``weight``, K x K) is zero outside its window. It is computed as
    ``conv2d(X, W) + b + a ⊙ Involution(X)``, never building per-pixel kernels;
    :meth:`dynamic_kernels` builds them (for tests and visualisation).

    Args:
        in_channels: C_in.
        out_channels: C_out.
        kernel_size: K of the static part (odd).
        stride: s.
        involution_kernel_size: K_i (odd).
        involution_group_channels: channels sharing one generated kernel.
        involution_reduction: channel reduction of the kernel generator.

    Submodules / keys: ``weight``, ``bias``, ``dynamic_scale`` (C_out,), ``involution`` (an
    :class:`~convattn.layers.involution.Involution2d` with its generator BN folded).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        *,
        involution_kernel_size: int = 7,
        involution_group_channels: int = 16,
        involution_reduction: int = 4,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        check_drop_in(owner, in_channels, out_channels, stride)
        check_positive_int(kernel_size, "kernel_size", owner)
        if kernel_size % 2 == 0:
            raise ValueError(f"{owner}: 'kernel_size' must be odd, got {kernel_size}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.dynamic_scale = nn.Parameter(torch.ones(out_channels))
        self.involution = Involution2d(
            in_channels,
            out_channels,
            stride,
            kernel_size=involution_kernel_size,
            group_channels=involution_group_channels,
            reduction=involution_reduction,
            deploy=True,
        )
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.in_channels, type(self).__name__)
        out = F.conv2d(x, self.weight, self.bias, self.stride, self.kernel_size // 2)
        return out.addcmul(self.involution(x), self.dynamic_scale.view(1, -1, 1, 1))

    def dynamic_kernels(self, x: torch.Tensor) -> torch.Tensor:
        """The per-pixel kernels K_p, (B, C_out, C_in, K', K', ceil(H/s), ceil(W/s)) with
        K' = max(K, K_i). Memory grows as C_out·C_in·K'²·pixels: small inputs only."""
        inv = self.involution
        k = max(self.kernel_size, inv.kernel_size)
        generated = inv.generate_kernels(x)  # (B, G, K_i², Ho, Wo)
        b, _, _, ho, wo = generated.shape
        per_channel = generated.repeat_interleave(self.in_channels // inv.groups, dim=1)
        per_channel = per_channel.view(
            b, self.in_channels, inv.kernel_size, inv.kernel_size, ho, wo
        )
        if isinstance(inv.proj, nn.Conv2d):
            mix = inv.proj.weight.flatten(1)
        else:
            mix = torch.eye(self.in_channels, dtype=x.dtype, device=x.device)
        mix = self.dynamic_scale.view(-1, 1) * mix  # (C_out, C_in)
        dynamic = mix.view(1, *mix.shape, 1, 1, 1, 1) * per_channel.unsqueeze(1)
        pad_dyn = (k - inv.kernel_size) // 2
        pad_static = (k - self.kernel_size) // 2
        dynamic = F.pad(dynamic.movedim((3, 4), (5, 6)), (pad_dyn,) * 4).movedim((5, 6), (3, 4))
        static = F.pad(self.weight, (pad_static,) * 4)
        return dynamic + static.view(1, *static.shape, 1, 1)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, involution_kernel_size={self.involution.kernel_size}"
        )


# --------------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------------


def _check_directions(directions: Sequence[Direction], owner: str) -> tuple[Direction, ...]:
    """Distinct offsets inside the 3x3 window (L = 1), which the zero-filled shifts assume."""
    dirs = tuple(tuple(d) for d in directions)
    valid = all(len(d) == 2 and all(v in (-1, 0, 1) for v in d) for d in dirs)
    if not dirs or not valid or len(set(dirs)) != len(dirs):
        raise ValueError(
            f"{owner}: 'directions' must be distinct (di, dj) offsets with di, dj in "
            f"{{-1, 0, 1}}, got {directions!r}"
        )
    return dirs  # type: ignore[return-value]


def _check_kernel_size(kernel_size: object, owner: str) -> int:
    check_positive_int(kernel_size, "kernel_size", owner)
    if kernel_size < 3 or kernel_size % 2 == 0:
        raise ValueError(
            f"{owner}: 'kernel_size' must be odd and >= 3 so that the 3x3 PSSA footprint lies "
            f"inside the conv kernel (needed for the merge), got {kernel_size}"
        )
    return kernel_size  # type: ignore[return-value]
