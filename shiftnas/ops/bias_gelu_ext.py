"""Fused bias + exact GELU served by the compiled extension (`cpu` backend).

`bias_gelu_cpu(x, bias)` = `F.gelu(x + bias[:N])` with N = x.shape[-1] and `bias` the [Nmax]
buffer, read in place. One pass forward; backward recomputes x + b and returns the bias
gradient full-size, zero past N, so autograd needs no slice_backward.
"""

from __future__ import annotations

import torch

from .. import _ext

__all__ = ["bias_gelu_cpu"]


class _BiasGeluFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias):
        C = _ext.load()
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        y = C.bias_gelu_forward(x2, bias)
        ctx.save_for_backward(x2, bias)
        ctx.x_shape = x.shape
        return y.reshape(*lead, x.shape[-1])

    @staticmethod
    def backward(ctx, gy):
        C = _ext.load()
        x2, bias = ctx.saved_tensors
        gx, gb = C.bias_gelu_backward(gy.reshape(x2.shape), x2, bias)
        return gx.reshape(ctx.x_shape), gb


def bias_gelu_cpu(x, bias):
    """gelu(x + bias[:N]) (exact erf GELU) over the last dim N of a CPU tensor x."""
    if bias.dtype != x.dtype:  # mixed precision: the kernel takes one dtype (fp32 math)
        bias = bias.to(x.dtype)
    return _BiasGeluFn.apply(x, bias)
