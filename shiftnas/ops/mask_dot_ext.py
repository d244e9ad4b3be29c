"""The mask tap's gradient served by the compiled extension (the `cpu` backend's `mask_dot`).

Same semantics as `ref.mask_dot` for a mask along `dim`: out[c] = sum of y * dy over every
dimension but `dim`. The C++ kernel (csrc/mask_dot.cpp) reads y and dy once, accumulates in
fp32 and makes no [y]-sized temporary (the reference's mul + sum does, in bf16 under autocast);
it returns fp32 [y.shape[dim]], the caller casts to the mask's dtype. The dispatcher sends it
contiguous float32 / bfloat16 CPU tensors of one dtype with a mask dim (`mask_dot_cpu_args`);
the rest (a 0-d gate, strided or mixed-dtype tensors, float64, CUDA) runs on `ref.mask_dot`.

The kernel is the operator ``shiftnas::ext_mask_dot``, defined in C++ (csrc/ops.cpp) and registered
with the dispatcher when ``shiftnas._C`` is loaded, with its CPU kernel and autograd (a
``torch::autograd::Function``: d y = out_grad * dy, d dy = out_grad * y along `dim`); its fake
(meta) implementation is registered here.
"""

from __future__ import annotations

import torch

from .. import _ext

__all__ = ["mask_dot_cpu", "mask_dot_cpu_args"]


def _fake_mask_dot(y, dy, dim):
    return y.new_empty((y.shape[dim],), dtype=torch.float32)


# shiftnas._C defines the ops when it is loaded (here, or a RuntimeError at the first call
# when it cannot be); their fake implementations are these.
if _ext.load() is not None:
    torch.library.register_fake("shiftnas::ext_mask_dot", _fake_mask_dot)


def mask_dot_cpu_args(y, dy, dim) -> str | None:
    """Why the kernel does not take these arguments (the dispatcher then runs ref), or None."""
    if dim is None:
        return "cpu mask_dot takes a mask dim (a 0-d gate's dot runs on ref)"
    if dy.dtype != y.dtype or dy.shape != y.shape:
        return f"cpu mask_dot takes y and dy of one dtype and shape, got {y.dtype} {tuple(y.shape)} and {dy.dtype} {tuple(dy.shape)}"
    if not (y.is_contiguous() and dy.is_contiguous()):
        return "cpu mask_dot takes contiguous y and dy"
    return None


def mask_dot_cpu(y: torch.Tensor, dy: torch.Tensor, dim: int) -> torch.Tensor:
    """sum of y * dy over every dim but `dim`, fp32 [y.shape[dim]] (CPU, float32 / bfloat16).

    Always the op, also in the tap's backward (no grad mode): there its C++ autograd kernel goes
    straight to the CPU kernel, 1-4 us a call more than the former direct binding call (the Python
    custom op cost 6-34 us more; bench_cpu_ops.py --overhead)."""
    _ext.require()
    return torch.ops.shiftnas.ext_mask_dot(y, dy, dim % y.dim())
