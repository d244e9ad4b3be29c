"""ElasticBatchNorm2d: BatchNorm over the active channel prefix with sliced running stats.

The running statistics are sliced as views, so a training step updates only the prefix it
saw (BigNAS / OFA semantics); the update is always momentum-based (`momentum=None`, the
cumulative average, is not supported: its counter would be shared by all widths).
"""

from __future__ import annotations

import torch
from torch import nn

from . import dispatch

__all__ = ["ElasticBatchNorm2d"]


class ElasticBatchNorm2d(nn.Module):
    def __init__(
        self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, device=None, dtype=None
    ):
        super().__init__()
        if not isinstance(momentum, (int, float)) or not 0.0 <= momentum <= 1.0:
            raise ValueError(
                f"ElasticBatchNorm2d: momentum={momentum!r} must be a number in [0, 1]"
            )
        self.num_features, self.eps, self.momentum = num_features, eps, float(momentum)
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.ones(num_features, **kw))
        self.bias = nn.Parameter(torch.zeros(num_features, **kw))
        self.register_buffer("running_mean", torch.zeros(num_features, **kw))
        self.register_buffer("running_var", torch.ones(num_features, **kw))
        # Kept for state-dict compatibility with nn.BatchNorm2d (the export copies it).
        self.register_buffer(
            "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise x's channels (x.shape[1] <= num_features) with the matching prefix."""
        if x.shape[1] > self.num_features:
            raise ValueError(
                f"ElasticBatchNorm2d: {x.shape[1]} channels exceed the max {self.num_features}"
            )
        if self.training:
            self.num_batches_tracked.add_(1)
        return dispatch.call(
            "batch_norm",
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training,
            self.momentum,
            self.eps,
        )

    def extra_repr(self) -> str:
        return f"max={self.num_features}, eps={self.eps}, momentum={self.momentum}"
