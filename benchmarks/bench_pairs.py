"""Interleaved A/B forward timing of an ACmix variant against its baseline, in one process.

``bench_models.py`` times each model in its own process, one after the other; on a shared machine
that drifts by up to ~10 %, more than the difference between SAN and ACmix-SAN. Here both models
run in alternating rounds (A, B, then B, A, ...) and the ratio is taken per round, so load that
comes and goes cancels out.

    python benchmarks/bench_pairs.py                          # the three SAN pairs, batch 8 at 224
    python benchmarks/bench_pairs.py --pairs acmix_san_nano:san_nano --img-size 32 --rounds 2 \
        --out /tmp/pairs

Writes ``results.json`` and ``results.md`` into ``--out`` (default ``benchmarks/results/models/ab_pairs``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from convattn.bench.machine import environment
from convattn.bench.timing import interleaved_samples
from convattn.models import create_model, is_model

RESULTS = Path(__file__).resolve().parent / "results" / "models" / "ab_pairs"
DEFAULT_PAIRS = ("acmix_san10:san10", "acmix_san15:san15", "acmix_san19:san19")


def _pair(text: str) -> tuple[str, str]:
    mixed, sep, base = text.partition(":")
    if not (sep and mixed and base):
        raise argparse.ArgumentTypeError(
            f"a pair is MIXED:BASE (e.g. acmix_san10:san10), got {text!r}"
        )
    return mixed, base


def measure(mixed: str, base: str, batch: int, img_size: int, rounds: int) -> dict:
    """Median and quartiles of the per-round ratio mixed / base (forward, eval mode, no grad)."""
    torch.manual_seed(0)
    x = torch.randn(batch, 3, img_size, img_size)
    models = {name: create_model(name).eval() for name in (base, mixed)}
    with torch.no_grad():
        steps = {name: (lambda m=m: m(x)) for name, m in models.items()}
        times = interleaved_samples(steps, rounds=rounds, warmup=1)
    ratios = [m / b for m, b in zip(times[mixed], times[base])]
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return {
        "mixed": mixed,
        "base": base,
        "ratio_median": statistics.median(ratios),
        "ratio_iqr": [q1, q3],
        "base_ms": 1e3 * statistics.median(times[base]),
        "mixed_ms": 1e3 * statistics.median(times[mixed]),
        "rounds": rounds,
    }


def render(result: dict) -> str:
    env = result["environment"]
    lines = [
        "# Interleaved A/B forward timing",
        "",
        f"{env['cpu_model']}, {result['threads']} threads, torch {env['torch']}, batch "
        f"{result['batch']} at {result['img_size']}x{result['img_size']}, eval mode, "
        f"{result['rows'][0]['rounds'] if result['rows'] else 0} alternating rounds.",
        "",
        "| pair | ratio (median) | IQR | baseline ms | variant ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| `{r['mixed']}` / `{r['base']}` | {r['ratio_median']:.3f}x | "
            f"{r['ratio_iqr'][0]:.3f}-{r['ratio_iqr'][1]:.3f} | {r['base_ms']:.1f} | "
            f"{r['mixed_ms']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_pairs.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", nargs="+", type=_pair, default=[_pair(p) for p in DEFAULT_PAIRS])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error(f"--rounds must be at least 2, got {args.rounds}")
    for flag, value in (("--batch-size", args.batch_size), ("--img-size", args.img_size),
                        ("--threads", args.threads)):  # fmt: skip
        if value < 1:
            parser.error(f"{flag} must be a positive integer, got {value}")
    unknown = [name for pair in args.pairs for name in pair if not is_model(name)]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; run 'convattn models' to list the names")
    torch.set_num_threads(args.threads)
    result = {
        "environment": environment(args.threads),
        "threads": args.threads,
        "batch": args.batch_size,
        "img_size": args.img_size,
        "rows": [
            measure(mixed, base, args.batch_size, args.img_size, args.rounds)
            for mixed, base in args.pairs
        ],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "results.md").write_text(render(result))
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
