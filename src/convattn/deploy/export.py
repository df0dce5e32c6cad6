"""Export a re-parameterised model to ONNX or a ``torch.export`` program, verified in the runtime.

``export_model`` traces with ``torch.export`` (never TorchScript), writes ONNX through
``torch.onnx.export(..., dynamo=True)`` or the program itself through ``torch.export.save``
then loads the written file in its runtime
(onnxruntime on the CPU, or ``torch.export.load``) and compares it with the PyTorch model before the
file takes its final name: a failed export never leaves a file behind (``convattn._io.atomic_write``).

Dynamic shapes. A dynamic batch and/or a dynamic input size are traced with ``Dim.AUTO``; a model
that turns a dimension into a constant (a Python loop or branch over it) is refused with a
ValueError, and so is a family whose graph depends on the input size in ways that torch.export can
only guard, not express in the file (:func:`dynamic_size_blockers`): Swin pads maps to window
multiples and clamps windows by the map size, ACmix's window tiles are laid out from the size.
Every dynamic export is checked at a second batch size and/or a second (odd) input size.

Every operator of the library is plain ATen, so the model is exported as it is: this module only
re-parameterises, traces, writes and verifies (``torch.onnx.export`` and ``torch.export`` on the
model directly give the same graphs).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import logging
import math
import operator
import re
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .._io import atomic_write
from .._numerics import max_relative_deviation
from .reparam import reparameterize_model

__all__ = [
    "DEFAULT_RTOL",
    "FORMATS",
    "ExportError",
    "ExportResult",
    "add_export_arguments",
    "dynamic_size_blockers",
    "export_command",
    "export_model",
]

FORMATS = ("onnx", "pt2")

# Second sizes for the dynamic checks: other batch sizes, and an input grown by odd amounts (so a
# graph traced at an even, window-aligned size meets padding and odd maps).
_CHECK_BATCHES = (1, 3)
_SIZE_GROWTH = (5, 3)


class ExportError(RuntimeError):
    """The exported file does not reproduce the PyTorch model (nothing was written)."""


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and how well the runtime reproduced the model.

    Attributes:
        path: the written file.
        format: ``"onnx"`` or ``"pt2"``.
        input_shape: the traced example input (N, C, H, W).
        dynamic_batch: the batch dimension is dynamic in the file.
        dynamic_size: H and W are dynamic in the file.
        max_deviation: largest ``max|runtime - model| / max|model|`` over the checks, against the
            given model (eval mode, before re-parameterisation).
        runtime_deviation: the same against the exported (re-parameterised) PyTorch module, i.e.
            the runtime's own error without the folding's rounding.
        checks: ``(input shape, deviation against the given model)`` per checked input.
        ranges: valid range ``(min, max)`` of each dynamic dimension (``max`` None = unbounded),
            as torch.export derived it.
        seconds: wall time of the whole export.
        dtype: weights and input dtype of the file.
    """

    path: Path
    format: str
    input_shape: tuple[int, ...]
    dynamic_batch: bool
    dynamic_size: bool
    max_deviation: float
    runtime_deviation: float
    checks: list[tuple[tuple[int, ...], float]] = field(default_factory=list)
    ranges: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    seconds: float = 0.0
    dtype: str = "float32"

    def summary(self) -> str:
        """One line for a log or the command line."""
        dims = [n for n, on in (("batch", self.dynamic_batch), ("size", self.dynamic_size)) if on]
        shape = "x".join(map(str, self.input_shape))
        what = f"dynamic {' and '.join(dims)}" if dims else "static shape"
        runtime = "onnxruntime" if self.format == "onnx" else "torch.export.load"
        return (
            f"wrote {self.path} ({self.format}, {self.dtype}, input {shape}, {what}): {runtime} "
            f"reproduces the float32 model to {self.max_deviation:.1e} of the output scale over "
            f"{len(self.checks)} "
            f"input(s) in {self.seconds:.1f} s"
        )


# --------------------------------------------------------------------------------------------------
# Exporter workarounds (ONNX only): lowerings of ATen ops the ONNX exporter mistranslates
# --------------------------------------------------------------------------------------------------


def _onnx_floordiv(a, b):
    """Floor division of (symbolic) sizes for ONNX, right for negative numerators too.

    onnxscript translates ``operator.floordiv`` as ONNX ``Div``, which truncates (documented as
    "only for positive inputs"), so ``-(-h // s)`` (ceil division) came out as ``h // s`` and
    X-volution's dynamic-size graph failed at odd sizes.
    """
    from onnxscript import opset18 as op

    quotient = op.Div(a, b)
    remainder = op.Sub(a, op.Mul(quotient, b))
    return op.Where(op.Less(op.Mul(remainder, b), 0), op.Sub(quotient, 1), quotient)


# --------------------------------------------------------------------------------------------------
# Which models can have a dynamic input size
# --------------------------------------------------------------------------------------------------


def dynamic_size_blockers(model: nn.Module) -> list[str]:
    """Reasons why ``model``'s graph cannot have a dynamic input size (empty list: it can).

    Each operator declares its own reason as the class attribute ``fixed_input_size_reason``,
    because torch.export would otherwise guard these dependencies at run time
    (``ExportedProgram.module()``) but an ONNX file would silently compute wrong results at other
    sizes, and tracing them symbolically takes minutes.
    """
    reasons: list[str] = []
    for module in model.modules():
        reason = getattr(type(module), "fixed_input_size_reason", None)
        if reason and reason not in reasons:
            reasons.append(reason)
    return reasons


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------


DEFAULT_RTOL: dict[torch.dtype, float] = {
    torch.float32: 1e-4,
    torch.float16: 1e-2,
    torch.bfloat16: 5e-2,
}
"""Default accepted deviation (relative to the output scale) of an exported file, per dtype."""


def export_model(
    model: nn.Module,
    path: str | Path,
    format: str = "onnx",
    img_size: int | Sequence[int] | None = None,
    dynamic_batch: bool = False,
    dynamic_size: bool = False,
    deploy: bool = True,
    *,
    batch_size: int = 1,
    rtol: float | None = None,
    opset: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> ExportResult:
    """Export ``model`` (re-parameterised by default) and verify the file in its runtime.

    The file is written to a temporary name, loaded back (onnxruntime, CPU provider, for
    ``"onnx"``; ``torch.export.load`` for ``"pt2"``), run on the example input and, when dynamic,
    on batch sizes 1 and 3 and on a second input size, and compared with ``model`` in eval mode;
    only then is it renamed to ``path``. ``model`` itself is not modified.

    Args:
        model: the model (any ``nn.Module`` taking one NCHW image batch).
        path: output file (``.onnx`` / ``.pt2`` by convention).
        format: ``"onnx"`` or ``"pt2"``.
        img_size: H, W of the traced input (an int for square inputs); default: the model's
            ``pretrained_cfg["input_size"]``, else 224.
        dynamic_batch: make the batch dimension dynamic.
        dynamic_size: make H and W dynamic (refused for models listed by
            :func:`dynamic_size_blockers`).
        deploy: export the :func:`~convattn.deploy.reparameterize_model` form.
        batch_size: batch of the traced input when the batch is static.
        rtol: largest accepted deviation, relative to the output scale ``max|output|``; default
            ``DEFAULT_RTOL[dtype]`` (1e-4 in float32, 1e-2 in float16, 5e-2 in bfloat16: a half
            type keeps 11 or 8 significant bits, and the rounding grows through a network).
        opset: ONNX opset (default: the exporter's).
        dtype: weights and input dtype of the file: float32, float16, or bfloat16 (``"pt2"``
            only: onnxruntime's CPU provider has no bfloat16 convolution). The deviation is
            measured against ``model`` in float32.

    Returns:
        :class:`ExportResult` with the deviations measured in the runtime.

    Raises:
        ValueError: invalid arguments, or a dynamic dimension the model cannot support.
        ExportError: tracing failed or the runtime does not reproduce the model within ``rtol``.
    """
    start = time.perf_counter()
    if format not in FORMATS:
        raise ValueError(f"export_model: 'format' must be one of {FORMATS}, got {format!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"export_model: 'batch_size' must be a positive int, got {batch_size!r}")
    if dtype not in DEFAULT_RTOL:
        names = ", ".join(str(d).removeprefix("torch.") for d in DEFAULT_RTOL)
        raise ValueError(f"export_model: 'dtype' must be one of {names}, got {dtype!r}")
    if format == "onnx" and dtype == torch.bfloat16:
        raise ValueError(
            "export_model: onnxruntime's CPU provider has no bfloat16 convolution, so a bfloat16 "
            "ONNX file cannot be verified; export bfloat16 as format='pt2', or float16 as ONNX"
        )
    rtol = DEFAULT_RTOL[dtype] if rtol is None else rtol
    if not rtol > 0:
        raise ValueError(f"export_model: 'rtol' must be positive, got {rtol!r}")
    height, width = _resolve_img_size(model, img_size)
    name = _model_name(model)
    if dynamic_size and (blockers := dynamic_size_blockers(model)):
        raise ValueError(
            f"export_model: {name} cannot be exported with a dynamic input size: "
            f"{'; '.join(blockers)}. Export it with a static img_size (one file per size)."
        )

    exported = reparameterize_model(model) if deploy else copy.deepcopy(model)
    exported.eval().to(dtype)
    batch = 2 if dynamic_batch else batch_size  # batch 1 would be specialised (0/1 rule)
    in_chans = int(getattr(model, "in_chans", 3))
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(batch, in_chans, height, width, generator=generator).to(dtype)

    program = _trace(exported, example, dynamic_batch, dynamic_size, name, format)
    ranges = _dynamic_ranges(program, dynamic_batch, dynamic_size, name)

    inputs = [example]
    if dynamic_batch:
        inputs += [example[:1], torch.randn(3, *example.shape[1:], generator=generator).to(dtype)]
    if dynamic_size:
        min_h, min_w = ranges["height"][0], ranges["width"][0]
        size = (max(height + _SIZE_GROWTH[0], min_h), max(width + _SIZE_GROWTH[1], min_w))
        extra = torch.randn(example.shape[0], in_chans, *size, generator=generator)
        inputs.append(extra.to(dtype))
    with _eval_mode(model), torch.no_grad():
        # The reference is the given model in float32, on the same (rounded) inputs.
        reference = model if dtype == torch.float32 else copy.deepcopy(model).float()
        expected = [_as_list(reference(x.float())) for x in inputs]
        eager = [_as_list(exported(x)) for x in inputs]

    report: dict = {}

    def write_and_verify(tmp: Path) -> None:
        if format == "onnx":
            tmp.write_bytes(_onnx_bytes(program, example, opset))
            run = _onnxruntime_runner(tmp)
        else:
            buffer = io.BytesIO()
            torch.export.save(program, buffer)
            tmp.write_bytes(buffer.getvalue())
            run = _pt2_runner(tmp)
        report.update(_verify(run, inputs, expected, eager, rtol, dynamic_size, name))

    atomic_write(path, write_and_verify)
    return ExportResult(
        path=Path(path),
        format=format,
        input_shape=tuple(example.shape),
        dynamic_batch=dynamic_batch,
        dynamic_size=dynamic_size,
        max_deviation=report["max_deviation"],
        runtime_deviation=report["runtime_deviation"],
        checks=report["checks"],
        ranges=ranges,
        seconds=time.perf_counter() - start,
        dtype=str(dtype).removeprefix("torch."),
    )


def _resolve_img_size(model: nn.Module, img_size: int | Sequence[int] | None) -> tuple[int, int]:
    if img_size is None:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        img_size = tuple(cfg.get("input_size", (3, 224, 224)))[-2:]
    if isinstance(img_size, int) and not isinstance(img_size, bool):
        img_size = (img_size, img_size)
    size = tuple(img_size)  # type: ignore[arg-type]
    if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in size):
        raise ValueError(f"export_model: 'img_size' must be an int or (H, W), got {img_size!r}")
    if min(size) < 1:
        raise ValueError(f"export_model: 'img_size' must be positive, got {img_size!r}")
    return size  # type: ignore[return-value]


def _model_name(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(model).__name__


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the duration, then every module's own mode back."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporters' chatter that says nothing about this model."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping ..."
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        registration.setLevel(level)


def _trace(
    model: nn.Module,
    example: torch.Tensor,
    dynamic_batch: bool,
    dynamic_size: bool,
    name: str,
    format: str,
) -> torch.export.ExportedProgram:
    dims = ([0] if dynamic_batch else []) + ([2, 3] if dynamic_size else [])
    dynamic_shapes = ({d: torch.export.Dim.AUTO for d in dims},) if dims else None
    try:
        with torch.no_grad(), _quiet_exporter():
            program = torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes)
    except Exception as err:
        first = _first_line(err)
        if dims:
            raise ValueError(
                f"export_model: torch.export could not trace {name} with dynamic "
                f"{_dim_names(dynamic_batch, dynamic_size)}: {first}"
            ) from err
        raise ExportError(f"export_model: torch.export could not trace {name}: {first}") from err
    return program


def _first_line(err: BaseException) -> str:
    """The first line of an exception message, without terminal colour codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _dim_names(dynamic_batch: bool, dynamic_size: bool) -> str:
    names = (["batch"] if dynamic_batch else []) + (["size"] if dynamic_size else [])
    return " and ".join(names)


def _dynamic_ranges(
    program: torch.export.ExportedProgram, dynamic_batch: bool, dynamic_size: bool, name: str
) -> dict[str, tuple[int, int | None]]:
    """Check that the requested dimensions stayed symbolic and return their valid ranges."""
    user_input = program.graph_signature.user_inputs[0]
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == user_input)
    shape = node.meta["val"].shape
    wanted = {"batch": 0} if dynamic_batch else {}
    if dynamic_size:
        wanted |= {"height": 2, "width": 3}
    ranges: dict[str, tuple[int, int | None]] = {}
    for dim_name, axis in wanted.items():
        size = shape[axis]
        if not isinstance(size, torch.SymInt) or size.node.expr.is_number:
            raise ValueError(
                f"export_model: {name} cannot be exported with a dynamic {dim_name}: tracing "
                f"specialised it to {int(size)} (the forward pass branches or loops over it); "
                f"export it with a static {dim_name}"
            )
        bounds = program.range_constraints.get(size.node.expr)
        low = _finite(bounds.lower) if bounds is not None else None
        high = _finite(bounds.upper) if bounds is not None else None
        ranges[dim_name] = (1 if low is None else low, high)
    return ranges


def _finite(bound) -> int | None:
    """An int range bound, or None for torch's symbolic integer infinity (``int_oo``)."""
    try:
        value = int(bound)
    except (TypeError, ValueError, AttributeError, OverflowError):
        return None
    return value if abs(value) < 2**62 else None


def _onnx_bytes(
    program: torch.export.ExportedProgram, example: torch.Tensor, opset: int | None
) -> bytes:
    try:
        with _quiet_exporter():
            onnx_program = torch.onnx.export(
                program,
                (example,),
                dynamo=True,
                input_names=["input"],
                opset_version=opset,
                custom_translation_table={operator.floordiv: _onnx_floordiv},
                external_data=False,
                verbose=False,
            )
    except Exception as err:
        first = _first_line(err)
        raise ExportError(f"export_model: ONNX conversion failed: {first}") from err
    return onnx_program.model_proto.SerializeToString()


def _onnxruntime_runner(path: Path):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> list[torch.Tensor]:
        return [torch.from_numpy(out) for out in session.run(None, {input_name: x.numpy()})]

    return run


def _pt2_runner(path: Path):
    module = torch.export.load(io.BytesIO(path.read_bytes())).module()

    def run(x: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            return _as_list(module(x))

    return run


def _as_list(out) -> list[torch.Tensor]:
    return [out] if isinstance(out, torch.Tensor) else [t for t in out]


def _deviation(actual: Sequence[torch.Tensor], expected: Sequence[torch.Tensor]) -> float:
    """max |actual - expected| / max |expected| over all outputs (inf if shapes differ)."""
    if len(actual) != len(expected):
        return math.inf
    worst = 0.0
    for a, e in zip(actual, expected):
        if a.shape != e.shape:
            return math.inf
        worst = max(worst, max_relative_deviation(a, e))
    return worst if math.isfinite(worst) else math.inf


def _verify(run, inputs, expected, eager, rtol, dynamic_size, name) -> dict:
    checks, runtime_dev = [], 0.0
    for i, (x, want, own) in enumerate(zip(inputs, expected, eager)):
        try:
            got = run(x)
        except Exception as err:  # the runtime rejects the shape: the graph is specialised
            got, error = None, err
        dev = math.inf if got is None else _deviation(got, want)
        checks.append((tuple(x.shape), dev))
        if dev <= rtol:
            runtime_dev = max(runtime_dev, _deviation(got, own))
            continue
        detail = f"deviation {dev:.2e} > rtol {rtol:.0e}" if got is not None else f"{error}"
        shape = "x".join(map(str, x.shape))
        if dynamic_size and i == len(inputs) - 1:
            raise ValueError(
                f"export_model: the exported {name} does not reproduce the model at a second "
                f"input size ({shape}: {detail}); it cannot have a dynamic input size, export "
                "it with a static img_size"
            )
        raise ExportError(
            f"export_model: the exported {name} does not reproduce the model on input {shape}: "
            f"{detail}"
        )
    return {
        "checks": checks,
        "max_deviation": max(dev for _, dev in checks),
        "runtime_deviation": runtime_dev,
    }


# --------------------------------------------------------------------------------------------------
# Command line: ``convattn export``
# --------------------------------------------------------------------------------------------------


def add_export_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``convattn export`` (see :func:`export_command`)."""
    parser.add_argument("--model", metavar="NAME", help="registered model (default: checkpoint's)")
    parser.add_argument(
        "--checkpoint", metavar="PATH", help="weights: ours (.safetensors) or an official release"
    )
    parser.add_argument("--out", required=True, metavar="PATH", help="output .onnx or .pt2 file")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        help="file format (default: from --out's suffix, which must then be .onnx or .pt2)",
    )
    parser.add_argument(
        "--img-size", type=int, nargs="+", metavar="PX", help="H [W] (default: the model's)"
    )
    parser.add_argument("--batch-size", type=int, default=1, metavar="N", help="static batch")
    parser.add_argument("--dynamic-batch", action="store_true", help="dynamic batch dimension")
    parser.add_argument(
        "--dynamic-size", action="store_true", help="dynamic H and W (not Swin / ACmix)"
    )
    parser.add_argument(
        "--no-deploy",
        dest="deploy",
        action="store_false",
        help="export the training form (default: re-parameterised)",
    )
    parser.add_argument("--num-classes", type=int, metavar="N", help="classifier outputs")
    parser.add_argument("--in-chans", type=int, metavar="N", help="input channels")
    parser.add_argument(
        "--dtype",
        choices=["float32", "float16", "bfloat16"],
        default="float32",
        help="weights and input dtype (bfloat16: pt2 only)",
    )
    parser.add_argument(
        "--rtol",
        type=float,
        default=None,
        help="accepted deviation / output scale (default 1e-4; float16 1e-2; bfloat16 5e-2)",
    )
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    return parser


_SUFFIXES = {".onnx": "onnx", ".pt2": "pt2"}


def _output_format(out: str, fmt: str | None) -> str:
    """The format of ``--out``: its suffix (.onnx, .pt2) must agree with ``--format`` if given."""
    suffix = Path(out).suffix.lower()
    implied = _SUFFIXES.get(suffix)
    if fmt is None:
        if implied is None:
            raise ValueError(
                f"--out {out}: name an .onnx or a .pt2 file, or give --format onnx|pt2 "
                "to write that format under this name"
            )
        return implied
    if implied is not None and implied != fmt:
        raise ValueError(f"--out {out} has the suffix of a {implied} file but --format is {fmt}")
    return fmt


def export_command(args: argparse.Namespace) -> int:
    """``convattn export``: build (and load) a model, export it, print the verified result."""
    from ..models import create_model, is_model
    from ..models._serialization import checkpoint_info, constructor_options

    fmt = _output_format(str(args.out), args.format)
    name, config = args.model, {}
    checkpoint = args.checkpoint
    if checkpoint:
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"--checkpoint: no such file: {checkpoint}")
        info = checkpoint_info(checkpoint)
        name = name or info.get("model")
        config = constructor_options(info)
    if not name:
        raise ValueError("give --model (the checkpoint does not name its model)")
    if not is_model(name):
        raise ValueError(f"unknown model '{name}'; run 'convattn models' to list the names")
    for key in ("num_classes", "in_chans"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    model = create_model(name, checkpoint_path=checkpoint, **config)
    img_size = None
    if args.img_size:
        if len(args.img_size) > 2:
            raise ValueError(f"--img-size takes H or H W, got {args.img_size}")
        img_size = tuple(args.img_size) if len(args.img_size) == 2 else args.img_size[0]
    result = export_model(
        model,
        args.out,
        format=fmt,
        img_size=img_size,
        dynamic_batch=args.dynamic_batch,
        dynamic_size=args.dynamic_size,
        deploy=args.deploy,
        batch_size=args.batch_size,
        rtol=args.rtol,
        opset=args.opset,
        dtype=getattr(torch, args.dtype),
    )
    print(result.summary())
    if result.ranges:
        valid = ", ".join(
            f"{k} {lo}..{'any' if hi is None else hi}" for k, (lo, hi) in result.ranges.items()
        )
        print(f"dynamic dimensions valid for: {valid}")
    return 0
