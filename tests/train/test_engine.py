"""The training loop: learning, gradient accumulation, evaluation metrics, EMA, AMP, mixup."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from convattn.models import read_model_info
from convattn.train import evaluate, topk_correct, train


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_loss_decreases_on_learnable_task(tiny_cfg):
    cfg = tiny_cfg(
        model="resnet_nano", data="synthetic:shapes:64:32", epochs=4, lr=3e-3, warmup_epochs=0.0
    )
    result = train(cfg)
    losses = [row["train_loss"] for row in result["history"]]
    assert losses[-1] < losses[0] - 0.1, losses
    assert result["epochs"] == 4 and result["steps"] == 4 * 4
    assert result["best_top1"] is not None


def test_run_folder_contents(tiny_cfg, tiny_net, tmp_path):
    cfg = tiny_cfg(epochs=2, plots=True, ema=True)
    result = train(cfg, model=tiny_net())
    run = tmp_path / "run"
    names = {p.name for p in run.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "last.safetensors", "best.safetensors"} <= names
    assert {"resume.pt", "curves.png"} <= names
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows == json.loads(json.dumps(result["history"]))
    for key in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "ema_val_top1"):
        assert key in rows[-1]
    info = read_model_info(run / "last.safetensors")
    assert info["model"] == "tinynet"
    assert info["config"]["num_classes"] == 4 and info["config"]["img_size"] == 16
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_accumulation_equals_big_batch(tiny_cfg, tiny_net, tmp_path):
    common = dict(epochs=2, opt="adamw", weight_decay=0.05, clip_grad=None)
    big_model, acc_model = tiny_net(), tiny_net()
    acc_model.load_state_dict(big_model.state_dict())
    train(tiny_cfg(batch_size=16, out=str(tmp_path / "big"), **common), model=big_model)
    train(
        tiny_cfg(batch_size=8, accum_steps=2, out=str(tmp_path / "acc"), **common), model=acc_model
    )
    for key, value in _weights(big_model).items():
        torch.testing.assert_close(_weights(acc_model)[key], value, rtol=1e-5, atol=1e-6)


def test_accumulation_counts_updates(tiny_cfg, tiny_net):
    # 3 micro-batches per epoch with accum 2: updates of 2 and 1 micro-batches.
    cfg = tiny_cfg(data="synthetic:shapes:24:8", batch_size=8, accum_steps=2, epochs=2)
    assert train(cfg, model=tiny_net())["steps"] == 4


def test_evaluate_matches_manual_count(tiny_net):
    torch.manual_seed(0)
    images, labels = torch.rand(20, 3, 8, 8), torch.randint(0, 4, (20,))
    model = tiny_net().eval()
    loader = DataLoader(TensorDataset(images, labels), batch_size=6)
    metrics = evaluate(model, loader, "cpu")
    with torch.no_grad():
        logits = model(images)
    expected_top1 = (logits.argmax(1) == labels).float().mean().item() * 100
    assert metrics["top1"] == pytest.approx(expected_top1)
    assert metrics["top5"] == 100.0  # 4 classes: top-5 caps at top-4
    assert metrics["loss"] == pytest.approx(nn.functional.cross_entropy(logits, labels).item())
    assert metrics["count"] == 20
    assert model.training is False


def test_topk_correct():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.2], [0.2, 0.3, 0.5]])
    assert topk_correct(logits, torch.tensor([1, 2, 0]), ks=(1, 2)) == [1, 2]


def test_ema_is_evaluated_and_differs(tiny_cfg, tiny_net):
    result = train(tiny_cfg(ema=True, ema_decay=0.9, epochs=2), model=tiny_net())
    row = result["history"][-1]
    assert "ema_val_top1" in row and result["ema_top1"] == row["ema_val_top1"]
    assert row["ema_val_loss"] != row["val_loss"]


def test_bf16_autocast_runs_on_cpu(tiny_cfg, tiny_net):
    result = train(tiny_cfg(amp="bf16", epochs=1), model=tiny_net())
    assert torch.isfinite(torch.tensor(result["loss"]))


def test_fp16_on_cpu_is_refused(tiny_cfg, tiny_net):
    with pytest.raises(ValueError, match="fp16"):
        train(tiny_cfg(amp="fp16", device="cpu"), model=tiny_net())


def test_mixup_cutmix_label_smoothing_augment_clip(tiny_cfg, tiny_net):
    cfg = tiny_cfg(
        mixup=0.4, cutmix=1.0, label_smoothing=0.1, aug="light", clip_grad=1.0, opt="sgd", epochs=1
    )
    result = train(cfg, model=tiny_net())
    assert torch.isfinite(torch.tensor(result["history"][0]["train_loss"]))


def test_batch_larger_than_train_set(tiny_cfg, tiny_net):
    with pytest.raises(ValueError, match="fewer than one batch"):
        train(tiny_cfg(batch_size=64), model=tiny_net())


def test_existing_run_is_not_clobbered(tiny_cfg, tiny_net):
    train(tiny_cfg(epochs=1), model=tiny_net())
    with pytest.raises(ValueError, match="--resume auto"):
        train(tiny_cfg(epochs=1), model=tiny_net())
    train(tiny_cfg(epochs=1, overwrite=True), model=tiny_net())


def test_unknown_model_is_one_clear_error(tiny_cfg):
    with pytest.raises(ValueError, match="convattn models"):
        train(tiny_cfg(model="no_such_model"))
