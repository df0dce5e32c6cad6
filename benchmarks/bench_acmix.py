"""ACmix's tiled window attention: the speed and memory targets, measured side by side.

```bash
python benchmarks/bench_acmix.py                 # full run (~10 min on 2 idle cores)
python benchmarks/bench_acmix.py --quick --out /tmp/acmix   # smoke run: tiny shapes, seconds
```

Writes ``results.json``, ``results.md`` and ``tiles.png`` into ``--out``
(default ``benchmarks/results/acmix``). Every comparison is a ratio of two things timed in the same
process, in interleaved rounds (A then B, then B then A, ...), with a fixed intra-op thread count;
the median of the per-round ratios is reported with its quartiles. Peak memory is the peak-RSS
growth of a fresh process running one step (``convattn.bench.memory``).

1. The ACmix module at 64ch@56x56, batch 8, against the unfold form of the official algorithm
   (``convattn.bench.baselines.acmix_unfold``): forward, forward + backward, memory.
2. Tile sizes at ACmix-ResNet-50's stage shapes (the table behind ``tile_size``).
3. ``acmix_resnet50`` against ``resnet50`` at batch 8, 224x224: forward and training step.
4. ``acmix_swin_tiny`` against ``swin_tiny``: forward.
5. ``acmix_resnet_nano`` against ``resnet_nano``: training images per second on digits at 32 px.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import convattn
from convattn._numerics import max_relative_deviation
from convattn.bench.baselines import acmix_unfold
from convattn.bench.machine import environment
from convattn.bench.memory import peak_memory_mib, return_freed_memory_to_os
from convattn.bench.report import profile_summary, target_table
from convattn.bench.timing import interleaved_samples
from convattn.layers import ACmix
from convattn.layers import _window_tiles as tiles

ROOT = Path(__file__).resolve().parents[1]


def interleaved(steps: dict, rounds: int, warmup: int = 1) -> dict:
    """Time the callables of ``steps`` in alternating order; per-round ratios to the first one."""
    names = list(steps)
    times = interleaved_samples(steps, rounds, warmup)
    base = names[0]
    out = {}
    for name in names:
        ratios = sorted(t / b for t, b in zip(times[name], times[base]))
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        out[name] = {
            "median_s": statistics.median(times[name]),
            "min_s": min(times[name]),
            "ratio_to_" + base: {"median": q[1], "q1": q[0], "q3": q[2]},
        }
    return out


def _acmix_pair(channels: int, size: int, batch: int, stride: int = 1):
    torch.manual_seed(0)
    module = ACmix(channels, channels, stride)  # k_att 7, 4 heads
    x = torch.randn(batch, channels, size, size)
    return module, (lambda inp: acmix_unfold(module, inp)), x


def _step(fn, x: torch.Tensor, train: bool):
    if train:
        xg = x.clone().requires_grad_(True)
        return lambda: fn(xg).sum().backward()

    def forward():
        with torch.inference_mode():
            fn(x)

    return forward


def module_vs_reference(channels: int, size: int, batch: int, rounds: int) -> dict:
    module, reference, x = _acmix_pair(channels, size, batch)
    with torch.no_grad():
        out, ref = module(x), reference(x)
    result = {
        "shape": f"{channels}ch@{size}x{size}, batch {batch}",
        "max_rel_difference": max_relative_deviation(out, ref),
    }
    for mode, train in (("forward", False), ("forward_backward", True)):
        steps = {"reference": _step(reference, x, train), "acmix": _step(module, x, train)}
        result[mode] = interleaved(steps, rounds)
    result["peak_memory_mib"] = {
        name: _memory_in_fresh_process(name, channels, size, batch)
        for name in ("reference", "acmix")
    }
    return result


def _memory_in_fresh_process(which: str, channels: int, size: int, batch: int) -> float:
    code = (
        f"import sys; sys.argv=['x']; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        f"import bench_acmix as b; b._memory_child({which!r}, {channels}, {size}, {batch})"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(proc.stdout.strip().splitlines()[-1])


def _memory_child(which: str, channels: int, size: int, batch: int) -> None:
    torch.set_num_threads(2)
    return_freed_memory_to_os()
    module, reference, x = _acmix_pair(channels, size, batch)
    step = _step(module if which == "acmix" else reference, x, train=False)
    step()
    print(peak_memory_mib(step, "cpu")["peak_memory_mib"])


STAGES = [(64, 56, 1), (128, 56, 2), (128, 28, 1), (256, 28, 2), (256, 14, 1), (512, 14, 2),
          (512, 7, 1)]  # fmt: skip
TILE_CHOICES = [(2, 2), (4, 4), (7, 7), (8, 8), (4, 8), (16, 16)]


def tile_sweep(batch: int, rounds: int, stages=STAGES, train: bool = False) -> list[dict]:
    """Forward (or forward + backward) time of each tile choice, relative to the chosen tile."""
    rows = []
    for channels, size, stride in stages:
        module, _, x = _acmix_pair(channels, size, batch, stride)
        qkv = module.qkv(x).detach().requires_grad_(train)
        out_side = -(-size // stride)
        whole_map = size * size <= tiles._WHOLE_MAP_MAX_PIXELS
        chosen = None if whole_map else tiles.tile_size(out_side, out_side, stride)
        choices = [chosen] + [t for t in TILE_CHOICES if t != chosen and t[0] <= out_side]

        def run(tile, qkv=qkv, stride=stride, scale=module.scale):
            def attend():
                b, _, h, w = qkv.shape
                q, k, v = qkv.view(b, 3, 4, -1, h, w).unbind(1)
                n, d = 4, q.shape[2]
                flat = [t.reshape(b * n, d, h, w) for t in (q, k, v)]
                return tiles.tiled_window_attention(*flat, 7, stride, scale, tile)

            return _step(lambda _: attend(), qkv, train)

        label = {t: "whole map" if t is None else f"{t[0]}x{t[1]}" for t in choices}
        timed = interleaved({label[t]: run(t) for t in choices}, rounds)
        base = label[chosen]
        rows.append(
            {
                "shape": f"{channels}ch@{size} s{stride}",
                "chosen": base,
                "ratio_to_chosen": {
                    k: v["ratio_to_" + base]["median"] for k, v in timed.items() if k != base
                },
                "chosen_ms": 1e3 * timed[base]["median_s"],
            }
        )
    return rows


def model_pair(baseline: str, model: str, batch: int, size: int, rounds: int, train: bool):
    torch.manual_seed(0)
    models = {n: convattn.create_model(n) for n in (baseline, model)}
    x = torch.randn(batch, 3, size, size)

    def step(m):
        if train:
            m.train()
            return lambda: (m.zero_grad(set_to_none=True), m(x).sum().backward())
        m.eval()
        return _step(m, x, train=False)

    return interleaved({n: step(m) for n, m in models.items()}, rounds)


def digits_training(batch: int, img_size: int, steps: int, rounds: int) -> dict:
    """Images per second of a training step (AdamW, cross-entropy) on digits, per model."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images[: batch * steps], dtype=torch.float32).unsqueeze(1) / 16
    images = F.interpolate(images, size=img_size, mode="bilinear").expand(-1, 3, -1, -1)
    labels = torch.tensor(digits.target[: batch * steps])

    def trainer(name):
        torch.manual_seed(0)
        model = convattn.create_model(name, num_classes=10).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def epoch():
            for i in range(steps):
                xb, yb = images[i * batch : (i + 1) * batch], labels[i * batch : (i + 1) * batch]
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(xb.contiguous()), yb).backward()
                opt.step()

        return epoch

    timed = interleaved({n: trainer(n) for n in ("resnet_nano", "acmix_resnet_nano")}, rounds)
    for row in timed.values():
        row["images_per_s"] = batch * steps / row["median_s"]
    return timed


def profile_ops(name: str, batch: int, size: int, train: bool, top: int = 10) -> dict:
    """Where the time of one step goes: the operators with the most self CPU time."""
    from torch.profiler import profile

    torch.manual_seed(0)
    model = convattn.create_model(name, num_classes=10 if size <= 64 else 1000)
    x = torch.randn(batch, 3, size, size)
    target = torch.zeros(batch, dtype=torch.long)
    if train:
        model.train()
        step = lambda: F.cross_entropy(model(x), target).backward()  # noqa: E731
    else:
        step = _step(model.eval(), x, train=False)
    step()
    with profile() as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return {
        "total_ms": total / 1e3,
        "top": [
            {"op": e.key, "ms": e.self_cpu_time_total / 1e3, "calls": e.count} for e in events[:top]
        ],
    }


def render(report: dict) -> str:
    env, lines = report["environment"], []
    lines += [
        "# ACmix tiled window attention: targets",
        "",
        f"CPU: {env.get('cpu_model')}; {report['threads']} threads; torch {env.get('torch')}; "
        f"load average at start {report['load_start']}, end {report['load_end']}.",
        "Ratios are medians of interleaved per-round ratios [quartiles].",
        "",
        *target_table(report["targets"]),
    ]
    lines += [
        "",
        "## Where the time goes (self CPU time per operator, one step, torch.profiler)",
        "",
    ]
    for label, prof in report["profiles"].items():
        ops = profile_summary(prof, calls=True)
        lines += [f"- **{label}** (total {prof['total_ms']:.0f} ms): {ops}"]
    lines += ["", "## Tile sizes (forward, time relative to the chosen tile; > 1 = slower)", ""]
    for sweep, rows in report["tiles"].items():
        lines += [
            f"### {sweep}",
            "",
            "| stage shape | chosen | chosen ms | others |",
            "|---|---|---|---|",
        ]
        for r in rows:
            others = ", ".join(f"{k} {v:.2f}" for k, v in r["ratio_to_chosen"].items())
            lines.append(f"| {r['shape']} | {r['chosen']} | {r['chosen_ms']:.1f} | {others} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def _ratio(block: dict, name: str, base: str) -> tuple[float, str]:
    r = block[name]["ratio_to_" + base]
    return r["median"], f"{r['median']:.2f}x [{r['q1']:.2f}-{r['q3']:.2f}]"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "acmix"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 2 rounds (smoke test)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    quick = args.quick
    rounds = 2 if quick else args.rounds
    load_start = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    report: dict = {"threads": args.threads, "environment": environment(args.threads)}
    report["load_start"] = load_start

    report["module"] = module_vs_reference(
        16 if quick else 64, 12 if quick else 56, 2 if quick else 8, rounds
    )
    stages = [(16, 12, 1), (16, 12, 2)] if quick else STAGES
    report["tiles"] = {
        "forward": tile_sweep(2 if quick else 8, rounds, stages),
        "forward_backward": tile_sweep(2 if quick else 8, max(2, rounds // 2), stages, train=True),
    }
    batch, size = (1, 64) if quick else (8, 224)
    report["resnet50_forward"] = model_pair(
        "resnet50", "acmix_resnet50", batch, size, rounds, False
    )
    report["resnet50_train"] = model_pair("resnet50", "acmix_resnet50", batch, size, rounds, True)
    report["swin_forward"] = model_pair("swin_tiny", "acmix_swin_tiny", batch, size, rounds, False)
    report["digits"] = digits_training(
        16 if quick else 64, 32, 2 if quick else 4, max(2, rounds // 2)
    )
    report["profiles"] = {
        f"{name} {'training step' if train else 'forward'}, batch {b}, {px} px": profile_ops(
            name, b, px, train
        )
        for name, b, px, train in [
            ("resnet50", batch, size, False),
            ("acmix_resnet50", batch, size, False),
            ("swin_tiny", batch, size, False),
            ("acmix_swin_tiny", batch, size, False),
            ("resnet_nano", 16 if quick else 64, 32, True),
            ("acmix_resnet_nano", 16 if quick else 64, 32, True),
        ]
    }
    report["load_end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])

    mod = report["module"]
    fwd, fwd_text = _ratio(mod["forward"], "acmix", "reference")
    bwd, bwd_text = _ratio(mod["forward_backward"], "acmix", "reference")
    mem = mod["peak_memory_mib"]
    mem_ratio = mem["acmix"] / max(mem["reference"], 1e-9)
    r50f, r50f_text = _ratio(report["resnet50_forward"], "acmix_resnet50", "resnet50")
    r50t, r50t_text = _ratio(report["resnet50_train"], "acmix_resnet50", "resnet50")
    swin, swin_text = _ratio(report["swin_forward"], "acmix_swin_tiny", "swin_tiny")
    dig = report["digits"]
    dig_ratio = dig["acmix_resnet_nano"]["images_per_s"] / dig["resnet_nano"]["images_per_s"]
    report["targets"] = [
        {"name": "ACmix module forward speed-up over the literal reference", "value": f"{1 / fwd:.1f}x ({fwd_text} of its time)", "goal": ">= 15x", "pass": 1 / fwd >= 15},
        {"name": "ACmix module peak memory / reference (forward)", "value": f"{mem_ratio:.3f} ({mem['acmix']:.0f} / {mem['reference']:.0f} MiB)", "goal": "<= 0.10", "pass": mem_ratio <= 0.10},
        {"name": "ACmix module forward+backward speed-up", "value": f"{1 / bwd:.1f}x ({bwd_text})", "goal": ">= 10x", "pass": 1 / bwd >= 10},
        {"name": "acmix_resnet50 / resnet50 forward, b8 224", "value": r50f_text, "goal": "<= 1.5x", "pass": r50f <= 1.5},
        {"name": "acmix_resnet50 / resnet50 training step, b8 224", "value": r50t_text, "goal": "<= 2.0x", "pass": r50t <= 2.0},
        {"name": "acmix_resnet_nano / resnet_nano training throughput, digits 32 px", "value": f"{dig_ratio:.2f} ({dig['acmix_resnet_nano']['images_per_s']:.0f} / {dig['resnet_nano']['images_per_s']:.0f} img/s)", "goal": ">= 1/3", "pass": dig_ratio >= 1 / 3},
        {"name": "acmix_swin_tiny / swin_tiny forward, b8 224", "value": swin_text, "goal": "<= 1.1x", "pass": swin <= 1.1},
    ]  # fmt: skip

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "results.md").write_text(render(report))
    _plot(report, out / "tiles.png")
    print(render(report))
    return 0


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["tiles"]["forward"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    choices = sorted({k for r in rows for k in r["ratio_to_chosen"]})
    for i, choice in enumerate(choices):
        xs = [j for j, r in enumerate(rows) if choice in r["ratio_to_chosen"]]
        ys = [rows[j]["ratio_to_chosen"][choice] for j in xs]
        ax.plot([x + 0.06 * i for x in xs], ys, "o", label=f"tile {choice}")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(range(len(rows)), [r["shape"] for r in rows], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("time / chosen tile")
    ax.set_yscale("log")
    ax.legend(fontsize=7, ncol=3)
    ax.set_title("ACmix window attention: other tile sizes vs the chosen one (forward)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
