"""Elastic depthwise conv served by the compiled extension (`cpu` and `cuda` backends).

Same semantics as `ref.conv2d` with groups = C = x.shape[1]:
`F.conv2d(x, weight[:C], bias[:C], stride, padding, 1, C)`. `weight` is the [Cmax, 1, k, k]
buffer (already cropped/transformed to the active kernel k), read in place; its gradient, and
the bias gradient, come back full-size and zero past C, so autograd needs no slice_backward.
"""

from __future__ import annotations

import torch

from .. import _ext

__all__ = ["dwconv_cpu", "dwconv_cuda"]


class _ElasticDWConvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride: int, padding: int, suffix: str):
        C = _ext.load()
        y = getattr(C, "elastic_dwconv_forward" + suffix)(x, weight, bias, stride, padding)
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.suffix = stride, padding, suffix
        ctx.bias_size = 0 if bias is None else bias.shape[0]
        return y

    @staticmethod
    def backward(ctx, gy):
        C = _ext.load()
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        mask = (need_x, need_w, need_b and ctx.bias_size > 0)
        if not any(mask):
            return None, None, None, None, None, None
        gx, gw, gb = getattr(C, "elastic_dwconv_backward" + ctx.suffix)(
            gy, x, weight, ctx.stride, ctx.padding, ctx.bias_size, mask
        )
        return gx, gw, gb, None, None, None


def _apply(x, weight, bias, stride: int, padding: int, suffix: str):
    if weight.dtype != x.dtype:  # mixed precision: the kernels take one dtype (fp32 accumulate)
        weight = weight.to(x.dtype)
        bias = None if bias is None else bias.to(x.dtype)
    return _ElasticDWConvFn.apply(x, weight, bias, int(stride), int(padding), suffix)


def dwconv_cpu(x, weight, bias, stride: int, padding: int):
    """Depthwise conv of x [B, C, H, W] with weight[:C] ([Cmax, 1, k, k]) on CPU tensors."""
    return _apply(x, weight, bias, stride, padding, "")


def dwconv_cuda(x, weight, bias, stride: int, padding: int):
    """CUDA variant of :func:`dwconv_cpu` (needs shiftnas._C built with CUDA)."""
    return _apply(x, weight, bias, stride, padding, "_cuda")
