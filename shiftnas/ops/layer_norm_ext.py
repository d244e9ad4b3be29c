"""Elastic LayerNorm served by the compiled extension (`cpu` and `cuda` backends).

Same semantics as `ref.layer_norm`: normalise the first `active` channels of x (x may be
wider), output width `active`; gradients of weight/bias are zero past `active`.

The kernels are the operators ``shiftnas::ext_layer_norm`` and ``shiftnas::ext_layer_norm_backward``,
defined in C++ (csrc/ops.cpp; schemas and contract in csrc/ops.h): ``shiftnas._C`` registers them
with the dispatcher when it is loaded, with CPU kernels, CUDA kernels in a CUDA build, and the
autograd (a ``torch::autograd::Function`` registered for the Autograd key, whose backward calls
``ext_layer_norm_backward``). The dispatcher picks the kernel by the tensors' device. Only their
fake (meta) implementations are Python, registered here (the schemas name this module with
``m.set_python_module``), so `torch.compile` traces the ops and `torch.library.opcheck` passes.
"""
from __future__ import annotations

import torch

from .. import _ext

__all__ = ["layer_norm_cpu", "layer_norm_cuda"]


def _stat_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _fake_layer_norm(x, weight, bias, active, eps):
    rows = x.numel() // x.shape[-1]
    return (x.new_empty((*x.shape[:-1], active)), x.new_empty((rows,), dtype=_stat_dtype(x)),
            x.new_empty((rows,), dtype=_stat_dtype(x)))


def _fake_layer_norm_backward(grad_y, x, weight, mean, rstd, active):
    return x.new_empty(x.shape), weight.new_empty(weight.shape), weight.new_empty(weight.shape)


# shiftnas._C defines the ops when it is loaded (here, or a RuntimeError at the first call
# when it cannot be); their fake implementations are these.
if _ext.load() is not None:
    torch.library.register_fake("shiftnas::ext_layer_norm", _fake_layer_norm)
    torch.library.register_fake("shiftnas::ext_layer_norm_backward", _fake_layer_norm_backward)


def _apply(x, weight, bias, active: int, eps: float):
    if weight.dtype != x.dtype:  # mixed precision: the kernels take one dtype (fp32 accumulate)
        weight, bias = weight.to(x.dtype), bias.to(x.dtype)
    _ext.require()
    return torch.ops.shiftnas.ext_layer_norm(x, weight, bias, int(active), float(eps))[0]


def layer_norm_cpu(x, weight, bias, active: int, eps: float):
    return _apply(x, weight, bias, active, eps)


def layer_norm_cuda(x, weight, bias, active: int, eps: float):
    """CUDA variant of :func:`layer_norm_cpu` (needs shiftnas._C built with CUDA)."""
    return _apply(x, weight, bias, active, eps)
