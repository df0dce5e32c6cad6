"""scikit-learn digits: counts, stratified seeded split, scaling and upsampling."""

import numpy as np
import pytest
import torch

from convattn.data import DigitsDataset, build_datasets
from convattn.data.digits import digits_split, load_digits_arrays


def test_totals_classes_and_split_sizes():
    images, labels = load_digits_arrays()
    assert images.shape == (1797, 8, 8) and labels.shape == (1797,)
    assert images.min() == 0.0 and images.max() == 1.0
    train, val = DigitsDataset("train", 8), DigitsDataset("val", 8)
    assert len(train) + len(val) == 1797
    assert (len(train), len(val)) == (1438, 359)
    assert train.classes == [str(i) for i in range(10)]
    assert sorted(set(train.targets.tolist())) == list(range(10))


def test_split_is_stratified_disjoint_and_seeded():
    _, labels = load_digits_arrays()
    train, val = digits_split(labels, seed=0)
    assert not set(train) & set(val) and len(set(train) | set(val)) == 1797
    for cls in range(10):
        fraction = np.mean(labels[val] == cls) / np.mean(labels == cls) * len(val) / 1797
        assert abs(fraction - 0.2) < 0.01  # ~20 % of every class
    again = digits_split(labels, seed=0)
    np.testing.assert_array_equal(again[1], val)
    assert not np.array_equal(digits_split(labels, seed=1)[1], val)
    with pytest.raises(ValueError, match="val_fraction"):
        digits_split(labels, val_fraction=1.0)


def test_items_native_and_upsampled():
    images, labels = load_digits_arrays()
    _, val_idx = digits_split(labels, seed=0)
    native = DigitsDataset("val", 8)
    image, label = native[3]
    assert image.dtype == torch.float32 and image.shape == (3, 8, 8)
    torch.testing.assert_close(image[1], torch.tensor(images[val_idx[3]]))
    assert label == labels[val_idx[3]] and isinstance(label, int)
    big, _ = DigitsDataset("val", 32, in_chans=1)[3]
    assert big.shape == (1, 32, 32) and big.min() >= 0 and big.max() <= 1
    # bilinear upsampling preserves the mean roughly and the layout exactly at block centres
    assert abs(big.mean() - image[0].mean()) < 0.05


def test_build_datasets_digits():
    bundle = build_datasets("digits", 16, seed=3)
    assert bundle.num_classes == 10 and bundle.in_chans == 3
    assert len(bundle.mean) == 3 and len(set(bundle.mean)) == 1
    assert 0.25 < bundle.mean[0] < 0.35 and 0.3 < bundle.std[0] < 0.45
    assert bundle.train[0][0].shape == (3, 16, 16)
    assert len(bundle.train) + len(bundle.val) == 1797


def test_bad_options():
    with pytest.raises(ValueError, match="split"):
        DigitsDataset("test")
    with pytest.raises(ValueError, match="in_chans"):
        build_datasets("digits", 8, in_chans=2)
    with pytest.raises(ValueError, match="img_size"):
        build_datasets("digits", 0)
