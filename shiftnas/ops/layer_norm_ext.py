"""Elastic LayerNorm served by the compiled extension (`cpu` and `cuda` backends).

Same semantics as `ref.layer_norm`: normalise the first `active` channels of x (x may be
wider), output width `active`; gradients of weight/bias are zero past `active`.
"""
from __future__ import annotations

import torch

from .. import _ext

__all__ = ["layer_norm_cpu", "layer_norm_cuda"]


class _ElasticLayerNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, active: int, eps: float, suffix: str):
        C = _ext.load()
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        y, mean, rstd = getattr(C, "elastic_layer_norm_forward" + suffix)(x2, weight, bias, active, eps)
        ctx.save_for_backward(x2, weight, mean, rstd)
        ctx.active, ctx.suffix, ctx.x_shape = active, suffix, x.shape
        return y.reshape(*lead, active)

    @staticmethod
    def backward(ctx, gy):
        C = _ext.load()
        x2, weight, mean, rstd = ctx.saved_tensors
        gx, gw, gb = getattr(C, "elastic_layer_norm_backward" + ctx.suffix)(
            gy.reshape(-1, ctx.active).contiguous(), x2, weight, mean, rstd, ctx.active
        )
        return gx.reshape(ctx.x_shape), gw, gb, None, None, None


def _apply(x, weight, bias, active: int, eps: float, suffix: str):
    if weight.dtype != x.dtype:  # mixed precision: the kernels take one dtype (fp32 accumulate)
        weight, bias = weight.to(x.dtype), bias.to(x.dtype)
    return _ElasticLayerNormFn.apply(x, weight, bias, active, eps, suffix)


def layer_norm_cpu(x, weight, bias, active: int, eps: float):
    return _apply(x, weight, bias, active, eps, "")


def layer_norm_cuda(x, weight, bias, active: int, eps: float):
    return _apply(x, weight, bias, active, eps, "_cuda")
