"""Operator benchmark: X-volution, ACmix, GLMix, global attention, involution vs a 3x3 conv.

A thin front end of :mod:`convattn.bench.operators` (what is measured and how: its docstring and
``benchmarks/README.md``) whose default output folder is ``benchmarks/results``. It adds the
acceptance targets the report judges. Outputs: ``ops.json``, ``ops.md`` and ``ops_*.png``.

    python benchmarks/bench_ops.py              # several minutes
    python benchmarks/bench_ops.py --quick      # tiny shapes, one repeat (smoke test)
    python benchmarks/bench_ops.py --render benchmarks/results/ops.json   # re-render only
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from convattn.bench import operators as ops

RESULTS = Path(__file__).resolve().parent / "results"


def targets(
    stage: list[dict], scaling: dict, quick: bool, paired: list[dict] | None = None
) -> list[dict]:
    """The operator benchmark's acceptance targets, evaluated on the measured numbers."""
    c1, s1 = (64, 56) if not quick else ops.QUICK_STAGE_SHAPES[0]
    c3, s3 = (256, 14) if not quick else ops.QUICK_STAGE_SHAPES[-1]
    out = []

    acmix, acmix_ref = (
        ops.find_row(stage, "acmix", c1, s1),
        ops.find_row(stage, "acmix_ref", c1, s1),
    )
    where = f"{c1}ch@{s1}x{s1}"
    speed = ops.ratio(ops.median_ms(acmix_ref, "forward"), ops.median_ms(acmix, "forward"))
    out.append(
        ops.check(
            f"ACmix forward >= 4x faster than its literal unfold reference at {where}",
            None if speed is None else speed >= 4,
            f"reference/fast = {ops.fmt(speed, 2)}x",
        )
    )
    mem = ops.ratio(
        ops.memory_mib(acmix, "memory_forward_mib"), ops.memory_mib(acmix_ref, "memory_forward_mib")
    )
    out.append(
        ops.check(
            f"ACmix forward peak memory <= 1/3 of the reference's at {where}",
            None if mem is None else mem <= 1 / 3,
            f"fast/reference = {ops.fmt(mem, 3)} (forward); fwd+bwd: "
            f"{ops.fmt(ops.ratio(ops.memory_mib(acmix, 'memory_train_mib'), ops.memory_mib(acmix_ref, 'memory_train_mib')), 3)}",
        )
    )
    speed_fb = ops.ratio(
        ops.median_ms(acmix_ref, "forward_backward"), ops.median_ms(acmix, "forward_backward")
    )
    out.append(
        ops.check(
            f"ACmix forward+backward >= 2x faster than the reference at {where}",
            None if speed_fb is None else speed_fb >= 2,
            f"reference/fast = {ops.fmt(speed_fb, 2)}x",
        )
    )

    where = f"{c3}ch@{s3}x{s3}"
    train_form = ops.median_ms(ops.find_row(stage, "xvolution", c3, s3), "forward")
    deploy = ops.median_ms(ops.find_row(stage, "xvolution_deploy", c3, s3), "forward")
    conv = ops.median_ms(ops.find_row(stage, "conv3x3", c3, s3), "forward")
    pair = ops.find_pair(paired or [], "xvolution", "xvolution_deploy", c3, s3)
    if pair is not None:  # the interleaved measurement: the robust one for a close pair
        faster = pair["ratio_median"] < 1
        detail = (
            f"interleaved over {pair['rounds']} rounds: deploy/training = "
            f"{pair['ratio_median']:.3f} (quartiles {pair['ratio_q1']:.3f}-{pair['ratio_q3']:.3f}; "
            f"deploy faster in {pair['b_faster_rounds']}/{pair['rounds']} rounds), medians "
            f"{pair['b_forward']['median_ms']:.2f} vs {pair['a_forward']['median_ms']:.2f} ms"
        )
    else:
        faster = None if train_form is None or deploy is None else deploy < train_form
        detail = f"deploy {ops.fmt(deploy, 2)} ms vs training form {ops.fmt(train_form, 2)} ms"
    out.append(
        ops.check(
            f"X-volution deploy form faster than its training form (eval) at {where}",
            faster,
            detail,
        )
    )
    vs_conv = ops.ratio(deploy, conv)
    out.append(
        ops.check(
            f"X-volution deploy form within 2.5x of conv3x3 at {where}",
            None if vs_conv is None else vs_conv <= 2.5,
            f"deploy/conv3x3 = {ops.fmt(vs_conv, 2)}x ({ops.fmt(deploy, 2)} vs {ops.fmt(conv, 2)} ms)",
        )
    )

    exps = scaling.get("exponents", {})
    glmix_exp, gsa_exp = exps.get("glmix"), exps.get("global_attention")
    sizes = scaling.get("sizes", [])
    span = f"{sizes[0]}x{sizes[0]} to {sizes[-1]}x{sizes[-1]}" if sizes else ""
    out.append(
        ops.check(
            f"GLMix mixer time-vs-pixels exponent <= 1.15 ({span})",
            None if glmix_exp is None else glmix_exp <= 1.15,
            f"GLMix exponent = {ops.fmt(glmix_exp, 3)}",
        )
    )
    clearly = None if glmix_exp is None or gsa_exp is None else gsa_exp >= glmix_exp + 0.2
    out.append(
        ops.check(
            "global attention grows clearly faster than GLMix (exponent at least 0.2 higher)",
            clearly,
            f"global attention exponent = {ops.fmt(gsa_exp, 3)}, GLMix = {ops.fmt(glmix_exp, 3)}",
        )
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_ops.py", description=__doc__.split("\n\n")[0])
    args = ops.add_operator_arguments(parser).parse_args(argv)
    try:
        ops.run_operator_benchmark(args, targets, RESULTS)
    except ValueError as err:
        print(f"bench_ops.py: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
