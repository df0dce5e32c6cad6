"""Command-line interface: ``convattn <command>`` (``python -m convattn`` works too)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


class CliError(Exception):
    """A user error reported as one line, without a traceback."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (``convattn train: error: ...``)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo, run_operator_demo

    if args.operators:
        return run_operator_demo(size=args.size, channels=args.channels)
    return run_demo(out=args.out, quick=args.quick, models=args.models)


def _check_model(name: str | None) -> None:
    from .models import is_model

    if name is not None and not is_model(name):
        raise CliError(
            f"unknown model '{name}'; run 'convattn models' to list the registered names"
        )


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import config_from_args, train

    cfg = config_from_args(args)
    _check_model(cfg.model)
    result = train(cfg)
    if not cfg.quiet and int(os.environ.get("RANK", "0")) == 0:
        best = result["best_top1"]
        best_text = "n/a" if best is None else f"{best:.2f}% (epoch {result['best_epoch']})"
        print(f"done: best val top-1 {best_text}; run folder {result['run_dir']}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import json

    from .train import evaluate_checkpoint

    _check_model(args.model)
    result = evaluate_checkpoint(
        args.checkpoint,
        args.data,
        model_name=args.model,
        img_size=args.img_size,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        amp=args.amp,
        split=args.split,
        seed=args.seed,
    )
    if args.json:
        print(json.dumps(result))
    else:
        mean = ", ".join(f"{v:.3f}" for v in result["mean"])
        std = ", ".join(f"{v:.3f}" for v in result["std"])
        print(
            f"preprocessing ({result['preprocessing']}): {result['img_size']}px, "
            f"mean ({mean}), std ({std}), data {result['data']} split seed {result['seed']}"
        )
        print(
            f"{result['model']} on {result['data']} ({result['split']}, {result['count']} images, "
            f"{result['img_size']}px): top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  "
            f"loss {result['loss']:.4f}"
        )
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from . import create_model, get_pretrained_cfg, list_models
    from .bench.flops import count_macs, count_params

    _check_model(None)  # registers every family, as train/eval see them
    stage_ops = getattr(args, "stage_ops", None)
    if stage_ops == "list":
        from .models.resnet import STAGE_OPS

        for op_name, op in STAGE_OPS.items():
            print(f"{op_name:<15}{op.summary}")
        return 0
    if stage_ops is not None:
        from .models.resnet import resolve_stage_ops

        try:
            resolve_stage_ops(stage_ops, len(stage_ops.split(",")))  # names checked up front
        except ValueError as err:
            raise CliError(str(err)) from None
    names = list_models(args.pattern or "*")
    if stage_ops is not None:
        resnets = set(list_models(module="resnet"))
        names = [n for n in names if n in resnets]
    if not names:
        kind = "ResNet model" if stage_ops is not None else "model"
        raise CliError(f"no {kind} matches {args.pattern!r}; run 'convattn models' to list all")
    print(f"{'model':<26}{'params (M)':>12}{'GMACs':>10}  input")
    for name in names:
        cfg = get_pretrained_cfg(name)
        size = cfg.get("input_size", (3, 224, 224))
        try:
            model = create_model(name, stage_ops=stage_ops)
        except ValueError as err:
            raise CliError(str(err)) from None
        macs = count_macs(model, (1, *size)) / 1e9 if args.macs else float("nan")
        print(f"{name:<26}{count_params(model) / 1e6:>12.2f}{macs:>10.3f}  {size[1]}x{size[2]}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import bench_command

    return bench_command(args)


def _cmd_export(args: argparse.Namespace) -> int:
    from .deploy.export import export_command

    return export_command(args)


def _cmd_convert(args: argparse.Namespace) -> int:
    from .models import convert_official

    _check_model(args.model)
    if args.num_classes is not None and args.num_classes < 0:
        raise CliError(f"--num-classes must be >= 0, got {args.num_classes}")
    out = convert_official(
        args.model,
        args.official,
        args.out,
        num_classes=args.num_classes,
        reset_classifier=args.reset_classifier,
    )
    print(f"wrote {out}")
    return 0


def _query(text: str) -> tuple[float, float]:
    """``Y,X`` (input-image pixels) for ``convattn viz --query``."""
    try:
        y, x = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected Y,X pixel coordinates, got {text!r}") from None
    return y, x


def _cmd_viz(args: argparse.Namespace) -> int:
    from .viz import visualize

    if args.model is None and args.checkpoint is None:
        raise CliError("give --model NAME (or --checkpoint of ours, which names its model)")
    if args.model is not None:
        _check_model(args.model)
    common = dict(checkpoint=args.checkpoint, out=args.out, seed=args.seed, deploy=args.deploy)
    if args.what == "rates":
        result = visualize("rates", args.model, **common)
    else:
        if args.image is None:
            raise CliError(f"--what {args.what} needs an input image: give --image FILE")
        options = dict(common, block=args.block, img_size=args.img_size)
        if args.what == "slots":
            options.update(mode=args.mode, representatives=args.representatives)
        elif args.what == "attention":
            options.update(queries=args.query)
        result = visualize(args.what, args.model, args.image, **options)
    print(result.caption.replace("\n", "\n  "))
    for path in result.paths:
        print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .bench import add_bench_arguments
    from .train import add_train_arguments

    parser = _Parser(
        prog="convattn", description="Vision backbones unifying convolution and self-attention."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    formatter = argparse.ArgumentDefaultsHelpFormatter

    demo = sub.add_parser(
        "demo",
        help="the main job: train the nano models on digits and write runs/demo/report.md",
        description="Train resnet_nano, xvolution_resnet_nano, acmix_resnet_nano, glnet_nano and "
        "acmix_swin_nano on scikit-learn's digits with one recipe, check X-volution's "
        "re-parameterised deploy form, and write a report with a table and plots.",
        formatter_class=formatter,
    )
    demo.add_argument("--out", default="runs/demo", help="report folder")
    demo.add_argument(
        "--quick", action="store_true", help="tiny data and one epoch (a smoke test, seconds)"
    )
    demo.add_argument("--models", nargs="+", metavar="NAME", help="train only these models")
    demo.add_argument(
        "--operators", action="store_true", help="print the operator table instead (no training)"
    )
    demo.add_argument("--size", type=int, default=28, help="--operators: feature map size")
    demo.add_argument("--channels", type=int, default=64, help="--operators: operator width")
    demo.set_defaults(func=_cmd_demo)

    train = sub.add_parser(
        "train",
        help="train a model (single process, or under torchrun for DDP)",
        description="Train a registered model. Distributed: torchrun --nproc_per_node N -m "
        "convattn train ... (batch size is per process). Writes config.yaml, metrics.jsonl, "
        "last/best .safetensors weights, resume.pt and curves.png to the run folder.",
    )
    add_train_arguments(train)
    train.set_defaults(func=_cmd_train)

    evaluate = sub.add_parser(
        "eval",
        help="evaluate a checkpoint (ours or an official release) on a data set",
        description="Top-1/top-5 accuracy and loss of a checkpoint on the validation split. "
        "Our checkpoints (.safetensors weights and a run's resume.pt) carry the model name, data, "
        "input size, normalisation and data split, and eval uses them; official checkpoints "
        "need --model and --data.",
        formatter_class=formatter,
    )
    evaluate.add_argument(
        "--model", metavar="NAME", help="registered model name (default: from our checkpoint)"
    )
    evaluate.add_argument("--checkpoint", required=True, metavar="PATH", help="weights file")
    evaluate.add_argument(
        "--data",
        metavar="SPEC",
        help="digits, synthetic:NAME[:N_TRAIN[:N_VAL]], cifar10:PATH, cifar100:PATH or a folder "
        "(default: what our checkpoint was trained on)",
    )
    evaluate.add_argument("--split", choices=("val", "train"), default="val", help="split to score")
    evaluate.add_argument(
        "--img-size",
        type=int,
        metavar="PX",
        help="input size (default: the checkpoint's training size, else the model's; "
        "overriding our checkpoint's warns)",
    )
    evaluate.add_argument(
        "--seed",
        type=int,
        metavar="N",
        help="data seed, which picks the digits/synthetic split (default: the checkpoint's "
        "training seed, else 0; overriding it warns)",
    )
    evaluate.add_argument("--batch-size", type=int, default=128, metavar="N", help="batch size")
    evaluate.add_argument("--workers", type=int, default=2, metavar="N", help="loader workers")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    evaluate.add_argument(
        "--amp", choices=("none", "bf16", "fp16"), default="none", help="autocast"
    )
    evaluate.add_argument("--json", action="store_true", help="print the result as JSON")
    evaluate.set_defaults(func=_cmd_eval)

    models = sub.add_parser("models", help="list registered models with params and MACs")
    models.add_argument("pattern", nargs="?", help="fnmatch pattern, e.g. 'acmix*'")
    models.add_argument(
        "--no-macs", dest="macs", action="store_false", help="skip the (slower) MAC count"
    )
    models.add_argument(
        "--stage-ops",
        metavar="OPS",
        help="ResNet models: build them with these per-stage operators (comma-separated, e.g. "
        "conv,conv,xvolution,conv); 'list' prints the operators",
    )
    models.set_defaults(func=_cmd_models)

    convert = sub.add_parser("convert", help="convert an official checkpoint to our format")
    convert.add_argument("--model", required=True, help="registered model name")
    convert.add_argument("--official", required=True, help="path of the official checkpoint")
    convert.add_argument("--out", required=True, help="output path (.safetensors)")
    convert.add_argument(
        "--num-classes",
        type=int,
        metavar="N",
        help="classifier outputs (default: the checkpoint's; another count needs "
        "--reset-classifier)",
    )
    convert.add_argument(
        "--reset-classifier",
        action="store_true",
        help="with --num-classes other than the checkpoint's: a new, randomly initialised head",
    )
    convert.set_defaults(func=_cmd_convert)
    bench = sub.add_parser(
        "bench",
        help="benchmark models: params, MACs, latency, throughput, memory (a process per row)",
        description="Measure registered models (and the bench-only 'vit_reference'), each in a "
        "fresh process with the same thread count; writes results.json/.csv/.md and PNG plots.",
    )
    add_bench_arguments(bench)
    bench.set_defaults(func=_cmd_bench)
    viz = sub.add_parser(
        "viz",
        help="figures of what a hybrid learned: GLMix slots, attention maps, X-volution kernels, "
        "ACmix rates",
        description="Write a PNG of one layer of a model on an image: GLMix slot assignments "
        "(slots), where query pixels attend in ACmix / SAN / Swin windows, PVT spatial-reduction "
        "or global attention (attention), X-volution's dynamic against static kernel per pixel "
        "(kernels), or the learned rate1/rate2 of every ACmix layer (rates, no image; also "
        "ACmix-Swin, -SAN and -PVT). Without --checkpoint the model is "
        "randomly initialised with --seed.",
        formatter_class=formatter,
    )
    viz.add_argument("--model", metavar="NAME", help="registered model (default: our checkpoint's)")
    viz.add_argument("--checkpoint", metavar="PATH", help="weights (ours or an official release)")
    viz.add_argument("--image", metavar="FILE", help="input image (not needed for rates)")
    viz.add_argument(
        "--what",
        choices=("slots", "attention", "kernels", "rates"),
        default="slots",
        help="what to show",
    )
    viz.add_argument(
        "--block",
        metavar="SPEC",
        help="layer: a module path or an index among the matching layers (default: the middle)",
    )
    viz.add_argument("--out", default="runs/viz", metavar="DIR", help="output folder")
    viz.add_argument(
        "--mode",
        choices=("dispatch", "clustering"),
        default="dispatch",
        help="slots: softmax over slots (dispatch) or over pixels (clustering)",
    )
    viz.add_argument(
        "--representatives", type=int, default=4, metavar="K", help="slots: slots shown large"
    )
    viz.add_argument(
        "--query",
        type=_query,
        action="append",
        metavar="Y,X",
        help="attention: a query pixel of the resized image (repeat; default: 4 spread points)",
    )
    viz.add_argument(
        "--img-size", type=int, metavar="PX", help="input size (default: checkpoint's or model's)"
    )
    viz.add_argument("--seed", type=int, default=0, help="seed of the random init")
    viz.add_argument(
        "--deploy", action="store_true", help="re-parameterise the model first (deploy form)"
    )
    viz.set_defaults(func=_cmd_viz)
    from .deploy.export import add_export_arguments

    export = sub.add_parser(
        "export",
        help="export a model (deploy form) to ONNX or torch.export, verified with onnxruntime",
    )
    add_export_arguments(export)
    export.set_defaults(func=_cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import pickle

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CliError, ValueError, OSError, RuntimeError, pickle.UnpicklingError) as err:
        message = " ".join(str(err).split())  # one line, whatever the exception's layout
        print(f"convattn {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"convattn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
