"""Which layers of a model each visualisation can show, and the ``--block`` SPEC that picks one.

A SPEC is a module path as in ``model.named_modules()`` (a path above exactly one matching layer,
e.g. a Swin block for its ``.attn``, works too) or an index among the matching layers in module
order (``4`` = the fifth, ``-1`` = the last). Anything else is a ValueError that lists what the
model has, so a user never has to guess names.
"""

from __future__ import annotations

from torch import nn

from ..layers.acmix import ACmix, ACmixWindowAttention
from ..layers.attention import GlobalSelfAttention2d, MultiheadSelfAttention
from ..layers.glmix import GLMix
from ..layers.san import ACmixPatchwiseAttention, PatchwiseSelfAttention
from ..layers.sr_attention import ACmixSpatialReductionAttention, SpatialReductionAttention
from ..layers.window_attention import WindowAttention
from ..layers.xvolution import XVolution
from ..models.swin import SwinTransformerBlock

__all__ = ["WHATS", "available_layers", "find_layers", "resolve_layer"]

WHATS = ("slots", "attention", "kernels", "rates")

# What each visualisation needs, as said in error messages.
_NEEDS = {
    "slots": "GLMix blocks",
    "attention": (
        "attention layers (ACmix, Swin window attention, SAN patchwise attention, PVT "
        "spatial-reduction attention, global self-attention)"
    ),
    "kernels": "X-volution layers with the PSSA branch",
    "rates": "ACmix layers (ACmix, ACmix-Swin, ACmix-SAN or ACmix-PVT attention)",
}

# Operators with ACmix's learned rate1 / rate2.
_WITH_RATES = (
    ACmix,
    ACmixWindowAttention,
    ACmixPatchwiseAttention,
    ACmixSpatialReductionAttention,
)


def _parent(model: nn.Module, name: str) -> nn.Module | None:
    if not name:
        return None
    return model.get_submodule(name.rpartition(".")[0])


def _matches(model: nn.Module, name: str, module: nn.Module, what: str) -> bool:
    if what == "slots":
        return isinstance(module, GLMix)
    if what == "kernels":
        return isinstance(module, XVolution) and module.attention == "pssa"
    if what == "rates":
        return isinstance(module, _WITH_RATES)
    # attention: the weights are rebuilt from the block around a window attention (norm, padding,
    # roll), so only window attention inside a Swin block qualifies; a GLMix block's slot MHSA
    # attends among slots, not pixels, and is shown by --what slots instead.
    attention = (ACmix, PatchwiseSelfAttention, SpatialReductionAttention, GlobalSelfAttention2d)
    if isinstance(module, attention):
        return True
    if isinstance(module, WindowAttention):
        return isinstance(_parent(model, name), SwinTransformerBlock)
    if isinstance(module, MultiheadSelfAttention):
        return not isinstance(_parent(model, name), GLMix)
    return False


def find_layers(model: nn.Module, what: str) -> list[tuple[str, nn.Module]]:
    """The ``(name, module)`` pairs that ``what`` can show, in ``named_modules()`` order.

    Args:
        model: any network.
        what: one of :data:`WHATS`.
    """
    if what not in WHATS:
        raise ValueError(f"'what' must be one of {list(WHATS)}, got {what!r}")
    return [(n, m) for n, m in model.named_modules() if _matches(model, n, m, what)]


def available_layers(model: nn.Module) -> dict[str, list[str]]:
    """Every visualisation the model supports, with the names of its layers (empty ones left out)."""
    found = {what: [name for name, _ in find_layers(model, what)] for what in WHATS}
    return {what: names for what, names in found.items() if names}


def _summary(model: nn.Module) -> str:
    found = available_layers(model)
    if not found:
        return "it has nothing these visualisations can show"
    parts = []
    for what, names in found.items():
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        parts.append(f"--what {what} ({len(names)} layers: {shown})")
    return "this model supports " + "; ".join(parts)


def _listing(layers: list[tuple[str, nn.Module]]) -> str:
    return ", ".join(f"{i}: {name} ({type(m).__name__})" for i, (name, m) in enumerate(layers))


def resolve_layer(
    model: nn.Module, what: str, spec: str | int | None = None, model_name: str = "the model"
) -> tuple[str, nn.Module]:
    """Pick the layer that ``spec`` names among the layers ``what`` can show.

    Args:
        model: the network.
        what: one of :data:`WHATS`.
        spec: a module path, an index (int or a string of digits, negative counts from the end),
            or None for the middle matching layer (``len // 2``: a mid-depth block, where the
            papers' figures look; GLMix's official default, block 4 of GLNet-STL, is also mid-depth).
        model_name: used in error messages.

    Returns:
        ``(name, module)``.

    Raises:
        ValueError: the model has no such layers (the message lists what it supports instead) or
            ``spec`` names none of them (the message lists them with their indices).
    """
    layers = find_layers(model, what)
    if not layers:
        raise ValueError(
            f"{model_name} has no {_NEEDS[what]}, which --what {what} needs; {_summary(model)}"
        )
    if spec is None:
        return layers[len(layers) // 2]
    text = str(spec).strip()
    if isinstance(spec, int) or text.lstrip("-").isdigit():
        index = int(text)
        if -len(layers) <= index < len(layers):
            return layers[index]
        raise ValueError(
            f"block index {index} is out of range: {model_name} has {len(layers)} "
            f"{_NEEDS[what]}: {_listing(layers)}"
        )
    by_name = dict(layers)
    if text in by_name:
        return text, by_name[text]
    below = [(n, m) for n, m in layers if n.startswith(text + ".")]
    if len(below) == 1:
        return below[0]
    raise ValueError(
        f"no {_NEEDS[what].split(' (')[0]} named '{text}' in {model_name}; available "
        f"(name or index): {_listing(layers)}"
    )
