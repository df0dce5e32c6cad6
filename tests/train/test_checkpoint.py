"""Atomic checkpoints and exact resumption, including after a SIGKILL."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from convattn.train import (
    RESUME_FILE,
    TrainConfig,
    capture_rng_state,
    load_resume_state,
    restore_rng_state,
    save_resume_state,
    train,
)
from convattn.train.checkpoint import remove_stale_temporaries


def test_rng_state_round_trip(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.standard_normal()  # leaves a cached Gaussian in NumPy's state
    state = capture_rng_state()
    path = save_resume_state(tmp_path / "s.pt", {"format": "convattn-resume/1", "rng": state})
    expected = (torch.rand(3), np.random.rand(3), random.random(), np.random.standard_normal())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    restore_rng_state(load_resume_state(path)["rng"])  # weights_only=True load
    actual = (torch.rand(3), np.random.rand(3), random.random(), np.random.standard_normal())
    torch.testing.assert_close(actual[0], expected[0])
    np.testing.assert_array_equal(actual[1], expected[1])
    assert actual[2:] == expected[2:]


def test_interrupted_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / RESUME_FILE
    save_resume_state(path, {"format": "convattn-resume/1", "epoch": 1, "w": torch.ones(3)})

    def dying_save(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 half a zip file")  # a torn write...
        raise KeyboardInterrupt  # ...then the process is interrupted

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_resume_state(path, {"format": "convattn-resume/1", "epoch": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    state = load_resume_state(path)
    assert state["epoch"] == 1
    torch.testing.assert_close(state["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == [RESUME_FILE]  # temporary removed


def test_write_killed_mid_way_keeps_previous_checkpoint(tmp_path, child_env):
    # A child process writes a good checkpoint, then SIGKILLs itself halfway through the next.
    script = f"""
import os, signal, torch
import convattn._io as io
from convattn.train import save_resume_state
path = {str(tmp_path / RESUME_FILE)!r}
save_resume_state(path, {{"format": "convattn-resume/1", "epoch": 1}})
def torn(obj, f, *a, **k):
    with open(f, "wb") as fh:
        fh.write(b"PK\\x03\\x04 torn")
        fh.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = torn
save_resume_state(path, {{"format": "convattn-resume/1", "epoch": 2}})
"""
    proc = subprocess.run([sys.executable, "-c", script], env=child_env, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert load_resume_state(tmp_path / RESUME_FILE)["epoch"] == 1
    stale = remove_stale_temporaries(tmp_path)
    assert len(stale) == 1 and not stale[0].exists()


def test_corrupt_resume_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "resume.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"resume\.pt"):
        load_resume_state(bad)
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        load_resume_state(tmp_path / "missing.pt")


def _resume_cfg(out, **changes) -> TrainConfig:
    options = dict(
        model="resnet_nano",
        data="synthetic:shapes:64:16",
        img_size=16,
        epochs=4,
        batch_size=16,
        workers=0,
        ema=True,
        ema_decay=0.9,
        mixup=0.2,
        aug="light",
        hflip=True,
        drop_path=0.1,
        out=str(out),
        quiet=True,
        plots=False,
        deterministic=True,
        seed=3,
    )
    return TrainConfig(**(options | changes))


def _cli_args(cfg: TrainConfig) -> list[str]:
    args = []
    for key, value in cfg.to_dict().items():
        flag = "--" + key.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, list):
            args += [flag, *map(str, value)]
        else:
            args += [flag, str(value)]
    return args


def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path, child_env):
    """Kill a CLI run after its first checkpoint, resume it: same weights, EMA and metrics."""
    killed_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "convattn", "train", *_cli_args(_resume_cfg(killed_dir))]
    proc = subprocess.Popen(cmd, env=child_env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not (killed_dir / RESUME_FILE).exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    done_at_kill = load_resume_state(killed_dir / RESUME_FILE)["epoch"]
    assert 1 <= done_at_kill < 4, "the kill must land mid-training"

    resumed = train(_resume_cfg(killed_dir, resume="auto"))
    reference = train(_resume_cfg(tmp_path / "reference"))

    assert resumed["steps"] == reference["steps"] == 4 * 4
    final, expected = (
        load_file(d / "last.safetensors") for d in (killed_dir, tmp_path / "reference")
    )
    assert final.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(final[key], expected[key], rtol=0, atol=0, msg=key)
    ema, ema_ref = (
        load_resume_state(d / RESUME_FILE)["ema"] for d in (killed_dir, tmp_path / "reference")
    )
    for key in ema_ref:
        torch.testing.assert_close(ema[key], ema_ref[key], rtol=0, atol=0, msg=key)
    strip = [
        {k: v for k, v in r.items() if k not in ("epoch_time_s", "images_per_s")}
        for r in resumed["history"]
    ]
    strip_ref = [
        {k: v for k, v in r.items() if k not in ("epoch_time_s", "images_per_s")}
        for r in reference["history"]
    ]
    assert strip == strip_ref
    lines = (killed_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4  # epochs redone after the kill are not duplicated


def test_resume_of_finished_run_trains_nothing(tiny_cfg, tiny_net):
    first = train(tiny_cfg(epochs=1), model=tiny_net())
    again = train(tiny_cfg(epochs=1, resume="auto"), model=tiny_net())
    assert again["steps"] == first["steps"] and again["history"] == first["history"]


def test_resume_path_must_exist(tiny_cfg, tiny_net, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing\.pt"):
        train(tiny_cfg(resume=str(tmp_path / "nothing.pt")), model=tiny_net())


class _Crash(Exception):
    pass


@pytest.mark.slow
def test_resume_is_exact_with_persistent_workers(tmp_path, monkeypatch):
    """With worker processes the shuffle must also be replayed exactly (in-process crash)."""
    from convattn.train import engine

    cfg = dict(workers=2, epochs=3, ema=False, mixup=0.0)
    reference = train(_resume_cfg(tmp_path / "reference", **cfg))

    original = engine._Run._end_epoch

    def crash_after_first_epoch(self, epoch, row):
        original(self, epoch, row)
        raise _Crash

    monkeypatch.setattr(engine._Run, "_end_epoch", crash_after_first_epoch)
    with pytest.raises(_Crash):
        train(_resume_cfg(tmp_path / "crashed", **cfg))
    monkeypatch.undo()
    resumed = train(_resume_cfg(tmp_path / "crashed", resume="auto", **cfg))

    assert [r["train_loss"] for r in resumed["history"]] == [
        r["train_loss"] for r in reference["history"]
    ]
    final, expected = (
        load_file(tmp_path / d / "last.safetensors") for d in ("crashed", "reference")
    )
    for key in expected:
        torch.testing.assert_close(final[key], expected[key], rtol=0, atol=0, msg=key)
