"""Where the Triton kernel tests (tests/kernels/) run: on CUDA, or in Triton's interpreter on CPU
tensors (tests/conftest.py sets TRITON_INTERPRET=1 without a GPU). bfloat16 only on CUDA: the
interpreter computes with numpy, which has no bfloat16 (its tl.dot is wrong for bf16)."""
from __future__ import annotations

import pytest
import torch
from shiftnas.kernels._env import interpret_mode

__all__ = ["DEV", "DTYPES", "require_triton", "run_with_grads"]

DEV = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEV == "cuda" else [])


def require_triton() -> None:
    """Skip the importing test module unless Triton is installed and can run here."""
    if DEV != "cuda" and not interpret_mode():
        pytest.skip("needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)
    pytest.importorskip("triton")


def run_with_grads(fn, tensors, gy, dtype=None, device=DEV):
    """fn(*tensors) and the grads of (y * gy).sum() w.r.t. every tensor that is not None, the
    tensors first moved to `device` and cast to `dtype` (None: their own)."""
    ts = [None if t is None else t.detach().to(device, dtype or t.dtype).requires_grad_(True) for t in tensors]
    y = fn(*ts)
    grads = torch.autograd.grad(y, [t for t in ts if t is not None], gy.to(device, y.dtype))
    return y.detach(), list(grads)
