"""ElasticPatchEmbed: non-overlapping patch projection to the active embed dim."""
from __future__ import annotations

import torch
from torch import nn

from . import dispatch

__all__ = ["ElasticPatchEmbed"]


class ElasticPatchEmbed(nn.Module):
    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, device=None, dtype=None):
        super().__init__()
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.num_patches = (img_size // patch_size) ** 2
        self.weight = nn.Parameter(torch.empty(embed_dim, in_chans, patch_size, patch_size, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(embed_dim, device=device, dtype=dtype))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor, embed_dim: int) -> torch.Tensor:
        """x[B, C, H, W] -> tokens [B, num_patches, embed_dim]."""
        p = self.patch_size
        y = dispatch.call("conv2d", x, self.weight, self.bias, embed_dim, p, 0)
        return y.flatten(2).transpose(1, 2)
