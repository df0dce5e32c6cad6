"""The training engine: ``train(cfg)`` runs a whole experiment, ``evaluate`` scores a model.

One code path serves a laptop CPU, one GPU and ``torchrun`` jobs: with ``WORLD_SIZE > 1`` the
model is wrapped in ``DistributedDataParallel`` (gradients averaged over ranks), the data split by
``DistributedSampler`` and the validation set sharded without padding, metrics are all-reduced, and
only rank 0 prints and writes files.

Each optimiser update: batch augmentation on the device (:class:`convattn.data.BatchAugment`),
optional Mixup/CutMix, forward under autocast (bf16, or fp16 with a ``GradScaler``), the loss
divided by the number of micro-batches accumulated, backward (DDP synchronises only the last
micro-batch), optional global-norm clipping, the optimiser and scheduler steps, and the EMA update.

Exact resumption: every epoch ends by writing ``resume.pt`` (see :mod:`.checkpoint`) with the
RNG states of every rank; each epoch's data order is a function of ``(seed, epoch)`` alone, so
``--resume auto`` after a crash replays the remaining epochs bit for bit on deterministic hardware.
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset, Subset

from .._io import TEMP_PREFIX
from .checkpoint import (
    BEST_WEIGHTS,
    LAST_WEIGHTS,
    RESUME_FILE,
    capture_rng_state,
    load_resume_state,
    remove_stale_temporaries,
    restore_rng_state,
    save_resume_state,
)
from .config import TrainConfig
from .distributed import (
    DistContext,
    all_gather_objects,
    average_buffers,
    barrier,
    cleanup_distributed,
    init_distributed,
)
from .metrics import MetricMeter, MetricsFile
from .optim import create_optimizer, create_scheduler
from .token_label import is_token_label_output, token_label_loss, warn_no_dense_target

if TYPE_CHECKING:
    from ..data import DataBundle

__all__ = ["autocast", "evaluate", "train"]

RESUME_FORMAT = "convattn-resume/1"
# Options that may differ between an interrupted run and its continuation without a warning.
_RUN_ONLY_OPTIONS = {"out", "resume", "overwrite", "quiet", "workers", "plots", "device"}
# Options without which the saved state cannot be continued at all.
_MUST_MATCH_ON_RESUME = ("model", "stage_ops", "data", "opt")


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """The autocast context of ``amp`` (``none``, ``bf16`` or ``fp16``) on ``device``."""
    if amp == "none":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp 'fp16' needs a CUDA device; use 'bf16' on the CPU")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device | str,
    amp: str = "none",
    *,
    transform: nn.Module | None = None,
    ctx: DistContext | None = None,
) -> dict[str, float]:
    """Cross-entropy loss and top-1/top-5 accuracy (percent) of ``model`` over ``loader``.

    Args:
        model: a classifier returning logits.
        loader: yields ``(images, labels)``.
        device: where to run.
        amp: ``none``, ``bf16`` or ``fp16`` autocast.
        transform: applied to each image batch on the device (e.g. an eval-mode
            :class:`~convattn.data.BatchAugment`, which normalises).
        ctx: sums are all-reduced over its ranks when distributed (each rank passes its shard).

    Returns:
        ``{"loss", "top1", "top5", "count"}``.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    meter = MetricMeter()
    try:
        for batch in loader:  # (images, labels[, dense target]): the dense target is unused here
            images, labels = batch[0], batch[1]
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            if transform is not None:
                images = transform(images)
            with autocast(device, amp):
                logits = model(images)
            logits = logits.float()
            meter.update(F.cross_entropy(logits, labels).item(), logits, labels)
    finally:
        model.train(was_training)
    return meter.compute(ctx)


def train(
    cfg: TrainConfig, *, model: nn.Module | None = None, data: DataBundle | None = None
) -> dict[str, Any]:
    """Run (or resume) the training described by ``cfg``; returns the final metrics.

    Args:
        cfg: the run's options.
        model: train this module instead of ``create_model(cfg.model)`` (``cfg.model`` then only
            names it in checkpoints; ``cfg.img_size`` is required unless the module has a
            ``pretrained_cfg``).
        data: train on these datasets instead of building ``cfg.data`` (which then only names
            them). Their samples may carry a third element, a dense target for token-labeling
            models (see :mod:`convattn.train.token_label`).

    Returns:
        ``top1``/``top5``/``loss`` of the last evaluation, ``ema_top1`` (with EMA), ``best_top1``,
        ``best_epoch``, ``epochs``, ``steps``, ``train_time_s``, ``run_dir`` and ``history`` (one
        dict per epoch, as in ``metrics.jsonl``).
    """
    cfg = cfg.validate()
    ctx = init_distributed(cfg.device)
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    completed = False
    try:
        result = _Run(cfg, ctx, model, data).fit()
        completed = True
        return result
    finally:
        torch.use_deterministic_algorithms(deterministic_before)
        cleanup_distributed(ctx, completed=completed)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _shard(dataset: Dataset, ctx: DistContext) -> Dataset:
    """This rank's slice of an evaluation set: every sample counted exactly once overall."""
    if not ctx.distributed:
        return dataset
    return Subset(dataset, range(ctx.rank, len(dataset), ctx.world_size))


def _soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()


def parse_stage_ops(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``"conv,conv,xvolution,conv"`` (the ``--stage-ops`` form) -> a tuple; None stays None."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(str(v).strip() for v in items)


def _check_model_name(name: str) -> None:
    from ..models import is_model

    if not is_model(name):
        raise ValueError(
            f"unknown model '{name}'; run 'convattn models' to list the registered names"
        )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _is_own_temporary(path: Path) -> bool:
    return path.name.startswith(TEMP_PREFIX)


def _move_aside(run_dir: Path) -> Path:
    """Move everything in ``run_dir`` into a new sibling ``<name>.old-<time>`` folder."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = run_dir.resolve()
    aside = base.with_name(f"{base.name}.old-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = base.with_name(f"{base.name}.old-{stamp}-{n}")
    aside.mkdir()
    for entry in sorted(run_dir.iterdir()):
        if not _is_own_temporary(entry):
            entry.rename(aside / entry.name)
    return aside


def _check_stage_ops(name: str, stage_ops: str | None) -> None:
    from ..models import list_models

    if stage_ops is not None and name not in list_models(module="resnet"):
        raise ValueError(
            f"--stage-ops applies to the ResNet models ({', '.join(list_models(module='resnet'))}), "
            f"not to '{name}'"
        )


def _default_img_size(name: str, model: nn.Module | None) -> int:
    from ..models import get_pretrained_cfg

    pcfg = getattr(model, "pretrained_cfg", None) or get_pretrained_cfg(name)
    if not pcfg or "input_size" not in pcfg:
        raise ValueError("TrainConfig: give 'img_size' (the model has no default input size)")
    return int(pcfg["input_size"][-1])


class _Run:
    """State of one training run; :meth:`fit` drives it."""

    def __init__(
        self,
        cfg: TrainConfig,
        ctx: DistContext,
        model: nn.Module | None,
        data: DataBundle | None = None,
    ) -> None:
        from ..data import BatchAugment, MixupCutmix, build_datasets, create_loader

        self.ctx = ctx
        self.device = ctx.device
        if cfg.amp == "fp16" and self.device.type != "cuda":
            raise ValueError("TrainConfig: amp 'fp16' needs a CUDA device; use 'bf16' on the CPU")
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False

        if model is None:
            _check_model_name(cfg.model)
            _check_stage_ops(cfg.model, cfg.stage_ops)
        elif cfg.stage_ops is not None:
            raise ValueError(
                "TrainConfig: 'stage_ops' builds the model by name; it cannot apply "
                "to a model passed in"
            )
        img_size = cfg.img_size or _default_img_size(cfg.model, model)
        out = Path(cfg.out) if cfg.out else Path("runs") / "train" / cfg.model
        self.cfg = cfg = cfg.replace(img_size=img_size, out=str(out))
        self.run_dir = out

        if data is None:
            data = build_datasets(cfg.data, img_size, seed=cfg.seed)
        self.data = data
        _seed_everything(cfg.seed)  # identical initial weights on every rank
        if model is None:
            from ..models import create_model

            model = create_model(
                cfg.model,
                num_classes=data.num_classes,
                in_chans=data.in_chans,
                drop_path_rate=cfg.drop_path,
                init_from=cfg.init_from,
                stage_ops=parse_stage_ops(cfg.stage_ops),
            )
            if cfg.init_from is not None and ctx.is_main:
                self._log(model.init_report.summary())
        elif cfg.init_from is not None:
            raise ValueError("TrainConfig: 'init_from' only applies to a model built by name")
        model.to(self.device)
        if ctx.distributed and self.device.type == "cuda" and cfg.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model
        # Augmentation randomness differs between ranks, weights do not.
        _seed_everything(cfg.seed + ctx.rank)

        self.train_loader = create_loader(
            data.train,
            cfg.batch_size,
            train=True,
            num_workers=cfg.workers,
            seed=cfg.seed,
            distributed=ctx.distributed,
        )
        if len(self.train_loader) == 0:
            per = " per process" if ctx.distributed else ""
            raise ValueError(
                f"the training set has {len(data.train)} images, fewer than one batch of "
                f"{cfg.batch_size}{per}; lower --batch-size"
            )
        self.val_loader = create_loader(
            _shard(data.val, ctx), cfg.batch_size, train=False, num_workers=cfg.workers
        )
        self.train_aug = BatchAugment(
            img_size,
            data.mean,
            data.std,
            train=True,
            policy=cfg.aug,
            hflip=cfg.hflip,
            color_jitter=cfg.color_jitter,
            scale=tuple(cfg.scale),
        ).to(self.device)
        self.eval_aug = BatchAugment(img_size, data.mean, data.std, train=False).to(self.device)
        self.mixup = MixupCutmix(
            data.num_classes,
            mixup_alpha=cfg.mixup,
            cutmix_alpha=cfg.cutmix,
            label_smoothing=cfg.label_smoothing,
        )

        self.optimizer = create_optimizer(
            model,
            cfg.opt,
            cfg.lr,
            cfg.weight_decay,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            decay_1d=cfg.decay_1d,
            no_decay_names=cfg.no_decay_names,
        )
        self.updates_per_epoch = math.ceil(len(self.train_loader) / cfg.accum_steps)
        self.scheduler = create_scheduler(
            self.optimizer,
            total_steps=cfg.epochs * self.updates_per_epoch,
            warmup_steps=round(cfg.warmup_epochs * self.updates_per_epoch),
            lr=cfg.lr,
            min_lr=cfg.min_lr,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        self.ema = (
            AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
            if cfg.ema
            else None
        )

        self.start_epoch = 0
        self.step = 0
        self.best_top1 = -1.0
        self.best_epoch = 0
        self.history: list[dict[str, Any]] = []
        self._loader_started = False
        self._warned_no_dense = False
        self._prepare_run_dir()

        if ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp: nn.Module | None = DistributedDataParallel(model, device_ids=ids)
        else:
            self.ddp = None
        self.show_progress = ctx.is_main and not cfg.quiet and sys.stderr.isatty()

    # --- set-up ------------------------------------------------------------------------------
    def _prepare_run_dir(self) -> None:
        """Check the run folder and the resume state, then (rank 0) write ``config.yaml``.

        Everything is validated before anything is written. A folder is written to only when it
        is new or empty, when it holds this very run being resumed (or a start of the same
        experiment that never finished an epoch), or with ``--overwrite``, which moves the old
        contents to a new folder beside it.
        """
        cfg, ctx = self.cfg, self.ctx
        resume_file = self.run_dir / RESUME_FILE
        resume_path: Path | None = None
        if cfg.resume == "auto":
            resume_path = resume_file if resume_file.is_file() else None
        elif cfg.resume:
            resume_path = Path(cfg.resume)
        state = self._read_resume(resume_path) if resume_path is not None else None
        own_run = resume_path is not None and _same_file(resume_path, resume_file)
        blocking = [] if own_run else self._blocking_contents()
        if blocking and not cfg.overwrite:
            raise ValueError(self._occupied_message(blocking))
        self.metrics_file = MetricsFile(self.run_dir / "metrics.jsonl")
        if state is not None:  # in memory only: a state that does not fit fails before writing
            self._load_resume(state, resume_path)
        barrier(ctx)  # every rank has looked before rank 0 changes anything
        if ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.run_dir)
            if blocking:  # --overwrite: the old contents are moved aside, never deleted
                aside = _move_aside(self.run_dir)
                self._log(f"--overwrite: moved the previous contents of {self.run_dir} to {aside}")
            self.cfg.replace(resume=None, overwrite=False).to_yaml(self.run_dir / "config.yaml")
            if state is not None:
                self.metrics_file.rewrite(self.history)  # drops lines of epochs to be redone
        barrier(ctx)
        if state is None and cfg.resume == "auto":
            self._log(f"no {RESUME_FILE} in {self.run_dir}: starting a new run")

    def _blocking_contents(self) -> list[str]:
        """Names in the run folder that a new run must not overwrite (``[]``: free to use).

        Free: a missing or empty folder, convattn's own temporaries, and a start of the same
        experiment that never finished an epoch (``config.yaml`` equal to this run's, an empty
        ``metrics.jsonl``).
        """
        if not self.run_dir.exists():
            return []
        if not self.run_dir.is_dir():
            raise ValueError(f"--out {self.run_dir} is a file, not a folder")
        names = sorted(p.name for p in self.run_dir.iterdir() if not _is_own_temporary(p))
        unstarted = {"config.yaml", "metrics.jsonl"}
        if set(names) <= unstarted and self._same_experiment_config():
            metrics = self.run_dir / "metrics.jsonl"
            if not metrics.exists() or (metrics.is_file() and metrics.stat().st_size == 0):
                return []
        return names

    def _same_experiment_config(self) -> bool:
        """Whether the folder's ``config.yaml`` describes this run (run-only options aside)."""
        path = self.run_dir / "config.yaml"
        if not path.is_file():
            return False
        try:
            theirs = TrainConfig.from_yaml(path)
        except (OSError, ValueError):
            return False
        theirs = theirs.replace(img_size=theirs.img_size or self.cfg.img_size)
        a, b = theirs.to_dict(), self.cfg.to_dict()
        return all(a[k] == b[k] for k in a if k not in _RUN_ONLY_OPTIONS)

    def _occupied_message(self, names: list[str]) -> str:
        shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        aside = "pass --overwrite to move them to a new folder beside it (nothing is deleted)"
        if RESUME_FILE in names:
            return (
                f"run folder {self.run_dir} already holds a run; continue it with --resume auto, "
                "or start afresh with --overwrite (its files are moved to a new folder beside "
                "it) or another --out"
            )
        if self.cfg.resume == "auto":
            return (
                f"run folder {self.run_dir} has no {RESUME_FILE} to continue from, but holds "
                f"{shown}; a new run would overwrite them, so nothing was changed: {aside}, or "
                "choose another --out"
            )
        return (
            f"--out {self.run_dir} already holds files that are not a run of this experiment "
            f"({shown}); nothing was changed: choose another --out, or {aside}"
        )

    def _read_resume(self, path: Path) -> dict[str, Any]:
        """Read a resume file and check that it can continue this run (nothing is written)."""
        state = load_resume_state(path)
        saved, current = state.get("config", {}), self.cfg.to_dict()
        for key in _MUST_MATCH_ON_RESUME:
            if key in saved and saved[key] != current[key]:
                raise ValueError(
                    f"resume: {path} was trained with {key}={saved[key]!r}, this run has "
                    f"{key}={current[key]!r}; repeat the run's options (e.g. --config "
                    f"{path.parent / 'config.yaml'} --resume auto)"
                )
        return state

    def _load_resume(self, state: dict[str, Any], path: Path) -> None:
        saved, current = state.get("config", {}), self.cfg.to_dict()
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
            else:
                warnings.warn(
                    "resume: the checkpoint has no EMA; starting it from the weights", stacklevel=2
                )
        self.start_epoch = int(state["epoch"])
        self.step = int(state["step"])
        self.best_top1 = float(state["best_top1"])
        self.best_epoch = int(state["best_epoch"])
        self.history = list(state["history"])
        rng = state["rng"]
        if len(rng) == self.ctx.world_size:
            restore_rng_state(rng[self.ctx.rank])
        else:
            warnings.warn(
                f"resume: saved by {len(rng)} processes, continuing on {self.ctx.world_size}; "
                "random streams are re-seeded, so the continuation is not bit-exact",
                stacklevel=2,
            )
            _seed_everything(self.cfg.seed + 1000 * self.start_epoch + self.ctx.rank)
        changed = sorted(
            k for k, v in saved.items() if k not in _RUN_ONLY_OPTIONS and current.get(k) != v
        )
        if changed:
            warnings.warn(f"resume: options changed since the checkpoint: {changed}", stacklevel=2)
        self._log(f"resumed {path} at epoch {self.start_epoch}/{self.cfg.epochs}, step {self.step}")

    # --- loop --------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        t_start = time.perf_counter()
        if self.start_epoch == 0:
            self._log(
                f"training {cfg.model} on {cfg.data} ({len(self.data.train)} train / "
                f"{len(self.data.val)} val images, {self.data.num_classes} classes, "
                f"{cfg.img_size}px) for {cfg.epochs} epochs on {self.device}"
                + (f" x {self.ctx.world_size} processes" if self.ctx.distributed else "")
                + f"; run folder {self.run_dir}"
            )
        for epoch in range(self.start_epoch, cfg.epochs):
            self._set_epoch(epoch)
            row = self._train_one_epoch(epoch)
            if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                row.update(self._evaluate_epoch())
            self.history.append(row)
            self._end_epoch(epoch, row)
        if self.ctx.is_main and cfg.plots and self.history:
            from .plots import plot_run

            plot_run(self.history, self.run_dir / "curves.png", title=f"{cfg.model} on {cfg.data}")
        if self.ctx.is_main and cfg.export_dir:
            from .export import export_pretrained

            folder = export_pretrained(self.run_dir, cfg.export_dir)
            self._log(f"exported the best weights to {folder}")
        return self._summary(time.perf_counter() - t_start)

    def _set_epoch(self, epoch: int) -> None:
        """Make the epoch's data order a function of ``(seed, epoch)`` only (exact resumption)."""
        loader = self.train_loader
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        if loader.generator is not None:
            loader.generator.manual_seed(self.cfg.seed * 1_000_003 + epoch)
            # A persistent-worker loader draws its workers' base seed from the generator only
            # when it first builds its iterator; draw it here on later epochs too, so the shuffle
            # sees the same generator position in a resumed run as in an uninterrupted one.
            if loader.persistent_workers and self._loader_started:
                torch.empty((), dtype=torch.int64).random_(generator=loader.generator)
        self._loader_started = True

    def _loss(
        self, logits: torch.Tensor, labels: torch.Tensor, soft_targets: torch.Tensor | None
    ) -> torch.Tensor:
        if soft_targets is not None:
            return _soft_target_cross_entropy(logits, soft_targets)
        return F.cross_entropy(logits, labels, label_smoothing=self.cfg.label_smoothing)

    def _token_label_loss(
        self,
        output: tuple,
        labels: torch.Tensor,
        soft_targets: torch.Tensor | None,
        dense: torch.Tensor | None,
    ) -> torch.Tensor:
        """Class and token terms of a token-labeling model (see :mod:`.token_label`)."""
        if dense is None and not self._warned_no_dense:
            self._warned_no_dense = True
            if self.ctx.is_main:
                warn_no_dense_target(self.cfg.model)
        targets = soft_targets if soft_targets is not None else labels
        loss = token_label_loss(
            output,
            targets,
            dense,
            dense_weight=self.cfg.dense_weight,
            label_smoothing=self.cfg.label_smoothing,
        )
        if dense is None and self.ddp is not None:
            # DDP needs every parameter in the graph: the unused token head gets zero gradients.
            loss = loss + 0.0 * output[1].float().sum()
        return loss

    def _check_dense_target_setup(self) -> None:
        """Dense targets are per pixel of the stored image: no geometric augmentation or mixing."""
        if self.train_aug.is_random:
            raise ValueError(
                "the training data gives dense (token-labeling) targets, which must stay aligned "
                f"with the images; use --aug none (got --aug {self.cfg.aug})"
            )
        if self.mixup.enabled:
            raise ValueError(
                "the training data gives dense (token-labeling) targets; Mixup/CutMix would not "
                "mix them (token-labeling models mix tokens themselves): set --mixup 0 --cutmix 0"
            )

    def _train_one_epoch(self, epoch: int) -> dict[str, Any]:
        cfg, device = self.cfg, self.device
        net = self.ddp if self.ddp is not None else self.model
        net.train()
        meter = MetricMeter()
        n_batches = len(self.train_loader)
        progress = self._progress(n_batches, f"epoch {epoch + 1}/{cfg.epochs}")
        t0, seen = time.perf_counter(), 0
        self.optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(self.train_loader):
            images = batch[0].to(device, non_blocking=True)
            labels = batch[1].to(device, non_blocking=True)
            dense = batch[2] if len(batch) > 2 else None
            if dense is not None:
                self._check_dense_target_setup()
            with torch.no_grad():
                images = self.train_aug(images)
            soft_targets = None
            if self.mixup.enabled:
                images, soft_targets = self.mixup(images, labels)
            group_start = i - i % cfg.accum_steps
            group_size = min(cfg.accum_steps, n_batches - group_start)
            is_update = i == group_start + group_size - 1
            # DDP all-reduces gradients only on the micro-batch that completes an update.
            sync = (
                self.ddp.no_sync()
                if self.ddp is not None and not is_update
                else contextlib.nullcontext()
            )
            with sync:
                with autocast(device, cfg.amp):
                    logits = net(images)
                if is_token_label_output(logits):
                    loss = self._token_label_loss(logits, labels, soft_targets, dense)
                    logits = logits[0]
                else:
                    loss = self._loss(logits.float(), labels, soft_targets)
                self.scaler.scale(loss / group_size).backward()
            loss_value = loss.item()
            if not math.isfinite(loss_value) and cfg.amp != "fp16":
                raise RuntimeError(
                    f"the loss became {loss_value} at epoch {epoch + 1}, step {self.step}; "
                    "lower --lr or set --clip-grad"
                )
            if is_update:
                self._update()
            meter.update(loss_value, logits.detach().float(), labels)
            seen += labels.shape[0]
            if progress is not None:
                rate = seen * self.ctx.world_size / max(time.perf_counter() - t0, 1e-9)
                progress.set_postfix(
                    loss=f"{meter.local_loss:.3f}",
                    acc=f"{meter.local_top1:.1f}%",
                    img_s=f"{rate:.0f}",
                )
                progress.update()
        if progress is not None:
            progress.close()
        # Each rank's BatchNorm statistics saw only its own batches: average them (and the
        # EMA's) so that every rank evaluates, and rank 0 saves, one and the same model.
        average_buffers(self.model, self.ctx)
        if self.ema is not None:
            average_buffers(self.ema, self.ctx)
        elapsed = time.perf_counter() - t0
        stats = meter.compute(self.ctx)
        return {
            "epoch": epoch + 1,
            "step": self.step,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": stats["loss"],
            "train_top1": stats["top1"],
            "epoch_time_s": elapsed,
            "images_per_s": stats["count"] / max(elapsed, 1e-9),
        }

    def _update(self) -> None:
        cfg = self.cfg
        if cfg.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def _evaluate_epoch(self) -> dict[str, float]:
        kwargs = dict(transform=self.eval_aug, ctx=self.ctx)
        val = evaluate(self.model, self.val_loader, self.device, self.cfg.amp, **kwargs)
        row = {"val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"]}
        if self.ema is not None:
            ema = evaluate(self.ema.module, self.val_loader, self.device, self.cfg.amp, **kwargs)
            row.update(ema_val_loss=ema["loss"], ema_val_top1=ema["top1"], ema_val_top5=ema["top5"])
        return row

    def _end_epoch(self, epoch: int, row: dict[str, Any]) -> None:
        """Save weights and the resume state (rank 0), append the metrics line, log."""
        cfg = self.cfg
        improved_by = None
        candidates = [("model", row.get("val_top1")), ("ema", row.get("ema_val_top1"))]
        for source, top1 in candidates:
            if top1 is not None and top1 > self.best_top1:
                self.best_top1, self.best_epoch, improved_by = top1, epoch + 1, source
        rng = all_gather_objects(capture_rng_state(), self.ctx)
        if self.ctx.is_main:
            from ..models import save_model

            meta = self._weights_meta(epoch + 1, row.get("val_top1"))
            save_model(self.model, self.run_dir / LAST_WEIGHTS, model_name=cfg.model, **meta)
            if improved_by is not None:
                best = self.ema.module if improved_by == "ema" else self.model
                meta.update(top1=self.best_top1, weights=improved_by)
                save_model(best, self.run_dir / BEST_WEIGHTS, model_name=cfg.model, **meta)
            save_resume_state(self.run_dir / RESUME_FILE, self._resume_state(epoch + 1, rng))
            self.metrics_file.append(row)
        barrier(self.ctx)
        self._log(self._epoch_line(row))

    def _weights_meta(self, epoch: int, top1: float | None) -> dict[str, Any]:
        d = self.data
        extra = {} if self.cfg.stage_ops is None else {"stage_ops": self.cfg.stage_ops}
        return dict(
            **extra,
            epoch=epoch,
            top1=top1,
            weights="model",
            data=self.cfg.data,
            data_seed=self.cfg.seed,
            img_size=self.cfg.img_size,
            num_classes=d.num_classes,
            in_chans=d.in_chans,
            mean=list(d.mean),
            std=list(d.std),
            class_names=list(d.class_names),
        )

    def _resume_state(self, epoch: int, rng: list[dict]) -> dict[str, Any]:
        return {
            "format": RESUME_FORMAT,
            "epoch": epoch,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": rng,
            "best_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "config": self.cfg.to_dict(),
            # What `convattn eval` needs to score these weights as the run did.
            "weights_meta": self._weights_meta(epoch, None),
        }

    # --- reporting ---------------------------------------------------------------------------
    def _log(self, message: str) -> None:
        if self.ctx.is_main and not self.cfg.quiet:
            print(message, flush=True)

    def _progress(self, total: int, desc: str):
        if not self.show_progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, unit="batch")

    def _epoch_line(self, row: dict[str, Any]) -> str:
        parts = [
            f"epoch {row['epoch']}/{self.cfg.epochs}",
            f"train loss {row['train_loss']:.4f} top1 {row['train_top1']:.2f}%",
        ]
        if "val_top1" in row:
            parts.append(
                f"val loss {row['val_loss']:.4f} top1 {row['val_top1']:.2f}% "
                f"top5 {row['val_top5']:.2f}%"
            )
        if "ema_val_top1" in row:
            parts.append(f"EMA top1 {row['ema_val_top1']:.2f}%")
        parts.append(f"lr {row['lr']:.2e}")
        parts.append(f"{row['images_per_s']:.0f} img/s, {row['epoch_time_s']:.1f} s")
        return " | ".join(parts)

    def _summary(self, elapsed: float) -> dict[str, Any]:
        evaluated = [r for r in self.history if "val_top1" in r]
        last = evaluated[-1] if evaluated else {}
        summary: dict[str, Any] = {
            "top1": last.get("val_top1"),
            "top5": last.get("val_top5"),
            "loss": last.get("val_loss"),
            "best_top1": self.best_top1 if self.best_top1 >= 0 else None,
            "best_epoch": self.best_epoch,
            "epochs": len(self.history),
            "steps": self.step,
            "train_time_s": elapsed,
            "run_dir": str(self.run_dir),
            "history": list(self.history),
        }
        if self.ema is not None:
            summary["ema_top1"] = last.get("ema_val_top1")
        return summary
