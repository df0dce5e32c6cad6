"""The visualisations: a model, an image and a layer in, a PNG and the tensors behind it out.

Shared keyword arguments of the ``visualize_*`` functions:

* ``model``: a registered name (built with :func:`convattn.create_model`; our ``.safetensors``
  checkpoints supply the class count, input channels, size and normalisation they were trained
  with) or an ``nn.Module`` (used as given; put back in its train/eval mode afterwards).
* ``checkpoint``: weights to load. Without one a named model is built from a fixed ``seed``
  ("random init" in the caption); the global RNG state is left untouched.
* ``deploy``: re-parameterise the model first (:func:`convattn.deploy.reparameterize_model`), e.g.
  to see X-volution's kernels as the single dynamic convolution of the deploy form.
* ``image``: an image file (decoded with :func:`convattn.data.load_image`: shorter side to the input
  size, centre crop) or a (C, H, W) tensor in [0, 1]; then normalised with the model's mean/std.
  ``img_size``, ``mean`` and ``std`` override the checkpoint's / pretrained cfg's values.
* ``block``: which layer (see :func:`convattn.viz.resolve_layer`): a module path or an index.
* ``out``: the folder the PNG is written to (``<model>-<what>-<block>.png``).
* ``weights_label`` / ``image_label``: override the caption's description of the weights / image.

The model runs once, in eval mode and without gradients; forward pre-hooks capture the chosen
layer's input, from which :mod:`convattn.viz.weights` recomputes the weights.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import check_choice, check_positive_int
from ..layers.acmix import ACmix
from ..layers.attention import GlobalSelfAttention2d, MultiheadSelfAttention
from ..layers.san import PatchwiseSelfAttention
from ..layers.sr_attention import SpatialReductionAttention
from ..layers.window_attention import WindowAttention
from . import figures
from .select import WHATS, find_layers, resolve_layer
from .weights import (
    SLOT_MODES,
    acmix_attention_weights,
    acmix_window_index,
    global_attention_weights,
    multihead_attention_weights,
    san_attention_weights,
    san_window_index,
    slot_assignments,
    sr_attention_weights,
    sr_key_index,
    swin_window_attention_weights,
)

__all__ = [
    "DEFAULT_QUERIES",
    "AttentionMaps",
    "KernelMaps",
    "RateBars",
    "SlotMaps",
    "select_representatives",
    "visualize",
    "visualize_attention",
    "visualize_kernels",
    "visualize_rates",
    "visualize_slots",
]

ImageInput = str | os.PathLike | Tensor

# Default query pixels, as fractions (y, x) of the image: the centre and three spread points.
DEFAULT_QUERIES: tuple[tuple[float, float], ...] = (
    (0.5, 0.5),
    (0.25, 0.25),
    (0.25, 0.75),
    (0.75, 0.5),
)
DEFAULT_OUT = "runs/viz"


# --- results --------------------------------------------------------------------------------------
@dataclass
class SlotMaps:
    """GLMix slot maps of one block (``visualize_slots``).

    Attributes:
        paths: the PNG written.
        model: model name.
        block: block path.
        mode: ``"dispatch"`` (softmax over slots) or ``"clustering"`` (softmax over pixels).
        logits: (B, S, h, w) slot logits captured from the mixer's ``vis_proxy``.
        weights: (B, S, h, w) weights of ``mode``: sum to one over S (dispatch) or over h*w
            (clustering).
        assignment: (B, h, w) arg-max slot of every pixel under ``weights``.
        representatives: (B, k) slots chosen by k-medoids (:func:`select_representatives`).
        image: (C, H, W) input in [0, 1] as shown.
        caption: the figure's title.
    """

    paths: list[Path]
    model: str
    block: str
    mode: str
    logits: Tensor
    weights: Tensor
    assignment: Tensor
    representatives: Tensor
    image: Tensor
    caption: str


@dataclass
class AttentionMaps:
    """Attention of chosen query pixels of one layer (``visualize_attention``).

    Attributes:
        paths: the PNG written.
        model: model name.
        block: layer path.
        operator: what kind of attention (``"ACmix window 7x7"``, ``"SAN patchwise 7x7"``,
            ``"Swin window 4x4, shift 2"``, ``"PVT spatial reduction 4x4, 16 keys"``, ``"global"``).
        queries: (Q, 2) long, (row, col) of each query on the map.
        query_pixels: (Q, 2) float, (y, x) of each query cell's centre on the image.
        rows: (B, heads, Q, K) the weight rows as the layer computes them: softmax rows summing to
            one over K (the window, all keys, or PVT's reduced keys with its class token first),
            except SAN's, whose "heads" are its channel groups and whose window weights have no
            softmax (they may be negative).
        maps: (B, heads, Q, h, w) the rows placed on the map of the layer's input (window slots
            reading the same reflected pixel summed; a PVT key's weight spread evenly over the
            pixels of its r x r patch). Sums to one over (h, w) except where a Swin window covers
            zero padding beyond the map or a PVT query attends to the class token (that mass is
            not drawn), and for SAN (no softmax).
        map_size: (h, w) of the map.
        image: (C, H, W) input in [0, 1] as shown.
        caption: the figure's title.
    """

    paths: list[Path]
    model: str
    block: str
    operator: str
    queries: Tensor
    query_pixels: Tensor
    rows: Tensor
    maps: Tensor
    map_size: tuple[int, int]
    image: Tensor
    caption: str


@dataclass
class KernelMaps:
    """X-volution dynamic against static kernel magnitudes of one layer (``visualize_kernels``).

    Attributes:
        paths: the PNG written.
        model: model name.
        block: layer path.
        static: (B, h, w) Frobenius norm of the static kernel (the same at every pixel).
        dynamic: (B, h, w) norm of the content-dependent kernel part at every output pixel (>= 0).
        deploy: whether the layer was in its re-parameterised form.
        image: (C, H, W) input in [0, 1] as shown.
        caption: the figure's title.
    """

    paths: list[Path]
    model: str
    block: str
    static: Tensor
    dynamic: Tensor
    deploy: bool
    image: Tensor
    caption: str


@dataclass
class RateBars:
    """ACmix's learned path weights of every layer (``visualize_rates``).

    Attributes:
        paths: the PNG written.
        model: model name.
        layers: ACmix layer paths, shallow to deep.
        rate1: (L,) attention-path scalars.
        rate2: (L,) convolution-path scalars.
        caption: the figure's title.
    """

    paths: list[Path]
    model: str
    layers: list[str]
    rate1: Tensor
    rate2: Tensor
    caption: str = field(default="")


# --- model and image --------------------------------------------------------------------------
@dataclass
class _Loaded:
    module: nn.Module
    name: str
    weights: str
    meta: dict[str, Any]


def _our_metadata(path: Path) -> dict[str, Any]:
    """The JSON of one of our checkpoints, or {} for other files (official ``.pth`` etc.).

    An unreadable ``.safetensors`` file is a ValueError naming it.
    """
    from ..models._serialization import checkpoint_info

    return checkpoint_info(path)


def _load_model(
    model: str | nn.Module | None,
    checkpoint: str | os.PathLike | None,
    seed: int,
    deploy: bool,
    weights_label: str | None,
) -> _Loaded:
    from ..models import create_model, load_checkpoint

    meta: dict[str, Any] = {}
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None:
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        info = _our_metadata(path)
        meta = dict(info.get("config") or {})
        if model is None:
            model = info.get("model")
    if model is None:
        raise ValueError("give a model name (our checkpoints name their model; this one does not)")
    if isinstance(model, nn.Module):
        module = model
        cfg = getattr(module, "pretrained_cfg", None) or {}
        name = cfg.get("architecture") or type(module).__name__
        if path is not None:
            load_checkpoint(module, path)
        label = str(path) if path is not None else "weights as given"
    else:
        name = model
        kwargs = {k: meta[k] for k in ("num_classes", "in_chans") if meta.get(k) is not None}
        # A fixed seed makes "random init" figures reproducible; fork_rng keeps the caller's RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                module = create_model(name, checkpoint_path=path, **kwargs)
            except RuntimeError as err:
                # A re-parameterised checkpoint only fits the deploy form of the model.
                try:
                    module = create_model(name, checkpoint_path=path, deploy=True, **kwargs)
                except Exception:
                    raise err from None
        label = str(path) if path is not None else f"random init (seed {seed})"
    if deploy:
        from ..deploy import reparameterize_model

        module = reparameterize_model(module)
        label += ", re-parameterised"
    return _Loaded(module, name, weights_label or label, meta)


def _in_chans(module: nn.Module) -> int:
    chans = getattr(module, "in_chans", None)
    if isinstance(chans, int):
        return chans
    conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else 3


def _stats(values: Sequence[float], in_chans: int, what: str) -> Tensor:
    values = [float(v) for v in values]
    if len(values) == in_chans:
        return torch.tensor(values)
    if len(values) == 3 and in_chans == 1:  # RGB statistics for a grey model: luma-weighted
        from ..data.image import LUMA_WEIGHTS

        return torch.tensor([sum(w * v for w, v in zip(LUMA_WEIGHTS, values))])
    if len(values) == 1:
        return torch.tensor(values * in_chans)
    raise ValueError(f"'{what}' must have 1 or {in_chans} values, got {len(values)}")


def _prepare_image(
    image: ImageInput,
    loaded: _Loaded,
    img_size: int | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> tuple[Tensor, Tensor]:
    """(C, H, W) image in [0, 1] and the normalised (1, C, H, W) model input."""
    from ..data.image import load_image, match_channels

    cfg = getattr(loaded.module, "pretrained_cfg", None) or {}
    meta = loaded.meta
    in_chans = _in_chans(loaded.module)
    if img_size is not None:
        check_positive_int(img_size, "img_size", "convattn.viz")
    if isinstance(image, Tensor):
        img = image.detach().float().cpu()
        if img.dim() == 4 and img.shape[0] == 1:
            img = img[0]
        if img.dim() != 3 or img.shape[0] not in (1, 3):
            raise ValueError(
                f"an image tensor must be (C, H, W) with 1 or 3 channels in [0, 1], "
                f"got shape {tuple(image.shape)}"
            )
        img = match_channels(img, in_chans)
        # A tensor keeps its size unless one is asked for.
        if img_size is not None and tuple(img.shape[-2:]) != (img_size, img_size):
            img = F.interpolate(
                img[None], size=(img_size, img_size), mode="bilinear", antialias=True
            )[0].clamp(0, 1)
    else:
        if in_chans not in (1, 3):
            raise ValueError(f"image files can feed 1- or 3-channel models, not {in_chans}")
        if img_size is None:
            img_size = meta.get("img_size") or int(cfg.get("input_size", (3, 224, 224))[-1])
        img = load_image(image, img_size, in_chans=in_chans)
    mean_t = _stats(mean or meta.get("mean") or cfg.get("mean") or (0.5,), in_chans, "mean")
    std_t = _stats(std or meta.get("std") or cfg.get("std") or (0.5,), in_chans, "std")
    x = (img - mean_t.view(-1, 1, 1)) / std_t.view(-1, 1, 1)
    return img, x.unsqueeze(0)


def _image_label(image: ImageInput, label: str | None) -> str:
    if label is not None:
        return label
    return "tensor input" if isinstance(image, Tensor) else Path(image).name


@contextlib.contextmanager
def _inputs_of(modules: dict[str, nn.Module]) -> Iterator[dict[str, tuple[Any, ...]]]:
    """Record the positional inputs (a tuple) of each module during the forward pass (pre-hooks)."""
    seen: dict[str, tuple[Any, ...]] = {}
    handles = []

    def hook(name: str):
        def record(_module, args):
            if args and name not in seen:  # first call only: a module may be reused
                seen[name] = tuple(args)

        return record

    for name, module in modules.items():
        handles.append(module.register_forward_pre_hook(hook(name)))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def _evaluating(module: nn.Module) -> Iterator[None]:
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


def _run(
    loaded: _Loaded, x: Tensor, watch: dict[str, nn.Module], required: Sequence[str]
) -> dict[str, tuple[Any, ...]]:
    """One forward pass of the model on ``x``; returns the positional inputs of ``watch``'s modules.

    Modules in ``required`` must have been called (others, e.g. containers, may not be).
    """
    param = next(loaded.module.parameters(), None)
    if param is not None:
        x = x.to(device=param.device, dtype=param.dtype)
    with _evaluating(loaded.module), _inputs_of(watch) as seen:
        loaded.module(x)
    missing = [name for name in required if name not in seen]
    if missing:
        raise RuntimeError(f"layer(s) {missing} were not called by {loaded.name}'s forward pass")
    return seen


def _file_name(model: str, what: str, block: str | None) -> str:
    return f"{model}-{what}" + (f"-{block}" if block else "") + ".png"


def _caption(loaded: _Loaded, block: str, image_text: str, what_text: str) -> str:
    return f"{loaded.name} | {block} | {loaded.weights}\n{what_text} | {image_text}"


# --- slots ---------------------------------------------------------------------------------------
def select_representatives(maps: Tensor, k: int) -> list[int]:
    """``k`` representative maps by k-medoids over their pairwise L2 distances; deterministic.

    Initialisation: the map with the smallest total distance to all others, then repeatedly the
    map farthest from the medoids so far; then assignment / medoid update steps until nothing
    changes. Ties go to the lowest index, so equal inputs always give equal choices.

    Args:
        maps: (S, ...) maps (e.g. one image's slot maps).
        k: how many to choose (at most S).

    Returns:
        The chosen indices, sorted.
    """
    flat = maps.detach().flatten(1).double().cpu()
    s = flat.shape[0]
    k = max(1, min(k, s))
    dist = torch.cdist(flat, flat)
    medoids = [int(dist.sum(dim=1).argmin())]
    while len(medoids) < k:
        nearest = dist[:, medoids].min(dim=1).values
        nearest[medoids] = -1.0
        medoids.append(int(nearest.argmax()))
    for _ in range(100):
        labels = dist[:, medoids].argmin(dim=1)
        labels[medoids] = torch.arange(k)  # a medoid belongs to its own cluster even on ties
        update = []
        for c in range(k):
            members = (labels == c).nonzero().flatten()
            cost = dist[members][:, members].sum(dim=1)
            update.append(int(members[cost.argmin()]))
        if update == medoids:
            break
        medoids = update
    return sorted(medoids)


def visualize_slots(
    model: str | nn.Module,
    image: ImageInput,
    *,
    block: str | int | None = None,
    mode: str = "dispatch",
    representatives: int = 4,
    checkpoint: str | os.PathLike | None = None,
    out: str | os.PathLike = DEFAULT_OUT,
    img_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    seed: int = 0,
    deploy: bool = False,
    weights_label: str | None = None,
    image_label: str | None = None,
) -> SlotMaps:
    """GLMix slot maps of one block: every slot's map, the hard assignment, representative slots.

    As in the GLMix paper's figure: the slot logits of the chosen block (captured from the mixer's
    ``vis_proxy``) turned into weights by a softmax over the slots (``mode="dispatch"``, how each
    pixel reads the slots; the paper's choice) or over the pixels (``"clustering"``, how each slot
    gathers pixels); a grid of all S maps on one scale; the arg-max slot of every pixel over the
    image; and ``representatives`` slots chosen by k-medoids (:func:`select_representatives`)
    shown as the image seen through each slot's map.

    Args:
        model: a registered name or an ``nn.Module`` (see the module docstring).
        image: an image file or a (C, H, W) tensor in [0, 1].
        block: a GLMix block, by path or index (default: the middle one).
        mode: ``"dispatch"`` or ``"clustering"``.
        representatives: how many slots to show large.
        checkpoint: weights to load (default: random init from ``seed``).
        out: folder of the PNG.
        img_size: input size (default: the checkpoint's, else the pretrained cfg's; a tensor
            image keeps its size).
        mean: normalisation mean (default: the checkpoint's, else the pretrained cfg's).
        std: normalisation standard deviation (same defaults).
        seed: seed of the random init.
        deploy: re-parameterise the model first.
        weights_label: the caption's description of the weights.
        image_label: the caption's description of the image.

    Returns:
        :class:`SlotMaps`.
    """
    check_choice(mode, "mode", SLOT_MODES, "visualize_slots")
    check_positive_int(representatives, "representatives", "visualize_slots")
    loaded = _load_model(model, checkpoint, seed, deploy, weights_label)
    name, layer = resolve_layer(loaded.module, "slots", block, loaded.name)
    img, x = _prepare_image(image, loaded, img_size, mean, std)
    captured: list[Tensor] = []
    handle = layer.vis_proxy.register_forward_hook(
        lambda _m, _args, output: captured.append(output) if not captured else None
    )
    try:
        seen = _run(loaded, x, {name: layer}, [name])
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(f"{name}: its vis_proxy was not called (not a GLMix mixer?)")
    height, width = seen[name][0].shape[-2:]
    h, w = -(-height // layer.stride), -(-width // layer.stride)
    logits = captured[0].float().cpu()
    logits = logits.view(logits.shape[0], logits.shape[1], h, w)
    weights = slot_assignments(logits, mode)
    assignment = weights.argmax(dim=1)
    reps = torch.tensor([select_representatives(wt, representatives) for wt in weights])
    slots = logits.shape[1]
    weight_name = "dispatch weight" if mode == "dispatch" else "clustering weight"
    direction = "softmax over slots" if mode == "dispatch" else "softmax over pixels"
    caption = _caption(
        loaded,
        f"{name} (GLMix, {slots} slots, {h}x{w} map)",
        f"input {_image_label(image, image_label)}, {img.shape[-2]}x{img.shape[-1]}",
        f"slot {mode} weights ({direction}); representatives {reps[0].tolist()} by k-medoids",
    )
    what = "slots" if mode == "dispatch" else "slots-clustering"
    path = figures.plot_slots(
        img,
        weights[0],
        assignment[0],
        reps[0].tolist(),
        caption,
        Path(out) / _file_name(loaded.name, what, name),
        weight_name,
    )
    return SlotMaps(
        [path], loaded.name, name, mode, logits, weights, assignment, reps, img, caption
    )


# --- attention ----------------------------------------------------------------------------------
def _token_grid(tokens: int, shapes: Sequence[torch.Size], image: Tensor) -> tuple[int, int]:
    """(h, w) of a token sequence, from the innermost NCHW input of the layer's ancestors."""
    for shape in reversed(shapes):
        if len(shape) == 4 and shape[-2] * shape[-1] == tokens:
            return int(shape[-2]), int(shape[-1])
    ih, iw = image.shape[-2:]
    for h in range(1, tokens + 1):  # fall back to the image's aspect ratio
        if tokens % h == 0 and h * iw == (tokens // h) * ih:
            return h, tokens // h
    raise ValueError(f"cannot tell the map size of a sequence of {tokens} tokens")


def _grid_cell(point: tuple[float, float], image_size: tuple[int, int], grid: tuple[int, int]):
    (y, x), (ih, iw), (h, w) = point, image_size, grid
    if not (0 <= y < ih and 0 <= x < iw):
        raise ValueError(f"query pixel ({y}, {x}) lies outside the {ih}x{iw} input image")
    return min(h - 1, int(y * h / ih)), min(w - 1, int(x * w / iw))


def _scatter_rows(rows: Tensor, index: Tensor, size: int) -> Tensor:
    """(B, heads, K) rows with key indices (K,) -> (B, heads, size), repeated indices summed."""
    out = rows.new_zeros(*rows.shape[:-1], size)
    return out.scatter_add_(-1, index.expand_as(rows), rows)


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def visualize_attention(
    model: str | nn.Module,
    image: ImageInput,
    *,
    block: str | int | None = None,
    queries: Sequence[tuple[float, float]] | None = None,
    checkpoint: str | os.PathLike | None = None,
    out: str | os.PathLike = DEFAULT_OUT,
    img_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    seed: int = 0,
    deploy: bool = False,
    weights_label: str | None = None,
    image_label: str | None = None,
) -> AttentionMaps:
    """Where chosen query pixels attend in one layer, overlaid on the image (mean over heads).

    Supported layers: ACmix (the k_att x k_att window around each query; keys reflected at the
    border as the module does), SAN / ACmix-SAN patchwise attention (the k x k window, likewise;
    its weights have no softmax and are per channel group: the figure shows their mean over the
    groups, on a signed colour scale when negative), Swin / ACmix-Swin window attention (the
    query's (shifted) window), PVT / ACmix-PVT spatial-reduction attention (every reduced key's
    weight spread over the r x r patch it summarises; pixels past the last whole patch, which no
    key reads, get 0; in a stage with a class token its weight is left out of the map, as global
    attention maps show pixels only), ``GlobalSelfAttention2d`` and GLNet's full MHSA blocks (all
    pixels). The weights are recomputed from the layer's parameters through each operator's own
    hook (:mod:`convattn.viz.weights`).

    Args:
        model: a registered name or an ``nn.Module`` (see the module docstring).
        image: an image file or a (C, H, W) tensor in [0, 1].
        block: an attention layer, by path or index (default: the middle one).
        queries: (y, x) pixels of the input image (after resizing); default
            :data:`DEFAULT_QUERIES` (fractions of the image). Each is moved to the centre of the map
            cell (ACmix with stride: the strided query cell) that holds it.
        checkpoint: weights to load (default: random init from ``seed``).
        out: folder of the PNG.
        img_size: input size (default: the checkpoint's, else the pretrained cfg's; a tensor
            image keeps its size).
        mean: normalisation mean (default: the checkpoint's, else the pretrained cfg's).
        std: normalisation standard deviation (same defaults).
        seed: seed of the random init.
        deploy: re-parameterise the model first.
        weights_label: the caption's description of the weights.
        image_label: the caption's description of the image.

    Returns:
        :class:`AttentionMaps`.
    """
    loaded = _load_model(model, checkpoint, seed, deploy, weights_label)
    name, layer = resolve_layer(loaded.module, "attention", block, loaded.name)
    img, x = _prepare_image(image, loaded, img_size, mean, std)
    ih, iw = img.shape[-2:]
    points = [(fy * ih, fx * iw) for fy, fx in DEFAULT_QUERIES] if queries is None else queries
    if not points:
        raise ValueError("give at least one query pixel")
    points = [(float(y), float(x)) for y, x in points]

    watch = {name: layer}
    if isinstance(layer, WindowAttention):  # the block prepares the map the attention sees
        block_name = name.rpartition(".")[0]
        watch = {block_name: loaded.module.get_submodule(block_name)}
    elif isinstance(layer, MultiheadSelfAttention):  # the map size comes from an NCHW ancestor
        watch |= {a: loaded.module.get_submodule(a) for a in _ancestors(name)}
    seen = _run(loaded, x, watch, [next(iter(watch))])

    cells, rows, maps = [], [], []
    units = "heads"
    weight_text = "attention weights of the query pixels (softmax over keys, mean over heads)"
    if isinstance(layer, (ACmix, PatchwiseSelfAttention)):
        inp = seen[name][0]
        h, w = inp.shape[-2:]
        s = layer.stride
        # On the CPU in float32 from here: small tensors, and the index tensors live there.
        if isinstance(layer, ACmix):
            weights = acmix_attention_weights(layer, inp)  # (B, heads, k*k, H', W')
            index = acmix_window_index(layer, h, w)
            operator = f"ACmix window {layer.kernel_att}x{layer.kernel_att}"
        else:
            weights = san_attention_weights(layer, inp)  # (B, groups, k*k, H', W')
            index = san_window_index(layer, h, w)
            operator = f"SAN patchwise {layer.kernel_size}x{layer.kernel_size}"
            units = "channel groups"
            weight_text = (
                "patchwise window weights of the query pixels (SAN: no softmax, may be "
                "negative; mean over channel groups)"
            )
        weights = weights.float().cpu()
        operator += f", stride {s}" if s > 1 else ""
        for p in points:
            gy, gx = _grid_cell(p, (ih, iw), (h, w))
            # Queries sit on the stride grid: take the nearest strided pixel.
            qy = min(weights.shape[-2] - 1, (gy + s // 2) // s)
            qx = min(weights.shape[-1] - 1, (gx + s // 2) // s)
            row = weights[..., qy, qx]
            cells.append((s * qy, s * qx))
            rows.append(row)
            maps.append(_scatter_rows(row, index[:, qy, qx], h * w).view(*row.shape[:2], h, w))
    elif isinstance(layer, SpatialReductionAttention):
        tokens, size = seen[name][0], seen[name][1]
        h, w = int(size[0]), int(size[1])
        _, _, prefix = layer.check_input(tokens, (h, w))
        weights = sr_attention_weights(layer, tokens, (h, w)).float().cpu()  # (B, heads, L, m)
        keys = sr_key_index(layer, h, w, prefix).flatten()  # (H*W,), -1: read by no key
        covered = keys >= 0
        # Each key's weight is spread evenly over the pixels it covers (its r x r patch).
        share = torch.bincount(keys[covered], minlength=weights.shape[-1]).clamp(min=1)
        spread = (covered.float() / share[keys.clamp(min=0)]).view(h, w)
        r = layer.sr_ratio
        operator = f"PVT spatial reduction {r}x{r}" if r > 1 else "PVT global (no reduction)"
        operator += f", {weights.shape[-1] - prefix} keys"
        if r > 1:
            weight_text = (
                "attention weights of the query pixels (softmax over the reduced keys, each "
                f"key's weight spread over its {r}x{r} patch; mean over heads)"
            )
        if prefix:
            operator += f" + {prefix} class token"
            weight_text += "; the class token's weight is not drawn"
        for p in points:
            gy, gx = _grid_cell(p, (ih, iw), (h, w))
            row = weights[:, :, prefix + gy * w + gx]  # (B, heads, m), class token first
            cells.append((gy, gx))
            rows.append(row)
            maps.append(row[..., keys.clamp(min=0)].view(*row.shape[:2], h, w) * spread)
    elif isinstance(layer, WindowAttention):
        block_name = name.rpartition(".")[0]
        block_module = loaded.module.get_submodule(block_name)
        win = swin_window_attention_weights(block_module, seen[block_name][0])
        h, w = win.size
        ws, shift = win.window, win.shift
        operator = f"Swin window {ws}x{ws}" + (f", shift {shift}" if shift else "")
        for p in points:
            gy, gx = _grid_cell(p, (ih, iw), (h, w))
            row, on_map = win.of_query(gy, gx)  # (B, heads, n) and (B, heads, H, W)
            cells.append((gy, gx))
            rows.append(row.float().cpu())
            maps.append(on_map.float().cpu())
    else:
        if isinstance(layer, GlobalSelfAttention2d):
            inp = seen[name][0]
            weights = global_attention_weights(layer, inp).float().cpu()
            h, w = -(-inp.shape[-2] // layer.stride), -(-inp.shape[-1] // layer.stride)
        else:
            tokens_in = seen[name][0]
            weights = multihead_attention_weights(layer, tokens_in).float().cpu()
            inputs = [seen[a][0] for a in _ancestors(name) if a in seen]
            shapes = [t.shape for t in inputs if isinstance(t, Tensor)]
            h, w = _token_grid(tokens_in.shape[1], shapes, img)
        operator = "global"
        for p in points:
            gy, gx = _grid_cell(p, (ih, iw), (h, w))
            row = weights[:, :, gy * w + gx]
            cells.append((gy, gx))
            rows.append(row)
            maps.append(row.view(*row.shape[:2], h, w))

    rows_t = torch.stack(rows, dim=2).float().cpu()
    maps_t = torch.stack(maps, dim=2).float().cpu()
    queries_t = torch.tensor(cells, dtype=torch.long)
    centres = torch.tensor([((cy + 0.5) * ih / h, (cx + 0.5) * iw / w) for cy, cx in cells])
    heads = rows_t.shape[1]
    caption = _caption(
        loaded,
        f"{name} ({type(layer).__name__}: {operator}, {heads} {units}, {h}x{w} map)",
        f"input {_image_label(image, image_label)}, {ih}x{iw}",
        weight_text,
    )
    shown = maps_t[0].mean(dim=0)
    path = figures.plot_attention(
        img,
        shown,
        [tuple(c.tolist()) for c in centres],
        caption,
        Path(out) / _file_name(loaded.name, "attention", name),
        signed=bool((shown < 0).any()),
    )
    return AttentionMaps(
        [path],
        loaded.name,
        name,
        operator,
        queries_t,
        centres,
        rows_t,
        maps_t,
        (h, w),
        img,
        caption,
    )


# --- kernels --------------------------------------------------------------------------------------
def visualize_kernels(
    model: str | nn.Module,
    image: ImageInput,
    *,
    block: str | int | None = None,
    checkpoint: str | os.PathLike | None = None,
    out: str | os.PathLike = DEFAULT_OUT,
    img_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    seed: int = 0,
    deploy: bool = False,
    weights_label: str | None = None,
    image_label: str | None = None,
) -> KernelMaps:
    """X-volution: per pixel, the norm of the content-dependent kernel part against the static one.

    In deploy form an X-volution layer is one convolution whose kernel at pixel p is
    ``W_static + W_dynamic * x_p`` (``docs/notes/xvolution.md`` §3); :meth:`XVolution.kernel_magnitudes`
    gives both norms without building per-pixel kernels, in the training form (BNs folded on the
    fly) and the deploy form alike. Large ratios mark where the attention part reshapes the filter.

    Args:
        model: a registered name or an ``nn.Module`` (see the module docstring).
        image: an image file or a (C, H, W) tensor in [0, 1].
        block: an X-volution (PSSA) layer, by path or index (default: the middle one).
        checkpoint: weights to load (default: random init from ``seed``).
        out: folder of the PNG.
        img_size: input size (default: the checkpoint's, else the pretrained cfg's; a tensor
            image keeps its size).
        mean: normalisation mean (default: the checkpoint's, else the pretrained cfg's).
        std: normalisation standard deviation (same defaults).
        seed: seed of the random init.
        deploy: re-parameterise the model first.
        weights_label: the caption's description of the weights.
        image_label: the caption's description of the image.

    Returns:
        :class:`KernelMaps`.
    """
    loaded = _load_model(model, checkpoint, seed, deploy, weights_label)
    name, layer = resolve_layer(loaded.module, "kernels", block, loaded.name)
    img, x = _prepare_image(image, loaded, img_size, mean, std)
    seen = _run(loaded, x, {name: layer}, [name])
    static, dynamic = layer.kernel_magnitudes(seen[name][0])
    static, dynamic = static.float().cpu(), dynamic.float().cpu()
    h, w = dynamic.shape[-2:]
    form = "deploy form" if layer.deploy else "training form"
    caption = _caption(
        loaded,
        f"{name} (XVolution {layer.kernel_size}x{layer.kernel_size}, {form}, {h}x{w} map)",
        f"input {_image_label(image, image_label)}, {img.shape[-2]}x{img.shape[-1]}",
        "dynamic (content-dependent) vs static kernel norm per output pixel",
    )
    path = figures.plot_kernels(
        img, static[0], dynamic[0], caption, Path(out) / _file_name(loaded.name, "kernels", name)
    )
    return KernelMaps([path], loaded.name, name, static, dynamic, bool(layer.deploy), img, caption)


# --- rates ----------------------------------------------------------------------------------------
def visualize_rates(
    model: str | nn.Module,
    *,
    checkpoint: str | os.PathLike | None = None,
    out: str | os.PathLike = DEFAULT_OUT,
    seed: int = 0,
    deploy: bool = False,
    weights_label: str | None = None,
) -> RateBars:
    """ACmix's learned ``rate1`` (attention path) and ``rate2`` (convolution path) of every layer.

    Every operator with ACmix's two rates counts: ACmix, ACmix-Swin window attention, ACmix-SAN
    patchwise attention and ACmix-PVT spatial-reduction attention.

    A bar pair per ACmix layer, shallow to deep, with the attention share |rate1| / (|rate1| +
    |rate2|): how much each depth of the model relies on attention rather than convolution. No
    image is needed. Re-parameterised layers read 1 / 1 (the rates are folded into the weights);
    the caption says so.

    Args:
        model: a registered name or an ``nn.Module`` (see the module docstring).
        checkpoint: weights to load (default: random init from ``seed``).
        out: folder of the PNG.
        seed: seed of the random init.
        deploy: re-parameterise the model first (the rates then read 1).
        weights_label: the caption's description of the weights.

    Returns:
        :class:`RateBars`.
    """
    loaded = _load_model(model, checkpoint, seed, deploy, weights_label)
    resolve_layer(loaded.module, "rates", None, loaded.name)  # clear error if there is none
    layers = find_layers(loaded.module, "rates")
    names = [n for n, _ in layers]
    rate1 = torch.tensor([float(m.rate1.detach()) for _, m in layers])
    rate2 = torch.tensor([float(m.rate2.detach()) for _, m in layers])
    note = ""
    if bool((rate1 == 1).all() and (rate2 == 1).all()):
        note = " (all 1: re-parameterised, the rates are folded into the weights)"
    caption = (
        f"{loaded.name} | {len(names)} ACmix layers | {loaded.weights}\n"
        f"learned path weights: out = rate1 * attention + rate2 * convolution{note}"
    )
    path = figures.plot_rates(
        names, rate1, rate2, caption, Path(out) / _file_name(loaded.name, "rates", None)
    )
    return RateBars([path], loaded.name, names, rate1, rate2, caption)


# --- one entry point ----------------------------------------------------------------------------
def visualize(
    what: str,
    model: str | nn.Module,
    image: ImageInput | None = None,
    **kwargs: Any,
) -> SlotMaps | AttentionMaps | KernelMaps | RateBars:
    """Dispatch to ``visualize_<what>`` (``what`` in ``slots``, ``attention``, ``kernels``, ``rates``).

    Args:
        what: which visualisation.
        model: a registered name or an ``nn.Module``.
        image: the input image; required except for ``rates``.
        **kwargs: options of the chosen function.

    Returns:
        That function's result.
    """
    check_choice(what, "what", WHATS, "visualize")
    if what == "rates":
        return visualize_rates(model, **kwargs)
    if image is None:
        raise ValueError(f"--what {what} needs an input image (--image FILE)")
    fn = {
        "slots": visualize_slots,
        "attention": visualize_attention,
        "kernels": visualize_kernels,
    }[what]
    return fn(model, image, **kwargs)
