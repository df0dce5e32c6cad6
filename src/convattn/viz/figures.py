"""Matplotlib figures of the visualisations (headless ``Agg`` backend, PNG).

Every figure has a fixed size in inches and is saved at :data:`DPI` without ``bbox_inches="tight"``,
so its pixel size is known in advance (``figure_size_px``), and without the PNG "Software" entry,
so the same inputs give byte-identical files (matplotlib writes no timestamp into PNGs otherwise).
Maps are drawn with nearest-neighbour upsampling: one feature-map cell is one visible block, so a
figure never suggests more resolution than the layer has.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .._io import atomic_write

__all__ = [
    "DPI",
    "attention_figure_inches",
    "figure_size_px",
    "kernel_figure_inches",
    "plot_attention",
    "plot_kernels",
    "plot_rates",
    "plot_slots",
    "rates_figure_inches",
    "slot_figure_inches",
]

DPI = 100
# Frame / region colours of the representative slots and the query markers (ColorBrewer Set1).
_HIGHLIGHTS = ("#e41a1c", "#4daf4a", "#377eb8", "#ff7f00", "#984ea3", "#a65628", "#f781bf")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # headless: never opens a window
    import matplotlib.pyplot as plt

    return plt


def figure_size_px(inches: tuple[float, float]) -> tuple[int, int]:
    """(width, height) in pixels of a saved figure of ``inches``."""
    return round(inches[0] * DPI), round(inches[1] * DPI)


def slot_figure_inches() -> tuple[float, float]:
    """Slot figure: input | all slot maps | hard assignment | representative slots."""
    return (16.0, 4.8)


def attention_figure_inches(num_queries: int) -> tuple[float, float]:
    """Attention figure: the input with the query markers, then one panel per query."""
    return (3.2 * (num_queries + 1), 4.4)


def kernel_figure_inches() -> tuple[float, float]:
    """Kernel figure: input | dynamic-kernel magnitude | dynamic / static ratio over the input."""
    return (13.0, 4.6)


def rates_figure_inches(num_layers: int) -> tuple[float, float]:
    """Rates figure: two bars per ACmix layer, wider for deeper models."""
    return (max(6.4, 1.6 + 0.55 * num_layers), 5.0)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    atomic_write(
        path,
        # metadata: drop "Software" (matplotlib's version) so bytes depend on the content only.
        lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None}),
    )
    _pyplot().close(fig)
    return path


def _rgb(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] with 1 or 3 channels -> (H, W, 3) float array."""
    img = image.detach().float().clamp(0, 1)
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    return img.permute(1, 2, 0).cpu().numpy()


def _upsample(values: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(h, w) -> (H, W) nearest-neighbour array (a map cell becomes a block of pixels)."""
    up = F.interpolate(values.detach().float()[None, None], size=size, mode="nearest")
    return up[0, 0].cpu().numpy()


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _frame(ax, colour: str | None) -> None:
    for spine in ax.spines.values():
        spine.set_visible(colour is not None)
        if colour is not None:
            spine.set_edgecolor(colour)
            spine.set_linewidth(2.5)


def _caption(fig, caption: str, top: float) -> None:
    fig.suptitle(caption, fontsize=10, y=0.985, va="top")
    fig.subplots_adjust(top=top)


def plot_slots(
    image: torch.Tensor,
    weights: torch.Tensor,
    assignment: torch.Tensor,
    representatives: Sequence[int],
    caption: str,
    path: str | Path,
    weight_name: str = "dispatch weight",
) -> Path:
    """The GLMix slot figure for one image.

    Args:
        image: (C, H, W) input in [0, 1].
        weights: (S, h, w) slot weights of the chosen mode.
        assignment: (h, w) arg-max slot of every pixel.
        representatives: slot indices drawn large (coloured frames in the grid).
        caption: the figure's title.
        path: the PNG to write.
        weight_name: what the maps are, for the panel titles.
    """
    plt = _pyplot()
    import matplotlib
    from matplotlib.colors import ListedColormap

    size = tuple(image.shape[-2:])
    rgb = _rgb(image)
    slots = weights.shape[0]
    colour = {s: _HIGHLIGHTS[i % len(_HIGHLIGHTS)] for i, s in enumerate(representatives)}
    fig = plt.figure(figsize=slot_figure_inches())
    outer = fig.add_gridspec(1, 4, left=0.01, right=0.99, bottom=0.03, wspace=0.1)

    ax = fig.add_subplot(outer[0])
    ax.imshow(rgb, interpolation="nearest")
    ax.set_title("input", fontsize=9)
    _bare(ax)

    # All slots on one colour scale (min-max over the whole tensor), so weak and strong slots
    # can be compared; representative slots are framed in their colours.
    lo, hi = float(weights.min()), float(weights.max())
    hi = hi if hi > lo else lo + 1e-12
    cols = math.ceil(math.sqrt(slots))
    grid = outer[1].subgridspec(math.ceil(slots / cols), cols, wspace=0.06, hspace=0.06)
    title = fig.add_subplot(outer[1])
    title.axis("off")
    title.set_title(f"{weight_name} of all {slots} slots ({lo:.3g} to {hi:.3g})", fontsize=9)
    for s in range(slots):
        ax = fig.add_subplot(grid[s // cols, s % cols])
        ax.imshow(weights[s].cpu().numpy(), cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        _bare(ax)
        _frame(ax, colour.get(s))

    # Hard assignment: representative slots' regions in their saturated colours, all others in
    # pastels (distinct from each other, and from grey images, but clearly secondary).
    pastels = [*matplotlib.colormaps["Pastel2"].colors, *matplotlib.colormaps["Pastel1"].colors]
    palette = [colour.get(s, pastels[s % len(pastels)]) for s in range(slots)]
    ax = fig.add_subplot(outer[2])
    ax.imshow(rgb, interpolation="nearest")
    labels = _upsample(assignment, size)
    ax.imshow(
        labels,
        cmap=ListedColormap(palette),
        vmin=-0.5,
        vmax=slots - 0.5,
        alpha=0.55,
        interpolation="nearest",
    )
    ax.set_title("arg-max slot per pixel (saturated: representatives)", fontsize=9)
    _bare(ax)

    # Representative slots: the image seen through each slot's map, min-max scaled on the grid's
    # common scale (as the official visualisation does): near-uniform maps still show contrast,
    # and a weak slot stays darker than a strong one.
    k = len(representatives)
    rcols = math.ceil(math.sqrt(k))
    reps = outer[3].subgridspec(math.ceil(k / rcols), rcols, wspace=0.08, hspace=0.2)
    for i, s in enumerate(representatives):
        ax = fig.add_subplot(reps[i // rcols, i % rcols])
        alpha = (_upsample(weights[s], size) - lo) / (hi - lo)
        ax.imshow(rgb * alpha[..., None], interpolation="nearest")
        ax.set_title(f"slot {s}", fontsize=8, color=colour[s])
        _bare(ax)
        _frame(ax, colour[s])
    _caption(fig, caption, top=0.80)
    return _save(fig, path)


def plot_attention(
    image: torch.Tensor,
    maps: torch.Tensor,
    query_pixels: Sequence[tuple[float, float]],
    caption: str,
    path: str | Path,
    signed: bool = False,
) -> Path:
    """Attention maps of several query pixels over the input.

    Args:
        image: (C, H, W) input in [0, 1].
        maps: (Q, h, w) attention weights over the key map (averaged over heads).
        query_pixels: (y, x) image coordinates of each query's map cell centre.
        caption: the figure's title.
        path: the PNG to write.
        signed: weights that may be negative (SAN's, which have no softmax): a diverging colour
            scale symmetric about 0 instead of 0 to the maximum.
    """
    plt = _pyplot()
    size = tuple(image.shape[-2:])
    rgb = _rgb(image)
    q = maps.shape[0]
    fig, axes = plt.subplots(1, q + 1, figsize=attention_figure_inches(q), squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.03, wspace=0.06)
    ax = axes[0, 0]
    ax.imshow(rgb, interpolation="nearest")
    for i, (y, x) in enumerate(query_pixels):
        c = _HIGHLIGHTS[i % len(_HIGHLIGHTS)]
        ax.plot([x], [y], marker="o", ms=9, mfc="none", mec=c, mew=2)
        ax.annotate(str(i + 1), (x, y), xytext=(6, -6), textcoords="offset points", color=c)
    ax.set_title("input and query pixels", fontsize=9)
    _bare(ax)
    for i, (y, x) in enumerate(query_pixels):
        ax = axes[0, i + 1]
        heat = _upsample(maps[i], size)
        top = max(float(abs(heat).max() if signed else heat.max()), 1e-12)
        bottom, cmap = (-top, "RdBu_r") if signed else (0, "inferno")
        ax.imshow(rgb * 0.6, interpolation="nearest")
        ax.imshow(heat, cmap=cmap, vmin=bottom, vmax=top, alpha=0.7, interpolation="nearest")
        c = _HIGHLIGHTS[i % len(_HIGHLIGHTS)]
        ax.plot([x], [y], marker="o", ms=9, mfc="none", mec=c, mew=2)
        label = "max |weight|" if signed else "max weight"
        ax.set_title(f"query {i + 1} at ({y:.0f}, {x:.0f}); {label} {top:.3f}", fontsize=8)
        _bare(ax)
    _caption(fig, caption, top=0.80)
    return _save(fig, path)


def plot_kernels(
    image: torch.Tensor,
    static: torch.Tensor,
    dynamic: torch.Tensor,
    caption: str,
    path: str | Path,
) -> Path:
    """X-volution's per-pixel dynamic-kernel magnitude against its static kernel.

    Args:
        image: (C, H, W) input in [0, 1].
        static: (h, w) static-kernel norm (the same at every pixel).
        dynamic: (h, w) dynamic-kernel norm at every output pixel.
        caption: the figure's title.
        path: the PNG to write.
    """
    plt = _pyplot()
    size = tuple(image.shape[-2:])
    rgb = _rgb(image)
    static_norm = float(static.flatten()[0])
    ratio = dynamic / max(static_norm, 1e-12)
    # An all-zero dynamic part (e.g. an untrained X-volution: its PSSA BatchNorm starts at zero)
    # still gets a sensible colour scale.
    top = float(dynamic.max())
    zero = top <= 0
    fig, axes = plt.subplots(1, 3, figsize=kernel_figure_inches())
    fig.subplots_adjust(left=0.01, right=0.95, bottom=0.04, wspace=0.28)
    axes[0].imshow(rgb, interpolation="nearest")
    axes[0].set_title("input", fontsize=9)
    shown = axes[1].imshow(
        dynamic.cpu().numpy(),
        cmap="viridis",
        interpolation="nearest",
        vmin=0,
        vmax=1.0 if zero else top,
    )
    fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.02)
    note = " (zero everywhere)" if zero else ""
    axes[1].set_title(
        f"dynamic kernel norm per pixel{note}\n(static kernel norm: {static_norm:.3g})", fontsize=9
    )
    axes[2].imshow(rgb * 0.6, interpolation="nearest")
    heat = axes[2].imshow(
        _upsample(ratio, size),
        cmap="magma",
        alpha=0.7,
        vmin=0,
        vmax=1.0 if zero else float(ratio.max()),
        interpolation="nearest",
    )
    fig.colorbar(heat, ax=axes[2], fraction=0.046, pad=0.02)
    axes[2].set_title("dynamic / static norm over the input", fontsize=9)
    for ax in axes:
        _bare(ax)
    _caption(fig, caption, top=0.82)
    return _save(fig, path)


def plot_rates(
    names: Sequence[str],
    rate1: torch.Tensor,
    rate2: torch.Tensor,
    caption: str,
    path: str | Path,
) -> Path:
    """ACmix's learned ``rate1`` (attention) and ``rate2`` (convolution) per layer, by depth.

    Args:
        names: layer names, shallow to deep.
        rate1: (L,) attention-path scalars.
        rate2: (L,) convolution-path scalars.
        caption: the figure's title.
        path: the PNG to write.
    """
    plt = _pyplot()
    n = len(names)
    r1, r2 = rate1.cpu().numpy(), rate2.cpu().numpy()
    fig, ax = plt.subplots(figsize=rates_figure_inches(n))
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.3)
    x = np.arange(n)
    ax.bar(x - 0.2, r1, 0.38, label="rate1 (attention path)", color="#377eb8")
    ax.bar(x + 0.2, r2, 0.38, label="rate2 (convolution path)", color="#ff7f00")
    ax.axhline(0.0, color="black", lw=0.8)
    share = np.abs(r1) / np.maximum(np.abs(r1) + np.abs(r2), 1e-12)
    top = float(max(np.max(r1), np.max(r2), 0.0))
    for i in range(n):
        ax.annotate(f"{100 * share[i]:.0f}%", (x[i], top), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{i}: {name}" for i, name in enumerate(names)], rotation=35, ha="right")
    ax.tick_params(axis="x", labelsize=7)
    ax.set_ylabel("learned scalar")
    ax.set_xlabel("ACmix layer, shallow to deep (above the bars: attention share |r1|/(|r1|+|r2|))")
    ax.grid(alpha=0.3, axis="y")
    # Head room above the bars for the share labels and the legend.
    low = float(min(np.min(r1), np.min(r2), 0.0))
    ax.set_ylim(low - 0.05 * (top - low + 1e-12), top + 0.45 * (top - low + 1e-12))
    ax.legend(fontsize=8, loc="upper left", ncol=2)
    _caption(fig, caption, top=0.84)
    return _save(fig, path)
