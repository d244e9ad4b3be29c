"""ElasticMLP: fc2(GELU(fc1(x))) over an active hidden width (AutoFormer's per-layer mlp ratio)."""
from __future__ import annotations

import torch
from torch import nn

from . import dispatch
from .linear import ElasticLinear

__all__ = ["ElasticMLP"]


class ElasticMLP(nn.Module):
    def __init__(self, embed_dim: int, hidden_dim: int, device=None, dtype=None):
        super().__init__()
        self.fc1 = ElasticLinear(embed_dim, hidden_dim, device=device, dtype=dtype)
        self.fc2 = ElasticLinear(hidden_dim, embed_dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, hidden: int, hidden_mask: torch.Tensor | None = None,
                tap: bool = False) -> torch.Tensor:
        """x[..., E] -> [..., E]; `hidden_mask` (width `hidden`) multiplies the GELU output (`tap`:
        its value is 1, the prefix path's; `ref.mask_tap`)."""
        f1, f2 = self.fc1, self.fc2
        return dispatch.call("mlp", x, f1.weight, f1.bias, f2.weight, f2.bias, hidden, hidden_mask, tap)
