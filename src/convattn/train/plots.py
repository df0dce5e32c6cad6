"""PNG plots of training curves and latency (matplotlib, headless ``Agg`` backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["plot_accuracy_comparison", "plot_latency", "plot_run"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # headless: never opens a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    from .._io import atomic_write

    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    _pyplot().close(fig)
    return path


def _series(rows: Sequence[Mapping], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_run(history: Sequence[Mapping], path: str | Path, title: str = "") -> Path:
    """Loss (left) and top-1 accuracy (right) per epoch, train and validation (and EMA)."""
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("train_loss", "train"), ("val_loss", "val"), ("ema_val_loss", "val (EMA)")):
        ax_loss.plot(*_series(history, key), marker="o", ms=3, label=label)
    for key, label in (("train_top1", "train"), ("val_top1", "val"), ("ema_val_top1", "val (EMA)")):
        ax_acc.plot(*_series(history, key), marker="o", ms=3, label=label)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="top-1 (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_accuracy_comparison(
    histories: Mapping[str, Sequence[Mapping]], path: str | Path, key: str = "val_top1"
) -> Path:
    """Validation top-1 per epoch of several runs on one chart (one line per model)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, rows in histories.items():
        ax.plot(*_series(rows, key), marker="o", ms=3, label=name)
    ax.set(xlabel="epoch", ylabel="validation top-1 (%)", title="Validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_latency(curves: Mapping[str, Mapping[int, float]], path: str | Path) -> Path:
    """CPU latency (ms, log scale) against input size, one line per model."""
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, points in curves.items():
        sizes = sorted(points)
        ax.plot(sizes, [points[s] for s in sizes], marker="o", ms=4, label=name)
    ax.set(xlabel="input size (px, square)", ylabel="latency (ms, batch 1)", yscale="log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")  # 20, not 2x10^1
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.set_title("CPU latency against input size")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return _save(fig, path)
