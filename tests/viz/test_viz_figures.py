"""convattn.viz on the nano models: PNGs of the documented size, tensors of the documented shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from convattn.models import create_model, save_model
from convattn.viz import (
    find_layers,
    resolve_layer,
    visualize,
    visualize_attention,
    visualize_kernels,
    visualize_rates,
    visualize_slots,
)
from convattn.viz.figures import (
    attention_figure_inches,
    figure_size_px,
    kernel_figure_inches,
    rates_figure_inches,
    slot_figure_inches,
)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> str:
    """A 40x48 RGB PNG (not square: loading crops it to the model's input size)."""
    rng = np.random.default_rng(0)
    pixels = (rng.random((40, 48, 3)) * 255).astype(np.uint8)
    pixels[8:28, 10:30] = (230, 40, 40)  # a red square, something to group
    path = tmp_path_factory.mktemp("img") / "input.png"
    Image.fromarray(pixels).save(path)
    return str(path)


def _png_size(path) -> tuple[int, int]:
    with Image.open(path) as img:
        img.verify()  # a complete, valid PNG
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


def test_slots_dispatch(image_file, tmp_path):
    result = visualize_slots("glnet_nano", image_file, out=tmp_path)
    assert result.block == "stages.1.blocks.0"  # the middle of the three GLMix blocks
    assert _png_size(result.paths[0]) == figure_size_px(slot_figure_inches()) == (1600, 480)
    assert result.paths[0].parent == tmp_path and "slots" in result.paths[0].name
    assert result.logits.shape == result.weights.shape == (1, 16, 8, 8)  # 32 px input, stride 4
    torch.testing.assert_close(result.weights.sum(dim=1), torch.ones(1, 8, 8))
    assert result.assignment.shape == (1, 8, 8) and result.assignment.dtype == torch.long
    torch.testing.assert_close(result.assignment, result.logits.argmax(dim=1))
    reps = result.representatives
    assert reps.shape == (1, 4) and len(set(reps[0].tolist())) == 4
    assert result.image.shape == (3, 32, 32) and 0 <= result.image.min() <= result.image.max() <= 1
    for text in ("glnet_nano", "stages.1.blocks.0", "random init", "softmax over slots"):
        assert text in result.caption


def test_slots_clustering_by_index_and_name(image_file, tmp_path):
    by_index = visualize_slots("glnet_nano", image_file, block=0, mode="clustering", out=tmp_path)
    assert by_index.block == "stages.0.blocks.0" and by_index.weights.shape == (1, 16, 16, 16)
    torch.testing.assert_close(by_index.weights.flatten(2).sum(-1), torch.ones(1, 16))
    assert "clustering" in by_index.paths[0].name and "softmax over pixels" in by_index.caption
    by_name = visualize_slots(
        "glnet_nano", image_file, block="stages.0.blocks.0", mode="clustering", out=tmp_path
    )
    torch.testing.assert_close(by_name.weights, by_index.weights)


def test_figures_are_byte_identical_across_runs(image_file, tmp_path):
    first = visualize_slots("glnet_nano", image_file, out=tmp_path / "a").paths[0].read_bytes()
    second = visualize_slots("glnet_nano", image_file, out=tmp_path / "b").paths[0].read_bytes()
    assert first == second
    a = visualize_attention("acmix_swin_nano", image_file, out=tmp_path / "a").paths[0]
    b = visualize_attention("acmix_swin_nano", image_file, out=tmp_path / "b").paths[0]
    assert a.read_bytes() == b.read_bytes()
    assert b"matplotlib" not in first  # no "Software" entry (version) in the PNG


def test_random_init_leaves_the_global_rng_alone(image_file, tmp_path):
    state = torch.get_rng_state()
    visualize_rates("acmix_resnet_nano", out=tmp_path)
    assert torch.equal(state, torch.get_rng_state())


def test_attention_acmix_resnet_strided(image_file, tmp_path):
    queries = [(5.0, 5.0), (31.0, 0.0)]
    result = visualize_attention(
        "acmix_resnet_nano", image_file, block="layer2.0.conv2", queries=queries, out=tmp_path
    )
    assert result.operator == "ACmix window 7x7, stride 2"
    assert _png_size(result.paths[0]) == figure_size_px(attention_figure_inches(2)) == (960, 440)
    assert result.map_size == (32, 32)  # the layer's input map: the nano stem keeps 32x32
    assert result.rows.shape == (1, 4, 2, 49) and result.maps.shape == (1, 4, 2, 32, 32)
    torch.testing.assert_close(result.rows.sum(-1), torch.ones(1, 4, 2))
    torch.testing.assert_close(result.maps.sum((-2, -1)), torch.ones(1, 4, 2))  # reflected keys
    assert result.queries.tolist() == [[6, 6], [30, 0]]  # nearest pixels on the stride-2 grid
    assert result.query_pixels.shape == (2, 2)
    assert (result.maps >= 0).all() and "layer2.0.conv2" in result.caption


def test_attention_swin_windows_with_padding(image_file, tmp_path):
    # 36 px input -> 18x18 stage-0 map, padded to 20x20 for the 4x4 windows; block 1 is shifted.
    result = visualize_attention(
        "acmix_swin_nano", image_file, block=1, img_size=36, queries=[(35, 35)], out=tmp_path
    )
    assert (
        result.block == "layers.0.blocks.1.attn" and result.operator == "Swin window 4x4, shift 2"
    )
    assert result.rows.shape == (1, 1, 1, 16) and result.maps.shape == (1, 1, 1, 18, 18)
    torch.testing.assert_close(result.rows.sum(-1), torch.ones(1, 1, 1))
    total = float(result.maps.sum())
    assert 0 < total <= 1 + 1e-6  # keys on the zero padding are not drawn
    by_block_path = visualize_attention(
        "acmix_swin_nano", image_file, block="layers.0.blocks.1", img_size=36, out=tmp_path
    )
    assert by_block_path.block == "layers.0.blocks.1.attn"


def test_attention_global_mhsa_of_glnet(image_file, tmp_path):
    result = visualize_attention(
        "glnet_nano", image_file, block="stages.2.blocks.1.mha_op", out=tmp_path
    )
    assert result.operator == "global" and result.map_size == (4, 4)
    assert result.rows.shape == (1, 3, 4, 16) and result.maps.shape == (1, 3, 4, 4, 4)
    torch.testing.assert_close(result.rows.sum(-1), torch.ones(1, 3, 4))
    assert _png_size(result.paths[0]) == figure_size_px(attention_figure_inches(4))
    slot_mhsa = [n for n, _ in find_layers(create_model("glnet_nano"), "attention")]
    assert slot_mhsa == ["stages.2.blocks.1.mha_op", "stages.3.blocks.0.mha_op"]  # not relation_mha


def test_attention_global_self_attention_module(tmp_path):
    from convattn.bench.vit_reference import VitReference

    model = VitReference(num_classes=0, embed_dim=32, depth=2, num_heads=2, patch_size=4)
    model.train()
    image = torch.rand(3, 24, 24)
    result = visualize_attention(model, image, block=-1, queries=[(12, 12)], out=tmp_path)
    assert result.block == "blocks.1.attn" and result.map_size == (6, 6)
    assert result.rows.shape == (1, 2, 1, 36)
    torch.testing.assert_close(result.maps.sum((-2, -1)), torch.ones(1, 2, 1))
    assert "weights as given" in result.caption and "tensor input" in result.caption
    assert model.training  # the caller's mode is restored


def _capture_inputs(layer: torch.nn.Module) -> tuple[list, object]:
    """Record the positional inputs of ``layer`` (a forward pre-hook; remove the handle after)."""
    captured: list = []
    return captured, layer.register_forward_pre_hook(lambda _m, args: captured.append(args))


@pytest.mark.parametrize("name", ["san_nano", "acmix_san_nano"])
def test_attention_san_shows_the_operators_window_weights(image_file, tmp_path, name):
    from helpers import randomize_bn

    model = randomize_bn(create_model(name)).eval()
    layer_name, layer = resolve_layer(model, "attention", 1)
    assert layer_name == "layer1.0.sam"
    captured, handle = _capture_inputs(layer)
    try:
        result = visualize_attention(
            model, image_file, block=1, queries=[(16.0, 16.0), (0.0, 31.0)], out=tmp_path
        )
    finally:
        handle.remove()
    inp = captured[0][0]  # (1, C, 8, 8): stage 1 of a 32 px input
    with torch.no_grad():
        _, own = layer.attention(layer.qkv(inp), return_weights=True)  # (1, G, 49, 8, 8)
    g, k = layer.groups, layer.kernel_size
    assert result.operator == "SAN patchwise 7x7" and result.map_size == (8, 8) and k == 7
    assert result.rows.shape == (1, g, 2, 49) and result.maps.shape == (1, g, 2, 8, 8)
    assert result.queries.tolist() == [[4, 4], [0, 7]]
    for i, (qy, qx) in enumerate(result.queries.tolist()):
        torch.testing.assert_close(result.rows[:, :, i], own[..., qy, qx])
        # every weight is drawn (reflected slots add up on the pixel they read)
        torch.testing.assert_close(result.maps[:, :, i].sum((-2, -1)), own[..., qy, qx].sum(-1))
    # An interior query: slot dy * 7 + dx sits at (4 - 3 + dy, 4 - 3 + dx), nothing outside.
    window = own[..., 4, 4].view(1, g, 7, 7)
    torch.testing.assert_close(result.maps[:, :, 0, 1:8, 1:8], window)
    assert (result.maps[:, :, 0, 0] == 0).all() and (result.maps[:, :, 0, :, 0] == 0).all()
    assert (own < 0).any()  # no softmax: the figure uses a signed scale
    for text in ("no softmax", "mean over channel groups", f"{g} channel groups"):
        assert text in result.caption
    assert _png_size(result.paths[0]) == figure_size_px(attention_figure_inches(2))


@pytest.mark.parametrize("name", ["pvt_nano", "acmix_pvt_nano"])
def test_attention_pvt_spreads_each_reduced_key_over_its_patch(image_file, tmp_path, name):
    model = create_model(name).eval()
    layer_name, layer = resolve_layer(model, "attention", 0)
    assert layer_name == "stages.0.blocks.0.attn" and layer.sr_ratio == 4
    captured, handle = _capture_inputs(layer)
    try:
        # 36 px: an 18x18 stage-0 map; r = 4 gives 4x4 keys over its first 16x16 pixels.
        result = visualize_attention(
            model,
            image_file,
            block=0,
            img_size=36,
            queries=[(18.0, 18.0), (35.0, 0.0)],
            out=tmp_path,
        )
    finally:
        handle.remove()
    tokens, size = captured[0]
    assert tuple(size) == (18, 18) and result.map_size == (18, 18)
    assert result.operator == "PVT spatial reduction 4x4, 16 keys"
    with torch.no_grad():
        own = layer.attention_weights(tokens, size)  # (1, 1, 324, 16)
    assert result.rows.shape == (1, 1, 2, 16) and result.maps.shape == (1, 1, 2, 18, 18)
    assert result.queries.tolist() == [[9, 9], [17, 0]]
    for i, (qy, qx) in enumerate(result.queries.tolist()):
        torch.testing.assert_close(result.rows[:, :, i], own[:, :, qy * 18 + qx])
    maps = result.maps[0, 0]  # (Q, 18, 18)
    assert (maps[:, 16:] == 0).all() and (maps[:, :, 16:] == 0).all()  # no key reads these
    patches = maps[:, :16, :16].reshape(2, 4, 4, 4, 4)  # (Q, key row, dy, key col, dx)
    torch.testing.assert_close(patches.sum((2, 4)).flatten(1), result.rows[0, 0])
    torch.testing.assert_close(patches, patches[:, :, :1, :, :1].expand_as(patches))  # even
    torch.testing.assert_close(result.maps.sum((-2, -1)), torch.ones(1, 1, 2))


def test_attention_pvt_leaves_the_class_token_out_of_the_map(image_file, tmp_path):
    result = visualize_attention("pvt_nano", image_file, block=-1, queries=[(8, 24)], out=tmp_path)
    # Last stage: a 2x2 map, no reduction, the class token first among the keys.
    assert result.block == "stages.3.blocks.0.attn" and result.map_size == (2, 2)
    assert result.operator == "PVT global (no reduction), 4 keys + 1 class token"
    assert "class token's weight is not drawn" in result.caption
    assert result.rows.shape == (1, 4, 1, 5) and result.queries.tolist() == [[0, 1]]
    torch.testing.assert_close(result.rows.sum(-1), torch.ones(1, 4, 1))
    torch.testing.assert_close(result.maps.flatten(-2), result.rows[..., 1:])


@pytest.fixture(scope="module")
def trained_like_xvolution():
    """xvolution_resnet_nano with random BatchNorms: a non-zero dynamic part (it starts at 0)."""
    from helpers import randomize_bn

    return randomize_bn(create_model("xvolution_resnet_nano")).eval()


def test_kernels_training_and_deploy_forms_agree(image_file, tmp_path, trained_like_xvolution):
    model = trained_like_xvolution
    train_form = visualize_kernels(model, image_file, out=tmp_path / "t")
    deploy_form = visualize_kernels(model, image_file, deploy=True, out=tmp_path / "d")
    assert train_form.block == deploy_form.block == "layer3.0.conv2"
    assert not train_form.deploy and deploy_form.deploy
    for result in (train_form, deploy_form):
        assert result.static.shape == result.dynamic.shape == (1, 8, 8)
        assert (result.dynamic >= 0).all() and (result.static > 0).all()
        assert _png_size(result.paths[0]) == figure_size_px(kernel_figure_inches())
    assert train_form.dynamic.max() > 0
    torch.testing.assert_close(deploy_form.dynamic, train_form.dynamic, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(deploy_form.static, train_form.static, rtol=1e-4, atol=1e-5)
    assert "deploy form" in deploy_form.caption and "training form" in train_form.caption


def test_kernels_strided_layer_by_name(image_file, tmp_path):
    result = visualize_kernels(
        "xvolution_resnet_nano", image_file, block="layer3.0.conv1", out=tmp_path
    )
    assert result.static.shape == (1, 8, 8)  # 16x16 input, stride 2
    assert float(result.dynamic.max()) >= 0


@pytest.mark.parametrize(
    ("name", "layers"),
    [
        ("acmix_resnet_nano", 4),
        ("acmix_swin_nano", 6),
        ("acmix_san_nano", 5),
        ("acmix_pvt_nano", 4),
    ],
)
def test_rates(name, layers, tmp_path):
    result = visualize("rates", name, out=tmp_path)
    assert len(result.layers) == layers and result.rate1.shape == result.rate2.shape == (layers,)
    torch.testing.assert_close(result.rate1, torch.full((layers,), 0.5))  # the initial value
    assert _png_size(result.paths[0]) == figure_size_px(rates_figure_inches(layers))


@pytest.mark.parametrize("name", ["acmix_resnet_nano", "acmix_san_nano", "acmix_pvt_nano"])
def test_rates_of_a_reparameterised_model_say_so(name, tmp_path):
    result = visualize_rates(name, deploy=True, out=tmp_path)
    assert (result.rate1 == 1).all() and "folded" in result.caption


def test_checkpoint_names_the_weights(image_file, tmp_path):
    model = create_model("glnet_nano", num_classes=3)
    with torch.no_grad():
        for block in (m for _, m in find_layers(model, "slots")):
            block.slot_scale.fill_(6.0)
    path = save_model(model, tmp_path / "w.safetensors", num_classes=3, img_size=24)
    result = visualize_slots("glnet_nano", image_file, checkpoint=path, out=tmp_path)
    assert str(path) in result.caption and "random init" not in result.caption
    assert result.image.shape == (3, 24, 24)  # the checkpoint's training size
    assert result.logits.abs().max() > 0.5  # the loaded temperature, not the initial C^-1/2


def test_tensor_image_and_sizes(tmp_path):
    image = torch.rand(1, 40, 40)  # grey: repeated to the model's 3 channels
    result = visualize_slots("glnet_nano", image, img_size=16, block=-1, out=tmp_path)
    assert result.image.shape == (3, 16, 16) and result.weights.shape == (1, 16, 2, 2)


def test_bad_block_lists_the_available_layers(image_file, tmp_path):
    with pytest.raises(ValueError, match=r"no GLMix blocks named 'stages\.9'") as err:
        visualize_slots("glnet_nano", image_file, block="stages.9", out=tmp_path)
    for text in ("0: stages.0.blocks.0", "1: stages.1.blocks.0", "2: stages.2.blocks.0"):
        assert text in str(err.value)
    with pytest.raises(ValueError, match=r"index 3 is out of range.*has 3 GLMix blocks"):
        visualize_slots("glnet_nano", image_file, block=3, out=tmp_path)
    model = create_model("acmix_swin_nano")
    with pytest.raises(ValueError, match=r"5: layers\.3\.blocks\.0\.attn"):
        resolve_layer(model, "attention", "layers", "acmix_swin_nano")  # above several layers
    assert not list(tmp_path.iterdir())  # nothing written on errors


@pytest.mark.parametrize(
    ("what", "name", "needles"),
    [
        (
            "slots",
            "acmix_resnet_nano",
            ["no GLMix blocks", "--what attention (4 layers", "--what rates"],
        ),
        (
            "kernels",
            "glnet_nano",
            ["X-volution layers", "--what slots (3 layers", "--what attention"],
        ),
        ("attention", "xvolution_resnet_nano", ["no attention layers", "--what kernels (2 layers"]),
        ("rates", "resnet_nano", ["no ACmix layers", "nothing these visualisations can show"]),
        ("rates", "san_nano", ["no ACmix layers", "ACmix-SAN", "--what attention (5 layers"]),
        ("rates", "pvt_nano", ["no ACmix layers", "ACmix-PVT", "--what attention (4 layers"]),
        ("slots", "acmix_pvt_nano", ["--what attention (4 layers", "--what rates (4 layers"]),
    ],
)
def test_missing_component_says_what_is_available(image_file, tmp_path, what, name, needles):
    image = None if what == "rates" else image_file
    with pytest.raises(ValueError) as err:
        visualize(what, name, image, out=tmp_path)
    for needle in needles:
        assert needle in str(err.value)


def test_bad_arguments(image_file, tmp_path):
    with pytest.raises(ValueError, match="needs an input image"):
        visualize("slots", "glnet_nano", None, out=tmp_path)
    with pytest.raises(ValueError, match="'what'"):
        visualize("kernel", "glnet_nano", image_file, out=tmp_path)
    with pytest.raises(ValueError, match="'mode'"):
        visualize_slots("glnet_nano", image_file, mode="pixels", out=tmp_path)
    with pytest.raises(ValueError, match="outside the 32x32 input"):
        visualize_attention("glnet_nano", image_file, queries=[(40, 2)], out=tmp_path)
    with pytest.raises(OSError):
        visualize_slots("glnet_nano", tmp_path / "missing.png", out=tmp_path)
