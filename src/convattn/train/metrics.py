"""Classification metrics (loss, top-1, top-5) accumulated as sums, reducible across ranks, and
the per-run metrics file (JSON lines, one object per epoch)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from .._io import atomic_write
from .distributed import DistContext, all_reduce_sum

__all__ = ["MetricMeter", "MetricsFile", "topk_correct"]


@torch.no_grad()
def topk_correct(
    logits: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> list[int]:
    """Number of samples whose label is among the ``k`` highest logits, for each ``k``.

    ``k`` is capped at the number of classes (top-5 of a 4-class problem is top-4, i.e. 100 %).
    """
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hits = top.eq(target.view(-1, 1))
    return [int(hits[:, : min(k, kmax)].any(dim=1).sum()) for k in ks]


class MetricMeter:
    """Sums of loss, top-1 and top-5 hits and samples; :meth:`compute` all-reduces them."""

    def __init__(self) -> None:
        self.loss_sum = 0.0
        self.top1 = 0
        self.top5 = 0
        self.count = 0

    def update(self, loss: float, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``loss`` is the batch's mean loss."""
        n = int(target.shape[0])
        top1, top5 = topk_correct(logits, target)
        self.loss_sum += float(loss) * n
        self.top1 += top1
        self.top5 += top5
        self.count += n

    @property
    def local_loss(self) -> float:
        return self.loss_sum / max(self.count, 1)

    @property
    def local_top1(self) -> float:
        return 100.0 * self.top1 / max(self.count, 1)

    def compute(self, ctx: DistContext | None = None) -> dict[str, float]:
        """Mean loss and top-1/top-5 in percent over all ranks' samples."""
        sums = [self.loss_sum, self.top1, self.top5, self.count]
        if ctx is not None:
            sums = all_reduce_sum(sums, ctx).tolist()
        loss_sum, top1, top5, count = sums
        count = max(count, 1.0)
        return {
            "loss": loss_sum / count,
            "top1": 100.0 * top1 / count,
            "top5": 100.0 * top5 / count,
            "count": int(sums[3]),
        }


class MetricsFile:
    """``metrics.jsonl`` of a run: one JSON object per line and epoch."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def append(self, row: dict) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row, sort_keys=False) + "\n")

    def rewrite(self, rows: Sequence[dict]) -> None:
        """Replace the file with ``rows`` (on resume, drops lines of epochs that are redone)."""
        text = "".join(json.dumps(r) + "\n" for r in rows)
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
