"""MAC counting that matches the papers' convention.

MACs = ``FlopCounterMode`` total / 2. Two pitfalls are handled here (``docs/notes/glmix.md``
§4): on CPU, FlopCounterMode has no formula for the flash-attention SDPA kernel and silently drops
the QK^T / AV products, so counting runs under the SDPA *math* backend; and element-wise
multiply-and-sum attention is invisible to it, which is why our operators express attention
products with ``matmul``/``einsum``/SDPA.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_macs", "count_params", "count_train_macs"]


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those requiring grad)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_macs(
    module: nn.Module,
    input_shape: Sequence[int] | None = None,
    inputs: torch.Tensor | tuple[torch.Tensor, ...] | None = None,
) -> int:
    """Multiply-accumulates of one forward pass, attention products included.

    Give either ``input_shape`` (a random float tensor of that shape is used, on the module's device
    and dtype) or ``inputs``. The module is run in eval mode and restored afterwards.
    """
    if (input_shape is None) == (inputs is None):
        raise ValueError("count_macs: give exactly one of 'input_shape' or 'inputs'")
    if inputs is None:
        ref = next(iter(module.parameters()), None)
        device = ref.device if ref is not None else torch.device("cpu")
        dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
        inputs = torch.randn(*input_shape, device=device, dtype=dtype)
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    was_training = module.training
    module.eval()
    try:
        counter = FlopCounterMode(display=False)
        with sdpa_kernel([SDPBackend.MATH]), counter:
            module(*args)
    finally:
        module.train(was_training)
    return counter.get_total_flops() // 2


def _conv_backward_flops(
    grad_out_shape,
    x_shape,
    w_shape,
    _bias,
    _stride,
    _padding,
    _dilation,
    transposed,
    _output_padding,
    _groups,
    output_mask,
    out_shape=None,
    **kwargs,
) -> int:
    """FLOPs of ``aten.convolution_backward``, grouped convolutions included.

    Each requested gradient (input, weight) redoes every product of the forward once. torch's own
    formula ignores ``groups`` in the weight gradient (a depthwise conv's backward is overcounted
    by a factor of C), hence this replacement.
    """
    per_output = math.prod(
        w_shape[1:]
    )  # MACs per element of the conv's output (input if transposed)
    forward_macs = math.prod(x_shape if transposed else grad_out_shape) * per_output
    return 2 * forward_macs * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def count_train_macs(
    module: nn.Module,
    input_shape: Sequence[int] | None = None,
    inputs: torch.Tensor | None = None,
) -> int:
    """Multiply-accumulates of one forward + backward pass (the MAC work of a training step).

    The backward runs from ``output.float().sum()``; gradients are computed for the parameters
    and not for the input, as in training. The module is run in eval mode (same products as
    training mode, and batch-1 BatchNorm on a 1x1 map does not fail) and restored afterwards;
    parameter gradients are left as they were. The optimiser's element-wise update is not counted.
    Convolution backward uses a groups-aware formula (see :func:`_conv_backward_flops`).
    """
    if (input_shape is None) == (inputs is None):
        raise ValueError("count_train_macs: give exactly one of 'input_shape' or 'inputs'")
    if inputs is None:
        ref = next(iter(module.parameters()), None)
        device = ref.device if ref is not None else torch.device("cpu")
        dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
        inputs = torch.randn(*input_shape, device=device, dtype=dtype)
    params = [p for p in module.parameters() if p.requires_grad]
    was_training = module.training
    module.eval()
    try:
        counter = FlopCounterMode(
            display=False,
            custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flops},
        )
        with torch.enable_grad(), sdpa_kernel([SDPBackend.MATH]), counter:
            out = module(inputs)
            if params:
                torch.autograd.grad(out.float().sum(), params, allow_unused=True)
    finally:
        module.train(was_training)
    return counter.get_total_flops() // 2
