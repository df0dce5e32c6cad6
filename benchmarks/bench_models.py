"""Model benchmark: params, MACs, latency, throughput, memory and fraction of the matmul peak.

A thin front end of ``convattn bench`` (library: ``convattn.bench``) whose default output folder
is ``benchmarks/results/models``. Every model runs in a fresh process with the same thread count;
see ``benchmarks/README.md`` for the commands that produced the committed results.

    python benchmarks/bench_models.py --models resnet50 swin_tiny --img-size 224 --batch-size 1,8
    python benchmarks/bench_models.py --models resnet_nano glnet_nano --repeats 2 --warmup 1 \
        --out /tmp/bench_smoke
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from convattn.bench import add_bench_arguments, bench_command

RESULTS = Path(__file__).resolve().parent / "results" / "models"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_models.py", description=__doc__.split("\n\n")[0])
    add_bench_arguments(parser)
    parser.set_defaults(out=str(RESULTS))
    args = parser.parse_args(argv)
    try:
        return bench_command(args)
    except ValueError as err:
        print(f"bench_models.py: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
