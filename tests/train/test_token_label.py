"""Token labeling: the loss against its formula, and the engine training a token-labeling model
with a dense target (the token head learns) and without one (the token head is ignored, said once)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from convattn.data import build_datasets
from convattn.models.glnet import GLNetTokenLabel
from convattn.train import train
from convattn.train.token_label import dense_token_targets, token_label_loss

NANO = dict(
    depths=(1, 1, 1, 1),
    widths=(32, 32, 32, 32),
    mixing_modes=("glmix", "glmix", "glmix", "mha_nchw"),
    mlp_ratio=2.0,
    downsample_style="overlapped",
    num_slots=4,
    stem_stride=2,
)


def soft_ce(logits, targets):
    return -(targets * logits.log_softmax(-1)).sum(-1).mean()


def test_loss_matches_the_official_formula():
    torch.manual_seed(0)
    b, n, k = 4, 9, 5
    cls_logits, tokens = torch.randn(b, k), torch.randn(b, n, k)
    targets = torch.softmax(torch.randn(b, k), -1)
    dense = torch.softmax(torch.randn(b, k, 3, 3), 1)
    box = (0, 1, 2, 3)  # 2 x 2 tokens of 9: lam = 1 - 4/9
    lam = 1 - 4 / 9
    mixed = lam * targets + (1 - lam) * targets.flip(0)
    dense_tokens = dense.flatten(2).transpose(1, 2)  # (B, N, K), row-major tokens
    expected = soft_ce(cls_logits, mixed) + 0.5 * soft_ce(
        tokens.reshape(-1, k), dense_tokens.reshape(-1, k)
    )
    got = token_label_loss((cls_logits, tokens, box), targets, dense, dense_weight=0.5)
    torch.testing.assert_close(got, expected)
    # Without a dense target: the class term only, still with the mixed target.
    got = token_label_loss((cls_logits, tokens, box), targets, None)
    torch.testing.assert_close(got, soft_ce(cls_logits, mixed))
    # An empty box leaves the target alone.
    got = token_label_loss((cls_logits, tokens, (0, 0, 0, 0)), targets, None)
    torch.testing.assert_close(got, soft_ce(cls_logits, targets))


def test_dense_targets_from_class_maps_and_pooling():
    labels = torch.tensor([[[0, 1], [2, 2]]])
    got = dense_token_targets(labels, 4, 3, label_smoothing=0.3)
    expected = F.one_hot(labels.flatten(1), 3).float() * 0.7 + 0.1
    torch.testing.assert_close(got, expected)
    # A 4x4 map onto 2x2 tokens: area averages.
    big = labels.repeat_interleave(2, 1).repeat_interleave(2, 2)
    torch.testing.assert_close(
        dense_token_targets(big, 4, 3), F.one_hot(labels.flatten(1), 3).float()
    )
    with pytest.raises(ValueError, match="square"):
        dense_token_targets(big, 6, 3)
    with pytest.raises(ValueError, match=r"\(B, 3, h, w\)"):
        dense_token_targets(torch.rand(1, 4, 2, 2), 4, 3)
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        dense_token_targets(labels + 5, 4, 3)


class WithDenseTarget(Dataset):
    """A dataset's samples plus a 4x4 map of their label (a 'perfect teacher' dense target)."""

    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        image, label = self.base[i]
        return image, label, torch.full((4, 4), int(label))


def _bundle(dense: bool):
    bundle = build_datasets("synthetic:shapes:16:8", 32, seed=0)
    if dense:
        bundle.train = WithDenseTarget(bundle.train)
        bundle.val = WithDenseTarget(bundle.val)
    return bundle


def _model():
    torch.manual_seed(0)
    return GLNetTokenLabel(**NANO, num_classes=4)


def _aux_weights(model):
    return model.tklb_aux_head.weight.detach().clone()


def test_engine_trains_the_token_head_with_a_dense_target(tiny_cfg):
    model = _model()
    before = _aux_weights(model)
    cfg = tiny_cfg(model="glnet_tklb_test", img_size=32, batch_size=8, epochs=1, lr=1e-2)
    result = train(cfg, model=model, data=_bundle(dense=True))
    assert result["steps"] == 2 and result["top1"] is not None
    assert not torch.equal(_aux_weights(model), before)  # the token term reached the aux head


def test_engine_ignores_the_token_head_without_a_dense_target(tiny_cfg):
    model = _model()
    before = _aux_weights(model)
    cfg = tiny_cfg(
        model="glnet_tklb_test", img_size=32, batch_size=8, epochs=2, lr=1e-2, weight_decay=0.0
    )
    with pytest.warns(UserWarning, match="no dense target.*token logits are ignored") as record:
        train(cfg, model=model, data=_bundle(dense=False))
    assert sum("dense target" in str(w.message) for w in record) == 1  # said once
    assert torch.equal(_aux_weights(model), before)  # no gradient reached the token head


@pytest.mark.parametrize(
    ("changes", "match"), [(dict(aug="light"), "--aug none"), (dict(mixup=0.8), "--mixup 0")]
)
def test_dense_targets_refuse_unaligned_augmentation(tiny_cfg, changes, match):
    cfg = tiny_cfg(model="glnet_tklb_test", img_size=32, batch_size=8, epochs=1, **changes)
    with pytest.raises(ValueError, match=match):
        train(cfg, model=_model(), data=_bundle(dense=True))
