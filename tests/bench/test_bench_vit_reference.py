"""The bench-only ViT-style global-attention reference."""

import pytest
import torch

import convattn
from convattn.bench import BENCH_ONLY_MODELS, VitReference, count_macs, count_params


def test_forward_shape_and_any_size_at_least_one_patch():
    model = VitReference(num_classes=7, embed_dim=32, depth=2, num_heads=2).eval()
    for size in [(16, 16), (33, 50)]:
        assert model(torch.randn(2, 3, *size)).shape == (2, 7)


def test_too_small_input_is_a_clear_value_error():
    model = VitReference(embed_dim=32, depth=1, num_heads=2)
    with pytest.raises(ValueError, match="at least 16x16, got 8x8"):
        model(torch.randn(1, 3, 8, 8))


def test_macs_match_hand_formula():
    c, depth, classes, size, p = 32, 2, 5, 48, 16
    model = VitReference(num_classes=classes, embed_dim=c, depth=depth, num_heads=4)
    n = (size // p) ** 2
    patch = n * c * 3 * p * p
    block = 3 * n * c * c + 2 * n * n * c + n * c * c + 2 * n * c * 4 * c  # qkv, QK/AV, proj, MLP
    expected = patch + depth * block + c * classes
    assert count_macs(model, (1, 3, size, size)) == expected


def test_default_size_is_vit_small_and_not_in_the_zoo():
    with torch.device("meta"):
        model = BENCH_ONLY_MODELS["vit_reference"]()
    assert count_params(model) == pytest.approx(22.0e6, rel=0.01)
    assert "vit_reference" not in convattn.list_models()
