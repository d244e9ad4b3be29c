"""Elastic linear in Triton: y = act(x[..., :in] @ W[:out, :in]^T + b[:out]), fused.

Semantics: `shiftnas.ops.ref.linear` (docs/design.md "Kernels"). The kernels read the active
prefix of the max-size weight through its strides (no copy); gradients of weight and bias are
max-size, zero outside the active block.

The masked variant takes the widths as device tensors (no host sync, so CUDA graphs and
torch.compile see one static program): the output keeps its allocated width, columns past
`out_width` are zero and the tiles wholly past it return at once, so the cost follows the
active subnet. The output is multiplied by the per-channel `mask` and the backward returns
d(loss)/d(mask) for the computed channels: the prefix-mask gradient of the architecture
generator (docs/method.md Eq. 9).

Layering: `@triton.jit` kernels -> launchers (`_matmul`, `_act_backward`, `linear_forward`,
`linear_backward`; checks, allocation, grid) -> `torch.library.custom_op` with autograd ->
`linear` / `linear_masked`; their pure-PyTorch definitions are `shiftnas.ops.ref.linear` /
`shiftnas.ops.ref.linear_masked`.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._common import (
    KERNEL_DTYPES,
    check_device,
    check_width,
    dot_precision,
    fake_grad,
    fill_empty,
    gelu,
    gelu_grad,
    interpret_block,
    interpret_mode,
    matmul_configs,
    needs_grad,
    partial_programs,
    prune_matmul_configs,
)

__all__ = ["linear", "linear_backward", "linear_forward", "linear_masked"]

_ACTIVATIONS = {None: 0, "gelu": 1}


# ----------------------------------------------------------------------------------- kernels
@triton.jit
def _mma(acc, a, b, bscale, B_GELU: tl.constexpr, HAS_BSCALE: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """acc += a @ prologue(b), prologue = gelu(b) * bscale[n] when B_GELU."""
    if B_GELU:
        bf = gelu(b.to(tl.float32))
        if HAS_BSCALE:
            bf = bf * bscale[None, :]
        b = bf
    # B is cast to A's dtype: fp32 master weights feed fp16/bf16 activations tile by tile,
    # with no full-size cast copy of the weight.
    return tl.dot(a, b.to(a.dtype), acc, input_precision=DOT_PRECISION)


@triton.jit
def _grouped_tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of this program's C tile in grouped ordering: GROUP_M row tiles share their
    B tiles in L2 (Triton tutorial 03)."""
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.jit
def _limit(lim_ptr, size, HAS_LIM: tl.constexpr):
    """min(*lim_ptr, size) with a device-tensor limit, else size."""
    lim = size
    if HAS_LIM:
        lim = tl.minimum(tl.load(lim_ptr).to(tl.int32), size)
    return lim


@triton.jit
def _reduce_k(a_ptrs, b_ptrs, offs_k, k_lim, stride_ak, stride_bk, bscale,
              B_GELU: tl.constexpr, HAS_BSCALE: tl.constexpr, DOT_PRECISION: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The fp32 tile A[:, :k_lim] @ prologue(B[:k_lim]) (see `_mma`), from the tile pointers at k = 0."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # Whole K tiles need no mask; the partial last one (k_lim need not be a multiple of
    # BLOCK_K, nor known on the host) is peeled off with a mask along K only.
    k_full = k_lim - k_lim % BLOCK_K
    for _ in range(0, k_full, BLOCK_K):
        acc = _mma(acc, tl.load(a_ptrs), tl.load(b_ptrs), bscale, B_GELU, HAS_BSCALE, DOT_PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    if k_full < k_lim:
        mask_k = (k_full + offs_k) < k_lim
        a = tl.load(a_ptrs, mask=mask_k[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=mask_k[:, None], other=0.0)
        acc = _mma(acc, a, b, bscale, B_GELU, HAS_BSCALE, DOT_PRECISION)
    return acc


@triton.autotune(
    configs=matmul_configs(),
    key=["M", "N", "K", "ACT", "B_GELU"],
    prune_configs_by={"early_config_prune": prune_matmul_configs},
)
@triton.jit
def _matmul_kernel(
    # pointers
    a_ptr, b_ptr, c_ptr, bias_ptr, scale_ptr, pre_ptr, bscale_ptr,
    row_lim_ptr, col_lim_ptr, red_lim_ptr,
    # sizes: C[M, N] = A[M, K] @ B[K, N]
    M, N, K,
    # strides
    stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn, stride_pm, stride_pn,
    # epilogue on C: + bias[n], store pre-activation, activation, * scale[n]
    HAS_BIAS: tl.constexpr, STORE_PRE: tl.constexpr, ACT: tl.constexpr, HAS_SCALE: tl.constexpr,
    # prologue on B tiles: gelu(B) * bscale[n] (recomputes an MLP hidden from its pre-activation)
    B_GELU: tl.constexpr, HAS_BSCALE: tl.constexpr,
    # device-tensor limits on the rows / columns of C and on the reduction
    ROW_LIM: tl.constexpr, COL_LIM: tl.constexpr, RED_LIM: tl.constexpr,
    # skipped tiles store zeros (C and pre-activation) instead of leaving memory untouched
    ZERO_SKIPPED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """C = epilogue(A[:, :k_lim] @ prologue(B[:k_lim])), zero past the row/column limits.

    Tiles wholly past a limit load and compute nothing: with ZERO_SKIPPED they store zeros
    (one write per element, no memset pass first), else they leave C as it is (pre-zeroed by
    the launcher, or scratch nobody reads). Partial tiles store zeros past the limit.
    """
    pid_m, pid_n = _grouped_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    m_lim = _limit(row_lim_ptr, M, ROW_LIM)
    n_lim = _limit(col_lim_ptr, N, COL_LIM)
    k_lim = _limit(red_lim_ptr, K, RED_LIM)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    rows = offs_m[:, None].to(tl.int64)
    cols = offs_n[None, :].to(tl.int64)
    in_tile = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    c_ptrs = c_ptr + rows * stride_cm + cols * stride_cn
    if STORE_PRE:
        pre_ptrs = pre_ptr + rows * stride_pm + cols * stride_pn
    if (pid_m * BLOCK_M >= m_lim) | (pid_n * BLOCK_N >= n_lim):
        if ZERO_SKIPPED:
            zero = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            tl.store(c_ptrs, zero.to(c_ptr.dtype.element_ty), mask=in_tile)
            if STORE_PRE:
                tl.store(pre_ptrs, zero.to(pre_ptr.dtype.element_ty), mask=in_tile)
        return

    mask_m = offs_m < m_lim
    mask_n = offs_n < n_lim
    active = mask_m[:, None] & mask_n[None, :]
    # Operand loads use wrapped, in-bounds rows/columns instead of masks (Triton tutorial 03):
    # unmasked loads vectorise and pipeline (3 stages, 96 KiB of shared memory in the sm_90
    # build, against 1 stage with masks); results past the limits are discarded below.
    # int64 offsets: rows * stride can pass 2**31 for large batches x sequence.
    ld_m = (offs_m % M).to(tl.int64)
    ld_n = (offs_n % N).to(tl.int64)
    a_ptrs = a_ptr + ld_m[:, None] * stride_am + offs_k[None, :].to(tl.int64) * stride_ak
    b_ptrs = b_ptr + offs_k[:, None].to(tl.int64) * stride_bk + ld_n[None, :] * stride_bn
    bscale = 1.0
    if HAS_BSCALE:
        bscale = tl.load(bscale_ptr + ld_n).to(tl.float32)

    acc = _reduce_k(a_ptrs, b_ptrs, offs_k, k_lim, stride_ak, stride_bk, bscale,
                    B_GELU, HAS_BSCALE, DOT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    if STORE_PRE:
        tl.store(pre_ptrs, tl.where(active, acc, 0.0).to(pre_ptr.dtype.element_ty), mask=in_tile)
    if ACT == 1:
        acc = gelu(acc)
    if HAS_SCALE:
        acc = acc * tl.load(scale_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    acc = tl.where(active, acc, 0.0)
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=in_tile)


@triton.jit
def _act_backward_kernel(
    gy_ptr, pre_ptr, scale_ptr, gz_ptr, dbias_part_ptr, dscale_part_ptr, col_lim_ptr,
    M, N,
    stride_gym, stride_gyn, stride_pm, stride_pn, stride_gzm, stride_gzn,
    ACT: tl.constexpr, LOAD_PRE: tl.constexpr, HAS_SCALE: tl.constexpr, STORE_GZ: tl.constexpr,
    HAS_BIAS: tl.constexpr, COL_LIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """gz = gy * scale * act'(pre), zero past the column limit; per-program partial sums of
    d(bias) = sum gz and d(scale) = sum gy * act(pre) over this program's rows (summed by torch
    afterwards, which keeps the result deterministic, unlike atomics)."""
    pid_n = tl.program_id(0)
    pid_g = tl.program_id(1)
    num_g = tl.num_programs(1)
    n_lim = N
    if COL_LIM:
        n_lim = tl.minimum(tl.load(col_lim_ptr).to(tl.int32), N)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = offs_n[None, :].to(tl.int64)
    in_n = (offs_n < N)[None, :]
    if pid_n * BLOCK_N >= n_lim:
        # Past the width: no gy or pre is read; gz gets zeros, so that the matmuls after it
        # (whose wrapped operand loads touch these columns) never read uninitialised memory.
        if STORE_GZ:
            for m0 in range(pid_g * BLOCK_M, M, num_g * BLOCK_M):
                offs_m = m0 + tl.arange(0, BLOCK_M)
                zero = tl.zeros((BLOCK_M, BLOCK_N), dtype=gz_ptr.dtype.element_ty)
                tl.store(gz_ptr + offs_m[:, None].to(tl.int64) * stride_gzm + cols * stride_gzn, zero,
                         mask=(offs_m < M)[:, None] & in_n)
        return
    mask_n = offs_n < n_lim
    if HAS_SCALE:
        s = tl.load(scale_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    db = tl.zeros((BLOCK_N,), dtype=tl.float32)
    ds = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for m0 in range(pid_g * BLOCK_M, M, num_g * BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        rows = offs_m[:, None].to(tl.int64)
        mk = (offs_m < M)[:, None] & mask_n[None, :]
        g = tl.load(gy_ptr + rows * stride_gym + cols * stride_gyn, mask=mk, other=0.0).to(tl.float32)
        if LOAD_PRE:
            z = tl.load(pre_ptr + rows * stride_pm + cols * stride_pn, mask=mk, other=0.0).to(tl.float32)
        if HAS_SCALE:
            if ACT == 1:
                a = gelu(z)
            else:
                a = z
            ds += tl.sum(g * a, axis=0)
            g = g * s[None, :]
        if ACT == 1:
            g = g * gelu_grad(z)
        if STORE_GZ:
            # g is 0 past n_lim (masked loads): the whole tile is stored.
            tl.store(gz_ptr + rows * stride_gzm + cols * stride_gzn, g.to(gz_ptr.dtype.element_ty),
                     mask=(offs_m < M)[:, None] & in_n)
        if HAS_BIAS:
            db += tl.sum(g, axis=0)
    if HAS_BIAS:
        tl.store(dbias_part_ptr + pid_g * N + offs_n, db, mask=mask_n)
    if HAS_SCALE:
        tl.store(dscale_part_ptr + pid_g * N + offs_n, ds, mask=mask_n)


# --------------------------------------------------------------------------------- launchers
def _matmul(a, b, c, *, bias=None, scale=None, pre=None, act=0, b_gelu=False, bscale=None,
            row_lim=None, col_lim=None, red_lim=None, zero_skipped=True) -> None:
    """c[:] = epilogue(a @ prologue(b)) for 2-D (possibly strided / transposed) views; c and
    pre are zero past the row/column limits unless `zero_skipped` is False, where the tiles
    wholly past them stay untouched."""
    M, K = a.shape
    N = b.shape[1]
    if M == 0 or N == 0:
        return
    if K == 0:  # nothing to reduce: the kernel would still apply the epilogue; keep one path
        a = a.new_zeros(M, 1)
        b = b.new_zeros(1, N)
        K = 1

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)

    _matmul_kernel[grid](
        a, b, c, bias, scale, pre, bscale, row_lim, col_lim, red_lim,
        M, N, K,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1),
        pre.stride(0) if pre is not None else 0, pre.stride(1) if pre is not None else 0,
        HAS_BIAS=bias is not None, STORE_PRE=pre is not None, ACT=act, HAS_SCALE=scale is not None,
        B_GELU=b_gelu, HAS_BSCALE=bscale is not None,
        ROW_LIM=row_lim is not None, COL_LIM=col_lim is not None, RED_LIM=red_lim is not None,
        ZERO_SKIPPED=zero_skipped, DOT_PRECISION=dot_precision(a.dtype),
    )


def _act_backward(gy2, pre, scale, col_lim, act: int, want_dbias: bool):
    """(gz, d(bias) [N] fp32 or None, d(scale) [N] fp32 or None) for gy2 [M, N]."""
    M, N = gy2.shape
    store_gz = bool(act) or scale is not None
    if not store_gz and not want_dbias:
        return gy2, None, None
    dev = gy2.device
    gz = torch.empty((M, N), device=dev, dtype=gy2.dtype) if store_gz else gy2
    if interpret_mode():
        block_m, block_n = interpret_block(M), 128
    else:
        block_m, block_n = 32, 128
    col_tiles = triton.cdiv(N, block_n)
    groups = partial_programs(triton.cdiv(M, block_m), dev, per_sm=4, col_tiles=col_tiles)
    dbias = torch.zeros((groups, N), device=dev, dtype=torch.float32) if want_dbias else None
    dscale = torch.zeros((groups, N), device=dev, dtype=torch.float32) if scale is not None else None
    if M > 0 and N > 0:
        _act_backward_kernel[(col_tiles, groups)](
            gy2, pre, scale, gz, dbias, dscale, col_lim,
            M, N,
            gy2.stride(0), gy2.stride(1),
            pre.stride(0) if pre is not None else 0, pre.stride(1) if pre is not None else 0,
            gz.stride(0), gz.stride(1),
            ACT=act, LOAD_PRE=store_gz, HAS_SCALE=scale is not None, STORE_GZ=store_gz,
            HAS_BIAS=want_dbias, COL_LIM=col_lim is not None,
            BLOCK_M=block_m, BLOCK_N=block_n,
            num_warps=4,
        )
    return (
        gz,
        dbias.sum(0) if dbias is not None else None,
        dscale.sum(0) if dscale is not None else None,
    )


def _check_linear(x, weight, bias, out_features, activation, out_width, in_width, mask) -> None:
    """ValueError naming the bad argument, for the real and the fake (torch.compile) paths."""
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ValueError(f"x must be a tensor with at least one dimension, got {type(x).__name__}")
    if x.dtype not in KERNEL_DTYPES:
        raise ValueError(f"x.dtype={x.dtype}; the Triton linear supports {[str(d) for d in KERNEL_DTYPES]}")
    check_device("x", x, x.device)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"weight must be a 2-D [max_out, max_in] tensor, got shape {getattr(weight, 'shape', None)}")
    if weight.dtype not in KERNEL_DTYPES:
        raise ValueError(f"weight.dtype={weight.dtype}; allowed: {[str(d) for d in KERNEL_DTYPES]}")
    k = x.shape[-1]
    if k < 1 or k > weight.shape[1]:
        raise ValueError(f"x.shape[-1]={k} must be in [1, weight.shape[1]={weight.shape[1]}] (the max in_features)")
    if not isinstance(out_features, (int, torch.SymInt)) or not 1 <= out_features <= weight.shape[0]:
        raise ValueError(f"out_features={out_features!r} must be an int in [1, weight.shape[0]={weight.shape[0]}]")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation={activation!r}; allowed: {list(_ACTIVATIONS)}")
    check_device("weight", weight, x.device)
    if bias is not None:
        if bias.dim() != 1 or bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias must have shape ({weight.shape[0]},) (weight.shape[0]), got {tuple(bias.shape)}")
        if bias.dtype not in KERNEL_DTYPES:
            raise ValueError(f"bias.dtype={bias.dtype}; allowed: {[str(d) for d in KERNEL_DTYPES]}")
        check_device("bias", bias, x.device)
    check_width("out_width", out_width, x.device)
    check_width("in_width", in_width, x.device)
    if mask is not None:
        if mask.dim() != 1 or mask.shape[0] != out_features:
            raise ValueError(f"mask must have shape ({out_features},) (out_features), got {tuple(mask.shape)}")
        if mask.dtype not in KERNEL_DTYPES:
            raise ValueError(f"mask.dtype={mask.dtype}; allowed: {[str(d) for d in KERNEL_DTYPES]}")
        check_device("mask", mask, x.device)


def linear_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   out_features: int, activation: str | None = None,
                   out_width: torch.Tensor | None = None, in_width: torch.Tensor | None = None,
                   mask: torch.Tensor | None = None,
                   save_pre: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(y [..., out_features], pre-activation [M, out_features] or an empty tensor); the op
    `shiftnas::elastic_linear`.

    The pre-activation is kept only when `save_pre` and the backward needs it (an activation
    or a mask): d(mask) and GELU' are recomputed from it instead of storing two tensors.
    """
    _check_linear(x, weight, bias, out_features, activation, out_width, in_width, mask)
    K, N = x.shape[-1], out_features
    x2 = x.reshape(-1, K)
    M = x2.shape[0]
    act = _ACTIVATIONS[activation]
    y = torch.empty((M, N), device=x.device, dtype=x.dtype)
    keep_pre = save_pre and (act != 0 or mask is not None)
    pre = torch.empty((M, N) if keep_pre else (0,), device=x.device, dtype=x.dtype)
    # Per-channel vectors are indexed with unit stride (a no-op for parameters).
    bias = None if bias is None else bias.contiguous()
    mask = None if mask is None else mask.contiguous()
    _matmul(x2, weight[:N, :K].t(), y, bias=bias, scale=mask, pre=pre if keep_pre else None, act=act,
            col_lim=out_width, red_lim=in_width)
    return y.reshape(*x.shape[:-1], N), pre


def linear_backward(gy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                    pre: torch.Tensor | None, mask: torch.Tensor | None,
                    out_width: torch.Tensor | None, in_width: torch.Tensor | None,
                    activation: str | None, need_dbias: bool, need_dx: bool,
                    need_dweight: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight [max-size], dbias [max-size, fp32], dmask), a 0-element tensor for what is
    not needed; the op `shiftnas::elastic_linear_backward`.

    gy past out_width is ignored (the output is constant zero there); dx is zero past in_width.
    """
    K = x.shape[-1]
    N = gy.shape[-1]
    x2 = x.reshape(-1, K)
    gy2 = gy.reshape(-1, N)
    act = _ACTIVATIONS[activation]
    if mask is not None:
        mask = mask.contiguous()
    gz, db_part, dmask = _act_backward(gy2, pre, mask, out_width, act, need_dbias)
    dx = dw = db = None
    if need_dx:
        dx = torch.empty(x2.shape, device=x.device, dtype=x.dtype)
        _matmul(gz, weight[:N, :K], dx, col_lim=in_width, red_lim=out_width)
        dx = dx.reshape(x.shape)
    if need_dweight:
        # Max-size and zero outside [:N, :K]: the memset covers the skipped tiles too.
        dw = torch.zeros(weight.shape, device=weight.device, dtype=weight.dtype)
        _matmul(gz.t(), x2, dw[:N, :K], row_lim=out_width, col_lim=in_width, zero_skipped=False)
    if need_dbias:
        db = torch.zeros(weight.shape[0], device=weight.device, dtype=torch.float32)
        db[:N] = db_part
    if dmask is not None:
        dmask = dmask.to(mask.dtype)
    return fill_empty((dx, dw, db, dmask), x)


# ------------------------------------------------------------------------ custom ops, autograd
# The launchers are registered as they are: their annotations give the schemas.
_elastic_linear_op = torch.library.custom_op("shiftnas::elastic_linear", linear_forward, mutates_args=())


@_elastic_linear_op.register_fake
def _(x, weight, bias, out_features, activation, out_width, in_width, mask, save_pre):
    _check_linear(x, weight, bias, out_features, activation, out_width, in_width, mask)
    m = math.prod(x.shape[:-1])
    keep_pre = save_pre and (activation is not None or mask is not None)
    y = x.new_empty((*x.shape[:-1], out_features))
    return y, x.new_empty((m, out_features) if keep_pre else (0,))


_elastic_linear_backward_op = torch.library.custom_op(
    "shiftnas::elastic_linear_backward", linear_backward, mutates_args=()
)


@_elastic_linear_backward_op.register_fake
def _(gy, x, weight, pre, mask, out_width, in_width, activation, need_dbias, need_dx, need_dweight):
    return (
        fake_grad(need_dx, x, x),
        fake_grad(need_dweight, weight, x),
        fake_grad(need_dbias, weight, x, (weight.shape[0],), torch.float32),
        fake_grad(mask is not None, mask, x),
    )


def _linear_setup_context(ctx, inputs, output):
    x, weight, bias, _out_features, activation, out_width, in_width, mask, _save_pre = inputs
    _, pre = output
    ctx.mark_non_differentiable(pre)
    ctx.save_for_backward(x, weight, pre, mask, out_width, in_width)
    ctx.activation = activation
    ctx.bias_dtype = None if bias is None else bias.dtype


def _linear_backward_autograd(ctx, gy, _gpre):
    x, weight, pre, mask, out_width, in_width = ctx.saved_tensors
    need = ctx.needs_input_grad
    need_db = ctx.bias_dtype is not None and need[2]
    uses_pre = ctx.activation is not None or mask is not None
    dx, dw, db, dmask = torch.ops.shiftnas.elastic_linear_backward(
        gy, x, weight, pre if uses_pre else None, mask, out_width, in_width, ctx.activation,
        need_db, need[0], need[1],
    )
    return (
        dx if need[0] else None,
        dw if need[1] else None,
        db.to(ctx.bias_dtype) if need_db else None,
        None,
        None,
        None,
        None,
        dmask if mask is not None and need[7] else None,
        None,
    )


torch.library.register_autograd(
    "shiftnas::elastic_linear", _linear_backward_autograd, setup_context=_linear_setup_context
)


# ------------------------------------------------------------------------------ public API
def linear(x, weight, bias, out_features: int, activation: str | None = None) -> torch.Tensor:
    """act(x @ W[:out, :in]^T + b[:out]) with in = x.shape[-1]; same contract as `ref.linear`."""
    return linear_masked(x, weight, bias, out_features, activation)


def linear_masked(x, weight, bias, out_features: int, activation: str | None = None, *,
                  out_width: torch.Tensor | None = None, in_width: torch.Tensor | None = None,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """`linear` with device-tensor widths and an output-channel mask, output width `out_features`.

    y[..., n] = mask[n] * act(x[..., :in_width] @ W[n, :in_width] + b[n]) for n < out_width,
    0 for n >= out_width (widths clamp to the tensor sizes). Nothing is read on the host.
    """
    y, _ = torch.ops.shiftnas.elastic_linear(
        x, weight, bias, out_features, activation, out_width, in_width, mask,
        needs_grad(x, weight, bias, mask),
    )
    return y

