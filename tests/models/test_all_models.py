"""Every registered model: forward/backward, odd sizes, features_only, head/stem changes, and a
state-dict round trip through our safetensors format. Parametrised over ``list_models()``."""

import math

import pytest
import torch

import convattn
from convattn.bench import count_params
from convattn.models import read_model_info, save_model

ALL = convattn.list_models()
# Big models cost seconds just to initialise; the cheap ones of each family stay in the default suite.
HEAVY = {
    "glnet_9g",
    "glnet_9g_tklb",
    "glnet_16g",
    "swin_small",
    "acmix_swin_small",
    "glnet_stl_paramslot",
    "san19",
    "acmix_san19",
}


def _params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in names]


def _small_size(name: str) -> int:
    size = convattn.get_pretrained_cfg(name).get("input_size", (3, 224, 224))[-1]
    return min(size, 64)


@pytest.mark.parametrize("name", _params(ALL))
def test_forward_backward_and_odd_size(name):
    torch.manual_seed(0)
    model = convattn.create_model(name, num_classes=5)
    s = _small_size(name)
    x = torch.randn(2, 3, s, s)
    out = model(x)
    if isinstance(out, tuple):  # token-labeling models: (class logits, token logits, box)
        out, tokens, _ = out
        assert tokens.shape[::2] == (2, 5) and torch.isfinite(tokens).all()
        tokens.logsumexp(2).sum().backward(retain_graph=True)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads), "some parameters got no gradient"
    model.eval()
    with torch.no_grad():
        odd = model(torch.randn(1, 3, s + 3, s - 1))
    assert odd.shape == (1, 5) and torch.isfinite(odd).all()


@pytest.mark.parametrize("name", _params(ALL))
def test_features_only_matches_feature_info(name):
    model = convattn.create_model(name, features_only=True).eval()
    s = _small_size(name)
    with torch.no_grad():
        feats = model(torch.randn(1, 3, s, s))
    assert len(feats) == len(model.feature_info)
    for f, chans, red in zip(feats, model.feature_info.channels(), model.feature_info.reduction()):
        assert f.dim() == 4 and f.shape[1] == chans
        assert f.shape[-1] == math.ceil(s / red), (f.shape, red)
    assert count_params(model) < count_params(convattn.create_model(name))  # no classifier


@pytest.mark.parametrize("name", _params(ALL))
def test_in_chans_and_state_dict_round_trip(name, tmp_path):
    model = convattn.create_model(name, in_chans=1, num_classes=3).eval()
    path = save_model(model, tmp_path / f"{name}.safetensors", in_chans=1, num_classes=3)
    info = read_model_info(path)
    again = convattn.create_model(info["model"], checkpoint_path=path, **info["config"]).eval()
    s = _small_size(name)
    x = torch.randn(1, 1, s, s)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))
