"""Every registered model goes through the standard PyTorch tools as it is, with no convattn step.

For each model in training form and in deploy form (:func:`convattn.deploy.reparameterize_model`):

* ``torch.export.export`` traces it and the exported program reproduces the model;
* ``torch.onnx.export(..., dynamo=True)`` and the TorchScript-based ``dynamo=False`` exporter both
  write a file that onnxruntime runs to within 1e-4 of PyTorch (relative to the output scale);
* ``torch.compile(model, fullgraph=True)`` runs the forward pass and a training step.

``acmix_resnet_nano``, ``acmix_san_nano`` and ``acmix_pvt_nano`` (whose operators contain the plain
SAN and PVT attention) run in the default suite, and every nano model's deploy-form ONNX export is
in ``test_deploy_export.py``; every other combination is marked slow: run ``pytest -m slow``.
"""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from torch import nn

import convattn
from convattn.deploy import reparameterize_model
from convattn.layers import ACmix, Involution2d

ALL = convattn.list_models()
DEFAULT = {"acmix_resnet_nano", "acmix_san_nano", "acmix_pvt_nano"}
FORMS = ["train", "deploy"]
RTOL = 1e-4


def _size(name: str) -> int:
    return 32 if name.endswith("_nano") else 64


def _model(name: str, form: str) -> nn.Module:
    torch.manual_seed(0)
    model = convattn.create_model(name, num_classes=10).eval()
    return reparameterize_model(model).eval() if form == "deploy" else model


def _input(name: str, batch: int = 2) -> torch.Tensor:
    return torch.randn(
        batch, 3, _size(name), _size(name), generator=torch.Generator().manual_seed(1)
    )


def _deviation(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected.double()).abs().max() / expected.abs().max())


def _onnxruntime(model_bytes: bytes, x: torch.Tensor) -> torch.Tensor:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def _cases(default: set[str]) -> list:
    return [
        pytest.param(n, form, marks=() if n in default else pytest.mark.slow)
        for n in ALL
        for form in FORMS
    ]


@pytest.mark.parametrize("name,form", _cases(DEFAULT))
def test_torch_export_reproduces_the_model(name, form):
    model, x = _model(name, form), _input(name)
    with torch.no_grad():
        expected = model(x)
        program = torch.export.export(model, (x,))
        assert _deviation(program.module()(x), expected) < RTOL


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("name,form", _cases(DEFAULT))
def test_onnx_export_runs_in_onnxruntime(name, form, dynamo):
    model, x = _model(name, form), _input(name)
    with torch.no_grad():
        expected = model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            model_bytes = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
            model_bytes = model_bytes.model_proto.SerializeToString()
        else:
            buffer = io.BytesIO()
            torch.onnx.export(model, (x,), buffer, dynamo=False)
            model_bytes = buffer.getvalue()
    assert _deviation(_onnxruntime(model_bytes, x), expected) < RTOL


@pytest.mark.parametrize("name,form", _cases(DEFAULT))
def test_compile_fullgraph_forward_and_training_step(name, form):
    torch._dynamo.reset()
    model, x = _model(name, form), _input(name)
    with torch.no_grad():
        expected = model(x)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        assert _deviation(compiled(x), expected) < RTOL
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    before = [p.detach().clone() for p in model.parameters()]
    out = compiled(x)
    logits = (
        out[0] if isinstance(out, tuple) else out
    )  # token-labeling models: (class, tokens, box)
    loss = nn.functional.cross_entropy(logits, torch.tensor([1, 2]))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))


# --- operators alone, at shapes the models do not reach (stride 2 on odd maps, tiny maps) --------


@pytest.mark.parametrize(
    "module,size",
    [
        (lambda: ACmix(8, 8, 2, heads=2), (11, 9)),
        (lambda: ACmix(8, 16, 1, heads=4), (3, 2)),
        (lambda: Involution2d(16, 7, 2), (11, 9)),
    ],
    ids=["acmix-stride2-odd", "acmix-tiny", "involution-stride2"],
)
def test_operators_alone_through_every_tool(module, size):
    torch.manual_seed(0)
    m = module().eval()
    x = torch.randn(2, m.in_channels if hasattr(m, "in_channels") else 16, *size)
    with torch.no_grad():
        expected = m(x)
        assert _deviation(torch.export.export(m, (x,)).module()(x), expected) < RTOL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dynamo = torch.onnx.export(m, (x,), dynamo=True, verbose=False)
        buffer = io.BytesIO()
        torch.onnx.export(m, (x,), buffer, dynamo=False)
    assert _deviation(_onnxruntime(dynamo.model_proto.SerializeToString(), x), expected) < RTOL
    assert _deviation(_onnxruntime(buffer.getvalue(), x), expected) < RTOL
    torch._dynamo.reset()
    compiled = torch.compile(m, fullgraph=True)
    with torch.no_grad():
        assert _deviation(compiled(x), expected) < RTOL
