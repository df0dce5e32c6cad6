"""MixupCutmix: soft targets sum to 1, label smoothing values, mixing maths, CutMix area, odd batch."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from convattn.data import MixupCutmix, smooth_one_hot

K = 5


def _constant_images(b=6):
    """Image i is filled with the value i + 1, so every pixel tells where it came from."""
    return torch.arange(1, b + 1, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 3, 8, 10).clone()


def test_label_smoothing_values():
    targets = smooth_one_hot(torch.tensor([0, 3]), K, smoothing=0.1)
    assert targets.shape == (2, K) and targets.dtype == torch.float32
    torch.testing.assert_close(targets[0, 0], torch.tensor(1 - 0.1 + 0.1 / K))
    torch.testing.assert_close(targets[0, 1:], torch.full((K - 1,), 0.1 / K))
    torch.testing.assert_close(targets.sum(1), torch.ones(2))


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_identity_when_disabled(smoothing):
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 4, 2])
    for mix in (
        MixupCutmix(K, label_smoothing=smoothing),
        MixupCutmix(K, mixup_alpha=1.0, cutmix_alpha=1.0, prob=0.0, label_smoothing=smoothing),
    ):
        out, targets = mix(x, y)
        assert out is x
        torch.testing.assert_close(targets, smooth_one_hot(y, K, smoothing))


def test_mixup_blends_images_and_targets_with_the_same_lambda():
    x, y = _constant_images(), torch.tensor([0, 1, 2, 3, 4, 0])
    original = x.clone()
    out, targets = MixupCutmix(K, mixup_alpha=0.4, label_smoothing=0.1)(x, y)
    assert torch.equal(x, original)  # input untouched
    torch.testing.assert_close(targets.sum(1), torch.ones(6))
    # x_0 = lam * 1 + (1 - lam) * 6 recovers lam; the same lam must weigh the targets.
    lam = (6.0 - out[0, 0, 0, 0]) / 5.0
    torch.testing.assert_close(out, lam * x + (1 - lam) * x.flip(0))
    smooth = smooth_one_hot(y, K, 0.1)
    torch.testing.assert_close(targets, lam * smooth + (1 - lam) * smooth.flip(0))


def test_cutmix_pastes_a_box_and_lambda_is_the_kept_area():
    torch.manual_seed(3)
    x, y = _constant_images(), torch.tensor([0, 1, 2, 3, 4, 1])
    for _ in range(10):
        out, targets = MixupCutmix(K, cutmix_alpha=1.0)(x, y)
        kept = (out == x).float().mean(dim=(1, 2, 3))
        pasted = (out == x.flip(0)).float().mean(dim=(1, 2, 3))
        torch.testing.assert_close(kept + pasted, torch.ones(6))  # each pixel from one of the two
        lam = kept[0]
        assert torch.allclose(kept, lam.expand(6))  # one box for the whole batch
        one_hot = smooth_one_hot(y, K)
        torch.testing.assert_close(targets, lam * one_hot + (1 - lam) * one_hot.flip(0))
        torch.testing.assert_close(targets.sum(1), torch.ones(6))


def test_switch_between_mixup_and_cutmix():
    x, y = _constant_images(), torch.arange(6) % K
    mix = MixupCutmix(K, mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=0.5)
    kinds = set()
    torch.manual_seed(0)
    for _ in range(20):
        out, _ = mix(x, y)
        integral = bool(torch.equal(out, out.round()))
        kinds.add("cutmix" if integral else "mixup")
    assert kinds == {"cutmix", "mixup"}


@pytest.mark.parametrize("alphas", [(1.0, 0.0), (0.0, 1.0)])
def test_odd_batch_middle_sample_unmixed(alphas):
    x, y = _constant_images(5), torch.tensor([0, 1, 2, 3, 4])
    out, targets = MixupCutmix(K, *alphas, label_smoothing=0.1)(x, y)
    assert torch.equal(out[2], x[2])
    torch.testing.assert_close(targets[2], smooth_one_hot(y[2:3], K, 0.1)[0])
    torch.testing.assert_close(targets.sum(1), torch.ones(5))


def test_deterministic_under_seed():
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    mix = MixupCutmix(K, mixup_alpha=0.8, cutmix_alpha=1.0)
    torch.manual_seed(5)
    a = mix(x, y)
    torch.manual_seed(5)
    b = mix(x, y)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (torch.rand(2, 3, 4, 4), torch.tensor([0, 1, 2]), "shape"),
        (torch.rand(2, 3, 4, 4), torch.tensor([0.0, 1.0]), "integer"),
        (torch.rand(2, 3, 4, 4), torch.tensor([0, K]), r"\[0, 5\)"),
        (torch.rand(3, 4, 4), torch.tensor([0, 1, 2]), "B, C, H, W"),
    ],
)
def test_bad_inputs(x, y, message):
    with pytest.raises(ValueError, match=message):
        MixupCutmix(K, mixup_alpha=1.0)(x, y)


@pytest.mark.parametrize(
    "kwargs",
    [{"mixup_alpha": -1}, {"prob": 1.5}, {"switch_prob": -0.1}, {"label_smoothing": 2.0}],
)
def test_bad_options(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        MixupCutmix(K, **kwargs)
    with pytest.raises(ValueError, match="num_classes"):
        MixupCutmix(0)


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 7),
    height=st.integers(1, 9),
    width=st.integers(1, 9),
    mixup_alpha=st.sampled_from([0.0, 0.2, 1.0]),
    cutmix_alpha=st.sampled_from([0.0, 0.5, 1.0]),
    smoothing=st.sampled_from([0.0, 0.1, 0.5]),
    seed=st.integers(0, 2**16),
)
def test_property_targets_are_distributions(
    batch, height, width, mixup_alpha, cutmix_alpha, smoothing, seed
):
    torch.manual_seed(seed)
    x, y = torch.rand(batch, 2, height, width), torch.randint(0, K, (batch,))
    mix = MixupCutmix(K, mixup_alpha, cutmix_alpha, label_smoothing=smoothing)
    out, targets = mix(x, y)
    assert out.shape == x.shape and targets.shape == (batch, K)
    torch.testing.assert_close(targets.sum(1), torch.ones(batch))
    assert targets.min() >= smoothing / K - 1e-6
    assert out.min() >= x.min() - 1e-6 and out.max() <= x.max() + 1e-6
