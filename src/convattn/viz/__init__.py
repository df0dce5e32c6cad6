"""convattn.viz: seeing what the hybrids learned.

* GLMix slot maps (:func:`visualize_slots`): every slot's dispatch or clustering weights, the hard
  assignment and k-medoids representative slots, as in the GLMix paper's figure.
* Attention maps (:func:`visualize_attention`): where chosen query pixels attend in ACmix windows,
  SAN / ACmix-SAN patchwise windows, Swin / ACmix-Swin windows, PVT / ACmix-PVT spatial-reduction
  attention and global self-attention, recomputed from each module's parameters through the
  operator's own hook (:mod:`convattn.viz.weights`).
* X-volution kernels (:func:`visualize_kernels`): per pixel, the dynamic kernel part against the
  static one, in the training and the deploy form.
* ACmix rates (:func:`visualize_rates`): the learned attention / convolution weights per depth
  (ACmix, ACmix-Swin, ACmix-SAN and ACmix-PVT layers).

Each function writes one deterministic PNG and returns it with the tensors behind it; the CLI is
``convattn viz``. Layers are picked with :func:`resolve_layer` (a module path or an index).
"""

from .core import (
    DEFAULT_QUERIES,
    AttentionMaps,
    KernelMaps,
    RateBars,
    SlotMaps,
    select_representatives,
    visualize,
    visualize_attention,
    visualize_kernels,
    visualize_rates,
    visualize_slots,
)
from .select import WHATS, available_layers, find_layers, resolve_layer
from .weights import (
    SLOT_MODES,
    SwinWindowWeights,
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
    "SLOT_MODES",
    "WHATS",
    "AttentionMaps",
    "KernelMaps",
    "RateBars",
    "SlotMaps",
    "SwinWindowWeights",
    "acmix_attention_weights",
    "acmix_window_index",
    "available_layers",
    "find_layers",
    "global_attention_weights",
    "multihead_attention_weights",
    "resolve_layer",
    "san_attention_weights",
    "san_window_index",
    "select_representatives",
    "slot_assignments",
    "sr_attention_weights",
    "sr_key_index",
    "swin_window_attention_weights",
    "visualize",
    "visualize_attention",
    "visualize_kernels",
    "visualize_rates",
    "visualize_slots",
]
