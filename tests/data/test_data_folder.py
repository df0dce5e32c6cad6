"""Image decoding and ImageFolder datasets: formats, ordering, resize policy and every bad-data error."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from convattn.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageFolderDataset,
    UnreadableImageWarning,
    build_datasets,
    find_classes,
    load_image,
)

# ---------------------------------------------------------------------------------------- decoding


def _gradient(h, w):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], -1)


def test_png_decodes_exactly_to_chw_in_unit_range(tmp_path):
    arr = _gradient(9, 9).astype(np.uint8)
    path = tmp_path / "g.png"
    Image.fromarray(arr).save(path)
    out = load_image(path, 9)
    assert out.dtype == torch.float32 and out.shape == (3, 9, 9)
    torch.testing.assert_close(out, torch.from_numpy(arr).permute(2, 0, 1).float() / 255)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_greyscale_file_becomes_rgb_or_grey(tmp_path, make_image, suffix):
    path = make_image(tmp_path / f"grey{suffix}", size=(20, 16), mode="L")
    rgb = load_image(path, 8)
    assert rgb.shape == (3, 8, 8)
    torch.testing.assert_close(rgb[0], rgb[1])
    torch.testing.assert_close(rgb[0], rgb[2])
    grey = load_image(path, 8, in_chans=1)
    assert grey.shape == (1, 8, 8)
    torch.testing.assert_close(grey[0], rgb[0], atol=1 / 255, rtol=0)


def test_jpeg_close_to_source(tmp_path):
    arr = np.kron(_gradient(8, 8), np.ones((8, 8, 1))).astype(np.uint8)  # smooth 64x64
    path = tmp_path / "smooth.jpg"
    Image.fromarray(arr).save(path, quality=95)
    out = load_image(path, 64)
    ref = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
    assert (out - ref).abs().mean() < 0.03


def test_other_modes(tmp_path, make_image):
    rgba = make_image(tmp_path / "a.png", mode="RGBA")
    assert load_image(rgba, 6).shape == (3, 6, 6)
    palette = tmp_path / "p.png"
    img = Image.fromarray(_gradient(10, 10).astype(np.uint8)).convert("P")
    img.info["transparency"] = 0
    img.save(palette, transparency=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Pillow palette-transparency warning
        assert load_image(palette, 6).shape == (3, 6, 6)
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((6, 6), 40000, dtype=np.uint16)).save(deep)
    out = load_image(deep, 6)
    # 16-bit keeps its scale (Pillow's own conversion would clip 40000 to 255 -> 1.0).
    torch.testing.assert_close(out, torch.full((3, 6, 6), (40000 >> 8) / 255))


def test_resize_modes(tmp_path):
    # A wide image: left third red, middle green, right third blue.
    arr = np.zeros((30, 90, 3), np.uint8)
    arr[:, :30, 0] = arr[:, 30:60, 1] = arr[:, 60:, 2] = 255
    path = tmp_path / "wide.png"
    Image.fromarray(arr).save(path)
    crop = load_image(path, 10, resize_mode="crop")
    assert crop.shape == (3, 10, 10)
    # Only the green centre survives (the edge columns see a little red/blue through the filter).
    assert crop[1].min() > 0.9 and crop[0, :, 1:-1].max() == 0 and crop[2, :, 1:-1].max() == 0
    squash = load_image(path, 10, resize_mode="squash")
    assert squash[0, :, 0].min() > 0.95 and squash[2, :, -1].min() > 0.95  # whole width kept
    big = load_image(path, 64)  # upsampling works too and stays in [0, 1]
    assert big.shape == (3, 64, 64) and big.min() >= 0 and big.max() <= 1


# ------------------------------------------------------------------------------------------- scan


def test_scan_classes_order_and_labels(image_folder):
    ds = ImageFolderDataset(image_folder / "train", 8)
    assert ds.classes == ["cat", "dog", "emu"]
    assert ds.class_to_idx == {"cat": 0, "dog": 1, "emu": 2}
    assert len(ds) == 9 and ds.targets == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [p for p, _ in ds.samples] == sorted(p for p, _ in ds.samples)
    suffixes = {p.rsplit(".", 1)[1] for p, _ in ds.samples}
    assert suffixes == {"png", "jpg", "JPEG", "bmp", "webp"}  # case-insensitive match
    image, label = ds[4]
    assert image.shape == (3, 8, 8) and image.dtype == torch.float32 and label == 1
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert ImageFolderDataset(image_folder / "train", 8).samples == ds.samples  # deterministic


def test_scan_ignores_hidden_and_non_images_and_recurses(image_folder, make_image):
    train = image_folder / "train"
    (train / "cat" / "notes.txt").write_text("not an image")
    make_image(train / "cat" / ".hidden.png")
    make_image(train / ".ipynb_checkpoints" / "x.png")
    make_image(train / "cat" / "sub" / "deep.PNG")
    ds = ImageFolderDataset(train, 8)
    assert ds.classes == ["cat", "dog", "emu"]
    paths = [p for p, _ in ds.samples]
    assert len(ds) == 10 and any(p.endswith("deep.PNG") for p in paths)
    assert not any(".hidden" in p or p.endswith(".txt") for p in paths)


def test_custom_extensions_and_grey(image_folder):
    ds = ImageFolderDataset(image_folder / "train", 5, extensions=("PNG", ".bmp"), in_chans=1)
    assert {p.rsplit(".", 1)[1].lower() for p, _ in ds.samples} <= {"png", "bmp"}
    assert ds[0][0].shape == (1, 5, 5)


def test_build_datasets_from_folder(image_folder):
    bundle = build_datasets(str(image_folder), 16)
    assert (len(bundle.train), len(bundle.val)) == (9, 6)
    assert bundle.num_classes == 3 and bundle.class_names == ["cat", "dog", "emu"]
    assert bundle.in_chans == 3 and bundle.mean == IMAGENET_MEAN and bundle.std == IMAGENET_STD
    assert bundle.val[5][0].shape == (3, 16, 16) and bundle.val[5][1] == 2
    grey = build_datasets(f"folder:{image_folder}", 16, in_chans=1)
    assert grey.train[0][0].shape == (1, 16, 16) and len(grey.mean) == len(grey.std) == 1
    assert 0.44 < grey.mean[0] < 0.47


# ------------------------------------------------------------------------------------- bad data


def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        build_datasets(str(tmp_path / "nothing_here"), 8)


def test_root_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="file"):
        build_datasets(str(tmp_path / "file"), 8)


@pytest.mark.parametrize("split", ["train", "val"])
def test_missing_split_folder(image_folder, split):
    import shutil

    shutil.rmtree(image_folder / split)
    with pytest.raises(FileNotFoundError, match=f"no '{split}' folder"):
        build_datasets(str(image_folder), 8)


def test_empty_class_folder(image_folder):
    (image_folder / "train" / "fox").mkdir()
    (image_folder / "val" / "fox").mkdir()
    with pytest.raises(ValueError, match=r"\['fox'\] contain no readable images") as info:
        build_datasets(str(image_folder), 8)
    assert str(image_folder / "train") in str(info.value)


def test_no_images(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        (tmp_path / "train" / cls / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="has no images with extensions") as info:
        ImageFolderDataset(tmp_path / "train", 8)
    assert str(tmp_path / "train") in str(info.value)


def test_no_class_folders_hints_at_loose_images(tmp_path, make_image):
    make_image(tmp_path / "train" / "x.png")
    with pytest.raises(ValueError, match="must be moved into per-class sub-folders"):
        find_classes(tmp_path / "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no class sub-folders"):
        find_classes(tmp_path / "empty")


def test_mismatched_train_val_classes(image_folder, make_image):
    make_image(image_folder / "val" / "fox" / "a.png")
    with pytest.raises(ValueError, match=r"missing \[\], unexpected \['fox'\]") as info:
        build_datasets(str(image_folder), 8)
    assert str(image_folder / "val") in str(info.value)


def test_corrupt_images_skipped_with_counted_warning(image_folder):
    (image_folder / "train" / "cat" / "broken.png").write_bytes(b"definitely not a png")
    (image_folder / "train" / "dog" / "empty.jpg").write_bytes(b"")
    with pytest.warns(UnreadableImageWarning, match="skipped 2 unreadable image") as record:
        ds = ImageFolderDataset(image_folder / "train", 8)
    assert len(record) == 1
    assert "broken.png" in str(record[0].message) and "empty.jpg" in str(record[0].message)
    assert len(ds) == 9 and len(ds.skipped) == 2
    assert all("broken.png" not in p and "empty.jpg" not in p for p, _ in ds.samples)


def test_all_images_corrupt_is_an_error(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        (tmp_path / "train" / cls / "x.jpg").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="all 2 image file") as info:
        ImageFolderDataset(tmp_path / "train", 8)
    assert str(tmp_path / "train") in str(info.value)


def _truncated_jpeg(path, make_image):
    make_image(path, size=(40, 40))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # passes Pillow's header verify, fails to decode


def test_truncated_jpeg_full_verify_skips_at_scan(image_folder, make_image):
    _truncated_jpeg(image_folder / "train" / "cat" / "trunc.jpg", make_image)
    with pytest.warns(UnreadableImageWarning, match="skipped 1 .*trunc.jpg"):
        ds = ImageFolderDataset(image_folder / "train", 8, verify="full")
    assert len(ds) == 9


def test_truncated_jpeg_header_verify_falls_back_at_load(image_folder, make_image):
    _truncated_jpeg(image_folder / "train" / "cat" / "a_trunc.jpg", make_image)
    ds = ImageFolderDataset(image_folder / "train", 8)  # header check passes it
    assert len(ds) == 10 and ds.samples[0][0].endswith("a_trunc.jpg")
    with pytest.warns(UnreadableImageWarning, match="a_trunc.jpg: unreadable at load time"):
        image, label = ds[0]
    expected = load_image(ds.samples[1][0], 8)
    torch.testing.assert_close(image, expected)
    assert label == 0


def test_load_time_gives_up_after_many_failures(tmp_path, make_image):
    for i in range(21):
        _truncated_jpeg(tmp_path / "train" / "a" / f"{i:02d}.jpg", make_image)
    ds = ImageFolderDataset(tmp_path / "train", 8, verify="none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreadableImageWarning)
        with pytest.raises(RuntimeError, match="20 consecutive images"):
            ds[0]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"img_size": 0}, "img_size"),
        ({"in_chans": 2}, "in_chans"),
        ({"verify": "x"}, "verify"),
        ({"resize_mode": "pad"}, "resize_mode"),
    ],
)
def test_bad_options(image_folder, kwargs, name):
    args = {"img_size": 8, **kwargs}
    with pytest.raises(ValueError, match=name):
        ImageFolderDataset(image_folder / "train", **args)
