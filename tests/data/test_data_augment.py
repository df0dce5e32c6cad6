"""BatchAugment: shapes, value ranges, determinism under a seed, eval = normalisation, bad input."""

import pytest
import torch

from convattn.data import AUGMENT_POLICIES, BatchAugment

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def _batch(b=6, c=3, h=20, w=24):
    return torch.rand(b, c, h, w)


@pytest.mark.parametrize("policy", AUGMENT_POLICIES)
def test_train_shapes_and_unit_range_before_normalisation(policy):
    aug = BatchAugment(16, (0.0,) * 3, (1.0,) * 3, train=True, policy=policy, color_jitter=0.4)
    x = _batch(h=16, w=16) if policy == "none" else _batch()
    out = aug(x)
    assert out.shape == (6, 3, 16, 16) and out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0 + 1e-6  # mean 0, std 1: the augmented pixels


def test_eval_and_policy_none_only_normalise():
    x = _batch()
    expected = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    for aug in (
        BatchAugment(16, MEAN, STD, train=False, policy="randaug", color_jitter=0.4),
        BatchAugment(16, MEAN, STD, train=True, policy="none", color_jitter=0.4),
    ):
        assert not aug.is_random
        torch.testing.assert_close(aug(x), expected)
    train = BatchAugment(16, MEAN, STD, train=True)
    assert train.is_random
    train.eval()  # module mode does not switch augmentation off: the constructor flag does
    assert train.is_random


@pytest.mark.parametrize("policy", ["light", "randaug"])
def test_deterministic_under_seed(policy):
    aug = BatchAugment(12, MEAN, STD, train=True, policy=policy, color_jitter=0.3)
    x = _batch(b=20)
    torch.manual_seed(7)
    first = aug(x)
    torch.manual_seed(7)
    assert torch.equal(aug(x), first)
    torch.manual_seed(8)
    assert not torch.equal(aug(x), first)


def test_light_policy_does_crop_and_flip():
    # A horizontal ramp: flips reverse it, crops change its range; without either it is intact.
    ramp = torch.linspace(0, 1, 16).expand(8, 3, 16, 16).contiguous()
    aug = BatchAugment(16, (0.0,) * 3, (1.0,) * 3, train=True, scale=(1.0, 1.0))
    torch.manual_seed(0)
    out = aug(ramp)
    slopes = (out[:, 0, :, -1] - out[:, 0, :, 0]).mean(1)
    assert (slopes < 0).any() and (slopes > 0).any()  # some flipped, some not
    no_flip = BatchAugment(16, (0.0,) * 3, (1.0,) * 3, train=True, hflip=False, scale=(0.2, 0.3))
    cropped = no_flip(ramp)
    assert ((cropped[:, 0, :, -1] - cropped[:, 0, :, 0]).mean(1) < 0.8).all()  # zoomed in


def test_randaug_changes_images_and_works_on_grey():
    torch.manual_seed(0)
    x = _batch(b=40, h=16, w=16)
    plain = BatchAugment(16, MEAN, STD, train=True, policy="light", hflip=False, scale=(1.0, 1.0))
    rand = BatchAugment(16, MEAN, STD, train=True, policy="randaug", hflip=False, scale=(1.0, 1.0))
    torch.manual_seed(1)
    base = plain(x)
    torch.manual_seed(1)
    assert not torch.allclose(rand(x), base)
    grey = BatchAugment(16, (0.5,), (0.25,), train=True, policy="randaug", color_jitter=0.4)
    out = grey(torch.rand(18, 1, 16, 16))
    assert out.shape == (18, 1, 16, 16) and torch.isfinite(out).all()


def test_float64_and_device_buffers():
    aug = BatchAugment(8, MEAN, STD, train=False).double()
    assert aug(_batch().double()).dtype == torch.float64
    assert "mean" not in aug.state_dict()  # not persistent: nothing to load or save


@pytest.mark.parametrize(
    ("x", "error", "message"),
    [
        (torch.rand(2, 1, 8, 8), ValueError, "3 channels"),
        (torch.rand(3, 8, 8), ValueError, "4-D"),
        (torch.randint(0, 255, (2, 3, 8, 8)), TypeError, "floating"),
        ([1, 2], TypeError, "torch.Tensor"),
    ],
)
def test_bad_input(x, error, message):
    with pytest.raises(error, match=message):
        BatchAugment(8, MEAN, STD, train=True)(x)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"img_size": 0}, "img_size"),
        ({"policy": "autoaug"}, "policy"),
        ({"std": (0.1, 0.0, 0.1)}, "std"),
        ({"mean": (0.1, 0.2)}, "mean"),
        ({"color_jitter": -0.1}, "color_jitter"),
        ({"scale": (0.5, 0.2)}, "scale"),
        ({"scale": (0.0, 1.0)}, "scale"),
        ({"randaug_m": 30}, "randaug_m"),
        ({"randaug_n": 0}, "randaug_n"),
    ],
)
def test_bad_options(kwargs, name):
    args = {"img_size": 8, "mean": MEAN, "std": STD, **kwargs}
    with pytest.raises(ValueError, match=name):
        BatchAugment(train=True, **args)
