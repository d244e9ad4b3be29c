"""Registers the backends with the dispatcher: ref (always), cpu and cuda (`shiftnas._C`),
triton (`shiftnas.kernels`, CUDA tensors; CPU tensors only when forced under TRITON_INTERPRET=1).

Kernel modules are imported on first use, so `import shiftnas` stays light.
"""
from __future__ import annotations

import importlib
import importlib.util

import torch

from .. import _ext
from ..kernels._env import interpret_mode
from . import ref
from .dispatch import Backend, register
from .dwconv_ext import dwconv_cpu, dwconv_cuda
from .layer_norm_ext import layer_norm_cpu, layer_norm_cuda
from .mask_dot_ext import mask_dot_cpu, mask_dot_cpu_args

_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _ext_reason() -> str | None:
    return _ext.unavailable_reason()


def _cuda_reason() -> str | None:
    why = _ext.unavailable_reason()
    if why:
        return why
    if not _ext.has_cuda_ops():
        return "shiftnas._C was built without CUDA sources"
    return None


def _triton_reason() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if not interpret_mode() and not torch.cuda.is_available():
        return "triton needs a CUDA GPU (or TRITON_INTERPRET=1 to run its interpreter on CPU)"
    return None


def _kernel(module: str, name: str):
    """A function of shiftnas.kernels.<module>, imported at its first call."""
    fn = None

    def call(*args, **kwargs):
        nonlocal fn
        if fn is None:
            fn = getattr(importlib.import_module(f"shiftnas.kernels.{module}"), name)
        return fn(*args, **kwargs)

    call.__name__ = f"{module}.{name}"
    return call


_t_dwconv = _kernel("dwconv", "elastic_dwconv")


def _triton_dwconv(x, weight, bias, stride: int, padding: int):
    return _t_dwconv(x, weight, bias, stride)


def _triton_dwconv_args(x, weight, bias, stride: int, padding: int) -> str | None:
    from shiftnas.kernels.dwconv import KERNEL_SIZES, MAX_BATCH, STRIDES

    k = weight.shape[-1]
    if k not in KERNEL_SIZES or weight.shape[-2] != k:
        return f"triton dwconv is built for square kernels {list(KERNEL_SIZES)}, got {tuple(weight.shape[-2:])}"
    if stride not in STRIDES:
        return f"triton dwconv is built for strides {list(STRIDES)}, got {stride}"
    if x.shape[0] > MAX_BATCH:
        return f"triton dwconv takes batches up to {MAX_BATCH} (its grid), got {x.shape[0]}"
    return None if padding == k // 2 else f"triton dwconv pads k // 2 = {k // 2}, got padding={padding}"


def _triton_attention_args(q, *args, **kwargs) -> str | None:
    from shiftnas.kernels.attention import HEAD_DIMS

    d = q.shape[-1]
    return None if d in HEAD_DIMS else f"triton attention is built for head_dim {list(HEAD_DIMS)}, got {d}"


_t_mlp = _kernel("mlp", "mlp")
_t_attention_masked = _kernel("attention", "elastic_attention_masked")


# The Triton mlp and masked attention fuse the mask multiply into the kernel and return the mask's
# gradient, so `tap` (the mask's value is 1: ref.mask_tap) changes nothing there: it is dropped.
def _triton_mlp(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, hidden: int, hidden_mask=None, tap: bool = False):
    return _t_mlp(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, hidden, hidden_mask)


def _triton_attention_masked(q, k, v, head_mask, tap: bool = False):
    return _t_attention_masked(q, k, v, head_mask)


register(
    Backend(
        "ref",
        devices=("cpu", "cuda", "meta"),
        dtypes=_FLOATS,
        available=lambda: None,
        ops={
            "linear": ref.linear,
            "mlp": ref.mlp,
            "layer_norm": ref.layer_norm,
            "attention": ref.attention,
            "attention_masked": ref.attention_masked,
            # Relative position encodings (AutoFormer): ref only. The Triton flash kernel has no
            # rel-pos terms (the value term needs the probabilities), so the dispatcher passes
            # over triton ("triton does not implement attention_relpos", `shiftnas backends`),
            # also under SHIFTNAS_BACKEND=triton, where ops it lacks run on ref.
            "attention_relpos": ref.attention_relpos,
            "conv2d": ref.conv2d,
            "dwconv": ref.dwconv,
            "batch_norm": ref.batch_norm,
            "mask_dot": ref.mask_dot,  # the prefix-path mask tap's gradient (ref.mask_tap)
        },
    )
)
# The cpu backend serves an op only where it measured >= 1.0x ref (bench/bench_kernels.py
# --device cpu --repeats 20, bench/results/kernels_cpu.json, 2 threads). Depthwise conv: fp32
# 1.04-6.78x, bf16 1.20-7.87x over forward and forward+backward (the weight gradient lands in
# the full-size buffer: no slice_backward); fp16 was not measured, so it stays on ref. A C++ fused
# bias+GELU was measured and removed: it beat F.gelu(x + b[:n]) alone (fp32 1.08-2.95x, bf16
# 0.98-1.25x), but inside a linear it has to replace addmm's fused bias, and F.linear without bias
# + bias+GELU measured 0.95-1.04x of ref.linear(..., "gelu").
def _ext_backend(device: str, available, ops: dict, **limits) -> Backend:
    """A `shiftnas._C` backend: named after the one device it runs on, every float dtype."""
    return Backend(device, devices=(device,), dtypes=_FLOATS, available=available, ops=ops, **limits)


# Mask dot (the prefix-path tap's gradient without ref's [y]-sized product): on the CNN / ViT taps'
# shapes (1 thread, interleaved medians) bf16 2.0-5.0x ref, fp32 1.4-2.7x, except [64, 320] (0.8-0.95x,
# ~10 us either way); in the cnn-fmnist bf16 step the taps' backward went from 7.0 to ~2 ms. The
# kernel is built for fp32 and bf16; strided or mixed-dtype inputs and 0-d gates go to ref (op_args).
register(
    _ext_backend(
        "cpu", _ext_reason, {"layer_norm": layer_norm_cpu, "dwconv": dwconv_cpu, "mask_dot": mask_dot_cpu},
        op_dtypes={
            "dwconv": ((torch.float32, torch.bfloat16), "measured >= 1.0x ref in fp32 and bf16; fp16 not measured"),
            "mask_dot": ((torch.float32, torch.bfloat16), "the kernel is built for fp32 and bf16"),
        },
        op_args={"mask_dot": mask_dot_cpu_args},
    )
)
register(_ext_backend("cuda", _cuda_reason, {"layer_norm": layer_norm_cuda, "dwconv": dwconv_cuda}))
register(
    Backend(
        "triton",
        devices=("cuda", "cpu") if interpret_mode() else ("cuda",),
        auto_devices=("cuda",),
        dtypes=(torch.float32, torch.float16, torch.bfloat16),
        available=_triton_reason,
        ops={
            "linear": _kernel("linear", "linear"),
            "mlp": _triton_mlp,
            "layer_norm": _kernel("layer_norm", "layer_norm"),
            "attention": _kernel("attention", "elastic_attention"),
            "attention_masked": _triton_attention_masked,
            "dwconv": _triton_dwconv,
        },
        op_args={
            "attention": _triton_attention_args,
            "attention_masked": _triton_attention_args,
            "dwconv": _triton_dwconv_args,
        },
    )
)
