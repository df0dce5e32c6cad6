"""Parameter groups (no decay on norms, biases, scalar rates), optimisers and the LR schedule."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from convattn.models import create_model
from convattn.train import (
    create_optimizer,
    create_scheduler,
    lr_factor,
    param_groups,
    split_decay_params,
)


def _names(pairs):
    return {name for name, _ in pairs}


def test_norms_biases_and_vectors_are_not_decayed():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LayerNorm(4))
    decay, no_decay = split_decay_params(model)
    assert _names(decay) == {"0.weight"}
    assert _names(no_decay) == {"0.bias", "1.weight", "1.bias", "3.weight", "3.bias"}
    decay_all, none = split_decay_params(model, decay_1d=True)
    assert len(decay_all) == 6 and not none


def test_acmix_rates_are_not_decayed():
    model = create_model("acmix_resnet_nano", num_classes=3)
    decay, no_decay = split_decay_params(model)
    rates = {n for n, _ in model.named_parameters() if n.endswith(("rate1", "rate2"))}
    assert rates and rates <= _names(no_decay)
    assert not rates & _names(decay)
    # Every conv/linear kernel (ndim > 1) is decayed.
    assert all(p.ndim > 1 for _, p in decay)


def test_glmix_slot_scale_is_not_decayed():
    model = create_model("glnet_nano", num_classes=3)
    slot = {n for n, p in model.named_parameters() if n.endswith("slot_scale")}
    assert slot and all(dict(model.named_parameters())[n].ndim == 0 for n in slot)
    _, no_decay = split_decay_params(model)
    assert slot <= _names(no_decay)


def test_model_keywords_and_name_patterns():
    class WithTable(nn.Module):
        def __init__(self):
            super().__init__()
            self.relative_position_bias_table = nn.Parameter(torch.zeros(9, 2))
            self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
            self.proj = nn.Linear(8, 8)

        def no_weight_decay_keywords(self):
            return {"relative_position"}

    model = WithTable()
    decay, no_decay = split_decay_params(model, no_decay_names=())
    assert _names(no_decay) == {"relative_position_bias_table", "proj.bias"}
    decay, no_decay = split_decay_params(model, no_decay_names=("*pos_embed", "proj.*"))
    assert _names(decay) == set()


def test_param_groups_carry_weight_decay():
    model = nn.Linear(4, 2)
    groups = param_groups(model, 0.1)
    assert [(g["group"], g["weight_decay"], len(g["params"])) for g in groups] == [
        ("decay", 0.1, 1),
        ("no_decay", 0.0, 1),
    ]


@pytest.mark.parametrize("opt", ["adamw", "sgd"])
def test_create_optimizer(opt):
    model = nn.Linear(4, 2)
    optimizer = create_optimizer(model, opt, lr=0.1, weight_decay=0.01, momentum=0.8, nesterov=True)
    assert type(optimizer).__name__ == {"adamw": "AdamW", "sgd": "SGD"}[opt]
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.01, 0.0}
    if opt == "sgd":
        assert optimizer.param_groups[0]["momentum"] == 0.8
        assert optimizer.param_groups[0]["nesterov"]
    with pytest.raises(ValueError, match="'opt'"):
        create_optimizer(model, "lamb")


def test_lr_factor_values():
    # 4 warm-up updates, 10 in all, min ratio 0.1.
    assert [lr_factor(s, 10, 4, 0.1) for s in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert lr_factor(4, 10, 4, 0.1) == 1.0  # cosine starts at the peak
    mid = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 3 / 6))
    assert lr_factor(7, 10, 4, 0.1) == pytest.approx(mid)
    assert lr_factor(10, 10, 4, 0.1) == pytest.approx(0.1)
    # No warm-up: cosine from the first update.
    assert lr_factor(0, 10, 0, 0.0) == 1.0


def test_scheduler_steps_per_update():
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    scheduler = create_scheduler(optimizer, total_steps=6, warmup_steps=2, lr=0.2, min_lr=0.02)
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [0.2 * lr_factor(s, 6, 2, 0.1) for s in range(6)]
    assert lrs == pytest.approx(expected)
    assert lrs[:3] == pytest.approx([0.2 / 3, 0.4 / 3, 0.2])  # warm-up, then the peak
    assert all(a > b for a, b in itertools.pairwise(lrs[2:]))  # strictly decaying after it
