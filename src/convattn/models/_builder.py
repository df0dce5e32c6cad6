"""``create_model`` and checkpoint loading (ours and the papers' official releases).

Checkpoints are read offline from a user-given path; nothing is downloaded. Accepted layouts:
a plain state dict; a dict holding it under ``"model"`` (official ACmix/GLNet releases and our
training checkpoints), ``"state_dict"`` or ``"model_ema"``; ``module.``-prefixed DDP keys; and
``.safetensors`` files. Official key layouts are mapped by the model's ``checkpoint_filter``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from .._io import torch_load_tensors
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
    reset_classifier: bool = False,
    init_from: str | Path | Mapping[str, torch.Tensor] | None = None,
    **kwargs,
) -> nn.Module:
    """Build a registered model by name, optionally loading a checkpoint.

    Arguments given as None never override the model's defaults. With ``checkpoint_path`` the
    weights are loaded into the full model first, then ``features_only`` wraps it. The class
    count and input channels then come from the checkpoint unless given: a 10-class checkpoint
    builds a 10-class model. A ``num_classes`` that differs from the checkpoint's classifier is
    an error unless ``reset_classifier=True`` asks for a new, randomly initialised head; a
    different ``in_chans`` adapts the stem (see :func:`adapt_input_conv`).

    ``model_name`` may also be ``"local-dir:FOLDER"``, a folder written by
    :func:`~convattn.models.hub.save_pretrained` (the other arguments then override the saved ones).

    ``init_from`` starts the model from ImageNet weights of a related model (a ResNet-50 for the
    X-volution and ACmix ResNets, a Swin for ACmix-Swin): every tensor whose name and shape match
    is loaded, the rest keeps its initialisation; the report is ``model.init_report`` (see
    :func:`~convattn.models.init_from_pretrained`).

    Args:
        model_name: a name from :func:`list_models`, or ``"local-dir:FOLDER"``.
        checkpoint_path: a local checkpoint file (ours or the official release).
        num_classes: classifier outputs (0 removes the classifier; default: the checkpoint's,
            else the model's).
        in_chans: input channels (default: the checkpoint's, else the model's).
        drop_path_rate: stochastic-depth rate of the deepest block.
        features_only: return a :class:`FeatureListNet` yielding multi-scale NCHW maps.
        out_indices: stages returned with ``features_only`` (default all four).
        reset_classifier: with ``checkpoint_path`` and a ``num_classes`` other than the
            checkpoint's, start a new classifier instead of raising.
        init_from: a checkpoint path or state dict to initialise from by name and shape
            (torchvision/timm ResNet, timm or official Swin layouts).
        **kwargs (Any): model-specific options (e.g. ``deploy=True``).

    Raises:
        FileNotFoundError: no such checkpoint.
        ValueError: the checkpoint is unreadable, or its classifier does not fit ``num_classes``
            and ``reset_classifier`` is False.
        RuntimeError: the checkpoint's other weights do not fit the model.
    """
    if isinstance(model_name, str) and model_name.startswith("local-dir:"):
        from .hub import create_model_from_folder

        if init_from is not None:
            raise ValueError("create_model: 'init_from' cannot be combined with 'local-dir:'")
        given = dict(num_classes=num_classes, in_chans=in_chans, drop_path_rate=drop_path_rate)
        return create_model_from_folder(
            model_name[len("local-dir:") :],
            checkpoint_path=checkpoint_path,
            features_only=features_only,
            out_indices=out_indices,
            reset_classifier=reset_classifier or None,
            **given,
            **kwargs,
        )
    if init_from is not None and checkpoint_path is not None:
        raise ValueError("create_model: give 'init_from' or 'checkpoint_path', not both")
    entry = model_entrypoint(model_name)
    given = dict(num_classes=num_classes, in_chans=in_chans, drop_path_rate=drop_path_rate)
    kwargs.update({k: v for k, v in given.items() if v is not None})
    kwargs = {k: v for k, v in kwargs.items() if v is not None}

    def build(options: dict) -> nn.Module:
        model = entry(**options)
        model._model_args = dict(options)  # constructor options (timm's attribute name), for saving
        cfg = get_pretrained_cfg(model_name)
        cfg.update(getattr(model, "pretrained_cfg", {}) or {})
        cfg["architecture"] = model_name
        model.pretrained_cfg = cfg
        return model

    model = build(kwargs)
    if checkpoint_path is not None:
        cfg = model.pretrained_cfg
        raw = read_state_dict(checkpoint_path, prefer_key=cfg.get("checkpoint_key"))
        shape = _shape_of_checkpoint(_filtered(model, raw), cfg)
        inferred = {k: v for k, v in shape.items() if k not in kwargs and v is not None}
        if any(getattr(model, k, None) != v for k, v in inferred.items()):
            model = build(kwargs | inferred)
        _load_state(model, raw, checkpoint_path, strict=True, reset_classifier=reset_classifier)
    if init_from is not None:
        from ._init_from import init_from_pretrained

        model.init_report = init_from_pretrained(model, init_from)
    if features_only:
        model = FeatureListNet(model, out_indices)
    elif out_indices is not None:
        raise ValueError("create_model: 'out_indices' is only used with features_only=True")
    return model


def _filtered(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` in ``model``'s key layout: a copy, mapped by the model's ``checkpoint_filter``.

    Only a model whose official releases use other keys defines ``checkpoint_filter(state_dict)``
    (Swin drops and replaces its deterministic buffers); every other family loads keys as they are.
    """
    remap = getattr(model, "checkpoint_filter", None)
    return remap(dict(state)) if remap is not None else dict(state)


def _shape_of_checkpoint(state: Mapping[str, torch.Tensor], cfg: Mapping) -> dict[str, int | None]:
    """The class count and input channels a (filtered) state dict was trained with."""
    classes = chans = None
    classifier = cfg.get("classifier")
    classifier = classifier if isinstance(classifier, str) or not classifier else classifier[0]
    head = state.get(f"{classifier}.weight") if classifier else None
    if head is not None and head.ndim == 2:
        classes = int(head.shape[0])
    stem = state.get(f"{cfg.get('first_conv')}.weight") if cfg.get("first_conv") else None
    if stem is not None and stem.ndim == 4:
        chans = int(stem.shape[1])
    return {"num_classes": classes, "in_chans": chans}


def read_state_dict(path: str | Path, prefer_key: str | None = None) -> dict[str, torch.Tensor]:
    """Read a checkpoint file and return its bare state dict (wrappers and DDP prefixes removed).

    ``prefer_key`` names the wrapper entry to take first when several exist (e.g. ``"model_ema"``
    for releases whose published accuracy is that of the EMA weights).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint_path: no such file: {path}")
    if path.suffix == ".safetensors":
        from ._serialization import load_safetensors

        obj: object = load_safetensors(path)
    else:
        obj = torch_load_tensors(path, what="checkpoint")
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
    model: nn.Module,
    checkpoint_path: str | Path,
    strict: bool = True,
    *,
    reset_classifier: bool = False,
) -> dict[str, list[str]]:
    """Load a checkpoint into ``model`` (ours or an official one), adapting the stem.

    Args:
        model: the model to fill (built with the class count and input channels wanted).
        checkpoint_path: the file.
        strict: raise when keys are missing, unexpected or of another shape.
        reset_classifier: when the checkpoint's classifier has another class count than
            ``model``'s, keep ``model``'s freshly initialised head (listed under
            ``"reinitialized"``) instead of raising.

    Returns:
        The lists of re-initialised, missing, unexpected and mismatched keys.

    Raises:
        ValueError: the file is not a readable checkpoint, or its classifier does not fit and
            ``reset_classifier`` is False.
        RuntimeError: with ``strict``, other weights that do not fit.
    """
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    state = read_state_dict(checkpoint_path, prefer_key=cfg.get("checkpoint_key"))
    return _load_state(model, state, checkpoint_path, strict, reset_classifier)


def _load_state(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    checkpoint_path: str | Path,
    strict: bool,
    reset_classifier: bool,
) -> dict[str, list[str]]:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    state = _filtered(model, state)
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
    # A head with another class count (the same input width): a different classifier. Another
    # input width means another architecture, reported below as mismatched keys.
    misfits: list[str] = []
    for name in classifiers:
        weight = name + ".weight"
        if weight in state and weight in own:
            theirs, ours = state[weight].shape, own[weight].shape
            if theirs != ours and theirs[1:] == ours[1:]:
                misfits += [k for k in (weight, name + ".bias") if k in state and k in own]
    if misfits and not reset_classifier:
        theirs = _shape_of_checkpoint(state, cfg)["num_classes"]
        raise ValueError(
            f"checkpoint_path: {checkpoint_path} has a {theirs}-class classifier "
            f"('{classifiers[0]}'), the model has num_classes="
            f"{getattr(model, 'num_classes', '?')}; build the model with the checkpoint's "
            "class count, or pass reset_classifier=True (--reset-classifier) to start a "
            "new, randomly initialised classifier"
        )
    for name in classifiers:
        for key in (name + ".weight", name + ".bias"):
            # A checkpoint head for a model built without one (num_classes=0) is dropped too.
            if key in state and (key not in own or key in misfits):
                state.pop(key)
                if key in own:
                    reinit.append(key)
    if reinit:
        _logger.warning(
            "Classifier '%s' re-initialised (reset_classifier=True): num_classes=%s",
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
