"""The main job, ``convattn demo``: convolution against its attention hybrids on real digits.

:func:`run_demo` trains the nano backbones (``resnet_nano`` as the convolution baseline,
``xvolution_resnet_nano``, ``acmix_resnet_nano``, ``glnet_nano``, ``acmix_swin_nano``) with one
shared recipe on scikit-learn's digits (about 1,440 train / 360 val real images, upsampled to
32x32), re-parameterises the X-volution model into its single-dynamic-convolution deploy form and
checks that it predicts the same, then writes ``runs/demo/report.md`` with a table (params, MACs,
top-1, CPU latency, deploy check) and PNG plots (validation accuracy per epoch; latency against
input size; the slot maps of the trained ``glnet_nano`` on a validation image, from
:mod:`convattn.viz`). ``--quick`` is a seconds-long smoke test of the same pipeline on tiny
synthetic data.

:func:`run_operator_demo` (``convattn demo --operators``) prints every operator's output shape,
parameters and MACs on a feature map and checks X-volution's re-parameterisation in isolation.
"""

from __future__ import annotations

import copy
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._numerics import max_relative_deviation
from .bench.flops import count_macs, count_params
from .bench.timing import time_steps

__all__ = [
    "DEMO_MODELS",
    "DEMO_RECIPE",
    "measure_latency",
    "operator_table",
    "run_demo",
    "run_operator_demo",
]

DEMO_MODELS = (
    "resnet_nano",
    "xvolution_resnet_nano",
    "acmix_resnet_nano",
    "glnet_nano",
    "acmix_swin_nano",
)
# The one recipe every model is trained with (TrainConfig fields). Six epochs of AdamW with label
# smoothing reach 96-99 % on all five models; batch augmentation is off because in so short a
# schedule random resized crops cost the attention models more accuracy than they buy (measured:
# acmix_swin_nano 91.6 % with the 'light' policy against 96.9 % without), and digits are not
# mirror-symmetric, so flips would be wrong anyway.
DEMO_RECIPE: dict[str, Any] = dict(
    data="digits",
    img_size=32,
    epochs=6,
    batch_size=64,
    opt="adamw",
    lr=2e-3,
    min_lr=1e-5,
    weight_decay=0.05,
    warmup_epochs=1.0,
    label_smoothing=0.1,
    aug="none",
    hflip=False,
    drop_path=0.0,
    workers=0,
    seed=0,
)
# --quick: the same pipeline in seconds (tiny synthetic set, one epoch, 16 px).
QUICK_RECIPE: dict[str, Any] = dict(
    DEMO_RECIPE, data="synthetic:shapes:32:16", img_size=16, epochs=1, batch_size=16
)
TARGET_TOP1 = 95.0
# The whole demo should take under 5 minutes on a quiet 2-core CPU (about 2.5 there). The last,
# optional model is skipped when the others have already used 60 % of that, e.g. on a loaded box.
TIME_BUDGET_S = 300.0
OPTIONAL_MODELS = ("acmix_swin_nano",)
LATENCY_SIZES = (32, 64, 96, 128)
XVOLUTION_MODEL = "xvolution_resnet_nano"
SLOT_MODEL = "glnet_nano"  # the report shows its slot maps on one validation image


# --- helpers -----------------------------------------------------------------------------------
@torch.no_grad()
def measure_latency(model: nn.Module, img_size: int, repeats: int = 15, warmup: int = 3) -> float:
    """Median wall time (ms) of one batch-1 forward pass on the CPU, eval mode, float32."""
    model.eval()
    x = torch.randn(1, 3, img_size, img_size)
    return float(time_steps(lambda: model(x), warmup, repeats)["median_ms"])


@torch.no_grad()
def _predict(model: nn.Module, loader, normalise: nn.Module) -> torch.Tensor:
    model.eval()
    return torch.cat([model(normalise(images)) for images, _ in loader])


def _deploy_check(model: nn.Module, loader, normalise: nn.Module) -> dict[str, Any]:
    """Re-parameterise a copy of ``model`` and compare its logits on the whole val set.

    The check also requires the copy to have really changed form (modules flagged ``deploy`` and
    a different state-dict layout), so it cannot pass by comparing a model with itself.
    """
    from .deploy import reparameterize_model

    def in_deploy_form(module: nn.Module) -> int:
        return sum(getattr(m, "deploy", False) is True for m in module.modules())

    model.eval()
    deployed = reparameterize_model(model).eval()  # a re-parameterised deep copy
    n_deployed = in_deploy_form(deployed) - in_deploy_form(model)
    changed_form = deployed.state_dict().keys() != model.state_dict().keys()
    train_logits = _predict(model, loader, normalise)
    deploy_logits = _predict(deployed, loader, normalise)
    rel_dev = max_relative_deviation(deploy_logits, train_logits)
    agree = float((deploy_logits.argmax(1) == train_logits.argmax(1)).float().mean() * 100)
    return {
        "deployed": deployed,
        "modules": n_deployed,
        "max_rel_dev": rel_dev,
        "agreement": agree,
        "passed": n_deployed > 0 and changed_form and agree == 100.0 and rel_dev < 1e-4,
    }


def _slot_figure(model: nn.Module, bundle, out: Path, data: str) -> dict[str, Any]:
    """GLMix slot maps of the trained model on the first validation image (one PNG in ``out``)."""
    from .viz import visualize_slots

    image, label = bundle.val[0]
    result = visualize_slots(
        model,
        image,
        mean=bundle.mean,
        std=bundle.std,
        out=out,
        weights_label=f"trained here ({SLOT_MODEL}/last.safetensors)",
        image_label=f"{data} val image 0 (class {bundle.class_names[int(label)]})",
    )
    return {
        "file": result.paths[0].name,
        "block": result.block,
        "slots": result.weights.shape[1],
        "map": tuple(result.weights.shape[-2:]),
        "representatives": result.representatives[0].tolist(),
    }


def _fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


# --- the main job ------------------------------------------------------------------------------
def run_demo(
    out: str | Path = "runs/demo", quick: bool = False, models: Sequence[str] | None = None
) -> int:
    """Train the nano models on digits, check X-volution's deploy form, write the report.

    Args:
        out: report folder (one run folder per model inside).
        quick: tiny synthetic data, one epoch, 16 px: a smoke test of the whole pipeline.
        models: the models to train (default :data:`DEMO_MODELS`; then ``acmix_swin_nano`` is
            skipped when the others took over 60 % of :data:`TIME_BUDGET_S`).

    Returns:
        0 when every check passed (deploy form equivalent; in the full mode every model at or
        above 95 % validation top-1), else 1.
    """
    from .data import BatchAugment, build_datasets, create_loader
    from .models import create_model, is_model
    from .train import TrainConfig, plot_accuracy_comparison, plot_latency
    from .train import train as train_model

    names = list(models or DEMO_MODELS)
    unknown = [n for n in names if not is_model(n)]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; run 'convattn models' to list the names")
    recipe = dict(QUICK_RECIPE if quick else DEMO_RECIPE)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    load_at_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"convattn demo{' --quick' if quick else ''}: {len(names)} models on {recipe['data']}, "
        f"{recipe['epochs']} epochs at {recipe['img_size']}px, torch threads "
        f"{torch.get_num_threads()}; writing {out}/report.md",
        flush=True,
    )

    bundle = build_datasets(recipe["data"], recipe["img_size"], seed=recipe["seed"])
    normalise = BatchAugment(recipe["img_size"], bundle.mean, bundle.std, train=False)
    val_loader = create_loader(bundle.val, 256, train=False)
    size = recipe["img_size"]
    rows: list[dict[str, Any]] = []
    histories: dict[str, list[dict]] = {}
    latency_curves: dict[str, dict[int, float]] = {}
    deploy: dict[str, Any] | None = None
    slots: dict[str, Any] | None = None
    skipped: list[str] = []
    for name in names:
        elapsed = time.perf_counter() - t_start
        if models is None and name in OPTIONAL_MODELS and elapsed > 0.6 * TIME_BUDGET_S:
            print(f"\n== {name}: skipped, {elapsed:.0f} s already spent ==", flush=True)
            skipped.append(name)
            continue
        print(f"\n== {name} ==", flush=True)
        cfg = TrainConfig(model=name, out=str(out / name), overwrite=True, plots=True, **recipe)
        result = train_model(cfg)
        histories[name] = result["history"]
        model = create_model(
            name,
            num_classes=bundle.num_classes,
            in_chans=bundle.in_chans,
            checkpoint_path=out / name / "last.safetensors",
        ).eval()
        sizes = (size,) if quick else LATENCY_SIZES
        latency_curves[name] = {
            s: measure_latency(model, s, repeats=3 if quick else 15) for s in sizes
        }
        row = {
            "model": name,
            "params": count_params(model),
            "macs": count_macs(model, (1, bundle.in_chans, size, size)),
            "top1": result["top1"],
            "best_top1": result["best_top1"],
            "train_time_s": result["train_time_s"],
            "latency_ms": latency_curves[name][size],
            "deploy": "n/a",
        }
        if name == SLOT_MODEL:
            slots = _slot_figure(model, bundle, out, recipe["data"])
        if name == XVOLUTION_MODEL:
            deploy = _deploy_check(model, val_loader, normalise)
            row["deploy"] = "pass" if deploy["passed"] else "FAIL"
            deployed = deploy.pop("deployed")
            dep_name = f"{name} (deploy)"
            latency_curves[dep_name] = {
                s: measure_latency(deployed, s, repeats=3 if quick else 15) for s in sizes
            }
            deploy_row = dict(
                row,
                model=dep_name,
                params=count_params(deployed),
                macs=count_macs(deployed, (1, bundle.in_chans, size, size)),
                latency_ms=latency_curves[dep_name][size],
                train_time_s=None,
                deploy=row["deploy"],
            )
            rows.append(row)
            rows.append(deploy_row)
            print(
                f"deploy check: {deploy['modules']} modules in deploy form, predictions agree on "
                f"{deploy['agreement']:.1f}% of val, max relative logit deviation "
                f"{deploy['max_rel_dev']:.1e} [{row['deploy']}]",
                flush=True,
            )
        else:
            rows.append(row)

    plot_accuracy_comparison(histories, out / "accuracy.png")
    plot_latency(latency_curves, out / "latency.png")
    elapsed = time.perf_counter() - t_start
    failures = []
    if deploy is not None and not deploy["passed"]:
        failures.append(f"{XVOLUTION_MODEL}: deploy form differs")
    if not quick:
        failures += [
            f"{r['model']}: top-1 {r['top1']:.2f}% < {TARGET_TOP1}%"
            for r in rows
            if r["top1"] is None or r["top1"] < TARGET_TOP1
        ]
    machine = (
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"{torch.get_num_threads()} torch threads, 1-minute load average {load_at_start:.1f} at "
        f"the start, torch {torch.__version__}"
    )
    if skipped:
        machine += (
            f". Skipped to stay within the {TIME_BUDGET_S:.0f} s budget: {', '.join(skipped)} "
            "(the machine was busy; run it alone with --models)"
        )
    report = _report(
        recipe,
        rows,
        deploy,
        elapsed,
        failures,
        quick,
        (len(bundle.train), len(bundle.val)),
        machine,
        slots,
    )
    (out / "report.md").write_text(report)
    print("\n" + _table(rows), flush=True)
    print(f"\nwrote {out / 'report.md'} ({elapsed:.0f} s)", flush=True)
    for failure in failures:
        print(f"check failed: {failure}", flush=True)
    return 1 if failures else 0


def _table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| model | params | MMACs | val top-1 (%) | best top-1 (%) | train time (s) "
        "| CPU latency (ms) | deploy check |",
        "|---|---:|---:|---:|---:|---:|---:|:-:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params']:,} | {r['macs'] / 1e6:.1f} | {_fmt(r['top1'])} "
            f"| {_fmt(r['best_top1'])} | {_fmt(r['train_time_s'], '.0f')} "
            f"| {_fmt(r['latency_ms'])} | {r['deploy']} |"
        )
    return "\n".join(lines)


def _report(
    recipe: dict[str, Any],
    rows: Sequence[dict[str, Any]],
    deploy: dict[str, Any] | None,
    elapsed: float,
    failures: Sequence[str],
    quick: bool,
    sizes: tuple[int, int],
    machine: str,
    slots: dict[str, Any] | None = None,
) -> str:
    n_train, n_val = sizes
    recipe_text = ", ".join(f"{k}={v}" for k, v in recipe.items())
    size = recipe["img_size"]
    if recipe["data"] == "digits":
        data_text = (
            f"`digits`: scikit-learn's 1,797 real 8x8 handwritten digits, stratified split of "
            f"{n_train:,} train / {n_val:,} val images, upsampled to {size}x{size}."
        )
    else:
        data_text = f"`{recipe['data']}` ({n_train} train / {n_val} val images, {size}x{size})."
    text = [
        "# convattn demo: convolution vs. its attention hybrids",
        "",
    ]
    if quick:
        text += ["**Quick smoke-test mode** (tiny synthetic data; accuracies mean nothing).", ""]
    text += [
        f"Data: {data_text}",
        "",
        f"One shared recipe for every model: `{recipe_text}` ({recipe['opt']}, linear warm-up then "
        "cosine per update, label smoothing, no weight decay on norms, biases and scalar rates; "
        f"batch augmentation policy '{recipe['aug']}').",
        "",
        _table(rows),
        "",
        f"Params and MACs at {size}x{size} (MACs counted with FlopCounterMode, attention products "
        "included). Latency: median of batch-1 forward passes in float32. Val top-1 is the last "
        f"epoch's; best is over epochs. Machine: {machine}.",
        "",
    ]
    if deploy is not None:
        text += [
            "## X-volution re-parameterisation",
            "",
            f"`{XVOLUTION_MODEL}` after training, re-parameterised with "
            f"`convattn.deploy.reparameterize_model`: {deploy['modules']} modules in deploy form "
            "(X-volution's conv and PSSA branches with their BatchNorms folded into one "
            "centre-modulated dynamic convolution). On the whole validation set the predictions "
            f"agree on {deploy['agreement']:.1f}% of the images and the largest logit deviation is "
            f"{deploy['max_rel_dev']:.1e} of the largest logit: "
            f"**{'pass' if deploy['passed'] else 'FAIL'}**.",
            "",
        ]
    if slots is not None:
        h, w = slots["map"]
        text += [
            "## What GLMix learned",
            "",
            f"![GLMix slot maps of {SLOT_MODEL}]({slots['file']})",
            "",
            f"Slot assignments of the trained `{SLOT_MODEL}` in block `{slots['block']}` "
            f"({h}x{w} map) on the first validation image: every pixel's softmax over the "
            f"{slots['slots']} slots (dispatch weights, one map per slot), the arg-max slot of "
            f"every pixel, and the representative slots {slots['representatives']} (k-medoids over "
            "the maps) seen through their maps. Other blocks and images: `convattn viz --model "
            f"{SLOT_MODEL} --checkpoint {SLOT_MODEL}/last.safetensors --image FILE --block SPEC`.",
            "",
        ]
    text += [
        "## Plots",
        "",
        "![validation accuracy per epoch](accuracy.png)",
        "",
        "![CPU latency against input size](latency.png)",
        "",
        "Per-model run folders (config.yaml, metrics.jsonl, curves.png, weights) sit next to this",
        "report; repeat one with `convattn train --config <model>/config.yaml --overwrite`.",
        "",
        f"Total demo time: {elapsed:.0f} s (training times and latencies depend on other load).",
    ]
    if failures:
        text += ["", "## Failed checks", ""] + [f"- {f}" for f in failures]
    return "\n".join(text) + "\n"


# --- operator table (convattn demo --operators) ------------------------------------------------
def operator_table(channels: int) -> dict[str, Callable[[int], nn.Module]]:
    """Name -> factory(stride) for each operator at the given width."""
    from .layers.acmix import ACmix
    from .layers.attention import GlobalSelfAttention2d
    from .layers.glmix import GLMix
    from .layers.involution import Involution2d
    from .layers.xvolution import XVolution

    c = channels
    return {
        "conv3x3": lambda s: nn.Conv2d(c, c, 3, s, 1, bias=False),
        "xvolution": lambda s: XVolution(c, c, s),
        "xvolution_sa": lambda s: XVolution(c, c, s, attention="sa", sa_head_dim=min(64, c)),
        "acmix": lambda s: ACmix(c, c, s),
        "glmix": lambda s: GLMix(c, c, s),
        "global_attention": lambda s: GlobalSelfAttention2d(c, c, s),
        "involution": lambda s: Involution2d(c, c, s),
    }


@torch.no_grad()
def _randomize_bn(module: nn.Module, gen: torch.Generator) -> None:
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.copy_(torch.randn(m.num_features, generator=gen) * 0.3 + 1)
            m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.3)


@torch.no_grad()
def run_operator_demo(size: int = 28, channels: int = 64, batch: int = 2) -> int:
    """Print the operator table and check X-volution's re-parameterisation; 0 on success."""
    from .layers.xvolution import XVolution

    torch.manual_seed(0)
    x = torch.randn(batch, channels, size, size)
    print(f"convattn operators on a {batch}x{channels}x{size}x{size} input (eval mode, float32)\n")
    header = (
        f"{'operator':<18}{'stride':>7}{'output shape':>22}{'params':>10}{'MMACs':>10}{'ms':>9}"
    )
    print(header)
    print("-" * len(header))
    for name, factory in operator_table(channels).items():
        for stride in (1, 2):
            op = factory(stride).eval()
            t0 = time.perf_counter()
            y = op(x)
            ms = (time.perf_counter() - t0) * 1e3
            macs = count_macs(op, inputs=x) / batch / 1e6
            print(
                f"{name:<18}{stride:>7}{tuple(y.shape)!s:>22}{count_params(op):>10,}"
                f"{macs:>10.2f}{ms:>9.1f}"
            )

    print("\nX-volution re-parameterisation (random BN statistics, eval mode):")
    gen = torch.Generator().manual_seed(0)
    ok = True
    for stride in (1, 2):
        train_form = XVolution(channels, channels, stride).eval()
        _randomize_bn(train_form, gen)
        deploy_form = copy.deepcopy(train_form)
        deploy_form.reparameterize()
        x_odd = torch.randn(batch, channels, size + 1, size - 1)
        expected, actual = train_form(x_odd), deploy_form(x_odd)
        err = max_relative_deviation(actual, expected)
        passed = err < 1e-5
        ok &= passed
        print(
            f"  stride {stride}: {count_params(train_form):,} -> "
            f"{count_params(deploy_form):,} params, "
            f"max relative deviation {err:.2e} [{'OK' if passed else 'FAILED'}]"
        )
    return 0 if ok else 1
