"""Command-line interface: ``convattn <command>``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_operator_demo

    return run_operator_demo(size=args.size, channels=args.channels)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convattn", description="Vision backbones unifying convolution and self-attention."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the main demonstration on embedded data")
    demo.add_argument("--size", type=int, default=28, help="feature map height and width")
    demo.add_argument("--channels", type=int, default=64, help="operator width")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
