"""Elastic LayerNorm in Triton over the active prefix of channels.

Semantics: `shiftnas.ops.ref.layer_norm` (docs/design.md "Kernels"): normalise the first `active`
channels of x (x may be wider), output width `active`. dx has x's shape (zero past `active`),
d(weight) and d(bias) are max-size, zero past `active`. Statistics and sums are fp32 whatever
the input dtype; weight and bias may be fp32 master parameters under fp16/bf16 activations
(read as fp32, no cast copy).

Layering: `@triton.jit` kernels -> `layer_norm_forward` / `layer_norm_backward` (checks,
allocation, grid) -> `torch.library.custom_op` with autograd -> `layer_norm`; its pure-PyTorch
definition is `shiftnas.ops.ref.layer_norm`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    KERNEL_DTYPES,
    check_device,
    fake_grad,
    fill_empty,
    interpret_mode,
    partial_programs,
)

__all__ = ["MAX_ACTIVE", "layer_norm", "layer_norm_backward", "layer_norm_forward"]

# One row is one tile (no loop over channels): past 64 KiB per row the tile spills registers.
# The same bound as Liger-Kernel's MAX_FUSED_SIZE; ViT widths are far below it.
MAX_ACTIVE = {torch.float32: 16384, torch.float16: 32768, torch.bfloat16: 32768}


@triton.jit
def _layer_norm_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, rstd_ptr,
    M, C,
    stride_xm, stride_ym,
    eps,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """BLOCK_M rows per program, whole rows in registers (one read of x, one write of y)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_C)
    rmask = rows < M
    cmask = cols < C
    m2 = rmask[:, None] & cmask[None, :]
    r64 = rows[:, None].to(tl.int64)
    x = tl.load(x_ptr + r64 * stride_xm + cols[None, :], mask=m2, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / C
    # Two-pass variance from registers: no E[x^2] - E[x]^2 cancellation for offset inputs.
    d = tl.where(m2, x - mean[:, None], 0.0)
    var = tl.sum(d * d, axis=1) / C
    rstd = 1.0 / tl.sqrt(var + eps)
    w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    y = d * rstd[:, None] * w[None, :] + b[None, :]
    tl.store(y_ptr + r64 * stride_ym + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=m2)
    tl.store(mean_ptr + rows, mean, mask=rmask)
    tl.store(rstd_ptr + rows, rstd, mask=rmask)


@triton.jit
def _layer_norm_bwd_kernel(
    gy_ptr, x_ptr, w_ptr, mean_ptr, rstd_ptr, dx_ptr, dw_part_ptr, db_part_ptr,
    M, C,
    stride_gym, stride_xm, stride_dxm,
    STORE_DX: tl.constexpr, HAS_DW: tl.constexpr, HAS_DB: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """dx = rstd * (w*gy - mean(w*gy) - xhat * mean(w*gy*xhat)); each program strides over row
    tiles and keeps its d(weight), d(bias) partial sums in registers (one fp32 row per program,
    summed by torch afterwards: deterministic, unlike atomics)."""
    pid = tl.program_id(0)
    num_progs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_C)
    cmask = cols < C
    w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_C,), dtype=tl.float32)
    db = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for m0 in range(pid * BLOCK_M, M, num_progs * BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        rmask = rows < M
        m2 = rmask[:, None] & cmask[None, :]
        r64 = rows[:, None].to(tl.int64)
        x = tl.load(x_ptr + r64 * stride_xm + cols[None, :], mask=m2, other=0.0).to(tl.float32)
        gy = tl.load(gy_ptr + r64 * stride_gym + cols[None, :], mask=m2, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + rows, mask=rmask, other=0.0)
        rstd = tl.load(rstd_ptr + rows, mask=rmask, other=0.0)
        xhat = tl.where(m2, (x - mean[:, None]) * rstd[:, None], 0.0)
        if STORE_DX:
            wg = gy * w[None, :]
            c1 = tl.sum(xhat * wg, axis=1) / C
            c2 = tl.sum(wg, axis=1) / C
            dx = (wg - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
            tl.store(dx_ptr + r64 * stride_dxm + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=m2)
        if HAS_DW:
            dw += tl.sum(gy * xhat, axis=0)
        if HAS_DB:
            db += tl.sum(gy, axis=0)
    if HAS_DW:
        tl.store(dw_part_ptr + pid * C + cols, dw, mask=cmask)
    if HAS_DB:
        tl.store(db_part_ptr + pid * C + cols, db, mask=cmask)


def _blocks(active: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_C, num_warps): ~4K elements per program on a GPU (rows of a narrow
    ViT get batched); the interpreter pays per program, so it takes bigger tiles."""
    block_c = triton.next_power_of_2(active)
    target = 16384 if interpret_mode() else 4096
    block_m = max(1, min(64, target // block_c))
    tile = block_m * block_c
    num_warps = 4 if tile <= 4096 else (8 if tile <= 8192 else 16)
    return block_m, block_c, num_warps


def _check_layer_norm(x, weight, bias, active, eps) -> None:
    """ValueError naming the bad argument, for the real and the fake (torch.compile) paths."""
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ValueError(f"x must be a tensor with at least one dimension, got {type(x).__name__}")
    if x.dtype not in KERNEL_DTYPES:
        raise ValueError(f"x.dtype={x.dtype}; the Triton layer_norm supports {[str(d) for d in KERNEL_DTYPES]}")
    check_device("x", x, x.device)
    for name, t in (("weight", weight), ("bias", bias)):
        if not isinstance(t, torch.Tensor) or t.dim() != 1:
            raise ValueError(f"{name} must be a 1-D [max_channels] tensor, got {getattr(t, 'shape', t)!r}")
        if t.dtype not in KERNEL_DTYPES:
            raise ValueError(f"{name}.dtype={t.dtype}; allowed: {[str(d) for d in KERNEL_DTYPES]}")
        check_device(name, t, x.device)
    if bias.shape != weight.shape:
        raise ValueError(f"bias.shape={tuple(bias.shape)} must equal weight.shape={tuple(weight.shape)}")
    if not isinstance(active, (int, torch.SymInt)) or not 1 <= active <= min(x.shape[-1], weight.shape[0]):
        raise ValueError(
            f"active={active!r} must be an int in [1, min(x.shape[-1]={x.shape[-1]}, weight.shape[0]={weight.shape[0]})]"
        )
    if active > MAX_ACTIVE[x.dtype]:
        raise ValueError(
            f"active={active} exceeds the Triton layer_norm's one-tile row limit {MAX_ACTIVE[x.dtype]} "
            f"for {x.dtype}; use the ref backend"
        )
    if not eps >= 0.0:
        raise ValueError(f"eps={eps!r} must be >= 0")


def _rows(t: torch.Tensor, width: int) -> torch.Tensor:
    """2-D [rows, width] view with unit channel stride (copies only when it must)."""
    t2 = t.reshape(-1, width)
    return t2 if t2.stride(1) == 1 or t2.shape[1] == 1 else t2.contiguous()


def layer_norm_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, active: int,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y [..., active] in x.dtype, mean [M] fp32, rstd [M] fp32); the op
    `shiftnas::elastic_layer_norm`."""
    _check_layer_norm(x, weight, bias, active, eps)
    x2 = _rows(x, x.shape[-1])
    weight, bias = weight.contiguous(), bias.contiguous()  # indexed with unit stride
    M = x2.shape[0]
    y = torch.empty((M, active), device=x.device, dtype=x.dtype)
    mean = torch.empty((M,), device=x.device, dtype=torch.float32)
    rstd = torch.empty((M,), device=x.device, dtype=torch.float32)
    if M > 0:
        block_m, block_c, warps = _blocks(active)
        _layer_norm_fwd_kernel[(triton.cdiv(M, block_m),)](
            x2, weight, bias, y, mean, rstd,
            M, active,
            x2.stride(0), y.stride(0),
            float(eps),
            BLOCK_M=block_m, BLOCK_C=block_c, num_warps=warps,
        )
    return y.reshape(*x.shape[:-1], active), mean, rstd


def layer_norm_backward(gy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor,
                        rstd: torch.Tensor, active: int, need_dx: bool, need_dweight: bool,
                        need_dbias: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx like x, zero past `active`; d(weight) [max] fp32; d(bias) [max] fp32), a 0-element
    tensor for what is not needed; the op `shiftnas::elastic_layer_norm_backward`."""
    x2 = _rows(x, x.shape[-1])
    gy2 = _rows(gy, active)
    weight = weight.contiguous()
    M = x2.shape[0]
    dev = x.device
    dx = dw = db = None
    if need_dx:
        dx = torch.empty(x2.shape, device=dev, dtype=x.dtype)
        if x2.shape[1] > active:
            dx[:, active:].zero_()
    block_m, block_c, warps = _blocks(active)
    progs = partial_programs(triton.cdiv(M, block_m), dev, per_sm=2)
    dw_part = torch.zeros((progs, active), device=dev, dtype=torch.float32) if need_dweight else None
    db_part = torch.zeros((progs, active), device=dev, dtype=torch.float32) if need_dbias else None
    if M > 0 and (need_dx or need_dweight or need_dbias):
        _layer_norm_bwd_kernel[(progs,)](
            gy2, x2, weight, mean, rstd, dx, dw_part, db_part,
            M, active,
            gy2.stride(0), x2.stride(0), dx.stride(0) if dx is not None else 0,
            STORE_DX=need_dx, HAS_DW=need_dweight, HAS_DB=need_dbias,
            BLOCK_M=block_m, BLOCK_C=block_c, num_warps=warps,
        )
    if need_dweight:
        dw = torch.zeros(weight.shape, device=dev, dtype=torch.float32)
        dw[:active] = dw_part.sum(0)
    if need_dbias:
        db = torch.zeros(weight.shape, device=dev, dtype=torch.float32)
        db[:active] = db_part.sum(0)
    return fill_empty(((dx.reshape(x.shape) if dx is not None else None), dw, db), x)


# ------------------------------------------------------------------------ custom ops, autograd
# The launchers are registered as they are: their annotations give the schemas.
_elastic_layer_norm_op = torch.library.custom_op(
    "shiftnas::elastic_layer_norm", layer_norm_forward, mutates_args=()
)


@_elastic_layer_norm_op.register_fake
def _(x, weight, bias, active, eps):
    _check_layer_norm(x, weight, bias, active, eps)
    m = 1
    for s in x.shape[:-1]:
        m = m * s
    return (
        x.new_empty((*x.shape[:-1], active)),
        x.new_empty((m,), dtype=torch.float32),
        x.new_empty((m,), dtype=torch.float32),
    )


_elastic_layer_norm_backward_op = torch.library.custom_op(
    "shiftnas::elastic_layer_norm_backward", layer_norm_backward, mutates_args=()
)


@_elastic_layer_norm_backward_op.register_fake
def _(gy, x, weight, mean, rstd, active, need_dx, need_dweight, need_dbias):
    f32 = torch.float32
    return (
        fake_grad(need_dx, x, x),
        fake_grad(need_dweight, weight, x, dtype=f32),
        fake_grad(need_dbias, weight, x, dtype=f32),
    )


def _setup_context(ctx, inputs, output):
    x, weight, bias, active, _eps = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(x, weight, mean, rstd)
    ctx.active = active
    ctx.dtypes = (weight.dtype, bias.dtype)


def _backward(ctx, gy, _gmean, _grstd):
    x, weight, mean, rstd = ctx.saved_tensors
    need = ctx.needs_input_grad
    dx, dw, db = torch.ops.shiftnas.elastic_layer_norm_backward(
        gy, x, weight, mean, rstd, ctx.active, need[0], need[1], need[2]
    )
    return (
        dx if need[0] else None,
        dw.to(ctx.dtypes[0]) if need[1] else None,
        db.to(ctx.dtypes[1]) if need[2] else None,
        None,
        None,
    )


torch.library.register_autograd("shiftnas::elastic_layer_norm", _backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------ public API
def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, active: int, eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the first `active` channels of x (x may be wider); output width `active`."""
    y, _, _ = torch.ops.shiftnas.elastic_layer_norm(x, weight, bias, active, eps)
    return y

