"""ElasticLayerNorm: LayerNorm over the active prefix of channels (weights sized to the max)."""
from __future__ import annotations

import torch
from torch import nn

from . import dispatch

__all__ = ["ElasticLayerNorm"]


class ElasticLayerNorm(nn.Module):
    def __init__(self, num_features: int, eps: float = 1e-6, device=None, dtype=None):
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.weight = nn.Parameter(torch.ones(num_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(num_features, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, active: int | None = None) -> torch.Tensor:
        """Normalise the first `active` (default: all of x's) channels; output width `active`."""
        active = x.shape[-1] if active is None else active
        return dispatch.call("layer_norm", x, self.weight, self.bias, active, self.eps)

    def masked(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """LayerNorm whose statistics weigh channel c by mask[c] (a prefix mask over x's width).

        With a hard 0/1 mask it equals `forward(x, active)` on the active channels and is zero
        beyond them; mask is differentiable, so a wider candidate gets a gradient (the
        full-width Eq. 9 path of `ArchSample`). Plain PyTorch: this path is not a fast path.
        """
        c = x.shape[-1]
        if mask.shape != (c,):
            raise ValueError(f"ElasticLayerNorm.masked: mask shape {tuple(mask.shape)}, expected ({c},)")
        m = mask.to(x.dtype)
        n = m.sum()
        mu = (x * m).sum(-1, keepdim=True) / n
        xc = (x - mu) * m
        var = (xc * xc).sum(-1, keepdim=True) / n
        return (xc * torch.rsqrt(var + self.eps) * self.weight[:c] + self.bias[:c]) * m

    def extra_repr(self) -> str:
        return f"max={self.num_features}, eps={self.eps}"
