"""Mixup and CutMix on a batch, with soft targets and label smoothing (timm's batch-mode semantics).

Mixup (Zhang et al., arXiv:1710.09412) blends two images, ``x = lam * x_i + (1 - lam) * x_j``;
CutMix (Yun et al., arXiv:1905.04899) pastes a box of ``x_j`` into ``x_i`` and sets ``lam`` to the
area actually kept. Targets are mixed with the same ``lam``: ``lam * y_i + (1 - lam) * y_j``, where
each ``y`` is a smoothed one-hot, ``smoothing / K`` off and ``1 - smoothing + smoothing / K`` on.

Per call (i.e. per batch), with probability ``prob`` a mix is applied: CutMix with probability
``switch_prob`` when both alphas are > 0, otherwise whichever is enabled; ``lam ~ Beta(a, a)``.
Image ``i`` is paired with image ``B - 1 - i`` (the batch reversed). With an odd batch the middle
image is paired with itself, so it stays unmixed and its target stays its own smoothed one-hot; all
targets remain exact. Random draws use torch's global generator (reproducible under
``torch.manual_seed``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from convattn.layers._checks import check_positive_int

__all__ = ["MixupCutmix", "smooth_one_hot"]


def smooth_one_hot(
    labels: torch.Tensor,
    num_classes: int,
    smoothing: float = 0.0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(B,)`` int labels -> ``(B, num_classes)`` targets: ``1 - s + s/K`` on, ``s/K`` off."""
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    targets = F.one_hot(labels, num_classes).to(dtype)
    return targets * (on - off) + off


def _cutmix_box(height: int, width: int, lam: float) -> tuple[int, int, int, int]:
    """A box of area about ``(1 - lam) * H * W`` at a uniform centre, clipped to the image."""
    ratio = (1.0 - lam) ** 0.5
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy = int(torch.randint(0, height, ()).item())
    cx = int(torch.randint(0, width, ()).item())
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return y0, y1, x0, x1


class MixupCutmix:
    """Callable ``(x, y) -> (x_mixed, soft_targets)`` mixing a batch with Mixup or CutMix.

    With both alphas 0 (or when the ``prob`` draw fails) it returns ``x`` unchanged and smoothed
    one-hot targets. The input batch is never modified in place.

    Args:
        num_classes: target width.
        mixup_alpha: Beta parameter of Mixup; 0 disables it.
        cutmix_alpha: Beta parameter of CutMix; 0 disables it.
        prob: probability of mixing a given batch.
        switch_prob: probability of CutMix instead of Mixup when both are enabled.
        label_smoothing: smoothing folded into the targets.
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.0,
    ) -> None:
        owner = "MixupCutmix"
        self.num_classes = check_positive_int(num_classes, "num_classes", owner)
        for name, value, upper in (
            ("mixup_alpha", mixup_alpha, float("inf")),
            ("cutmix_alpha", cutmix_alpha, float("inf")),
            ("prob", prob, 1.0),
            ("switch_prob", switch_prob, 1.0),
            ("label_smoothing", label_smoothing, 1.0),
        ):
            if not 0.0 <= value <= upper:
                raise ValueError(f"{owner}: '{name}' must be in [0, {upper}], got {value!r}")
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        self.prob = float(prob)
        self.switch_prob = float(switch_prob)
        self.label_smoothing = float(label_smoothing)

    @property
    def enabled(self) -> bool:
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.prob > 0

    def _draw(self) -> tuple[float, bool]:
        """``(lam, use_cutmix)`` for this batch; ``lam == 1`` means no mixing."""
        if not self.enabled or torch.rand(()).item() >= self.prob:
            return 1.0, False
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = torch.rand(()).item() < self.switch_prob
        else:
            use_cutmix = self.cutmix_alpha > 0
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        beta = torch.distributions.Beta(torch.tensor(alpha), torch.tensor(alpha))
        return float(beta.sample()), use_cutmix

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
            raise ValueError(
                f"MixupCutmix: 'x' must be a float (B, C, H, W) tensor, got "
                f"{getattr(x, 'shape', type(x).__name__)}"
            )
        if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],) or y.is_floating_point():
            raise ValueError(
                f"MixupCutmix: 'y' must be an integer tensor of shape ({x.shape[0]},), got "
                f"{getattr(y, 'shape', type(y).__name__)}"
            )
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(f"MixupCutmix: labels 'y' must be in [0, {self.num_classes})")
        targets = smooth_one_hot(y.long(), self.num_classes, self.label_smoothing)
        lam, use_cutmix = self._draw()
        if lam >= 1.0:
            return x, targets
        if use_cutmix:
            y0, y1, x0, x1 = _cutmix_box(x.shape[-2], x.shape[-1], lam)
            patch = x[:, :, y0:y1, x0:x1].flip(0)  # flip only the box, not the whole batch
            x = x.clone()
            x[:, :, y0:y1, x0:x1] = patch
            lam = 1.0 - (y1 - y0) * (x1 - x0) / (x.shape[-2] * x.shape[-1])  # area actually kept
        else:
            x = x.flip(0).lerp_(x, lam)  # lam * x + (1 - lam) * x_flipped, in two passes
        return x, targets * lam + targets.flip(0) * (1.0 - lam)

    def __repr__(self) -> str:
        return (
            f"MixupCutmix(num_classes={self.num_classes}, mixup_alpha={self.mixup_alpha}, "
            f"cutmix_alpha={self.cutmix_alpha}, prob={self.prob}, switch_prob={self.switch_prob}, "
            f"label_smoothing={self.label_smoothing})"
        )
