"""Command-line interface: ``convattn <command>`` (``python -m convattn`` works too)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


class CliError(Exception):
    """A user error reported as one line, without a traceback."""


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_operator_demo

    return run_operator_demo(size=args.size, channels=args.channels)


def _cmd_models(args: argparse.Namespace) -> int:
    from . import create_model, get_pretrained_cfg, list_models
    from .bench.flops import count_macs, count_params

    names = list_models(args.pattern or "*")
    if not names:
        raise CliError(f"no model matches {args.pattern!r}; run 'convattn models' to list all")
    print(f"{'model':<26}{'params (M)':>12}{'GMACs':>10}  input")
    for name in names:
        cfg = get_pretrained_cfg(name)
        size = cfg.get("input_size", (3, 224, 224))
        model = create_model(name)
        macs = count_macs(model, (1, *size)) / 1e9 if args.macs else float("nan")
        print(f"{name:<26}{count_params(model) / 1e6:>12.2f}{macs:>10.3f}  {size[1]}x{size[2]}")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from .models import convert_official

    out = convert_official(args.model, args.official, args.out)
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convattn", description="Vision backbones unifying convolution and self-attention."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="run the main demonstration on embedded data")
    demo.add_argument("--size", type=int, default=28, help="feature map height and width")
    demo.add_argument("--channels", type=int, default=64, help="operator width")
    demo.set_defaults(func=_cmd_demo)

    models = sub.add_parser("models", help="list registered models with params and MACs")
    models.add_argument("pattern", nargs="?", help="fnmatch pattern, e.g. 'acmix*'")
    models.add_argument(
        "--no-macs", dest="macs", action="store_false", help="skip the (slower) MAC count"
    )
    models.set_defaults(func=_cmd_models)

    convert = sub.add_parser("convert", help="convert an official checkpoint to our format")
    convert.add_argument("--model", required=True, help="registered model name")
    convert.add_argument("--official", required=True, help="path of the official checkpoint")
    convert.add_argument("--out", required=True, help="output path (.safetensors)")
    convert.set_defaults(func=_cmd_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CliError, ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"convattn {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
