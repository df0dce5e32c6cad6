"""Distributed data parallel: 2 CPU processes (torchrun, Gloo) equal one process at the same
global batch."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from convattn.train import TrainConfig, init_distributed, train
from convattn.train.metrics import MetricsFile

# acmix_swin_nano has LayerNorms only (no BatchNorm statistics that would see half batches); no
# drop-path, augmentation or label noise, so the two runs see identical computations. 32 training
# images and a global batch of 32 make each update a full-batch step, independent of data order.
# SGD, whose update is linear in the gradient: Adam's first steps are ~lr * sign(gradient), which
# turns float rounding of near-zero gradients into lr-sized differences.
_OPTIONS = dict(
    model="acmix_swin_nano",
    data="synthetic:shapes:32:18",
    img_size=16,
    epochs=2,
    drop_path=0.0,
    aug="none",
    label_smoothing=0.0,
    warmup_epochs=0.0,
    opt="sgd",
    lr=0.05,
    workers=0,
    quiet=True,
    plots=False,
    deterministic=True,
)


def _flags(options: dict) -> list[str]:
    flags = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else f"--no-{key.replace('_', '-')}")
        else:
            flags += [flag, str(value)]
    return flags


def test_single_process_context_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.distributed, ctx.is_main) == (0, 1, False, True)


def _recorded_cleanup(monkeypatch, completed: bool) -> list[str]:
    import convattn.train.distributed as distributed

    calls: list[str] = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: calls.append("destroy"))
    monkeypatch.setattr(distributed, "barrier", lambda ctx: calls.append("barrier"))
    monkeypatch.setattr(distributed.time, "sleep", lambda s: calls.append(f"sleep {s}"))
    ctx = distributed.DistContext(rank=1, world_size=2, owns_group=True)
    distributed.cleanup_distributed(ctx, completed=completed)
    return calls


def test_cleanup_after_a_completed_run_waits_for_every_rank_and_for_gloo(monkeypatch):
    # Without the barrier and the GIL-free pause, about one two-process run in ten aborted at exit.
    calls = _recorded_cleanup(monkeypatch, completed=True)
    assert calls[:2] == ["barrier", "destroy"]
    assert len(calls) == 3 and calls[2].startswith("sleep ") and float(calls[2][6:]) > 0


def test_cleanup_after_a_failure_does_not_wait_for_ranks_that_may_never_arrive(monkeypatch):
    assert _recorded_cleanup(monkeypatch, completed=False) == ["destroy"]


def test_two_processes_equal_one_process(tmp_path, child_env):
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "convattn",
        "train",
        *_flags(dict(_OPTIONS, batch_size=16, out=str(ddp_dir))),
    ]
    proc = subprocess.run(cmd, env=child_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    single = train(TrainConfig(**_OPTIONS, batch_size=32, out=str(single_dir)))

    ddp_weights, single_weights = (
        load_file(ddp_dir / "last.safetensors"),
        load_file(single_dir / "last.safetensors"),
    )
    assert ddp_weights.keys() == single_weights.keys()
    for key, expected in single_weights.items():
        torch.testing.assert_close(ddp_weights[key], expected, rtol=1e-5, atol=1e-6, msg=key)
    # Validation metrics are all-reduced over the two shards of the 18 val images.
    ddp_rows = MetricsFile(ddp_dir / "metrics.jsonl").read()
    assert len(ddp_rows) == 2
    for ddp_row, row in zip(ddp_rows, single["history"]):
        assert ddp_row["val_top1"] == pytest.approx(row["val_top1"])
        assert ddp_row["val_loss"] == pytest.approx(row["val_loss"], rel=1e-4)
        assert ddp_row["train_loss"] == pytest.approx(row["train_loss"], rel=1e-4)
        assert ddp_row["step"] == row["step"]
    # Only rank 0 wrote: one metrics line per epoch, one config.
    assert (ddp_dir / "config.yaml").is_file()


def test_logged_validation_is_that_of_the_saved_weights(tmp_path, child_env):
    """With BatchNorm, every rank's running statistics see only its own batches; the figure
    logged (all ranks' shards) must still be that of the one saved model."""
    from convattn.train import evaluate_checkpoint

    out = tmp_path / "ddp_bn"
    options = dict(
        model="resnet_nano",
        data="synthetic:shapes:32:20",
        img_size=12,
        epochs=1,
        batch_size=8,
        workers=0,
        quiet=True,
        plots=False,
        ema=True,
        ema_decay=0.5,
        out=str(out),
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "convattn", "train", *_flags(options)]
    proc = subprocess.run(cmd, env=child_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (row,) = MetricsFile(out / "metrics.jsonl").read()
    last = evaluate_checkpoint(out / "last.safetensors", options["data"], workers=0, device="cpu")
    assert last["count"] == 20
    assert last["loss"] == pytest.approx(row["val_loss"], rel=1e-5, abs=1e-6)
    assert last["top1"] == pytest.approx(row["val_top1"])
    # The EMA's statistics too: its logged figure is that of the EMA weights resume.pt holds.
    from convattn.models import create_model, read_model_info, save_model
    from convattn.train import load_resume_state

    ema_state = load_resume_state(out / "resume.pt")["ema"]
    ema = create_model("resnet_nano", num_classes=4)
    ema.load_state_dict({k[7:]: v for k, v in ema_state.items() if k.startswith("module.")})
    meta = read_model_info(out / "last.safetensors")["config"]
    save_model(ema, tmp_path / "ema.safetensors", model_name="resnet_nano", **meta)
    scored = evaluate_checkpoint(
        tmp_path / "ema.safetensors", options["data"], workers=0, device="cpu"
    )
    assert scored["loss"] == pytest.approx(row["ema_val_loss"], rel=1e-5, abs=1e-6)
