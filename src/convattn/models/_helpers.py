"""Small helpers shared by the model families."""

from __future__ import annotations

from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "init_linear_and_layernorm",
    "make_cfg",
    "stochastic_depth_rates",
]


def make_cfg(**kwargs) -> dict:
    """A pretrained/default config in timm's shape; keys given override the ImageNet defaults."""
    cfg = dict(
        input_size=(3, 224, 224),
        pool_size=(7, 7),
        crop_pct=0.875,
        interpolation="bicubic",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        num_classes=1000,
        first_conv=None,
        classifier=None,
        paper=None,
        official_checkpoint=None,
    )
    cfg.update(kwargs)
    return cfg


def stochastic_depth_rates(drop_path_rate: float, depths: list[int] | tuple[int, ...]) -> list:
    """Per-stage lists of DropPath rates growing linearly from 0 to ``drop_path_rate``."""
    total = sum(depths)
    rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
    out, start = [], 0
    for d in depths:
        out.append(rates[start : start + d])
        start += d
    return out


def init_linear_and_layernorm(m: nn.Module) -> None:
    """The Swin / GLNet official init (``model.apply``): every Linear, attention projections
    included, trunc-normal(0.02) with zero bias; LayerNorm 1 / 0; convolutions keep their own
    init (ACmix's ``dep_conv`` stays a shift)."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
