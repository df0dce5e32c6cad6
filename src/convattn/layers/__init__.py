"""Operators and small building blocks (NCHW).

The papers' operators, each a drop-in for a KxK convolution ``(in_channels, out_channels, stride)``:
:class:`XVolution`, :class:`ACmix`, :class:`GLMix`; the baselines :class:`GlobalSelfAttention2d`
and :class:`Involution2d`; and the blocks the backbones are built from.
"""

from .acmix import ACmix, ACmixConvPath, ACmixWindowAttention
from .attention import GlobalSelfAttention2d, MultiheadSelfAttention
from .conv_bn import ConvBN, bn_scale_shift, fuse_conv_bn, fuse_conv_bn_module
from .drop import DropPath, drop_path
from .glmix import GLMix, GLMixBlock
from .involution import Involution2d, involution_aggregate
from .norm import LayerNorm2d
from .sr_attention import ACmixSpatialReductionAttention, SpatialReductionAttention
from .window_attention import (
    WindowAttention,
    relative_position_index,
    shifted_window_mask,
    window_partition,
    window_reverse,
)
from .xvolution import (
    CentreModulatedConv2d,
    InvolutionModulatedConv2d,
    PixelShiftAttention,
    XVolution,
    centre_modulated_conv2d,
    directions_to_kernel,
    fuse_xvolution_kernels,
    pixel_shift_products,
    pssa_directions,
)

__all__ = [
    "ACmix",
    "ACmixConvPath",
    "ACmixSpatialReductionAttention",
    "ACmixWindowAttention",
    "CentreModulatedConv2d",
    "ConvBN",
    "DropPath",
    "GLMix",
    "GLMixBlock",
    "GlobalSelfAttention2d",
    "Involution2d",
    "InvolutionModulatedConv2d",
    "LayerNorm2d",
    "MultiheadSelfAttention",
    "PixelShiftAttention",
    "SpatialReductionAttention",
    "WindowAttention",
    "XVolution",
    "bn_scale_shift",
    "centre_modulated_conv2d",
    "directions_to_kernel",
    "drop_path",
    "fuse_conv_bn",
    "fuse_conv_bn_module",
    "fuse_xvolution_kernels",
    "involution_aggregate",
    "pixel_shift_products",
    "pssa_directions",
    "relative_position_index",
    "shifted_window_mask",
    "window_partition",
    "window_reverse",
]
