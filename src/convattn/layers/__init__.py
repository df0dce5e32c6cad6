"""Operators and small building blocks (NCHW)."""

from .attention import MultiheadSelfAttention
from .conv_bn import ConvBN, bn_scale_shift, fuse_conv_bn, fuse_conv_bn_module
from .drop import DropPath, drop_path
from .norm import LayerNorm2d

__all__ = [
    "ConvBN",
    "DropPath",
    "LayerNorm2d",
    "MultiheadSelfAttention",
    "bn_scale_shift",
    "drop_path",
    "fuse_conv_bn",
    "fuse_conv_bn_module",
]
