"""ElasticLinear: a max-size linear layer run at an active (out, in) prefix."""
from __future__ import annotations


import torch
from torch import nn

from . import dispatch

__all__ = ["ElasticLinear"]


class ElasticLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.weight, std=0.02)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor, out_features: int, activation: str | None = None) -> torch.Tensor:
        """x[..., in] -> [..., out_features], in = x.shape[-1] <= in_features."""
        return dispatch.call("linear", x, self.weight, self.bias, out_features, activation)

    def active_weights(self, out_features: int, in_features: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Copies of the active weight and bias, for export."""
        w = self.weight[:out_features, :in_features].detach().clone()
        b = None if self.bias is None else self.bias[:out_features].detach().clone()
        return w, b

    def extra_repr(self) -> str:
        return f"max_in={self.in_features}, max_out={self.out_features}, bias={self.bias is not None}"


