"""Start a model from ImageNet weights of a related model: ``create_model(..., init_from=...)``.

The usual way to try a hybrid is to fine-tune it from a pretrained convolutional network. This
loads every tensor of the source whose name and shape match, after mapping the source layout to
ours, and leaves the rest at its initialisation:

* **ResNet family** (ResNets, X-volution and ACmix ResNets) from a torchvision or timm ResNet
  checkpoint (both use ``conv1``, ``bn1``, ``layer{1-4}.{j}.{conv,bn}{1-3}``,
  ``layer{i}.0.downsample.{0,1}``, ``fc``: our names). An X-volution operator's convolution branch
  is the 3x3 convolution it replaces: ``layer3.{j}.conv2.conv.weight`` comes from
  ``layer3.{j}.conv2.weight`` and ``conv2.conv_bn.*`` from ``bn2.*``. Its attention branch keeps
  its initialisation (the attention BN starts at gamma = 0, so the started model computes what the
  ResNet computed). ACmix operators keep their initialisation; everything around them loads.
* **Swin family** (Swin, ACmix-Swin) from the official Swin layout (microsoft/Swin-Transformer:
  patch merging at the *end* of stages 0-2, ``layers.{i}.downsample``, head ``head``; ours) or
  timm's (patch merging at the *start* of stages 1-3, ``layers.{i+1}.downsample``, head
  ``head.fc``). The layout is recognised from the keys. ACmix's convolution path, ``rate1`` and
  ``rate2`` keep their initialisation.
* **GLNet**: names as they are.

A stem with other input channels is adapted (:func:`~convattn.models.adapt_input_conv`); a
classifier of another size keeps its initialisation.

A source that is not a related model is an error, not a silent success: at least ``min_loaded``
(default half) of the model's weights (counted in elements) must load, *and* at least that share of
the source's weights (its classifier aside) must find a place. The second condition catches, for
instance, ResNet-50 weights given to a ResNet-34: their 3x3 convolutions have the same names and
shapes, but most of the checkpoint would be dropped.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ._builder import adapt_input_conv, read_state_dict, unwrap_state_dict

__all__ = ["InitReport", "init_from_pretrained"]

_logger = logging.getLogger("convattn")
# Deterministic buffers: rebuilt by the model, neither loaded nor counted.
_DETERMINISTIC = ("num_batches_tracked", "relative_position_index", "attn_mask")
_XVOL_CONV = re.compile(r"^(layer\d+\.\d+)\.conv(\d)\.conv\.(weight)$")
_XVOL_BN = re.compile(r"^(layer\d+\.\d+)\.conv(\d)\.conv_bn\.(\w+)$")
_DOWNSAMPLE = re.compile(r"^layers\.(\d+)\.downsample\.")


@dataclass
class InitReport:
    """What :func:`init_from_pretrained` did.

    Attributes:
        source: the checkpoint path (or ``"state dict"``).
        layout: the source layout recognised (``"ours"``, ``"timm-swin"``).
        loaded: model keys loaded from the source.
        initialised: model keys that keep their initialisation.
        unused: source keys not loaded (no such name, or another shape; the deterministic
            buffers ``relative_position_index`` and ``attn_mask`` are never loaded nor listed).
        mapped: model key -> source key, where the names differ (layout and operator mappings).
        fraction_loaded: share of the model's weight elements loaded.
        fraction_used: share of the source's weight elements (classifier aside) loaded.
    """

    source: str
    layout: str
    loaded: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    mapped: dict[str, str] = field(default_factory=dict)
    fraction_loaded: float = 0.0
    fraction_used: float = 0.0

    def summary(self) -> str:
        return (
            f"init_from {self.source} ({self.layout} layout): loaded "
            f"{len(self.loaded)}/{len(self.loaded) + len(self.initialised)} tensors "
            f"({self.fraction_loaded:.0%} of the weights, {len(self.mapped)} through name "
            f"mappings); initialised {len(self.initialised)}; unused from the source "
            f"{len(self.unused)} ({1 - self.fraction_used:.0%} of its weights)"
        )


def _is_swin(model: nn.Module) -> bool:
    from .swin import SwinTransformer

    return isinstance(model, SwinTransformer)


def _to_our_layout(state: dict[str, torch.Tensor], model: nn.Module) -> tuple[dict, str, dict]:
    """Rename a source state dict to our layout; returns it, the layout name and the renames."""
    renames: dict[str, str] = {}
    if not _is_swin(model):
        return state, "ours", renames
    has_first = any(k.startswith("layers.0.downsample.") for k in state)
    has_later = any(_DOWNSAMPLE.match(k) for k in state)
    timm_head = "head.fc.weight" in state
    if has_first or not (has_later or timm_head):
        return state, "ours", renames
    out = {}
    for key, value in state.items():
        new = _DOWNSAMPLE.sub(lambda m: f"layers.{int(m.group(1)) - 1}.downsample.", key)
        if new.startswith("head.fc."):
            new = "head." + new[len("head.fc.") :]
        if new != key:
            renames[new] = key
        out[new] = value
    return out, "timm-swin", renames


def _candidates(key: str) -> list[str]:
    """Source names for model key ``key``: itself, then an X-volution conv-branch alias."""
    names = [key]
    m = _XVOL_CONV.match(key)
    if m:
        names.append(f"{m[1]}.conv{m[2]}.{m[3]}")
    m = _XVOL_BN.match(key)
    if m:
        names.append(f"{m[1]}.bn{m[2]}.{m[3]}")
    return names


def _share(part: list[torch.Tensor], whole: list[torch.Tensor]) -> float:
    total = sum(t.numel() for t in whole)
    return sum(t.numel() for t in part) / total if total else 0.0


def init_from_pretrained(
    model: nn.Module,
    source: str | Path | Mapping[str, torch.Tensor],
    min_loaded: float = 0.5,
) -> InitReport:
    """Load every tensor of ``source`` that fits ``model`` by name and shape (see the module doc).

    Args:
        model: a convattn model (before any ``features_only`` wrapping).
        source: a checkpoint file (``.pth``/``.pt``/``.bin``/``.safetensors``, possibly wrapped
            under ``model``/``state_dict``) or a state dict.
        min_loaded: smallest share of the model's weights that must load, and of the source's
            weights (classifier aside) that must be used.

    Returns:
        The :class:`InitReport` (also logged at INFO level).

    Raises:
        ValueError: less than ``min_loaded`` of the model loads or of the source is used (names
            the shares and examples of what did not match).
    """
    if not 0.0 <= min_loaded <= 1.0:
        raise ValueError(f"init_from: 'min_loaded' must be in [0, 1], got {min_loaded!r}")
    if isinstance(source, (str, Path)):
        state = read_state_dict(source)
        label = str(source)
    elif isinstance(source, Mapping):
        state = unwrap_state_dict(source, source="init_from")
        label = "state dict"
    else:
        raise TypeError(
            f"init_from: expected a checkpoint path or a state dict, got {type(source).__name__}"
        )
    state, layout, renames = _to_our_layout(dict(state), model)
    own = model.state_dict()
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    stem = f"{cfg['first_conv']}.weight" if cfg.get("first_conv") else None

    report = InitReport(source=label, layout=layout)
    selected: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    own_counted: list[str] = []
    for key, target in own.items():
        if key.endswith(_DETERMINISTIC[1:]):  # rebuilt by the model itself
            continue
        counted = not key.endswith(_DETERMINISTIC)
        for name in _candidates(key):
            value = state.get(name)
            if value is None:
                continue
            if (
                key == stem
                and value.dim() == 4
                and value.shape[0] == target.shape[0]
                and value.shape[2:] == target.shape[2:]
            ):
                value = adapt_input_conv(target.shape[1], value)
            if value.shape != target.shape:
                continue
            selected[key] = value
            used.add(name)
            if name != key or key in renames:
                report.mapped[key] = renames.get(name, name)
            break
        if counted:
            own_counted.append(key)
            (report.loaded if key in selected else report.initialised).append(key)
    report.unused = sorted(
        renames.get(k, k) for k in state if k not in used and not k.endswith(_DETERMINISTIC[1:])
    )

    head = f"{cfg['classifier']}." if cfg.get("classifier") else None
    counted_src = [
        k for k in state if not k.endswith(_DETERMINISTIC) and not (head and k.startswith(head))
    ]
    report.fraction_loaded = _share([own[k] for k in report.loaded], [own[k] for k in own_counted])
    report.fraction_used = _share(
        [state[k] for k in counted_src if k in used], [state[k] for k in counted_src]
    )
    if min(report.fraction_loaded, report.fraction_used) < min_loaded:
        raise ValueError(
            f"init_from: {label} does not fit {type(model).__name__}: "
            f"{report.fraction_loaded:.0%} of the model's weights load "
            f"({len(report.loaded)} of {len(own_counted)} tensors) and {report.fraction_used:.0%} "
            f"of the source's are used; at least {min_loaded:.0%} of each must. Is it a checkpoint "
            f"of a related model? Not loaded, e.g. {report.initialised[:5]}; unused source keys, "
            f"e.g. {report.unused[:5]}"
        )
    model.load_state_dict(selected, strict=False)
    _logger.info(report.summary())
    return report
