"""Render the figures of the documentation from the library itself.

Run by the MkDocs hook (``docs/hooks.py``) at every build, so the figures always show the current
code; by hand: ``python docs/gen_figures.py OUT_DIR``. Everything is seeded and small (one thread,
a few seconds). Figures:

- ``operator_footprints.png``: which input pixels reach one output pixel, for every operator,
  measured with autograd (the gradient of one output pixel with respect to the input).
- ``xvolution_directions.png``: the 8 PSSA shift directions, and the footprint of the
  re-parameterised kernel (static and dynamic parts) of a 5x5 X-volution.
- ``acmix_paths.png``: ACmix's two paths from the shared projections, and the shift kernels its
  grouped convolution starts from.
- ``glmix_slots.png``: GLMix slot assignment in a randomly initialised ``glnet_nano``.
- ``viz_slots.png``: what ``convattn.viz.visualize_slots`` draws, for the visualisation guide.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

import convattn
from convattn.data import SyntheticDataset
from convattn.layers import (
    ACmix,
    GLMix,
    GlobalSelfAttention2d,
    Involution2d,
    XVolution,
    pssa_directions,
)

DPI = 110
# PNG metadata without the matplotlib version, so identical figures give identical files.
_SAVE = dict(dpi=DPI, bbox_inches="tight", metadata={"Software": None})


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.savefig(path, **_SAVE)
    plt.close(fig)
    return path


def operator_footprints(out: Path) -> Path:
    """|d y[:, :, 8, 8] / d x| summed over channels, for each operator on a 17x17 map."""
    torch.manual_seed(0)
    c, size = 16, 17
    conv = torch.nn.Conv2d(c, c, 3, padding=1)
    ops = [
        ("3x3 convolution", conv),
        ("X-volution (PSSA)", XVolution(c, c)),
        ("ACmix (k_att = 7)", ACmix(c, c, kernel_att=7, num_heads=4)),
        ("Involution (7x7)", Involution2d(c, c, group_channels=8)),
        ("GLMix (16 slots)", GLMix(c, c, num_slots=16, head_dim=8)),
        ("Global self-attention", GlobalSelfAttention2d(c, c, head_dim=8)),
    ]
    fig, axes = plt.subplots(1, len(ops), figsize=(2.1 * len(ops), 2.5))
    centre = size // 2
    for ax, (name, op) in zip(axes, ops):
        op.eval()
        x = torch.randn(1, c, size, size, requires_grad=True)
        op(x)[0, :, centre, centre].sum().backward()
        reach = x.grad.abs().sum(1)[0].numpy()
        shown = np.log10(reach / reach.max() + 1e-6)
        ax.imshow(shown, cmap="magma", vmin=-6, vmax=0)
        ax.plot(centre, centre, marker="s", mfc="none", mec="cyan", ms=6)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"{int((reach > 0).sum())} of {size * size} pixels", fontsize=8)
    fig.suptitle(
        "Input pixels that reach the output pixel at the centre (log |gradient|), 17x17 map",
        fontsize=10,
    )
    return _save(fig, out / "operator_footprints.png")


def xvolution_directions(out: Path) -> Path:
    """The shift set D and the static/dynamic footprint of a re-parameterised 5x5 X-volution."""
    torch.manual_seed(0)
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.4))

    ax = axes[0]
    for i in range(4):
        ax.axhline(i - 0.5, color="0.7", lw=0.8)
        ax.axvline(i - 0.5, color="0.7", lw=0.8)
    ax.add_patch(plt.Rectangle((0.5, 0.5), 1, 1, color="tab:orange", alpha=0.35))
    ax.text(1, 1, "q", ha="center", va="center", fontsize=12, weight="bold")
    for k, (di, dj) in enumerate(pssa_directions()):
        start, end = (1 + 0.2 * dj, 1 + 0.2 * di), (1 + 0.9 * dj, 1 + 0.9 * di)
        ax.add_patch(
            FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, color="tab:blue")
        )
        ax.text(1 + dj, 1 + di + 0.3, f"d{k} = ({di}, {dj})", ha="center", va="center", fontsize=7)
    ax.set_xlim(-0.5, 2.5)
    ax.set_ylim(2.5, -0.5)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title("PSSA: products $x_q \\odot x_{q+d}$, 8 shifts", fontsize=10)

    # A 5x5 X-volution with non-trivial BN statistics, folded into one dynamic convolution.
    xvol = XVolution(8, 8, kernel_size=5)
    for bn in (xvol.conv_bn, xvol.attn_bn):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    xvol.eval()
    static, dynamic, _ = xvol.get_equivalent_kernel_bias()
    panels = [
        (axes[1], static.detach().abs().mean((0, 1)).numpy(), "static kernel $|\\hat W^s|$"),
        (axes[2], dynamic.detach().abs().mean((0, 1)).numpy(), "dynamic kernel $|\\hat W^a|$"),
    ]
    for ax, taps, title in panels:
        image = ax.imshow(taps, cmap="viridis")
        for (r, col), value in np.ndenumerate(taps):
            ax.text(col, r, f"{value:.2f}", ha="center", va="center", fontsize=7, color="w")
        ax.set_xticks(range(5), [str(v) for v in range(-2, 3)])
        ax.set_yticks(range(5), [str(v) for v in range(-2, 3)])
        ax.set_title(title + " per tap (mean over o, c)", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=7)
    fig.suptitle(
        "XVolution(8, 8, kernel_size=5) after folding: every tap is static, only the 8 taps of D "
        "are also modulated by $X[c, q]$",
        fontsize=9,
    )
    return _save(fig, out / "xvolution_directions.png")


def _box(ax, xy, text, color, width=2.3, height=0.62):
    x, y = xy
    ax.add_patch(
        FancyBboxPatch(
            (x - width / 2, y - height / 2),
            width,
            height,
            boxstyle="round,pad=0.04",
            fc=color,
            ec="0.3",
        )
    )
    ax.text(x, y, text, ha="center", va="center", fontsize=8)


def _arrow(ax, start, end, text=""):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=10, color="0.3"))
    if text:
        mid = ((start[0] + end[0]) / 2 + 0.08, (start[1] + end[1]) / 2)
        ax.text(*mid, text, fontsize=7, color="0.25", ha="left", va="center")


def acmix_paths(out: Path) -> Path:
    """Diagram of the two paths, and the shift kernels of ``dep_conv`` at initialisation."""
    module = ACmix(16, 16, num_heads=4)
    fig = plt.figure(figsize=(11, 4.2))
    ax = fig.add_axes([0.0, 0.0, 0.62, 1.0])
    ax.set_xlim(0, 8)
    ax.set_ylim(0, 6)
    ax.axis("off")
    _box(ax, (4, 5.5), "x  (B, C_in, H, W)", "0.95")
    _box(
        ax, (4, 4.4), "shared 1x1 projections q, k, v\n(3 C channels, N heads)", "#fde5c8", 3.4, 0.8
    )
    _box(
        ax,
        (1.9, 2.9),
        "window attention\nsoftmax over k_att x k_att\n+ relative position",
        "#cfe2f3",
        2.6,
        0.95,
    )
    _box(
        ax,
        (6.1, 2.9),
        "fc: 3N -> k_conv^2 maps\nshift-initialised\ngrouped k_conv x k_conv conv",
        "#d9ead3",
        2.6,
        0.95,
    )
    _box(ax, (4, 1.2), "rate1 * attention + rate2 * convolution", "0.95", 3.8)
    _arrow(ax, (4, 5.2), (4, 4.82))
    _arrow(ax, (3.2, 4.0), (2.1, 3.4), "q, k, v")
    _arrow(ax, (4.8, 4.0), (5.9, 3.4), "q, k, v")
    _arrow(ax, (1.9, 2.4), (3.2, 1.52), "rate1")
    _arrow(ax, (6.1, 2.4), (4.8, 1.52), "rate2")
    ax.text(
        4,
        0.35,
        "stage I (the 1x1 projections, most of the MACs) is computed once and feeds both paths",
        ha="center",
        fontsize=7,
        color="0.35",
    )

    k = module.kernel_conv
    kernels = module.conv_path.dep_conv.weight.detach()[0]  # (k*k, k, k): one group's 9 inputs
    grid = fig.add_gridspec(
        k, k, left=0.66, right=0.98, bottom=0.12, top=0.8, wspace=0.15, hspace=0.15
    )
    for i in range(k * k):
        sub = fig.add_subplot(grid[i // k, i % k])
        sub.imshow(kernels[i].numpy(), cmap="Greens", vmin=0, vmax=1)
        sub.set_xticks([])
        sub.set_yticks([])
    fig.text(
        0.82,
        0.86,
        "dep_conv at initialisation: one-hot\nkernels = the 9 shifts (trainable)",
        ha="center",
        fontsize=9,
    )
    return _save(fig, out / "acmix_paths.png")


def glmix_slots(out: Path) -> Path:
    """Slot assignment (softmax over slots of the shared logits) in a random ``glnet_nano``."""
    torch.manual_seed(0)
    model = convattn.create_model("glnet_nano", num_classes=4).eval()
    block = model.stages[0].blocks[0]  # first GLMix block: 32x32 map for a 64x64 image
    image = SyntheticDataset("shapes", num_samples=4, img_size=64, split="val")[1][0]
    captured = {}
    handle = block.vis_proxy.register_forward_hook(lambda m, i, o: captured.update(logits=o))
    with torch.no_grad():
        model(image[None])
        base = captured["logits"][0]  # (S, N)
        scale = float(block.slot_scale)
        side = int(base.shape[1] ** 0.5)
        sharp = base * (10.0 / scale)  # the same cosine similarities at temperature 10
    handle.remove()
    fig, axes = plt.subplots(1, 4, figsize=(11, 3.0))
    axes[0].imshow(image.permute(1, 2, 0).numpy())
    axes[0].set_title("input (synthetic 'shapes', 64x64)", fontsize=9)
    rows = [(base, f"init temperature {scale:.3f}"), (sharp, "temperature 10 (illustration)")]
    for ax, (logits, name) in zip(axes[1:3], rows):
        assign = logits.softmax(0)  # per-pixel distribution over the slots
        ax.imshow(assign.argmax(0).view(side, side).numpy(), cmap="tab20", interpolation="nearest")
        top = assign.max(0).values.mean().item()
        ax.set_title(f"argmax slot, {name}\nmean max prob {top:.3f}", fontsize=8)
    assign = sharp.softmax(0)
    axes[3].imshow(assign[5].view(side, side).numpy(), cmap="magma")
    axes[3].set_title("assignment map of slot 5\n(temperature 10)", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        f"glnet_nano stage 1, block 0: {base.shape[0]} slots over a {side}x{side} map "
        "(untrained weights)",
        fontsize=9,
    )
    return _save(fig, out / "glmix_slots.png")


def viz_slots(out: Path) -> Path:
    """The figure of ``visualize_slots`` (the ``convattn viz --what slots`` command)."""
    from convattn.viz import visualize_slots

    image = SyntheticDataset("shapes", num_samples=2, img_size=64, split="val")[1][0]
    with tempfile.TemporaryDirectory() as folder:
        result = visualize_slots("glnet_nano", image, block=1, out=folder)
        return Path(shutil.copyfile(result.paths[0], out / "viz_slots.png"))


FIGURES = (operator_footprints, xvolution_directions, acmix_paths, glmix_slots, viz_slots)


def generate(out: str | Path) -> list[Path]:
    """Write every figure into ``out`` and return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [figure(out) for figure in FIGURES]
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    for path in generate(sys.argv[1] if len(sys.argv) > 1 else "figures"):
        print(path)
