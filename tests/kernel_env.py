"""Where the Triton kernel tests (tests/kernels/) run: on CUDA, or in Triton's interpreter on CPU
tensors (tests/conftest.py sets TRITON_INTERPRET=1 without a GPU). bfloat16 only on CUDA: the
interpreter computes with numpy, which has no bfloat16 (its tl.dot is wrong for bf16)."""
from __future__ import annotations

import pytest
import torch
from shiftnas.kernels._env import interpret_mode

__all__ = ["DEV", "DTYPES", "require_triton"]

DEV = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEV == "cuda" else [])


def require_triton() -> None:
    """Skip the importing test module unless Triton is installed and can run here."""
    if DEV != "cuda" and not interpret_mode():
        pytest.skip("needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)
    pytest.importorskip("triton")
