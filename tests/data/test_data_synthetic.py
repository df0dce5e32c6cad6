"""Synthetic tasks: deterministic per (seed, split, index), balanced, in range, distinct splits."""

import pytest
import torch

from convattn.data import SYNTHETIC_TASKS, DataSpec, SyntheticDataset, build_datasets


@pytest.mark.parametrize("task", sorted(SYNTHETIC_TASKS))
def test_shapes_range_and_balance(task):
    ds = SyntheticDataset(task, 20, 24, seed=1)
    assert len(ds) == 20 and len(ds.classes) >= 4
    images = torch.stack([ds[i][0] for i in range(20)])
    assert images.dtype == torch.float32 and images.shape == (20, 3, 24, 24)
    assert images.min() >= 0 and images.max() <= 1 and images.std() > 0.05
    labels = [ds[i][1] for i in range(20)]
    assert labels == [i % len(ds.classes) for i in range(20)]


@pytest.mark.parametrize("task", sorted(SYNTHETIC_TASKS))
def test_deterministic_per_index(task):
    a = SyntheticDataset(task, 8, 16, seed=5)
    b = SyntheticDataset(task, 8, 16, seed=5)
    assert torch.equal(a[6][0], b[6][0])
    assert torch.equal(a[6][0], a[6][0])  # access order does not matter
    assert torch.equal(a[-2][0], a[6][0])
    assert not torch.equal(a[6][0], SyntheticDataset(task, 8, 16, seed=6)[6][0])
    val = SyntheticDataset(task, 8, 16, seed=5, split="val")
    assert not torch.equal(a[6][0], val[6][0])


def test_shapes_classes_look_different():
    # Averaged over many samples, the class masks differ: circle covers less than square.
    ds = SyntheticDataset("shapes", 200, 16, seed=0)
    bright = torch.zeros(4)
    for i in range(200):
        image, label = ds[i]
        bright[label] += (image.amin(0) > 0.5).float().mean()
    assert bright[0] > bright[1] > bright[2] and bright[0] > bright[3]


def test_grey_and_build():
    assert SyntheticDataset("stripes", 4, 8, in_chans=1)[0][0].shape == (1, 8, 8)
    bundle = build_datasets("synthetic:shapes:40:12", 16, seed=2)
    assert (len(bundle.train), len(bundle.val), bundle.num_classes) == (40, 12, 4)
    assert bundle.class_names == ["square", "circle", "cross", "bar"]
    assert len(bundle.mean) == 3 and all(0.05 < s < 0.5 for s in bundle.std)
    grey = build_datasets("synthetic:stripes", 8, in_chans=1)
    assert grey.in_chans == 1 and len(grey.mean) == 1 and grey.train[0][0].shape == (1, 8, 8)


def test_bad_arguments():
    with pytest.raises(ValueError, match="task"):
        SyntheticDataset("noise")
    with pytest.raises(ValueError, match="num_samples"):
        SyntheticDataset("shapes", 0)
    with pytest.raises(ValueError, match="seed"):
        SyntheticDataset("shapes", seed=-1)
    with pytest.raises(IndexError):
        SyntheticDataset("shapes", 4)[4]


def test_build_from_dataspec_object():
    spec = DataSpec("synthetic", name="stripes", train_size=10, val_size=4)
    bundle = build_datasets(spec, 8, seed=1)
    assert bundle.spec is spec and (len(bundle.train), len(bundle.val)) == (10, 4)
    assert isinstance(bundle.mean, tuple) and isinstance(bundle.class_names, list)
    assert bundle.class_names == ["horizontal", "vertical", "diagonal", "anti_diagonal"]
