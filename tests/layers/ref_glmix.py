"""Literal reference of the GLMix block and mixer: the test oracle.

Written straight from the steps of docs/notes/glmix.md §1, with explicit loops over slots,
pixels, heads, pooling cells and kernel taps, and no code shared with ``convattn.layers.glmix``.
Deliberately slow; use tiny sizes. Every function takes an official-layout state dict: the keys of
one ``stages.s.blocks.b.`` entry of tests/official_keys/glnet_*.json with that prefix removed (plus
``proj.*`` for the drop-in mixer with ``out_channels != in_channels``). Which optional parts exist
(CPE, learned slots, MLP depthwise conv, LayerScale) is read from which keys are present.
"""

from __future__ import annotations

import math

import torch

State = dict[str, torch.Tensor]


def layer_norm_channels(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the channels of every pixel of an NCHW map (eps 1e-6, biased variance)."""
    mean = x.mean(dim=1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-6) * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


def conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """out[b, o, i, j] = sum_c weight[o, c] * x[b, c, i, j] + bias[o]."""
    return torch.einsum("oc,bchw->bohw", weight[:, :, 0, 0], x) + bias.view(1, -1, 1, 1)


def depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """'Same' zero-padded depthwise k x k convolution, one loop iteration per kernel tap."""
    k = weight.shape[-1]
    r = k // 2
    _, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (r, r, r, r))
    out = torch.zeros_like(x) + bias.view(1, -1, 1, 1)
    for dy in range(k):
        for dx in range(k):
            tap = weight[:, 0, dy, dx].view(1, -1, 1, 1)
            out = out + tap * padded[:, :, dy : dy + h, dx : dx + w]
    return out


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact GELU: x * Phi(x)."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def l2_normalize(v: torch.Tensor) -> torch.Tensor:
    """v / max(||v||_2, 1e-12) along the last dimension."""
    return v / torch.sqrt((v * v).sum(-1, keepdim=True)).clamp_min(1e-12)


def softmax(v: torch.Tensor) -> torch.Tensor:
    """Softmax of a 1-D vector."""
    e = torch.exp(v - v.max())
    return e / e.sum()


def adaptive_avg_pool_cells(x: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, grid*grid, C): mean of each adaptive-pooling cell, row-major.

    Cell (i, j) covers rows floor(i*H/g) .. ceil((i+1)*H/g) - 1 (same for columns).
    """
    h, w = x.shape[-2:]
    cells = []
    for i in range(grid):
        r0, r1 = (i * h) // grid, -((-(i + 1) * h) // grid)
        for j in range(grid):
            c0, c1 = (j * w) // grid, -((-(j + 1) * w) // grid)
            cells.append(x[:, :, r0:r1, c0:c1].mean(dim=(2, 3)))
    return torch.stack(cells, dim=1)


def stride_avg_pool(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Mean of each stride x stride window; windows past the edge average their in-bounds pixels."""
    b, c, h, w = x.shape
    oh, ow = -(-h // stride), -(-w // stride)
    out = x.new_zeros(b, c, oh, ow)
    for i in range(oh):
        for j in range(ow):
            window = x[:, :, i * stride : (i + 1) * stride, j * stride : (j + 1) * stride]
            out[:, :, i, j] = window.mean(dim=(2, 3))
    return out


def slot_self_attention(slots: torch.Tensor, state: State, num_heads: int) -> torch.Tensor:
    """Multi-head self-attention among slots (B, S, C) with nn.MultiheadAttention's packed keys.

    One loop iteration per head: softmax(q_h k_h^T / sqrt(d)) v_h, heads concatenated, then the
    output projection.
    """
    c = slots.shape[-1]
    d = c // num_heads
    w_in, b_in = state["relation_mha.in_proj_weight"], state["relation_mha.in_proj_bias"]
    q = slots @ w_in[:c].T + b_in[:c]
    k = slots @ w_in[c : 2 * c].T + b_in[c : 2 * c]
    v = slots @ w_in[2 * c :].T + b_in[2 * c :]
    heads = []
    for head in range(num_heads):
        part = slice(head * d, (head + 1) * d)
        scores = q[..., part] @ k[..., part].transpose(-1, -2) / math.sqrt(d)
        heads.append(torch.softmax(scores, dim=-1) @ v[..., part])
    out = torch.cat(heads, dim=-1)
    return out @ state["relation_mha.out_proj.weight"].T + state["relation_mha.out_proj.bias"]


def glmix_mixer(
    z: torch.Tensor,
    slot_source: torch.Tensor,
    state: State,
    *,
    num_heads: int,
    num_slots: int,
) -> torch.Tensor:
    """Spec steps 1 and 4-9 on the map ``z``: global slot branch + local conv branch."""
    b, c, h, w = z.shape
    n = h * w
    # Step 1: initial slots (B, S, C).
    if "init_slots" in state:
        init = state["init_slots"].expand(b, -1, -1)
    else:
        init = adaptive_avg_pool_cells(slot_source, math.isqrt(num_slots))
    s = init.shape[1]
    pixels = z.reshape(b, c, n).transpose(1, 2)  # (B, N, C), pixel index = row * W + col
    # Step 4: logits[b, s, n] = slot_scale * cos(init slot s, pixel n).
    slot_dirs, pixel_dirs = l2_normalize(init), l2_normalize(pixels)
    logits = z.new_zeros(b, s, n)
    for bi in range(b):
        for si in range(s):
            logits[bi, si] = state["slot_scale"] * (pixel_dirs[bi] * slot_dirs[bi, si]).sum(-1)
    # Step 5: clustering, softmax over pixels, slot = weighted sum of pixel features.
    slots = z.new_zeros(b, s, c)
    for bi in range(b):
        for si in range(s):
            weights = softmax(logits[bi, si])
            slots[bi, si] = (weights[:, None] * pixels[bi]).sum(0)
    # Step 6: slot MHSA, no residual or norm.
    slots = slot_self_attention(slots, state, num_heads)
    # Step 7: dispatch with the same logits, softmax over slots for every pixel.
    global_branch = z.new_zeros(b, n, c)
    for bi in range(b):
        for ni in range(n):
            weights = softmax(logits[bi, :, ni])
            global_branch[bi, ni] = (weights[:, None] * slots[bi]).sum(0)
    global_branch = global_branch.transpose(1, 2).reshape(b, c, h, w)
    # Step 8: local branch 1x1 -> depthwise kxk -> 1x1, no activation.
    local = conv1x1(z, state["feature_conv.0.weight"], state["feature_conv.0.bias"])
    local = depthwise_conv(local, state["feature_conv.1.weight"], state["feature_conv.1.bias"])
    local = conv1x1(local, state["feature_conv.2.weight"], state["feature_conv.2.bias"])
    # Step 9: fusion by a plain sum.
    return global_branch + local


def glmix_operator(
    x: torch.Tensor,
    state: State,
    *,
    num_heads: int,
    num_slots: int,
    stride: int = 1,
    slot_source: torch.Tensor | None = None,
) -> torch.Tensor:
    """The drop-in mixer: stride pooling, mixer (slots from ``slot_source``, default the raw ``x``),
    then the ``proj`` 1x1 convolution when present."""
    source = x if slot_source is None else slot_source
    if stride > 1:
        x = stride_avg_pool(x, stride)
    out = glmix_mixer(x, source, state, num_heads=num_heads, num_slots=num_slots)
    if "proj.weight" in state:
        out = conv1x1(out, state["proj.weight"], state["proj.bias"])
    return out


def glmix_block(
    x: torch.Tensor,
    state: State,
    *,
    num_heads: int,
    num_slots: int,
    branch_scales: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Spec steps 1-13. ``branch_scales`` = per-sample (B,) factors of the two residual branches
    (what DropPath multiplies by); None means eval mode (both 1)."""
    raw = x
    # Step 2: conv position embedding; its output is the residual shortcut.
    if "pos_conv.weight" in state:
        x = x + depthwise_conv(x, state["pos_conv.weight"], state["pos_conv.bias"])
    # Steps 3-9 (step 1 inside: slots from the raw input).
    z = layer_norm_channels(x, state["norm1.weight"], state["norm1.bias"])
    mixed = glmix_mixer(z, raw, state, num_heads=num_heads, num_slots=num_slots)
    # Steps 10, 12, 13: LayerScale, DropPath, residual.
    if "ls1.gamma" in state:
        mixed = mixed * state["ls1.gamma"]
    if branch_scales is not None:
        mixed = mixed * branch_scales[0].view(-1, 1, 1, 1)
    x = x + mixed
    # Step 11: MLP 1x1 -> [h + DW3x3(h)] -> GELU -> 1x1 on norm2(x).
    hidden = conv1x1(
        layer_norm_channels(x, state["norm2.weight"], state["norm2.bias"]),
        state["mlp.0.weight"],
        state["mlp.0.bias"],
    )
    if "mlp.1.weight" in state:
        hidden = hidden + depthwise_conv(hidden, state["mlp.1.weight"], state["mlp.1.bias"])
    mlp = conv1x1(gelu(hidden), state["mlp.3.weight"], state["mlp.3.bias"])
    if "ls2.gamma" in state:
        mlp = mlp * state["ls2.gamma"]
    if branch_scales is not None:
        mlp = mlp * branch_scales[1].view(-1, 1, 1, 1)
    return x + mlp
