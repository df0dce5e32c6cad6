"""``create_model`` and checkpoint loading (ours and the papers' official releases).

Checkpoints are read offline from a user-given path; nothing is downloaded. Accepted layouts:
a plain state dict; a dict holding it under ``"model"`` (official ACmix/GLNet releases and our
training checkpoints), ``"state_dict"`` or ``"model_ema"``; ``module.``-prefixed DDP keys; and
``.safetensors`` files. Official key layouts are mapped by the family's ``checkpoint_filter_fn``.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from ._features import FeatureListNet
from ._registry import get_pretrained_cfg, model_entrypoint

__all__ = ["adapt_input_conv", "create_model", "load_checkpoint", "read_state_dict"]

_logger = logging.getLogger("convattn")
_WRAPPER_KEYS = ("model", "state_dict", "model_ema", "state_dict_ema")
_PREFIXES = ("module.", "_orig_mod.")


def create_model(
    model_name: str,
    *,
    checkpoint_path: str | Path | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    drop_path_rate: float | None = None,
    features_only: bool = False,
    out_indices: Sequence[int] | int | None = None,
    **kwargs,
) -> nn.Module:
    """Build a registered model by name, optionally loading a checkpoint.

    Arguments given as None never override the model's defaults. With ``checkpoint_path`` the
    weights are loaded into the full model first (adapting the stem to ``in_chans`` and
    re-initialising the classifier if ``num_classes`` differs), then ``features_only`` wraps it.

    Args:
        model_name: a name from :func:`list_models`.
        checkpoint_path: a local checkpoint file (ours or the official release).
        num_classes: classifier outputs (0 removes the classifier).
        in_chans: input channels.
        drop_path_rate: stochastic-depth rate of the deepest block.
        features_only: return a :class:`FeatureListNet` yielding multi-scale NCHW maps.
        out_indices: stages returned with ``features_only`` (default all four).
        **kwargs (Any): model-specific options (e.g. ``deploy=True``).
    """
    entry = model_entrypoint(model_name)
    given = dict(num_classes=num_classes, in_chans=in_chans, drop_path_rate=drop_path_rate)
    kwargs.update({k: v for k, v in given.items() if v is not None})
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    model = entry(**kwargs)
    cfg = get_pretrained_cfg(model_name)
    cfg.update(getattr(model, "pretrained_cfg", {}) or {})
    cfg["architecture"] = model_name
    model.pretrained_cfg = cfg
    if checkpoint_path is not None:
        load_checkpoint(model, checkpoint_path)
    if features_only:
        model = FeatureListNet(model, out_indices)
    elif out_indices is not None:
        raise ValueError("create_model: 'out_indices' is only used with features_only=True")
    return model


def read_state_dict(path: str | Path, prefer_key: str | None = None) -> dict[str, torch.Tensor]:
    """Read a checkpoint file and return its bare state dict (wrappers and DDP prefixes removed).

    ``prefer_key`` names the wrapper entry to take first when several exist (e.g. ``"model_ema"``
    for releases whose published accuracy is that of the EMA weights).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint_path: no such file: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: object = load_file(str(path))
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # corrupt, truncated or not a torch file
            raise ValueError(f"checkpoint_path: cannot read {path}: {err}") from err
    return unwrap_state_dict(obj, source=str(path), prefer_key=prefer_key)


def unwrap_state_dict(
    obj: object, source: str = "checkpoint", prefer_key: str | None = None
) -> dict[str, torch.Tensor]:
    """Find the state dict inside a checkpoint object and strip DDP/compile prefixes."""
    if isinstance(obj, Mapping):
        order = ((prefer_key,) if prefer_key else ()) + _WRAPPER_KEYS
        for key in order:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and _is_state_dict(inner):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not _is_state_dict(obj):
        raise ValueError(
            f"{source}: no state dict found (expected tensors, possibly under one of {_WRAPPER_KEYS})"
        )
    out = {}
    for k, v in obj.items():
        for prefix in _PREFIXES:
            if k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out


def _is_state_dict(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def adapt_input_conv(in_chans: int, weight: torch.Tensor) -> torch.Tensor:
    """Adapt an RGB stem kernel (O, 3, kh, kw) to ``in_chans`` inputs, keeping activation scale.

    One channel: the sum over RGB. More: RGB repeated and rescaled by 3 / in_chans.
    """
    src = weight.shape[1]
    if in_chans == src:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = math.ceil(in_chans / src)
    return weight.repeat(1, reps, 1, 1)[:, :in_chans] * (src / in_chans)


def load_checkpoint(
    model: nn.Module, checkpoint_path: str | Path, strict: bool = True
) -> dict[str, list[str]]:
    """Load a checkpoint into ``model`` (ours or an official one), adapting stem and classifier.

    Returns the lists of re-initialised and ignored keys.
    """
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    state = read_state_dict(checkpoint_path, prefer_key=cfg.get("checkpoint_key"))
    family = sys.modules.get(type(model).__module__)
    filter_fn = getattr(family, "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, model)
    own = model.state_dict()
    reinit: list[str] = []

    first_conv = cfg.get("first_conv")
    if first_conv:
        key = f"{first_conv}.weight"
        if key in state and key in own and state[key].shape[1] != own[key].shape[1]:
            src_chans = int(state[key].shape[1])
            state[key] = adapt_input_conv(own[key].shape[1], state[key])
            _logger.warning(
                "Adapted stem '%s' from %d to %d input channels", key, src_chans, own[key].shape[1]
            )

    # One classifier name, or several (timm's tuple form, e.g. a token-labeling auxiliary head).
    classifier = cfg.get("classifier")
    classifiers = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
    for name in classifiers:
        for suffix in (".weight", ".bias"):
            key = name + suffix
            if key in state and (key not in own or own[key].shape != state[key].shape):
                state.pop(key)
                if key in own:
                    reinit.append(key)
    if reinit:
        _logger.warning(
            "Classifier '%s' re-initialised: checkpoint head does not match num_classes=%s",
            "', '".join(classifiers),
            getattr(model, "num_classes", "?"),
        )

    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    for k in mismatched:
        state.pop(k)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k not in reinit and k not in mismatched]
    unexpected = list(result.unexpected_keys)
    if strict and (missing or unexpected or mismatched):
        shapes = [f"{k}: {tuple(own[k].shape)} expected" for k in mismatched[:3]]
        raise RuntimeError(
            f"checkpoint_path: {checkpoint_path} does not fit {type(model).__name__}: "
            f"{len(missing)} missing keys (e.g. {missing[:5]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:5]}), "
            f"{len(mismatched)} keys with other shapes (e.g. {shapes})"
        )
    return {
        "reinitialized": reinit,
        "missing": missing,
        "unexpected": unexpected,
        "mismatched": mismatched,
    }
