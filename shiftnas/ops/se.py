"""ElasticSE: squeeze-and-excitation over the active channels (MobileNetV3 / AttentiveNAS).

mean-pool -> 1x1 conv to mid = make_divisible(C // reduction, 8) -> ReLU -> 1x1 conv back to C
-> hard-sigmoid -> scale x. The reduced width follows the active width C (the OFA /
AttentiveNAS `DynamicSE` rule), so a sliced subnet equals a plain SE of its size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..spaces.cnn import se_mid
from .conv import ElasticConv2d

__all__ = ["ElasticSE", "se_mid"]


class ElasticSE(nn.Module):
    def __init__(self, channels: int, reduction: int = 4, device=None, dtype=None):
        super().__init__()
        self.channels, self.reduction = channels, reduction
        mid = se_mid(channels, reduction)
        kw = {"device": device, "dtype": dtype}
        self.reduce = ElasticConv2d(channels, mid, 1, bias=True, **kw)
        self.expand = ElasticConv2d(mid, channels, 1, bias=True, **kw)

    def forward(self, x: torch.Tensor, mid: int | None = None) -> torch.Tensor:
        """`mid`: the reduce width when x is wider than the subnet (full-width Eq. 9 path: the
        channels beyond the subnet's are zero); default: se_mid of x's width."""
        c = x.shape[1]
        s = x.mean((2, 3), keepdim=True)
        s = F.relu(self.reduce(s, se_mid(c, self.reduction) if mid is None else mid))
        s = F.hardsigmoid(self.expand(s, c))
        return x * s
