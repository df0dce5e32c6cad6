"""convattn: vision backbones that unify convolution and self-attention.

Operators (X-volution, ACmix, GLMix and baselines) live in :mod:`convattn.layers`; backbones are
built by name with :func:`create_model` (see :func:`list_models`).

If timm has been imported before convattn, convattn's models are registered in timm's registry
as ``convattn_<name>`` on import; otherwise :func:`register_timm_models` does it (see
:mod:`convattn.models.timm_bridge`).
"""

__version__ = "0.1.0"

from . import layers, models
from .deploy import reparameterize_model
from .models import (
    create_model,
    get_pretrained_cfg,
    list_models,
    load_checkpoint,
    register_timm_models,
    save_pretrained,
)

__all__ = [
    "__version__",
    "create_model",
    "get_pretrained_cfg",
    "layers",
    "list_models",
    "load_checkpoint",
    "models",
    "register_timm_models",
    "reparameterize_model",
    "save_pretrained",
]


def _register_with_imported_timm() -> None:
    """Register in timm's registry now if timm is already imported (importing it costs ~1 s)."""
    import sys

    if "timm.models" not in sys.modules:
        return
    try:
        register_timm_models()
    except Exception as err:  # a broken timm install must not break convattn
        import warnings

        warnings.warn(f"convattn: models not registered in timm: {err}", stacklevel=2)


_register_with_imported_timm()
