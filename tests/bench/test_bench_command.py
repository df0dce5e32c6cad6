"""``convattn bench`` end to end (real worker processes on a nano model) and its argument errors."""

import argparse
import csv
import json
import sys
from pathlib import Path

import pytest
import torch

from convattn.bench import add_bench_arguments, bench_command, resolve_models
from convattn.bench.command import config_from_args, parse_int_list
from convattn.bench.report import CSV_COLUMNS
from convattn.bench.runner import plan_jobs, validate_config

ROOT = Path(__file__).resolve().parents[2]
OUTPUTS = {
    "results.json",
    "results.csv",
    "results.md",
    "latency_vs_resolution.png",
    "latency_vs_macs.png",
}


def _args(*argv: str) -> argparse.Namespace:
    return add_bench_arguments(argparse.ArgumentParser()).parse_args(list(argv))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """resnet_nano at 32 and 48 px, 2 repeats: 2 model workers + 2 matmul workers."""
    out = tmp_path_factory.mktemp("bench")
    args = _args(
        "--models", "resnet_nano", "--resolutions", "32,48", "--batch-size", "2",
        "--threads", "1", "--repeats", "2", "--warmup", "1", "--matmul-size", "128",
        "--no-progress", "--out", str(out),
    )  # fmt: skip
    status = bench_command(args)
    return status, out


def test_bench_command_writes_every_output(smoke_run):
    status, out = smoke_run
    assert status == 0
    assert {p.name for p in out.iterdir()} == OUTPUTS
    report = json.loads((out / "results.json").read_text())
    assert report["errors"] == []
    env = report["environment"]
    assert env["threads"] == 1
    assert {"torch", "cpu_model", "date", "git", "load_average_start", "load_average_end"} <= set(
        env
    )
    assert report["machine"]["peak"]["float32"] > 0

    rows = report["rows"]
    assert [(r["model"], r["img_size"], r["batch"]) for r in rows] == [
        ("resnet_nano", 32, 2),
        ("resnet_nano", 48, 2),
    ]
    for row in rows:
        assert row["threads"] == 1  # the worker applied the requested thread count
        assert row["timing"]["repeats"] == 2
        assert row["macs_per_image"] > 0 and row["step_macs"] == 2 * row["macs_per_image"]
        assert row["img_per_s"] == pytest.approx(2e3 / row["timing"]["median_ms"])
        assert row["fraction_of_peak"] > 0
        assert row["peak_memory_mib"] >= 0
    # MACs grow with the pixels (48^2 / 32^2 = 2.25, up to border effects of strided layers).
    assert 1.8 < rows[1]["macs_per_image"] / rows[0]["macs_per_image"] < 2.6
    assert len(report["scaling"]) == 1 and report["scaling"][0]["img_sizes"] == [32, 48]

    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == CSV_COLUMNS and len(table) == 2
    md = (out / "results.md").read_text()
    assert md.count("| `resnet_nano` | forward | ") == 3  # 2 result rows + 1 scaling row


def test_render_rewrites_outputs_from_json(smoke_run):
    _, out = smoke_run
    (out / "results.md").unlink()
    assert bench_command(_args("--render", str(out / "results.json"), "--no-plots")) == 0
    assert "resnet_nano" in (out / "results.md").read_text()


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--models", "no_such_model"], "no model matches 'no_such_model'"),
        (["--models", "resnet50", "zzz*"], "no model matches 'zzz\\*'"),
        ([], "give at least one model"),
        (["--models", "resnet_nano", "--resolutions", "0,32"], "--resolutions: .*positive"),
        (["--models", "resnet_nano", "--resolutions", "-3"], "--resolutions: .*positive"),
        (["--models", "resnet_nano", "--img-size", "abc"], "--img-size: .*'abc'"),
        (["--models", "resnet_nano", "--batch-size", "1,0"], "--batch-size: .*positive"),
        (["--models", "resnet_nano", "--warmup", "-1"], "--warmup"),
        (["--models", "resnet_nano", "--repeats", "0"], "--repeats"),
        (["--models", "resnet_nano", "--device", "tpu"], "--device"),
        (
            ["--models", "glnet_stl", "--img-size", "16"],
            "model 'glnet_stl' cannot run at 16x16: .*at least 32x32",
        ),
        (["--models", "vit_reference", "--img-size", "8"], "cannot run at 8x8"),
    ],
)
def test_bad_arguments_fail_before_measuring(argv, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        bench_command(_args(*argv, "--out", str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="--device cuda: CUDA is not available"):
        bench_command(_args("--models", "resnet_nano", "--device", "cuda"))


def test_script_prints_one_line_error(capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_models
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert bench_models.main(["--models", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bench_models.py: error: --models: no model matches 'nope'")
    assert "\n" not in err


def test_resolve_models_expands_patterns_in_order_without_duplicates():
    names = resolve_models(["swin_tiny", "acmix_swin_*", "swin_tiny", "vit_reference"])
    assert names[0] == "swin_tiny" and names[-1] == "vit_reference"
    assert "acmix_swin_tiny" in names and names.count("swin_tiny") == 1


def test_plan_jobs_covers_forms_modes_sizes_and_batches():
    args = _args(
        "--models", "resnet_nano", "--resolutions", "32,48", "--batch-size", "1,4",
        "--deploy", "both", "--train",
    )  # fmt: skip
    cfg = validate_config(config_from_args(args))
    jobs = plan_jobs(cfg)
    assert len(jobs) == 2 * 2 * 3
    kinds = {(j["mode"], j["deploy"]) for j in jobs}
    assert kinds == {("forward", False), ("forward", True), ("train", False)}
    assert cfg.threads == torch.get_num_threads()
    only_deploy = plan_jobs(
        validate_config(config_from_args(_args("--models", "resnet_nano", "--deploy")))
    )
    assert [(j["mode"], j["deploy"], j["img_size"]) for j in only_deploy] == [("forward", True, 32)]


def test_parse_int_list():
    assert parse_int_list("1,8", "--batch-size") == [1, 8]
    assert parse_int_list("224, 320", "--resolutions") == [224, 320]
    assert parse_int_list(None, "--img-size") is None
    with pytest.raises(ValueError, match="--batch-size: expected positive integers"):
        parse_int_list("1,x", "--batch-size")
