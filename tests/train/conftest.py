"""Fixtures for the training-engine tests: one thread, a tiny BN-free classifier, tiny configs."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from convattn.train import TrainConfig

# Tiny models and batches: one thread is faster than two and keeps subprocess runs bit-comparable
# with in-process ones.
THREADS = 1


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def child_env() -> dict[str, str]:
    """Environment for child processes: the same thread count, no GPU."""
    return dict(os.environ, OMP_NUM_THREADS=str(THREADS), CUDA_VISIBLE_DEVICES="")


class TinyNet(nn.Sequential):
    """conv -> GELU -> conv/2 -> global pool -> linear: BN-free, so batch splits do not matter."""

    def __init__(self, num_classes: int = 4, in_chans: int = 3, width: int = 8) -> None:
        super().__init__(
            nn.Conv2d(in_chans, width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1),
            nn.GELU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(width, num_classes),
        )


@pytest.fixture
def tiny_net() -> type[TinyNet]:
    return TinyNet


@pytest.fixture
def tiny_cfg(tmp_path):
    """A factory of small, deterministic configs writing under tmp_path."""

    def make(**changes) -> TrainConfig:
        base = dict(
            model="tinynet",
            data="synthetic:shapes:32:16",
            img_size=16,
            epochs=2,
            batch_size=16,
            workers=0,
            aug="none",
            label_smoothing=0.0,
            quiet=True,
            plots=False,
            out=str(tmp_path / "run"),
        )
        return TrainConfig(**(base | changes))

    return make
