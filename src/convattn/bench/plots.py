"""PNG plots of a model benchmark: latency against resolution (log-log) and against MACs.

Colour identifies the model, the marker (and line style) the mode: forward, forward in deploy
form, training step. Legends sit outside the axes so they never hide points.
"""

from __future__ import annotations

from pathlib import Path

from .derived import mode_label, scaling_exponents

__all__ = ["write_plots"]

_MARKERS = {"forward": "o", "forward (deploy)": "s", "train step": "^"}
_LINES = {"forward": "-", "forward (deploy)": "--", "train step": ":"}


def _colours(models: list[str]) -> dict[str, tuple]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(models) <= 10 else "tab20"]
    return {m: cmap(i % cmap.N) for i, m in enumerate(models)}


def _log_axis(axis) -> None:
    """Plain-number labels at 1-2-5 steps instead of overlapping 3x10^0-style minor labels."""
    from matplotlib import ticker

    axis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def write_plots(report: dict, out_dir: str | Path) -> list[Path]:
    """``latency_vs_resolution.png`` (if several sizes were measured) and ``latency_vs_macs.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    out = Path(out_dir)
    written = []
    rows = [r for r in report["rows"] if not r.get("error")]
    models = list(dict.fromkeys(r["model"] for r in rows))
    colour = _colours(models)
    several_batches = len({r["batch"] for r in rows}) > 1

    scaling = scaling_exponents(rows)
    if scaling:
        fig, ax = plt.subplots(figsize=(10, 5.5))
        sizes = sorted({s for e in scaling for s in e["img_sizes"]})
        for entry in scaling:
            mode = mode_label(entry)
            label = entry["model"] if mode == "forward" else f"{entry['model']} {mode}"
            if several_batches:
                label += f" b{entry['batch']}"
            ax.loglog(
                [s * s for s in entry["img_sizes"]],
                entry["median_ms"],
                marker=_MARKERS[mode],
                linestyle=_LINES[mode],
                color=colour[entry["model"]],
                label=f"{label}: exponent {entry['exponent']:.2f}",
            )
        ax.set_xticks([s * s for s in sizes], [f"{s}²" for s in sizes])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        _log_axis(ax.yaxis)
        ax.set_xlabel("input size (pixels H x W, log scale)")
        ax.set_ylabel("latency per step, ms (median, log scale)")
        ax.set_title("Latency against resolution (exponent = log-log slope in pixels)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        path = out / "latency_vs_resolution.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)

    if rows:
        fig, ax = plt.subplots(figsize=(10, 5.5))
        for r in rows:
            mode = mode_label(r)
            ax.scatter(
                r["step_gmacs"],
                r["timing"]["median_ms"],
                color=colour[r["model"]],
                marker=_MARKERS[mode],
                s=36,
            )
            if several_batches:
                ax.annotate(
                    f"b{r['batch']}",
                    (r["step_gmacs"], r["timing"]["median_ms"]),
                    xytext=(4, 2),
                    textcoords="offset points",
                    fontsize=7,
                )
        handles = [
            Line2D([], [], color=colour[m], marker="o", linestyle="", label=m) for m in models
        ]
        handles += [
            Line2D([], [], color="grey", marker=_MARKERS[m], linestyle="", label=m)
            for m in _MARKERS
            if any(mode_label(r) == m for r in rows)
        ]
        peak = report["machine"].get("peak", {}).get("float32")
        if peak:
            lo = min(r["step_gmacs"] for r in rows)
            hi = max(r["step_gmacs"] for r in rows)
            xs = [lo / 1.5, hi * 1.5]
            ax.plot(xs, [1e3 * x / peak for x in xs], "k--", lw=1)
            handles.append(
                Line2D([], [], color="k", linestyle="--", label=f"dense matmul ({peak:.0f} GMAC/s)")
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        _log_axis(ax.xaxis)
        _log_axis(ax.yaxis)
        ax.set_xlabel("GMACs per step (batch x MACs per image; train: forward + backward)")
        ax.set_ylabel("latency per step, ms (median, log scale)")
        ax.set_title("Latency against MACs (height above the dashed line = below the matmul rate)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        path = out / "latency_vs_macs.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written
