"""Access to the compiled extension ``shiftnas._C``.

This module is the only place that imports ``shiftnas._C``; everything else
goes through :func:`load` so that a missing or broken build degrades to a
clear message (and pure-PyTorch fallbacks) instead of an ImportError at
``import shiftnas`` time. Nothing is imported until :func:`load` is first
called.

Loading ``shiftnas._C`` registers its operators with the PyTorch dispatcher (defined in C++,
csrc/ops.cpp; contract in csrc/ops.h); they are called as ``torch.ops.shiftnas.<name>``::

    ext_layer_norm(x, weight, bias, active, eps) -> (y, mean, rstd)
    ext_layer_norm_backward(grad_y, x, weight, mean, rstd, active) -> (grad_x, grad_weight, grad_bias)
    ext_dwconv(x, weight, bias, stride, padding) -> y
    ext_dwconv_backward(grad_y, x, weight, stride, padding, bias_size, output_mask)
        -> (grad_x, grad_weight, grad_bias)
    ext_mask_dot(y, dy, dim) -> out   # fp32 [y.shape[dim]]: sum of y * dy over the other dims (CPU)

with CPU kernels, CUDA kernels when built with CUDA (see has_cuda_ops()), and autograd for the
forward ops; their fake implementations are registered by shiftnas/ops/*_ext.py. The module
itself holds only ``with_cuda``.
"""

from __future__ import annotations

import importlib
import threading
from types import ModuleType

_BUILD_HINT = "run `pip install --no-build-isolation -e .` (or `make install`) to build it"

_lock = threading.Lock()
_loaded = False
_module: ModuleType | None = None
_error: str | None = None


def load() -> ModuleType | None:
    """Return the ``shiftnas._C`` module, or None if it cannot be imported.

    The result (success or failure) is cached for the life of the process.
    """
    global _loaded, _module, _error
    if _loaded:
        return _module
    with _lock:
        if not _loaded:
            try:
                # libtorch must be loaded before the extension's shared object.
                importlib.import_module("torch")
                _module = importlib.import_module("shiftnas._C")
            except (ImportError, OSError) as exc:
                _module = None
                _error = f"shiftnas._C is not built or failed to load: {exc!s}; {_BUILD_HINT}"
            _loaded = True
    return _module


def require() -> ModuleType:
    """The ``shiftnas._C`` module (loaded, so its ops are registered), or a RuntimeError saying why
    it cannot be loaded."""
    mod = load()
    if mod is None:
        raise RuntimeError(_error)
    return mod


def unavailable_reason() -> str | None:
    """Why :func:`load` returns None (including the import error), or None if it loads."""
    load()
    return _error


def has_cuda_ops() -> bool:
    """True if ``shiftnas._C`` loaded and was compiled with its CUDA kernels."""
    mod = load()
    return mod is not None and bool(getattr(mod, "with_cuda", False))
