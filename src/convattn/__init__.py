"""convattn: vision backbones that unify convolution and self-attention.

Operators (X-volution, ACmix, GLMix and baselines) live in :mod:`convattn.layers`; backbones are
built by name with :func:`create_model` (see :func:`list_models`).
"""

__version__ = "0.1.0"

from . import layers, models
from .deploy import reparameterize_model
from .models import create_model, get_pretrained_cfg, list_models, load_checkpoint

__all__ = [
    "__version__",
    "create_model",
    "get_pretrained_cfg",
    "layers",
    "list_models",
    "load_checkpoint",
    "models",
    "reparameterize_model",
]
