"""Elastic convolutions: max-size weights run at an active channel prefix and kernel size.

`ElasticConv2d` slices (out, in) channel prefixes. `ElasticDWConv2d` is depthwise with an
elastic kernel, OFA-style (Cai et al., "Once-for-All", ICLR 2020, arXiv 1908.09791): a smaller
kernel is the centre crop of the next-larger (already transformed) kernel, multiplied by a
learned k^2 x k^2 transform matrix, so the small kernels need not share the large kernel's
centre values exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from . import dispatch

__all__ = ["ElasticConv2d", "ElasticDWConv2d"]


def _init_conv(weight: torch.Tensor, groups: int = 1) -> None:
    # timm/EfficientNet init: N(0, sqrt(2 / fan_out)), fan_out = k*k*out/groups.
    out, _, kh, kw = weight.shape
    nn.init.normal_(weight, 0.0, math.sqrt(2.0 / max(1, kh * kw * out // groups)))


class ElasticConv2d(nn.Module):
    """Dense conv over the active prefix: weight[:out, :in] with in = x.shape[1]."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        bias: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(
                f"ElasticConv2d: kernel_size={kernel_size} must be odd (padding k//2 keeps the grid)"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = kernel_size, stride
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels, kernel_size, kernel_size, **kw)
        )
        self.bias = nn.Parameter(torch.zeros(out_channels, **kw)) if bias else None
        _init_conv(self.weight)

    def forward(self, x: torch.Tensor, out_channels: int) -> torch.Tensor:
        if x.shape[1] > self.in_channels or not 0 < out_channels <= self.out_channels:
            raise ValueError(
                f"ElasticConv2d: active (in={x.shape[1]}, out={out_channels}) exceeds the max "
                f"(in={self.in_channels}, out={self.out_channels})"
            )
        return dispatch.call(
            "conv2d", x, self.weight, self.bias, out_channels, self.stride, self.kernel_size // 2
        )

    def extra_repr(self) -> str:
        return (
            f"max_in={self.in_channels}, max_out={self.out_channels}, kernel={self.kernel_size}, "
            f"stride={self.stride}, bias={self.bias is not None}"
        )


class ElasticDWConv2d(nn.Module):
    """Depthwise conv with elastic channels and kernel size (OFA kernel transformation)."""

    def __init__(
        self,
        channels: int,
        kernel_sizes: Sequence[int] = (3, 5, 7),
        stride: int = 1,
        device=None,
        dtype=None,
    ):
        super().__init__()
        ks = tuple(sorted({int(k) for k in kernel_sizes}))
        if not ks or any(k % 2 == 0 or k < 1 for k in ks):
            raise ValueError(
                f"ElasticDWConv2d: kernel_sizes={tuple(kernel_sizes)} must be odd positive sizes"
            )
        self.channels, self.kernel_sizes, self.stride = channels, ks, stride
        self.max_kernel = ks[-1]
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(channels, 1, self.max_kernel, self.max_kernel, **kw))
        _init_conv(self.weight, groups=channels)
        # One transform per step between consecutive candidate sizes, largest first.
        for big, small in zip(ks[::-1], ks[-2::-1]):
            eye = torch.eye(small * small, **kw)
            self.register_parameter(self._tname(big, small), nn.Parameter(eye))

    @staticmethod
    def _tname(big: int, small: int) -> str:
        return f"transform_{big}to{small}"

    def active_weight(self, k: int, channels: int) -> torch.Tensor:
        """Depthwise weight [channels, 1, k, k]: crop + transform, step by step from the max."""
        if k not in self.kernel_sizes:
            raise ValueError(f"ElasticDWConv2d: kernel={k!r}; allowed: {list(self.kernel_sizes)}")
        if not 0 < channels <= self.channels:
            raise ValueError(
                f"ElasticDWConv2d: channels={channels} must be in [1, {self.channels}]"
            )
        w = self.weight[:channels]
        big = self.max_kernel
        for small in reversed(self.kernel_sizes[:-1]):
            if small < k:
                break
            off = (big - small) // 2
            crop = w[:, :, off : off + small, off : off + small]
            t = getattr(self, self._tname(big, small))
            w = (crop.reshape(channels, small * small) @ t).reshape(channels, 1, small, small)
            big = small
        return w

    def forward(self, x: torch.Tensor, kernel: int) -> torch.Tensor:
        c = x.shape[1]
        w = self.active_weight(kernel, c)
        return dispatch.call("dwconv", x, w, None, self.stride, kernel // 2)

    def extra_repr(self) -> str:
        return (
            f"max_channels={self.channels}, kernel_sizes={self.kernel_sizes}, stride={self.stride}"
        )
