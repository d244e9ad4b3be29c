"""Elastic depthwise conv served by the compiled extension (`cpu` and `cuda` backends).

Same semantics as `ref.conv2d` with groups = C = x.shape[1]:
`F.conv2d(x, weight[:C], bias[:C], stride, padding, 1, C)`. `weight` is the [Cmax, 1, k, k]
buffer (already cropped/transformed to the active kernel k), read in place; its gradient, and
the bias gradient, come back full-size and zero past C, so autograd needs no slice_backward.

The kernels are the operators ``shiftnas::ext_dwconv`` and ``shiftnas::ext_dwconv_backward``,
defined in C++ (csrc/ops.cpp; schemas and contract in csrc/ops.h) and registered with the
dispatcher when ``shiftnas._C`` is loaded: CPU kernels, CUDA kernels in a CUDA build, and the
autograd (a ``torch::autograd::Function`` for the Autograd key; its backward asks
``ext_dwconv_backward`` for just the gradients needed, ``output_mask``). Only their fake (meta)
implementations are Python, registered here, so `torch.compile` traces the ops.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import conv_flop_count, register_flop_formula

from .. import _ext

__all__ = ["dwconv_cpu", "dwconv_cuda"]


def _out_size(size: int, k: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - k) // stride + 1


def _fake_dwconv(x, weight, bias, stride, padding):
    k = weight.shape[-1]
    h, w = (_out_size(s, k, stride, padding) for s in x.shape[-2:])
    return x.new_empty((x.shape[0], x.shape[1], h, w))


def _fake_dwconv_backward(grad_y, x, weight, stride, padding, bias_size, output_mask):
    need_x, need_w, need_b = output_mask
    return (x.new_empty(x.shape) if need_x else None,
            weight.new_empty(weight.shape) if need_w else None,
            weight.new_empty((bias_size,)) if need_b else None)


def _dw_flop(x_shape, k: int, out_shape) -> int:
    """FLOP of a depthwise conv as torch.utils.flop_counter counts a conv (2 per multiply)."""
    return conv_flop_count(list(x_shape), [x_shape[1], 1, k, k], list(out_shape))


def _flop_dwconv(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    return _dw_flop(x_shape, w_shape[-1], out_shape)


def _flop_dwconv_backward(gy_shape, x_shape, w_shape, stride, padding, bias_size, output_mask, *args,
                          out_shape=None, **kwargs) -> int:
    """grad_x and grad_weight each cost the forward's multiplies (as conv_backward_flop)."""
    return _dw_flop(x_shape, w_shape[-1], gy_shape) * (int(output_mask[0]) + int(output_mask[1]))


# shiftnas._C defines the ops when it is loaded (here, or a RuntimeError at the first call
# when it cannot be); their fake implementations and FLOP formulas (FlopCounterMode, which
# counts what it knows: an op without a formula would count 0) are these.
if _ext.load() is not None:
    torch.library.register_fake("shiftnas::ext_dwconv", _fake_dwconv)
    torch.library.register_fake("shiftnas::ext_dwconv_backward", _fake_dwconv_backward)
    register_flop_formula(torch.ops.shiftnas.ext_dwconv)(_flop_dwconv)
    register_flop_formula(torch.ops.shiftnas.ext_dwconv_backward)(_flop_dwconv_backward)


def _apply(x, weight, bias, stride: int, padding: int):
    if weight.dtype != x.dtype:  # mixed precision: the kernels take one dtype (fp32 accumulate)
        weight = weight.to(x.dtype)
        bias = None if bias is None else bias.to(x.dtype)
    _ext.require()
    return torch.ops.shiftnas.ext_dwconv(x, weight, bias, int(stride), int(padding))


def dwconv_cpu(x, weight, bias, stride: int, padding: int):
    """Depthwise conv of x [B, C, H, W] with weight[:C] ([Cmax, 1, k, k]) on CPU tensors."""
    return _apply(x, weight, bias, stride, padding)


def dwconv_cuda(x, weight, bias, stride: int, padding: int):
    """CUDA variant of :func:`dwconv_cpu` (needs shiftnas._C built with CUDA)."""
    return _apply(x, weight, bias, stride, padding)
