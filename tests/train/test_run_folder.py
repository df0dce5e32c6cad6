"""What training never does to a folder: wipe a finished run, clobber files that are not a run,
rewrite config.yaml before the options are validated, or delete temporaries it did not create."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from convattn._io import TEMP_PREFIX, atomic_write, remove_stale_temporaries
from convattn.train import RESUME_FILE, train


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _aside(run: Path) -> list[Path]:
    return sorted(run.parent.glob(f"{run.name}.old-*"))


def test_finished_run_without_resume_file_is_never_wiped(tiny_cfg, tiny_net, tmp_path):
    """A finished run whose resume.pt is gone keeps best, last, metrics and config."""
    run = tmp_path / "run"
    train(tiny_cfg(epochs=1), model=tiny_net())
    (run / RESUME_FILE).unlink()
    before = _snapshot(run)
    assert {"best.safetensors", "last.safetensors", "metrics.jsonl", "config.yaml"} <= set(before)
    # The documented requeue command, then a plain start over the same folder.
    with pytest.raises(ValueError, match=r"no resume\.pt.*best\.safetensors.*--overwrite"):
        train(tiny_cfg(epochs=1, resume="auto"), model=tiny_net())
    with pytest.raises(ValueError, match="--overwrite"):
        train(tiny_cfg(epochs=1), model=tiny_net())
    assert _snapshot(run) == before and not _aside(run)


def test_folder_that_is_not_a_run_is_not_clobbered(tiny_cfg, tiny_net, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    mine = {
        "config.yaml": b"my own notes: 1\n",
        "best.safetensors": b"my own weights",
        ".draft.tmp": b"my own temporary file",
    }
    for name, content in mine.items():
        (run / name).write_bytes(content)
    with pytest.raises(ValueError, match=r"not a run of this experiment.*best\.safetensors"):
        train(tiny_cfg(epochs=1), model=tiny_net())
    assert _snapshot(run) == mine
    # --overwrite moves the old contents aside, byte for byte; nothing is deleted.
    train(tiny_cfg(epochs=1, overwrite=True), model=tiny_net())
    (aside,) = _aside(run)
    assert _snapshot(aside) == mine
    assert (run / RESUME_FILE).is_file() and not (run / ".draft.tmp").exists()


def test_overwrite_moves_a_previous_run_aside(tiny_cfg, tiny_net, tmp_path):
    run = tmp_path / "run"
    train(tiny_cfg(epochs=1), model=tiny_net())
    first = _snapshot(run)
    train(tiny_cfg(epochs=1, overwrite=True, seed=1), model=tiny_net())
    train(tiny_cfg(epochs=1, overwrite=True, seed=2), model=tiny_net())
    old = _aside(run)
    assert len(old) == 2 and _snapshot(old[0]) == first
    assert _snapshot(old[1])["last.safetensors"] != first["last.safetensors"]


def test_config_is_not_rewritten_before_validation(tiny_cfg, tiny_net, tmp_path):
    """A resume refused for another model leaves config.yaml as it was, so the command the
    error suggests still works."""
    run = tmp_path / "run"
    train(tiny_cfg(epochs=1), model=tiny_net())
    before = _snapshot(run)
    with pytest.raises(ValueError, match=r"model='tinynet'.*--config"):
        train(tiny_cfg(epochs=2, model="othernet", resume="auto"), model=tiny_net())
    assert _snapshot(run) == before
    # A resume state that does not fit (other parameter groups) fails before any write too.
    with pytest.raises(ValueError, match="parameter group"):
        train(tiny_cfg(epochs=2, decay_1d=True, resume="auto"), model=tiny_net())
    assert _snapshot(run) == before
    result = train(tiny_cfg(epochs=2, resume="auto"), model=tiny_net())
    assert result["epochs"] == 2


def test_unstarted_run_of_the_same_experiment_starts(tiny_cfg, tiny_net, tmp_path):
    """A start killed before its first epoch left only config.yaml: requeueing it just works;
    a config.yaml of another experiment is refused."""
    run = tmp_path / "run"
    cfg = tiny_cfg(epochs=1, resume="auto")
    cfg.replace(resume=None, quiet=False).to_yaml(run / "config.yaml")
    (run / "metrics.jsonl").write_text("")
    assert train(cfg, model=tiny_net())["epochs"] == 1
    other = tmp_path / "other"
    tiny_cfg(epochs=1, lr=0.5, out=str(other)).to_yaml(other / "config.yaml")
    with pytest.raises(ValueError, match=r"config\.yaml"):
        train(tiny_cfg(epochs=1, out=str(other)), model=tiny_net())


def test_only_convattn_temporaries_are_cleaned_up(tiny_cfg, tiny_net, tmp_path):
    run = tmp_path / "run"
    train(tiny_cfg(epochs=1), model=tiny_net())
    theirs = [run / ".notes.tmp", run / ".tmpAb12Cd", run / "draft.tmp"]
    for path in theirs:
        path.write_text("not convattn's")
    ours = run / f"{TEMP_PREFIX}last.safetensors-k3j2"
    ours.mkdir()
    (ours / ".tmpZx81Qa").write_bytes(b"half a safetensors file")
    train(tiny_cfg(epochs=2, resume="auto"), model=tiny_net())
    assert all(p.read_text() == "not convattn's" for p in theirs)
    assert not ours.exists()


def test_atomic_write_keeps_the_writers_own_temporaries_in_its_folder(tmp_path, child_env):
    """A writer that makes its own sibling temporary (as safetensors does) and is SIGKILLed
    mid-write leaves only a recognisable convattn folder, which the cleanup removes."""
    target = tmp_path / "last.safetensors"
    atomic_write(target, lambda tmp: tmp.write_bytes(b"previous"))
    (tmp_path / ".users.tmp").write_text("keep")
    script = f"""
import os, signal
from pathlib import Path
from convattn._io import atomic_write
def writer(tmp):
    (tmp.parent / ".tmpQ7w2Er").write_bytes(b"a writer's own temporary")
    tmp.write_bytes(b"torn")
    os.kill(os.getpid(), signal.SIGKILL)
atomic_write(Path({str(target)!r}), writer)
"""
    env = dict(child_env, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-c", script], env=env, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert target.read_bytes() == b"previous"
    top = sorted(p.name for p in tmp_path.iterdir())
    leftovers = [n for n in top if n.startswith(TEMP_PREFIX)]
    assert len(leftovers) == 1 and set(top) == {"last.safetensors", ".users.tmp", *leftovers}
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == leftovers
    assert sorted(p.name for p in tmp_path.iterdir()) == [".users.tmp", "last.safetensors"]


@pytest.mark.slow
def test_sigkill_during_a_real_safetensors_write(tmp_path, child_env):
    """Kill a process while safetensors writes its own temporary file: the leftover is inside a
    .convattn-tmp-* folder, and only that is cleaned up."""
    target = tmp_path / "last.safetensors"
    (tmp_path / ".users.tmp").write_text("keep")
    script = f"""
import torch
from convattn.models import save_model
model = torch.nn.Linear(4096, 4096)  # 64 MiB per write
model.pretrained_cfg = {{"architecture": "big"}}
while True:
    save_model(model, {str(target)!r})
"""
    env = dict(child_env, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    caught = None
    try:
        deadline = time.monotonic() + 60
        while caught is None and time.monotonic() < deadline:
            for folder in tmp_path.glob(f"{TEMP_PREFIX}*"):
                # safetensors' own temporary: named .tmpXXXXXX, beside the file it writes.
                found = [p for p in folder.glob(".tmp*")]
                if found:
                    proc.send_signal(signal.SIGKILL)
                    caught = found[0]
                    break
    finally:
        proc.kill()
        proc.wait(timeout=60)
    if caught is None or not caught.exists():
        pytest.skip("the kill did not land inside safetensors' write")
    assert caught.parent.name.startswith(TEMP_PREFIX)
    top = {p.name for p in tmp_path.iterdir()}
    assert not any(n.startswith(".tmp") for n in top)  # nothing of safetensors' at top level
    remove_stale_temporaries(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} <= {"last.safetensors", ".users.tmp"}
    assert (tmp_path / ".users.tmp").read_text() == "keep"
