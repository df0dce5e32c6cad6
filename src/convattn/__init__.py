"""convattn: vision backbones that unify convolution and self-attention.

Operators (X-volution, ACmix, GLMix and baselines) live in :mod:`convattn.layers`.
"""

__version__ = "0.1.0"

from . import layers

__all__ = ["__version__", "layers"]
