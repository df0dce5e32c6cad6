"""convattn's models inside timm's registry, with timm's model interface.

Once registered (:func:`register_timm_models`), every convattn model is available to
``timm.create_model`` and so to the tools built on it (timm's ``train.py``, ``validate.py`` and
``benchmark.py``, open_clip's timm image towers, mmpretrain's ``TIMMBackbone``, HF transformers'
``TimmBackbone``).

Naming: each model is registered as ``convattn_<name>`` (``convattn_resnet50``,
``convattn_swin_tiny``, ``convattn_xvolution_resnet50``, ...). The prefix keeps our baselines
apart from timm's own models of the same name (timm's ``resnet50`` and ``swin_tiny_*`` stay
timm's), and no later timm release can collide with a hybrid. A name timm already knows is never
overwritten: it is skipped with a warning.

Registration: ``import convattn`` registers the models when timm has already been imported;
otherwise call :func:`register_timm_models` (or ``convattn.register_timm_models()``) once, which
imports timm. The call is idempotent.

timm's interface is provided by adapter classes, one per family (:class:`TimmResNet`,
:class:`TimmSwinTransformer`, :class:`TimmGLNet`, :class:`TimmGLNetTokenLabel`, :class:`TimmSAN`,
:class:`TimmPyramidVisionTransformer`): subclasses of our families with the same parameters and
state-dict keys that add what timm's contract asks for:

* ``reset_classifier(num_classes, global_pool=None)``. The convolutional families (ResNet, Swin,
  GLNet, SAN) pool their NCHW map with ``"avg"`` (default), ``"max"``, ``"avgmax"`` or ``""`` (no
  pooling: ``forward`` then returns the NCHW map, classifier removed). PVT follows timm's
  class-token (ViT) convention: ``forward_features`` returns the normalised tokens
  ``(B, 1 + N, C)``, pooled by ``"token"`` (default: the class token, as the paper's classifier),
  ``"avg"`` (mean of the N patch tokens) or ``""`` (the tokens themselves, no classifier). The
  choices of a family are its adapter's ``pool_types``, its default ``default_pool``;
* ``forward_head(x, pre_logits=False)`` with classifier dropout ``drop_rate`` (timm's meaning of
  ``drop_rate``: dropout before the classifier);
* ``set_grad_checkpointing(enable)``: activation checkpointing per stage (outputs unchanged);
* ``forward_intermediates(x, indices, norm, stop_early, output_fmt, intermediates_only)`` (NCHW
  stage outputs, PVT's included) and ``prune_intermediate_layers`` (timm's signatures;
  ``features_only=True`` uses them and returns every stage by default: four for most families,
  five for SAN);
* ``pretrained_cfg`` / ``default_cfg`` with every field timm's data pipeline reads.

:func:`to_timm_model` turns a model built by :func:`convattn.create_model` into its adapter in
place (the parameters are untouched).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ._features import resolve_out_indices
from ._registry import get_pretrained_cfg, list_models, model_entrypoint
from .glnet import GLNet, GLNetTokenLabel
from .pvt import PyramidVisionTransformer
from .resnet import ResNet
from .san import SAN
from .swin import SwinTransformer

__all__ = [
    "TIMM_PREFIX",
    "TimmContract",
    "TimmGLNet",
    "TimmGLNetTokenLabel",
    "TimmPyramidVisionTransformer",
    "TimmResNet",
    "TimmSAN",
    "TimmSwinTransformer",
    "convattn_name",
    "register_timm_models",
    "timm_name",
    "timm_pretrained_cfg",
    "to_timm_model",
]

TIMM_PREFIX = "convattn_"
POOL_TYPES = ("avg", "max", "avgmax", "")  # the pooling of the families with an NCHW map
TOKEN_POOL_TYPES = ("token", "avg", "")  # the pooling of the class-token family (PVT)
# timm reads each registered model's cfg from its module's ``default_cfgs`` (filled on registration).
default_cfgs: dict[str, dict[str, Any]] = {}
_registered: list[str] = []


def _check_pool(
    global_pool: str, num_classes: int, owner: str, pool_types: tuple[str, ...] = POOL_TYPES
) -> str:
    if global_pool not in pool_types:
        raise ValueError(f"{owner}: 'global_pool' must be one of {pool_types}, got {global_pool!r}")
    if global_pool == "" and num_classes > 0:
        raise ValueError(
            f"{owner}: pooling can only be disabled (global_pool='') together with the "
            "classifier (num_classes=0)"
        )
    return global_pool


def timm_name(name: str) -> str:
    """The name of convattn model ``name`` in timm's registry (``resnet50`` -> ``convattn_resnet50``)."""
    return name if name.startswith(TIMM_PREFIX) else TIMM_PREFIX + name


def convattn_name(name: str) -> str:
    """The convattn name of a timm-registry name (``convattn_resnet50`` -> ``resnet50``)."""
    return name[len(TIMM_PREFIX) :] if name.startswith(TIMM_PREFIX) else name


def _check_output_fmt(output_fmt: Any) -> None:
    if str(getattr(output_fmt, "value", output_fmt)) != "NCHW":
        raise ValueError(f"forward_intermediates: 'output_fmt' must be 'NCHW', got {output_fmt!r}")


# --- the adapters ----------------------------------------------------------------------------------
class TimmContract:
    """Mixin: timm's model interface on top of a convattn backbone (see the module docstring).

    Subclasses implement :meth:`_stage_modules` (the stage modules, in order) or
    :meth:`_run_stages_checkpointed`, :meth:`_final_norm` (what ``forward_features`` applies to the
    last stage output) and :meth:`_prune_stages_after`; a family whose features are not an NCHW map
    also sets ``pool_types`` / ``default_pool`` and overrides :meth:`_pool`.
    """

    grad_checkpointing: bool = False
    drop_rate: float = 0.0
    pool_types: tuple[str, ...] = POOL_TYPES
    default_pool: str = "avg"
    pool_type: str = "avg"

    # family hooks
    def _stage_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _prune_stages_after(self, last: int) -> None:
        raise NotImplementedError

    def _run_stages_checkpointed(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self._stage_modules():
            x = checkpoint(stage, x, use_reentrant=False)
        return x

    # timm's interface
    @property
    def head_hidden_size(self) -> int:
        return self.num_features  # type: ignore[attr-defined]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage's activations in the backward pass (memory for compute)."""
        self.grad_checkpointing = bool(enable)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New classifier of ``num_classes`` outputs (0: none); ``global_pool`` as in timm."""
        if global_pool is None:
            keep = not (self.pool_type == "" and num_classes > 0)
            global_pool = self.pool_type if keep else self.default_pool
        self.pool_type = _check_pool(global_pool, num_classes, "reset_classifier", self.pool_types)
        super().reset_classifier(num_classes)  # type: ignore[misc]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.grad_checkpointing and torch.is_grad_enabled()):
            return super().forward_features(x)  # type: ignore[misc]
        return self._forward_features_checkpointed(x)

    def _forward_features_checkpointed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)  # type: ignore[attr-defined]
        return self._final_norm_tokens(self._run_stages_checkpointed(x))

    def _final_norm_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self._final_norm(x)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        """``forward_features``' output -> (B, num_features) by ``pool_type`` ("": unchanged)."""
        pool = self.pool_type
        if pool == "avg":
            x = x.mean(dim=(2, 3))
        elif pool == "max":
            x = x.amax(dim=(2, 3))
        elif pool == "avgmax":
            x = 0.5 * (x.mean(dim=(2, 3)) + x.amax(dim=(2, 3)))
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self._pool(x)
        if self.drop_rate > 0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.get_classifier()(x)  # type: ignore[attr-defined]

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Sequence[int] | int | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's ``forward_intermediates``: NCHW stage outputs (and the final features).

        Args:
            x: NCHW images.
            indices: stages to return (None: all; int n: the last n; negatives count from the end).
            norm: apply the final norm to the last stage's output when it is returned.
            stop_early: accepted for timm's interface; with ``intermediates_only`` the stages after
                the last requested one never run anyway.
            output_fmt: ``"NCHW"`` (the only layout offered).
            intermediates_only: return only the list of stage outputs.

        Returns:
            The list of stage outputs, or ``(forward_features(x), that list)``.
        """
        _check_output_fmt(output_fmt)
        n = len(self.feature_info)  # type: ignore[attr-defined]
        take = resolve_out_indices(indices, n)
        run = take if intermediates_only else tuple(sorted(set(take) | {n - 1}))
        outs = dict(zip(sorted(set(run)), super().forward_intermediates(x, run)))  # type: ignore[misc]
        inter = [outs[i] for i in sorted(set(take))]
        if norm and n - 1 in take:
            inter[-1] = self._final_norm(inter[-1])
        if intermediates_only:
            return inter
        return self._final_norm(outs[n - 1]), inter

    def prune_intermediate_layers(
        self,
        indices: Sequence[int] | int = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop what ``forward_intermediates(indices, intermediates_only=True)`` never uses."""
        take = resolve_out_indices(indices, len(self.feature_info))  # type: ignore[attr-defined]
        if prune_head:
            self.reset_classifier(0, "")
        if prune_norm and isinstance(getattr(self, "norm", None), nn.Module):
            self.norm = nn.Identity()
        self._prune_stages_after(max(take))
        return list(take)


class TimmResNet(TimmContract, ResNet):
    """:class:`~convattn.models.resnet.ResNet` with timm's model interface."""

    def _stage_modules(self) -> list[nn.Module]:
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    def _prune_stages_after(self, last: int) -> None:
        for i in range(last + 1, self.num_stages):
            setattr(self, f"layer{i + 1}", nn.Identity())


class TimmSwinTransformer(TimmContract, SwinTransformer):
    """:class:`~convattn.models.swin.SwinTransformer` with timm's model interface."""

    def _stage_modules(self) -> list[nn.Module]:
        return list(self.layers)

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:  # NCHW in, NCHW out
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def _final_norm_tokens(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C) tokens
        return self.norm(x).permute(0, 3, 1, 2)

    def _prune_stages_after(self, last: int) -> None:
        self.layers[last].downsample = None
        for i in range(last + 1, self.num_stages):
            self.layers[i] = nn.Identity()


class TimmGLNet(TimmContract, GLNet):
    """:class:`~convattn.models.glnet.GLNet` with timm's model interface."""

    def _stage_modules(self) -> list[nn.Module]:
        # Downsampling i > 0 runs before stage i (the stem is part of forward_stem).
        return [
            self.stages[0],
            *(nn.Sequential(self.downsample_layers[i], self.stages[i]) for i in range(1, 4)),
        ]

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)

    def _prune_stages_after(self, last: int) -> None:
        for i in range(last + 1, self.num_stages):
            self.stages[i] = nn.Identity()
            self.downsample_layers[i] = nn.Identity()


class TimmGLNetTokenLabel(TimmGLNet, GLNetTokenLabel):
    """:class:`~convattn.models.glnet.GLNetTokenLabel` with timm's model interface.

    ``forward_head`` (and so eval-mode ``forward``) adds the token head's term to the pooled
    classifier's logits as the family does; the training-mode ``forward`` (MixToken, returning
    ``(class logits, token logits, box)``) is the family's own.
    """

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = super().forward_head(x, pre_logits=True)
        if pre_logits or self.tklb_aux_head is None:
            return pooled if pre_logits else self.head(pooled)
        tokens = x.flatten(2).transpose(1, 2)
        return self.head(pooled) + self.aux_weight * self.tklb_aux_head(tokens).amax(dim=1)


class TimmSAN(TimmContract, SAN):
    """:class:`~convattn.models.san.SAN` with timm's model interface (five stages)."""

    def _run_stages_checkpointed(self, x: torch.Tensor) -> torch.Tensor:
        # A SAN stage is max-pool, conv_i, layer_i, bn_i, ReLU: forward_stage, not one module.
        for i in range(self.num_stages):
            x = checkpoint(self.forward_stage, x, i, use_reentrant=False)
        return x

    def _prune_stages_after(self, last: int) -> None:
        for i in range(last + 1, self.num_stages):
            for name in (f"conv{i}", f"layer{i}", f"bn{i}"):
                setattr(self, name, nn.Identity())


class TimmPyramidVisionTransformer(TimmContract, PyramidVisionTransformer):
    """:class:`~convattn.models.pvt.PyramidVisionTransformer` with timm's class-token interface.

    As timm's ViTs: ``forward_features`` returns the normalised tokens ``(B, 1 + N, C)`` (class
    token first), pooled by ``"token"`` (the class token, default), ``"avg"`` (mean of the patch
    tokens) or ``""`` (no pooling, only without classifier); ``num_prefix_tokens`` is 1.
    ``forward_intermediates`` returns the NCHW maps of the stages (class token left out); with
    ``norm=True`` the last one passes through the final LayerNorm. Gradient checkpointing
    recomputes each block.
    """

    pool_types = TOKEN_POOL_TYPES
    default_pool = "token"

    @property
    def num_prefix_tokens(self) -> int:
        return self.stages[-1].num_prefix_tokens

    def _run_blocks(
        self, blocks: nn.ModuleList, x: torch.Tensor, size: tuple[int, int]
    ) -> torch.Tensor:
        if not (self.grad_checkpointing and torch.is_grad_enabled()):
            return super()._run_blocks(blocks, x, size)
        for block in blocks:
            x = checkpoint(block, x, size, use_reentrant=False)
        return x

    def _forward_features_checkpointed(self, x: torch.Tensor) -> torch.Tensor:
        return super(TimmContract, self).forward_features(x)  # _run_blocks checkpoints

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:  # NCHW map of the last stage
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_type == "token":
            return x[:, 0]
        if self.pool_type == "avg":
            return x[:, self.num_prefix_tokens :].mean(dim=1)
        return x

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Sequence[int] | int | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's ``forward_intermediates``: NCHW stage maps (and the final tokens).

        Arguments as :meth:`TimmContract.forward_intermediates`; the final features returned with
        the maps (``intermediates_only=False``) are ``forward_features(x)``, tokens (B, 1 + N, C).
        """
        _check_output_fmt(output_fmt)
        n = len(self.feature_info)
        take = sorted(set(resolve_out_indices(indices, n)))
        maps, tokens = self._run(x, take[-1] if intermediates_only else n - 1)
        inter = [maps[i] for i in take]
        if norm and n - 1 in take:
            inter[-1] = self._final_norm(inter[-1])
        return inter if intermediates_only else (self.norm(tokens), inter)

    def _prune_stages_after(self, last: int) -> None:
        # The later stages (the class token's included) are dropped: the pruned model serves
        # forward_intermediates up to stage ``last`` (what features_only uses).
        del self.stages[last + 1 :]


# One adapter per family class (exact type: a subclass with its own forward needs its own).
_ADAPTERS: dict[type, type] = {
    ResNet: TimmResNet,
    SwinTransformer: TimmSwinTransformer,
    GLNet: TimmGLNet,
    GLNetTokenLabel: TimmGLNetTokenLabel,
    SAN: TimmSAN,
    PyramidVisionTransformer: TimmPyramidVisionTransformer,
}


def to_timm_model(
    model: nn.Module, drop_rate: float = 0.0, global_pool: str | None = None
) -> nn.Module:
    """Give a convattn backbone timm's interface, in place (same parameters and keys); returns it.

    Args:
        model: a model of a convattn family (built by :func:`convattn.create_model`).
        drop_rate: dropout before the classifier.
        global_pool: one of the family's pooling choices (the adapter's ``pool_types``: ``"avg"``,
            ``"max"``, ``"avgmax"``, ``""`` for the NCHW families, ``"token"``, ``"avg"``, ``""``
            for PVT; ``""`` only with no classifier); None: the family's default (``"avg"``,
            PVT ``"token"``).
    """
    if isinstance(model, TimmContract):
        adapter = type(model)
    else:
        adapter = next((a for base, a in _ADAPTERS.items() if type(model) is base), None)
        if adapter is None:
            families = ", ".join(base.__name__ for base in _ADAPTERS)
            raise TypeError(
                f"to_timm_model: 'model' must be a model of a convattn family ({families}), "
                f"got {type(model).__name__}"
            )
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"to_timm_model: 'drop_rate' must be in [0, 1), got {drop_rate!r}")
    if global_pool is None:
        global_pool = adapter.default_pool
    pool = _check_pool(global_pool, model.num_classes, "to_timm_model", adapter.pool_types)
    model.__class__ = adapter
    model.drop_rate = float(drop_rate)
    model.pool_type = pool
    return model


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """Official checkpoint layouts -> ours: the adapted model's own ``checkpoint_filter``, if any."""
    remap = getattr(model, "checkpoint_filter", None)
    return remap(state_dict) if remap is not None else state_dict


# --- timm's registry -----------------------------------------------------------------------------
def _describe(name: str) -> str | None:
    doc = model_entrypoint(name).__doc__
    return doc.strip().splitlines()[0] if doc else None


def timm_pretrained_cfg(name: str) -> dict[str, Any]:
    """The ``pretrained_cfg`` of convattn model ``name`` in timm's fields (no weight source).

    Input size, pooled map size, crop, interpolation, mean/std, classes, first conv and classifier
    come from the model's own configuration; the paper and the official checkpoint's location
    become ``paper_name`` and ``notes``.
    """
    cfg = get_pretrained_cfg(convattn_name(name))
    if not cfg:
        raise ValueError(f"timm_pretrained_cfg: unknown model {name!r}")
    notes = tuple(
        f"{key}: {cfg[key]}"
        for key in ("official_checkpoint", "paper_top1", "paper_params_m", "paper_gmacs")
        if cfg.get(key) is not None
    )
    return dict(
        architecture=timm_name(name),
        input_size=tuple(cfg["input_size"]),
        fixed_input_size=False,
        interpolation=cfg["interpolation"],
        crop_pct=cfg["crop_pct"],
        crop_mode="center",
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        num_classes=cfg["num_classes"],
        pool_size=tuple(cfg["pool_size"]),
        first_conv=cfg["first_conv"],
        classifier=cfg["classifier"],
        license="mit",
        description=_describe(convattn_name(name)),
        paper_name=cfg.get("paper"),
        notes=notes or None,
    )


def _build(name: str, **kwargs: Any) -> nn.Module:
    """Our constructor behind a timm entrypoint: timm-only arguments handled here."""
    drop_rate = kwargs.pop("drop_rate", None) or 0.0
    global_pool = kwargs.pop("global_pool", None)
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    kwargs.pop("pretrained", None)
    model = model_entrypoint(name)(**kwargs)
    to_timm_model(model, drop_rate, global_pool)
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model


def _make_entrypoint(name: str) -> Callable[..., nn.Module]:
    tname = timm_name(name)

    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        from timm.models import build_model_with_cfg

        return build_model_with_cfg(
            partial(_build, name),
            tname,
            pretrained,
            pretrained_filter_fn=checkpoint_filter_fn,
            # out_indices None: every stage of the built model (FeatureGetterNet hands it to
            # prune_intermediate_layers, which resolves it against the model's feature_info:
            # four stages for most families, five for SAN).
            feature_cfg=dict(feature_cls="getter", out_indices=None),
            **kwargs,
        )

    entrypoint.__name__ = entrypoint.__qualname__ = tname
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"convattn ``{name}`` (timm interface). {_describe(name) or ''}".strip()
    return entrypoint


def register_timm_models() -> list[str]:
    """Register every convattn model in timm's registry as ``convattn_<name>``; returns the names.

    Idempotent; models added to convattn since the last call are registered too. A name timm
    already knows from elsewhere is skipped with a warning (never overwritten).

    Raises:
        ImportError: timm cannot be imported.
    """
    try:
        import timm.models
    except ImportError as err:
        raise ImportError(
            f"register_timm_models: timm cannot be imported ({err}); install it with "
            "'pip install timm'"
        ) from err
    module = sys.modules[__name__]
    for name in list_models():
        tname = timm_name(name)
        if tname in _registered:
            continue
        if timm.models.is_model(tname):
            warnings.warn(
                f"register_timm_models: timm already has a model named {tname!r}; convattn's "
                f"{name!r} is not registered under it",
                stacklevel=2,
            )
            continue
        default_cfgs[tname] = timm_pretrained_cfg(name)
        entrypoint = _make_entrypoint(name)
        setattr(module, tname, entrypoint)
        timm.models.register_model(entrypoint)
        _registered.append(tname)
    return list(_registered)
