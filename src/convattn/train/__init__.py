"""Training engine: ``train(TrainConfig(...))`` and ``evaluate``, single process or ``torchrun``.

See :mod:`.engine` for the loop, :mod:`.config` for the options (also the ``convattn train``
flags), :mod:`.optim` for parameter groups and the schedule, :mod:`.checkpoint` for the run folder.
"""

from .checkpoint import (
    BEST_WEIGHTS,
    LAST_WEIGHTS,
    RESUME_FILE,
    capture_rng_state,
    load_resume_state,
    restore_rng_state,
    save_resume_state,
)
from .config import TrainConfig, add_train_arguments, config_from_args
from .distributed import DistContext, init_distributed
from .engine import autocast, evaluate, train
from .evaluation import evaluate_checkpoint
from .export import export_pretrained
from .metrics import MetricMeter, topk_correct
from .optim import create_optimizer, create_scheduler, lr_factor, param_groups, split_decay_params
from .plots import plot_accuracy_comparison, plot_latency, plot_run
from .token_label import dense_token_targets, token_label_loss

__all__ = [
    "BEST_WEIGHTS",
    "LAST_WEIGHTS",
    "RESUME_FILE",
    "DistContext",
    "MetricMeter",
    "TrainConfig",
    "add_train_arguments",
    "autocast",
    "capture_rng_state",
    "config_from_args",
    "create_optimizer",
    "create_scheduler",
    "dense_token_targets",
    "evaluate",
    "evaluate_checkpoint",
    "export_pretrained",
    "init_distributed",
    "load_resume_state",
    "lr_factor",
    "param_groups",
    "plot_accuracy_comparison",
    "plot_latency",
    "plot_run",
    "restore_rng_state",
    "save_resume_state",
    "split_decay_params",
    "token_label_loss",
    "topk_correct",
    "train",
]
