"""DataLoader construction with reproducible shuffling and per-worker seeding.

Shuffling draws from a ``torch.Generator`` seeded with ``seed``; each worker's torch seed is then
``base_seed + worker_id`` with ``base_seed`` drawn from that generator, and :func:`seed_worker`
seeds Python's ``random`` and NumPy's global generator from it. So every worker has its own random
streams and the same seed reproduces all of them, for any number of workers. (torch >= 1.9 also
seeds NumPy in workers by itself; the explicit hook keeps the guarantee independent of that.)
"""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from convattn.layers._checks import check_positive_int

__all__ = ["create_loader", "seed_worker"]


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed ``random`` and NumPy from the worker's torch seed."""
    seed = torch.initial_seed()  # already base_seed + worker_id, set by the DataLoader
    random.seed(seed)
    np.random.seed(seed % 2**32)


def create_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool,
    num_workers: int = 0,
    seed: int = 0,
    distributed: bool = False,
    drop_last: bool | None = None,
) -> DataLoader:
    """A DataLoader that shuffles (train) or keeps order (eval), reproducibly from ``seed``.

    Args:
        dataset: a map-style dataset.
        batch_size: samples per batch (per process when distributed).
        train: shuffle and, by default, drop the last incomplete batch.
        num_workers: worker processes (0 loads in the main process); workers persist across epochs.
        seed: seeds the shuffle order, the worker seeds and the distributed sampler.
        distributed: use a ``DistributedSampler`` over the initialised process group. Its
            ``set_epoch`` is the caller's job (``loader.sampler.set_epoch(epoch)``). The sampler
            pads with repeated samples so every rank gets the same count, which slightly skews
            distributed evaluation of sets not divisible by the world size.
        drop_last: drop the last incomplete batch; None means ``train``.

    Returns:
        The DataLoader; ``pin_memory`` is on when CUDA is available.

    Raises:
        ValueError: a bad batch size or worker count.
        RuntimeError: ``distributed`` without an initialised process group.
    """
    check_positive_int(batch_size, "batch_size", "create_loader")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(
            f"create_loader: 'num_workers' must be a non-negative integer, got {num_workers!r}"
        )
    drop_last = train if drop_last is None else drop_last
    generator = torch.Generator().manual_seed(seed)
    sampler = None
    if distributed:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "create_loader(distributed=True) needs an initialised torch.distributed process "
                "group (launch with torchrun and call init_process_group first)"
            )
        sampler = DistributedSampler(dataset, shuffle=train, seed=seed, drop_last=False)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        worker_init_fn=seed_worker,
        generator=generator,
        persistent_workers=num_workers > 0,
    )
