"""Elastic LayerNorm served by the compiled extension (`cpu` and `cuda` backends).

Same semantics as `ref.layer_norm`: normalise the first `active` channels of x (x may be
wider), output width `active`; gradients of weight/bias are zero past `active`.

The kernels are the custom ops ``shiftnas::ext_layer_norm`` and
``shiftnas::ext_layer_norm_backward`` (fake implementations registered, so `torch.compile`
traces them; autograd through `torch.library.register_autograd`): the style of the Triton ops
in `shiftnas.kernels`. Each picks ``shiftnas._C``'s CPU or CUDA function by the input's device.
"""
from __future__ import annotations

import torch

from .. import _ext

__all__ = ["layer_norm_cpu", "layer_norm_cuda"]


def _stat_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@torch.library.custom_op("shiftnas::ext_layer_norm", mutates_args=(), device_types=("cpu", "cuda"))
def _ext_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, active: int,
                    eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    C = _ext.load()
    fwd = C.elastic_layer_norm_forward_cuda if x.is_cuda else C.elastic_layer_norm_forward
    y, mean, rstd = fwd(x.reshape(-1, x.shape[-1]), weight, bias, active, eps)
    return y.reshape(*x.shape[:-1], active), mean, rstd


@_ext_layer_norm.register_fake
def _(x, weight, bias, active, eps):
    rows = x.numel() // x.shape[-1]
    return (x.new_empty((*x.shape[:-1], active)), x.new_empty((rows,), dtype=_stat_dtype(x)),
            x.new_empty((rows,), dtype=_stat_dtype(x)))


@torch.library.custom_op("shiftnas::ext_layer_norm_backward", mutates_args=(), device_types=("cpu", "cuda"))
def _ext_layer_norm_backward(gy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor,
                             rstd: torch.Tensor, active: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    C = _ext.load()
    bwd = C.elastic_layer_norm_backward_cuda if x.is_cuda else C.elastic_layer_norm_backward
    gx, gw, gb = bwd(gy.reshape(-1, active).contiguous(), x.reshape(-1, x.shape[-1]), weight, mean, rstd, active)
    return gx.reshape(x.shape), gw, gb


@_ext_layer_norm_backward.register_fake
def _(gy, x, weight, mean, rstd, active):
    return x.new_empty(x.shape), weight.new_empty(weight.shape), weight.new_empty(weight.shape)


def _setup_context(ctx, inputs, output):
    x, weight, _bias, active, _eps = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(x, weight, mean, rstd)
    ctx.active = active


def _backward(ctx, gy, _gmean, _grstd):
    x, weight, mean, rstd = ctx.saved_tensors
    gx, gw, gb = torch.ops.shiftnas.ext_layer_norm_backward(gy, x, weight, mean, rstd, ctx.active)
    return gx, gw, gb, None, None


torch.library.register_autograd("shiftnas::ext_layer_norm", _backward, setup_context=_setup_context)


def _apply(x, weight, bias, active: int, eps: float):
    if weight.dtype != x.dtype:  # mixed precision: the kernels take one dtype (fp32 accumulate)
        weight, bias = weight.to(x.dtype), bias.to(x.dtype)
    return torch.ops.shiftnas.ext_layer_norm(x, weight, bias, int(active), float(eps))[0]


def layer_norm_cpu(x, weight, bias, active: int, eps: float):
    return _apply(x, weight, bias, active, eps)


def layer_norm_cuda(x, weight, bias, active: int, eps: float):
    """CUDA variant of :func:`layer_norm_cpu` (needs shiftnas._C built with CUDA)."""
    return _apply(x, weight, bias, active, eps)
