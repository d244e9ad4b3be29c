"""Plumbing shared by the Triton kernels: interpreter detection (`interpret_mode`, owned by
`_env`), argument checks, GELU, matmul autotune configs, and the launcher / custom-op helpers
the kernel modules have in common.

Nothing here compiles a kernel; `@triton.jit` only wraps the functions, so importing is cheap
and works without a GPU.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._env import interpret_mode

__all__ = [
    "KERNEL_DTYPES",
    "check_device",
    "check_width",
    "dot_precision",
    "fake_grad",
    "fill_empty",
    "gelu",
    "gelu_grad",
    "interpret_block",
    "interpret_mode",
    "matmul_configs",
    "needs_grad",
    "partial_programs",
    "prune_matmul_configs",
]

# tl.dot takes fp16/bf16/fp32; fp64 would run as fp32, which would break the dtype's promise.
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_device(name: str, t: torch.Tensor, device: torch.device) -> None:
    """ValueError unless `t` lives where a Triton kernel can read it (CUDA, or CPU in the interpreter)."""
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device} (the device of x)")
    if t.device.type != "cuda" and not (interpret_mode() and t.device.type == "cpu"):
        raise ValueError(
            f"{name} is on {t.device}; the Triton kernels need CUDA tensors "
            "(or CPU tensors with TRITON_INTERPRET=1); use the ref backend instead"
        )


def check_width(name: str, t: torch.Tensor | None, device: torch.device) -> None:
    """A width given as a device tensor: one integer element (read in the kernel, never on the host)."""
    if t is None:
        return
    if t.numel() != 1 or t.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"{name} must be an int32/int64 tensor with one element, got dtype={t.dtype}, "
            f"shape={tuple(t.shape)}"
        )
    if t.device != device and t.device.type != "meta":
        raise ValueError(f"{name} is on {t.device}, expected {device} (the device of x)")


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision: fp32 follows torch's matmul setting ('highest' = IEEE fp32,
    otherwise TF32), so the kernel is as exact as the F.linear it replaces."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


def partial_programs(row_tiles: int, device: torch.device, per_sm: int, col_tiles: int = 1) -> int:
    """Programs along the rows of a deterministic row reduction (each writes one fp32 partial row,
    summed by torch afterwards, unlike atomics): enough to fill a GPU (per_sm programs per SM,
    shared by the col_tiles column tiles), few enough that the partial sums stay small; at most 4
    off CUDA. At least 1."""
    if device.type != "cuda":
        return max(1, min(row_tiles, 4))
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(row_tiles, triton.cdiv(per_sm * sms, col_tiles)))


def needs_grad(*tensors) -> bool:
    """Whether autograd will ask for a gradient of any of the (optional) tensors."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def fill_empty(grads, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A custom op's gradient outputs, each None replaced by a fresh 0-element tensor like `like`
    (custom ops return no None, and their outputs may not alias one another)."""
    return tuple(g if g is not None else like.new_empty((0,)) for g in grads)


def fake_grad(need: bool, t: torch.Tensor | None, like: torch.Tensor, shape=None,
              dtype=None) -> torch.Tensor:
    """A fake impl's gradient output: when `need`, an empty tensor like `t` (shape and dtype
    overridable), else the 0-element stand-in of `fill_empty` (like `like`)."""
    if not need:
        return like.new_empty((0,))
    return t.new_empty(t.shape if shape is None else shape, dtype=dtype or t.dtype)


_INTERPRET_BLOCKS = (16, 64, 128)


def interpret_block(n: int) -> int:
    """Tile size along a dimension of size n for the interpreter (see `matmul_configs`)."""
    return next((b for b in _INTERPRET_BLOCKS if n <= b), _INTERPRET_BLOCKS[-1])


def matmul_configs() -> list[triton.Config]:
    """Tile configs for the matmul kernel. In the interpreter `prune_matmul_configs` keeps exactly
    one (so nothing is 'benchmarked' on the CPU), fitted to the shape: it pays ~10 ms of Python
    per program, so large tiles, but also per element computed, masked or not."""
    if interpret_mode():
        return [
            triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_stages=1, num_warps=4)
            for bm in _INTERPRET_BLOCKS
            for bn in _INTERPRET_BLOCKS
            for bk in _INTERPRET_BLOCKS
        ]
    cfg = []
    for bm, bn, bk, stages, warps in (
        (128, 256, 64, 3, 8),
        (256, 128, 64, 3, 8),
        (128, 128, 64, 4, 4),
        (128, 128, 32, 4, 4),
        (128, 64, 32, 4, 4),
        (64, 128, 32, 4, 4),
        (64, 64, 64, 4, 4),
        (64, 32, 32, 5, 2),
        (32, 64, 32, 5, 2),
        (16, 64, 64, 4, 4),  # few rows (small batch, the 3000-wide cases)
    ):
        cfg.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_stages=stages, num_warps=warps))
    return cfg


_SMEM_BYTES = 200 * 1024  # below the ~227 KiB of Hopper/Ampere shared memory, leaving headroom


def prune_matmul_configs(configs, named_args, **kwargs):
    """Drop configs whose tiles dwarf the problem or whose pipelined tiles overflow shared memory."""
    m, n = named_args["M"], named_args["N"]
    if interpret_mode():
        want = {key: interpret_block(named_args[dim]) for key, dim in (("BLOCK_M", "M"), ("BLOCK_N", "N"), ("BLOCK_K", "K"))}
        return [c for c in configs if all(c.kwargs[key] == v for key, v in want.items())][:1]
    elem = named_args["a_ptr"].element_size()
    keep = []
    for c in configs:
        bm, bn, bk = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]
        if bm > max(16, triton.next_power_of_2(m)) or bn > max(32, triton.next_power_of_2(n)):
            continue
        if (bm * bk + bk * bn) * elem * max(c.num_stages, 1) > _SMEM_BYTES:
            continue
        keep.append(c)
    return keep or [min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])]


@triton.jit
def gelu(x):
    """Exact (erf) GELU, as F.gelu's default; x in fp32."""
    return 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))


@triton.jit
def gelu_grad(x):
    """d GELU / dx = Phi(x) + x * phi(x); x in fp32."""
    cdf = 0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476))
    pdf = tl.exp(-0.5 * x * x) * 0.3989422804014327
    return cdf + x * pdf
