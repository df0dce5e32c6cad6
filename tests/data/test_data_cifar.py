"""CIFAR python batches: layout, labels, names, resizing, the restricted unpickler and bad files."""

import os
import pickle

import numpy as np
import pytest
import torch

from convattn.data import (
    CIFAR10_MEAN,
    CIFAR100_MEAN,
    CIFARDataset,
    build_datasets,
    restricted_load,
)


def test_cifar10_layout_labels_and_names(cifar10_dir):
    train = CIFARDataset(cifar10_dir, 32, train=True)
    test = CIFARDataset(cifar10_dir, 32, train=False)
    assert (len(train), len(test)) == (20, 6)
    assert train.classes[0] == "plane" and train.classes[-1] == "truck"
    first = pickle.loads((cifar10_dir / "data_batch_1").read_bytes())
    image, label = train[1]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32)
    assert label == first[b"labels"][1] and isinstance(label, int)
    # 1024 red values, then green, then blue, each a row-major 32x32 image.
    raw = first[b"data"][1]
    torch.testing.assert_close(image[0, 0, :5], torch.from_numpy(raw[:5]).float() / 255)
    torch.testing.assert_close(
        image[1, 1, 0], torch.tensor(raw[1024 + 32] / 255, dtype=torch.float32)
    )
    torch.testing.assert_close(image[2, 31, 31], torch.tensor(raw[3071] / 255, dtype=torch.float32))
    sixth = pickle.loads((cifar10_dir / "data_batch_2").read_bytes())
    assert train[4][1] == sixth[b"labels"][0]  # batches concatenated in order


def test_cifar100_fine_labels(cifar100_dir):
    train = CIFARDataset(cifar100_dir, 32, variant="cifar100")
    raw = pickle.loads((cifar100_dir / "train").read_bytes())
    assert len(train) == 10 and len(train.classes) == 100 and train.classes[7] == "class7"
    assert [train[i][1] for i in range(10)] == raw[b"fine_labels"]


def test_parent_folder_and_resize(cifar10_dir):
    ds = CIFARDataset(cifar10_dir.parent, 16)  # the folder holding cifar-10-batches-py
    image, _ = ds[0]
    assert image.shape == (3, 16, 16) and image.min() >= 0 and image.max() <= 1
    big = CIFARDataset(cifar10_dir, 40, in_chans=1)[0][0]
    assert big.shape == (1, 40, 40)


def test_missing_meta_falls_back_to_numbers(cifar10_dir):
    (cifar10_dir / "batches.meta").unlink()
    assert CIFARDataset(cifar10_dir, 32).classes == [str(i) for i in range(10)]


@pytest.mark.parametrize(("kind", "mean"), [("cifar10", CIFAR10_MEAN), ("cifar100", CIFAR100_MEAN)])
def test_build_datasets(cifar10_dir, cifar100_dir, kind, mean):
    folder = cifar10_dir if kind == "cifar10" else cifar100_dir
    bundle = build_datasets(f"{kind}:{folder}", 24)
    assert bundle.num_classes == (10 if kind == "cifar10" else 100)
    assert bundle.mean == mean and bundle.in_chans == 3
    assert bundle.train[0][0].shape == bundle.val[0][0].shape == (3, 24, 24)


# --------------------------------------------------------------------------- restricted unpickler


class _Exploit:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_malicious_pickle_refused_without_executing(tmp_path, cifar10_dir, dump_pickle):
    marker = tmp_path / "pwned"
    payload = {b"data": _Exploit(f"touch {marker}"), b"labels": [0]}
    dump_pickle(payload, cifar10_dir / "data_batch_3")
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load .*system") as info:
        CIFARDataset(cifar10_dir, 32)
    assert "data_batch_3" in str(info.value)
    assert not marker.exists()
    # The same file run through plain pickle would have executed the command: the test is real.
    pickle.loads((cifar10_dir / "data_batch_3").read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_other_globals_refused(tmp_path, dump_pickle, protocol):
    path = dump_pickle({"f": eval, "g": [1]}, tmp_path / "evil", protocol=protocol)
    with pytest.raises(pickle.UnpicklingError, match=r"evil.*(__builtin__|builtins)\.eval"):
        restricted_load(path)


def test_codecs_encode_only_latin1(tmp_path):
    # Hand-written protocol-2 pickle calling _codecs.encode("x", "rot13").
    data = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R."
    (tmp_path / "codec").write_bytes(data)
    with pytest.raises(pickle.UnpicklingError, match=r"codec.*rot13"):
        restricted_load(tmp_path / "codec")


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_plain_data_round_trips(tmp_path, dump_pickle, protocol):
    obj = {b"a": np.arange(6, dtype=np.uint8).reshape(2, 3), "b": [1, 2.5, "s", b"x"], "c": (None,)}
    loaded = restricted_load(dump_pickle(obj, tmp_path / "ok", protocol=protocol))
    np.testing.assert_array_equal(loaded[b"a"], obj[b"a"])
    assert loaded["b"] == obj["b"] and loaded["c"] == obj["c"]


def test_truncated_pickle_names_file(cifar10_dir):
    path = cifar10_dir / "test_batch"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(pickle.UnpicklingError, match="test_batch"):
        CIFARDataset(cifar10_dir, 32, train=False)


# ------------------------------------------------------------------------------------- bad files


def test_missing_folder_and_files(tmp_path, cifar10_dir):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CIFARDataset(tmp_path / "nope", 32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no 'data_batch_1'"):
        build_datasets(f"cifar10:{tmp_path / 'empty'}", 32)
    (cifar10_dir / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_4"):
        CIFARDataset(cifar10_dir, 32)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop(b"labels"), "expected keys 'data' and 'labels'"),
        (lambda d: d.update({b"data": d[b"data"].astype(np.float32)}), "uint8"),
        (lambda d: d.update({b"data": d[b"data"][:, :100]}), "shape"),
        (lambda d: d.update({b"labels": [0, 1, 2, 10]}), r"integers in \[0, 10\)"),
        (lambda d: d.update({b"labels": [0, 1]}), "shape"),
    ],
)
def test_malformed_batch(cifar10_dir, dump_pickle, make_cifar_dict, change, message):
    batch = make_cifar_dict(4, 10, "labels")
    change(batch)
    dump_pickle(batch, cifar10_dir / "data_batch_2")
    with pytest.raises(ValueError, match=message) as info:
        CIFARDataset(cifar10_dir, 32)
    assert "data_batch_2" in str(info.value)


def test_not_a_dict(cifar10_dir, dump_pickle):
    dump_pickle([1, 2], cifar10_dir / "test_batch")
    with pytest.raises(ValueError, match="test_batch: expected a pickled dict"):
        CIFARDataset(cifar10_dir, 32, train=False)
