"""A ViT-style global-attention reference for the model benchmark (bench-only, not in the zoo).

Global self-attention costs O(N^2) in the number of tokens, which is what GLMix (arXiv 2411.14429,
``docs/notes/glmix.md`` §4) and windowed attention (Swin, ACmix-Swin) avoid. This reference puts
that cost next to the library's backbones in the resolution sweep: a ViT-S/16-sized isotropic
network (a 16x16 stride-16 patch embedding, 12 pre-norm blocks of
:class:`~convattn.layers.attention.GlobalSelfAttention2d` + MLP at width 384 with 6 heads, global
average pooling, a linear classifier: 22 M parameters, 4.6 GMACs at 224x224 like ViT-S/16).

It has no positional embedding: a learned one would have to be interpolated at every resolution,
and it does not change the cost being measured. It is registered in the benchmark's own catalogue
(``convattn bench --models vit_reference``), not in :func:`convattn.models.list_models`, because it
is never trained or evaluated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers._checks import check_feature_map, check_positive_int
from ..layers.attention import GlobalSelfAttention2d
from ..layers.norm import LayerNorm2d

__all__ = ["VitReference", "vit_reference"]


class _Mlp(nn.Module):
    """Two pointwise layers with GELU, applied to channels-last tokens (Linear, not 1x1 conv)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc2(F.gelu(self.fc1(x.permute(0, 2, 3, 1))))
        return y.permute(0, 3, 1, 2)


class _Block(nn.Module):
    """Pre-norm transformer block on an NCHW map: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(dim)
        self.attn = GlobalSelfAttention2d(dim, dim, num_heads=num_heads)
        self.norm2 = LayerNorm2d(dim)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VitReference(nn.Module):
    """Isotropic global-attention network at stride ``patch_size`` (ViT-S/16 by default).

    Args:
        num_classes: classifier outputs (0: return pooled features).
        in_chans: input channels.
        embed_dim: token width.
        depth: number of blocks.
        num_heads: attention heads per block (must divide ``embed_dim``).
        mlp_ratio: MLP hidden width / ``embed_dim``.
        patch_size: patch embedding kernel and stride; the input must be at least this large.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        patch_size: int = 16,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.in_chans = check_positive_int(in_chans, "in_chans", owner)
        self.patch_size = check_positive_int(patch_size, "patch_size", owner)
        check_positive_int(depth, "depth", owner)
        self.num_classes = num_classes
        self.num_features = embed_dim
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.blocks = nn.Sequential(
            *[_Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth)]
        )
        self.norm = LayerNorm2d(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, num_classes) logits; H and W must be >= ``patch_size``."""
        p = self.patch_size
        check_feature_map(x, self.in_chans, type(self).__name__, min_size=(p, p))
        x = self.norm(self.blocks(self.patch_embed(x)))
        return self.head(x.mean(dim=(2, 3)))


def vit_reference(**kwargs) -> VitReference:
    """ViT-S/16-sized global-attention reference (see :class:`VitReference`)."""
    return VitReference(**kwargs)
