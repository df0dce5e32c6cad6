"""Operators and small building blocks (NCHW).

The papers' operators, each a drop-in for a KxK convolution ``(in_channels, out_channels, stride)``:
:class:`XVolution`, :class:`ACmix`, :class:`GLMix`, SAN's :class:`PatchwiseSelfAttention` and
:class:`ACmixPatchwiseAttention`; the baselines :class:`GlobalSelfAttention2d`
and :class:`Involution2d`; and the blocks the backbones are built from.
"""

from ._checks import check_choice, check_feature_map, check_positive_int
from .acmix import ACmix, ACmixConvPath, ACmixWindowAttention
from .attention import GlobalSelfAttention2d, MultiheadSelfAttention, resolve_num_heads
from .conv_bn import (
    ConvBN,
    ConvNormSequential,
    bn_scale_shift,
    fold_batch_norm_,
    fuse_conv_bn,
    fuse_conv_bn_module,
)
from .drop import DropPath, drop_path
from .glmix import GLMix, GLMixBlock, check_block_options
from .involution import Involution2d, involution_aggregate
from .layer_scale import LayerScale, layer_scale
from .mlp import ResidualDepthwiseConv, conv_mlp
from .norm import LayerNorm2d
from .san import ACmixPatchwiseAttention, PatchwiseSelfAttention, san_window_index
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
    "ACmixPatchwiseAttention",
    "ACmixSpatialReductionAttention",
    "ACmixWindowAttention",
    "CentreModulatedConv2d",
    "ConvBN",
    "ConvNormSequential",
    "DropPath",
    "GLMix",
    "GLMixBlock",
    "GlobalSelfAttention2d",
    "Involution2d",
    "InvolutionModulatedConv2d",
    "LayerNorm2d",
    "LayerScale",
    "MultiheadSelfAttention",
    "PatchwiseSelfAttention",
    "PixelShiftAttention",
    "ResidualDepthwiseConv",
    "SpatialReductionAttention",
    "WindowAttention",
    "XVolution",
    "bn_scale_shift",
    "centre_modulated_conv2d",
    "check_block_options",
    "check_choice",
    "check_feature_map",
    "check_positive_int",
    "conv_mlp",
    "directions_to_kernel",
    "drop_path",
    "fold_batch_norm_",
    "fuse_conv_bn",
    "fuse_conv_bn_module",
    "fuse_xvolution_kernels",
    "involution_aggregate",
    "layer_scale",
    "pixel_shift_products",
    "pssa_directions",
    "relative_position_index",
    "resolve_num_heads",
    "san_window_index",
    "shifted_window_mask",
    "window_partition",
    "window_reverse",
]
