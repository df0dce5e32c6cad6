"""``convattn bench``: the command-line front end of the model benchmark.

``add_bench_arguments(parser)`` adds the options to any ArgumentParser (the ``convattn`` CLI's
sub-command, ``benchmarks/bench_models.py``); ``bench_command(args)`` runs the benchmark and writes
the outputs. Bad arguments raise ValueError with a one-line message (the CLI prints it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["add_bench_arguments", "bench_command", "config_from_args", "parse_int_list"]

DEFAULT_OUT = "runs/bench"


def parse_int_list(text: str | int | list[int] | None, option: str) -> list[int] | None:
    """``"1,8"`` -> ``[1, 8]``; ints and lists pass through; None stays None.

    Raises:
        ValueError: an item that is not a positive integer, naming ``option``.
    """
    if text is None:
        return None
    if isinstance(text, int):
        items: list = [text]
    elif isinstance(text, str):
        items = [t.strip() for t in text.replace(" ", ",").split(",") if t.strip()]
    else:
        items = list(text)
    values = []
    for item in items:
        try:
            value = int(item)
        except (TypeError, ValueError):
            raise ValueError(
                f"{option}: expected positive integers separated by commas, got {item!r}"
            ) from None
        if value < 1:
            raise ValueError(f"{option}: expected positive integers, got {value}")
        values.append(value)
    if not values:
        raise ValueError(f"{option}: give at least one value")
    return values


def add_bench_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``convattn bench`` options to ``parser`` and return it."""
    parser.add_argument(
        "--models",
        nargs="+",
        metavar="PATTERN",
        help="model names or fnmatch patterns ('acmix_*'); also the bench-only 'vit_reference'",
    )
    parser.add_argument(
        "--img-size", metavar="PX", help="square input size (default: each model's own)"
    )
    parser.add_argument(
        "--resolutions",
        metavar="LIST",
        help="several input sizes, e.g. 224,320,448,640 (overrides --img-size; adds the "
        "latency-vs-resolution plot with fitted exponents)",
    )
    parser.add_argument(
        "--batch-size", default="1", metavar="LIST", help="batch size(s), e.g. 1,8 (default 1)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="intra-op threads of every worker (default: torch's default here)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument(
        "--deploy",
        nargs="?",
        const="on",
        default="off",
        choices=("on", "both", "off"),
        help="time the forward in deploy form (re-parameterised); '--deploy both' times both forms",
    )
    parser.add_argument(
        "--channels-last", action="store_true", help="model and input in channels_last"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument(
        "--amp",
        nargs="?",
        const="auto",
        choices=("auto", "bf16", "fp16"),
        help="autocast (bare --amp: bf16 on CPU, fp16 on CUDA)",
    )
    parser.add_argument(
        "--train",
        action="store_true",
        help="also time a training step (forward + backward + SGD step)",
    )
    parser.add_argument(
        "--out", default=DEFAULT_OUT, metavar="DIR", help=f"output folder (default {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--repeats", type=int, default=10, metavar="N", help="timed steps (default 10)"
    )
    parser.add_argument(
        "--warmup", type=int, default=10, metavar="N", help="untimed steps first (default 10)"
    )
    parser.add_argument(
        "--matmul-size",
        type=int,
        default=2048,
        metavar="N",
        help="side of the square matmul measuring the machine's dense rate (default 2048)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=3600.0,
        metavar="S",
        help="give up on one worker after S seconds (default 3600)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-plots", action="store_true", help="do not write the PNG plots")
    parser.add_argument(
        "--render",
        metavar="RESULTS_JSON",
        help="measure nothing: rewrite results.md/.csv and the plots next to a results.json",
    )
    return parser


def config_from_args(args: argparse.Namespace):
    """The :class:`~convattn.bench.runner.BenchConfig` of parsed arguments (validated later)."""
    from .catalog import resolve_models
    from .runner import BenchConfig

    sizes = parse_int_list(args.resolutions, "--resolutions")
    if sizes is None:
        sizes = parse_int_list(args.img_size, "--img-size")
    return BenchConfig(
        models=resolve_models(args.models or []),
        img_sizes=sizes,
        batch_sizes=parse_int_list(args.batch_size, "--batch-size") or [1],
        threads=args.threads,
        device=args.device,
        deploy=args.deploy,
        channels_last=args.channels_last,
        compile=args.compile,
        amp=args.amp,
        train=args.train,
        warmup=args.warmup,
        repeats=args.repeats,
        matmul_size=args.matmul_size,
        timeout_s=args.timeout,
        progress=not args.no_progress,
    )


def bench_command(args: argparse.Namespace) -> int:
    """Run ``convattn bench`` for parsed ``args``; 0 if every job succeeded, else 1.

    Raises:
        ValueError: bad arguments (unknown model or pattern, impossible resolution, CUDA requested
            without a GPU, ...), before anything is measured.
    """
    from .report import write_outputs
    from .runner import run_benchmark

    if args.render:
        path = Path(args.render)
        if not path.is_file():
            raise ValueError(f"--render: no such file: {path}")
        report = json.loads(path.read_text())
        out = path.parent
    else:
        report = run_benchmark(config_from_args(args))
        out = Path(args.out)
    paths = write_outputs(report, out, plots=not args.no_plots)
    print(f"wrote {', '.join(p.name for p in paths)} to {out}")
    if report.get("errors"):
        print(f"{len(report['errors'])} job(s) failed:")
        for err in report["errors"]:
            print(f"  {err['job']}: {err['error']}")
        return 1
    return 0
