"""Registers the backends with the dispatcher: ref (always), cpu and cuda (`shiftnas._C`).

The triton backend is added by the kernels issue; until then `shiftnas backends` says so.
"""
from __future__ import annotations

import torch

from .. import _ext
from . import ref
from .dispatch import Backend, register
from .layer_norm_ext import layer_norm_cpu, layer_norm_cuda

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
    return "no Triton kernels are registered yet"


register(
    Backend(
        "ref",
        devices=("cpu", "cuda", "meta"),
        dtypes=_FLOATS,
        available=lambda: None,
        ops={
            "linear": ref.linear,
            "layer_norm": ref.layer_norm,
            "attention": ref.attention,
            "conv2d": ref.conv2d,
            "dwconv": ref.dwconv,
            "batch_norm": ref.batch_norm,
        },
    )
)
register(Backend("cpu", devices=("cpu",), dtypes=_FLOATS, available=_ext_reason, ops={"layer_norm": layer_norm_cpu}))
register(Backend("cuda", devices=("cuda",), dtypes=_FLOATS, available=_cuda_reason, ops={"layer_norm": layer_norm_cuda}))
register(Backend("triton", devices=("cuda",), dtypes=_FLOATS, available=_triton_reason, ops={}))
