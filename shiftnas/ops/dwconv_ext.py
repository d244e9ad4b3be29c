"""Elastic depthwise conv served by the compiled extension (`cpu` and `cuda` backends).

Same semantics as `ref.conv2d` with groups = C = x.shape[1]:
`F.conv2d(x, weight[:C], bias[:C], stride, padding, 1, C)`. `weight` is the [Cmax, 1, k, k]
buffer (already cropped/transformed to the active kernel k), read in place; its gradient, and
the bias gradient, come back full-size and zero past C, so autograd needs no slice_backward.

The kernels are the custom ops ``shiftnas::ext_dwconv`` and ``shiftnas::ext_dwconv_backward``
(fake implementations registered, autograd through `torch.library.register_autograd`), as the
Triton ops in `shiftnas.kernels`; each picks ``shiftnas._C``'s CPU or CUDA function by device.
"""

from __future__ import annotations

import torch

from .. import _ext

__all__ = ["dwconv_cpu", "dwconv_cuda"]


def _out_size(size: int, k: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - k) // stride + 1


@torch.library.custom_op("shiftnas::ext_dwconv", mutates_args=(), device_types=("cpu", "cuda"))
def _ext_dwconv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int,
                padding: int) -> torch.Tensor:
    C = _ext.load()
    fwd = C.elastic_dwconv_forward_cuda if x.is_cuda else C.elastic_dwconv_forward
    return fwd(x, weight, bias, stride, padding)


@_ext_dwconv.register_fake
def _(x, weight, bias, stride, padding):
    k = weight.shape[-1]
    h, w = (_out_size(s, k, stride, padding) for s in x.shape[-2:])
    return x.new_empty((x.shape[0], x.shape[1], h, w))


@torch.library.custom_op("shiftnas::ext_dwconv_backward", mutates_args=(), device_types=("cpu", "cuda"))
def _ext_dwconv_backward(gy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int,
                         bias_size: int, need_x: bool, need_w: bool,
                         need_b: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    C = _ext.load()
    bwd = C.elastic_dwconv_backward_cuda if x.is_cuda else C.elastic_dwconv_backward
    grads = bwd(gy, x, weight, stride, padding, bias_size, (need_x, need_w, need_b))
    # a custom op returns no None (and no two outputs may alias): 0-element stand-ins
    return tuple(g if g is not None else x.new_empty((0,)) for g in grads)


@_ext_dwconv_backward.register_fake
def _(gy, x, weight, stride, padding, bias_size, need_x, need_w, need_b):
    return (x.new_empty(x.shape) if need_x else x.new_empty((0,)),
            weight.new_empty(weight.shape) if need_w else x.new_empty((0,)),
            weight.new_empty((bias_size,)) if need_b else x.new_empty((0,)))


def _setup_context(ctx, inputs, output):
    x, weight, bias, stride, padding = inputs
    ctx.save_for_backward(x, weight)
    ctx.stride, ctx.padding = stride, padding
    ctx.bias_size = 0 if bias is None else bias.shape[0]


def _backward(ctx, gy):
    x, weight = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    need_b = need_b and ctx.bias_size > 0
    if not (need_x or need_w or need_b):
        return None, None, None, None, None
    gx, gw, gb = torch.ops.shiftnas.ext_dwconv_backward(
        gy.contiguous(), x, weight, ctx.stride, ctx.padding, ctx.bias_size, need_x, need_w, need_b)
    return gx if need_x else None, gw if need_w else None, gb if need_b else None, None, None


torch.library.register_autograd("shiftnas::ext_dwconv", _backward, setup_context=_setup_context)


def _apply(x, weight, bias, stride: int, padding: int):
    if weight.dtype != x.dtype:  # mixed precision: the kernels take one dtype (fp32 accumulate)
        weight = weight.to(x.dtype)
        bias = None if bias is None else bias.to(x.dtype)
    return torch.ops.shiftnas.ext_dwconv(x, weight, bias, int(stride), int(padding))


def dwconv_cpu(x, weight, bias, stride: int, padding: int):
    """Depthwise conv of x [B, C, H, W] with weight[:C] ([Cmax, 1, k, k]) on CPU tensors."""
    return _apply(x, weight, bias, stride, padding)


def dwconv_cuda(x, weight, bias, stride: int, padding: int):
    """CUDA variant of :func:`dwconv_cpu` (needs shiftnas._C built with CUDA)."""
    return _apply(x, weight, bias, stride, padding)
