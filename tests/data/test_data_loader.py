"""create_loader: reproducible shuffling, per-worker seeding with 0 and 2 workers, distributed."""

import random

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler, get_worker_info

from convattn.data import SyntheticDataset, create_loader


class _RandomStreams(Dataset):
    """Returns draws from torch, NumPy and ``random`` plus the id of the worker that made them."""

    def __len__(self):
        return 16

    def __getitem__(self, index):
        info = get_worker_info()
        draws = torch.tensor([torch.rand(()).item(), np.random.rand(), random.random()])
        return draws, -1 if info is None else info.id


def _collect(loader):
    draws, workers = zip(*[(d, w) for d, w in loader], strict=True)
    return torch.cat(draws), torch.cat(workers)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_batches_and_shuffle_reproducible(num_workers):
    ds = SyntheticDataset("shapes", 24, 8)
    loader = create_loader(ds, 5, train=True, num_workers=num_workers, seed=3)
    batches = list(loader)
    assert len(batches) == 4  # drop_last by default when training
    images, labels = batches[0]
    assert images.shape == (5, 3, 8, 8) and images.dtype == torch.float32
    assert labels.dtype == torch.int64
    order = torch.cat([b[1] for b in batches])
    again = torch.cat(
        [b[1] for b in create_loader(ds, 5, train=True, num_workers=num_workers, seed=3)]
    )
    assert torch.equal(order, again)
    images_again = next(iter(create_loader(ds, 5, train=True, num_workers=num_workers, seed=3)))[0]
    assert torch.equal(images, images_again)


def test_shuffle_depends_on_seed_and_eval_keeps_order():
    ds = SyntheticDataset("shapes", 40, 4)
    first = [lbl for _, y in create_loader(ds, 40, train=True, seed=0) for lbl in y.tolist()]
    other = [lbl for _, y in create_loader(ds, 40, train=True, seed=1) for lbl in y.tolist()]
    assert first != other
    loader = create_loader(ds, 6, train=False)
    batches = list(loader)
    assert len(batches) == 7 and len(batches[-1][1]) == 4  # eval keeps the last partial batch
    assert torch.cat([y for _, y in batches]).tolist() == ds.targets
    assert len(list(create_loader(ds, 6, train=True, drop_last=False))) == 7


def test_two_workers_have_distinct_streams_and_same_seed_reproduces():
    loader = create_loader(_RandomStreams(), 2, train=False, num_workers=2, seed=11)
    draws, workers = _collect(loader)
    assert set(workers.tolist()) == {0, 1}
    per_worker = [draws[workers == w] for w in (0, 1)]
    for column in range(3):  # torch, numpy and random each differ between the workers
        assert not torch.equal(per_worker[0][:, column], per_worker[1][:, column])
    assert draws[:, 1].unique().numel() == 16  # NumPy is not replayed across workers
    again, _ = _collect(create_loader(_RandomStreams(), 2, train=False, num_workers=2, seed=11))
    assert torch.equal(draws, again)
    other, _ = _collect(create_loader(_RandomStreams(), 2, train=False, num_workers=2, seed=12))
    assert not torch.equal(draws, other)


def test_bad_arguments():
    ds = SyntheticDataset("shapes", 4, 4)
    with pytest.raises(ValueError, match="batch_size"):
        create_loader(ds, 0, train=True)
    with pytest.raises(ValueError, match="num_workers"):
        create_loader(ds, 2, train=True, num_workers=-1)


def test_distributed_needs_process_group():
    with pytest.raises(RuntimeError, match="process group"):
        create_loader(SyntheticDataset("shapes", 4, 4), 2, train=True, distributed=True)


def test_distributed_sampler(tmp_path):
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        ds = SyntheticDataset("shapes", 10, 4)
        loader = create_loader(ds, 4, train=True, distributed=True, seed=5)
        assert isinstance(loader.sampler, DistributedSampler)
        loader.sampler.set_epoch(0)
        epoch0 = torch.cat([y for _, y in loader])
        loader.sampler.set_epoch(1)
        assert len(epoch0) == 8 and len(torch.cat([y for _, y in loader])) == 8
        eval_loader = create_loader(ds, 4, train=False, distributed=True)
        assert torch.cat([y for _, y in eval_loader]).tolist() == ds.targets
    finally:
        dist.destroy_process_group()


def test_seed_worker_seeds_numpy_and_random_from_torch():
    torch.manual_seed(1234)
    from convattn.data import seed_worker

    seed_worker(0)
    assert np.random.rand() == np.random.RandomState(1234).rand()
    assert random.random() == random.Random(1234).random()
