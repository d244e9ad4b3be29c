"""Flash-style elastic attention in Triton: forward and backward (FlashAttention-2).

softmax(q k^T / sqrt(d)) v over [B, H, N, d] tensors, H = the active heads (a prefix the caller
slices), d in {32, 64}, any N (the tail block is masked). Online softmax with fp32 accumulation;
the N x N score matrix only ever lives in registers, one BLOCK_M x BLOCK_N tile at a time. The
forward saves the row logsumexp (in log2 units) so the backward recomputes P tile by tile.

The masked variant multiplies head h's output by head_mask[h] inside the kernel and can take the
active head count as a *device* tensor (programs for heads >= num_heads write zeros and do no
work; nothing syncs with the host). Its backward also returns d(head_mask)[h] =
sum over (B, N, d) of dO * O_unmasked, zero for heads that were not computed.

Layering (Triton tutorial 06-fused-attention): `@triton.jit` kernels -> launchers (checks,
allocation, grid) -> custom ops `shiftnas::elastic_attention` / `..._backward` (+ fake impls,
so torch.compile traces them; autograd through `torch.library.register_autograd`) ->
`elastic_attention`, `elastic_attention_masked`. The pure-PyTorch definitions they must match:
`shiftnas.ops.ref.attention` and `shiftnas.ops.ref.attention_heads`.

References: Dao, "FlashAttention-2" (arXiv:2307.08691), Algorithms 1 and 2; Triton tutorial
06-fused-attention.
"""
import math
from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import KERNEL_DTYPES, dot_precision

__all__ = [
    "DTYPES",
    "HEAD_DIMS",
    "elastic_attention",
    "elastic_attention_masked",
]

HEAD_DIMS = (32, 64)
DTYPES = KERNEL_DTYPES

_LOG2E = 1.4426950408889634  # scores are scaled by log2(e) so the kernels use exp2
# One tile shape for every kernel: N is 50 or 197 in the search spaces, so bigger tiles only
# add masked rows; 64 x 64 also keeps the interpreter's per-tile Python overhead low.
_BLOCK_M = 64
_BLOCK_N = 64
_NUM_WARPS = 4
_NUM_STAGES = 2


# --------------------------------------------------------------------------------------------
# Kernels. Program grid: (row or column tile, b * H + h). Offsets of a (b, h) slice are int64:
# B * H * N * d passes 2**31 at ViT sizes with large batches.
# --------------------------------------------------------------------------------------------


@triton.jit
def _tile(base, rows, cols, stride_r, stride_c):
    """Pointers of the tile base[rows, cols] (pass (offs_d, cols) for a transposed tile)."""
    return base + rows[:, None] * stride_r + cols[None, :] * stride_c


@triton.jit
def _load_rows(base, rows, offs_d, stride_n, stride_d, row_ok):
    """The [rows, HEAD_DIM] tile of a (b, h) slice. Rows past N read 0, not undefined values, so
    that 0 * padding stays 0 (never NaN)."""
    return tl.load(_tile(base, rows, offs_d, stride_n, stride_d), mask=row_ok[:, None], other=0.0)


@triton.jit
def _load_rows_t(base, rows, offs_d, stride_n, stride_d, row_ok):
    """`_load_rows` transposed: the [HEAD_DIM, rows] tile, rows past N read 0."""
    return tl.load(_tile(base, offs_d, rows, stride_d, stride_n), mask=row_ok[None, :], other=0.0)


@triton.jit
def _store_rows(base, rows, offs_d, stride_n, stride_d, row_ok, val):
    """Stores the [rows, HEAD_DIM] tile val, cast to base's dtype; rows past N are left out."""
    tl.store(_tile(base, rows, offs_d, stride_n, stride_d), val.to(base.dtype.element_ty),
             mask=row_ok[:, None])


@triton.jit
def _program_tile(H, N, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Program (row tile, b * H + h): (b * H + h; b, h as int64; the tile's BLOCK rows of N and
    their mask; the head-dim offsets). Row statistics of (b, h) start at (b * H + h) * N."""
    pid = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    return pid_bh, b, h, offs, offs < N, offs_d


@triton.jit
def _work_end(N, h, HEAD_MASK, NUM_HEADS, stride_mask,
              HAS_MASK: tl.constexpr, HAS_NUM_HEADS: tl.constexpr):
    """Loop bound of a program over N: 0 for heads past num_heads and, with HAS_MASK, heads with
    mask 0 (the backward: their gradients are 0)."""
    end = N
    if HAS_NUM_HEADS:
        end = tl.where(h < tl.load(NUM_HEADS), end, 0)
    if HAS_MASK:
        end = tl.where(tl.load(HEAD_MASK + h * stride_mask) != 0.0, end, 0)
    return end


@triton.jit
def _attn_fwd(
    Q, K, V, O, O_RAW, LSE2, HEAD_MASK, NUM_HEADS,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_rb, stride_rh, stride_rn, stride_rd,
    stride_mask,
    H, N, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_NUM_HEADS: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid_bh, b, h, offs_m, row_ok, offs_d = _program_tile(H, N, BLOCK_M, HEAD_DIM)
    offs_n = tl.arange(0, BLOCK_N)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh

    q = _load_rows(Q + b * stride_qb + h * stride_qh, offs_m, offs_d, stride_qn, stride_qd, row_ok)

    # A head past the device-side head count runs zero iterations: its output is 0 (l_i = 0).
    # Heads with mask 0 are computed: the backward needs their unmasked output.
    n_end = _work_end(N, h, HEAD_MASK, NUM_HEADS, stride_mask, False, HAS_NUM_HEADS)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for start_n in range(0, n_end, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < N
        kt = _load_rows_t(k_base, cols, offs_d, stride_kn, stride_kd, col_ok)
        s = tl.dot(q, kt, input_precision=DOT_PRECISION) * qk_scale
        s = tl.where(col_ok[None, :], s, float("-inf"))
        # Every tile holds >= 1 valid column, so m_new is finite and alpha = 0 on the first tile.
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_rows(v_base, cols, offs_d, stride_vn, stride_vd, col_ok)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    out = acc / l_safe[:, None]
    tl.store(LSE2 + pid_bh.to(tl.int64) * N + offs_m, m_i + tl.log2(l_safe), mask=row_ok)
    if HAS_MASK:
        # The backward needs the unmasked output (delta and d(head_mask)), also where the mask
        # is 0, so it is stored beside the masked one.
        _store_rows(O_RAW + b * stride_rb + h * stride_rh, offs_m, offs_d, stride_rn, stride_rd,
                    row_ok, out)
        out = out * tl.load(HEAD_MASK + h * stride_mask).to(tl.float32)
    _store_rows(O + b * stride_ob + h * stride_oh, offs_m, offs_d, stride_on, stride_od,
                row_ok, out)


@triton.jit
def _attn_bwd_preprocess(
    O, DO, DELTA,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_gb, stride_gh, stride_gn, stride_gd,
    H, N,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """delta = rowsum(dO * O) with the *unmasked* O and dO (the mask is applied later)."""
    pid_bh, b, h, offs_m, row_ok, offs_d = _program_tile(H, N, BLOCK_M, HEAD_DIM)
    o = _load_rows(O + b * stride_ob + h * stride_oh, offs_m, offs_d, stride_on, stride_od,
                   row_ok).to(tl.float32)
    do = _load_rows(DO + b * stride_gb + h * stride_gh, offs_m, offs_d, stride_gn, stride_gd,
                    row_ok).to(tl.float32)
    tl.store(DELTA + pid_bh.to(tl.int64) * N + offs_m, tl.sum(o * do, 1), mask=row_ok)


@triton.jit
def _attn_bwd_dkdv(
    Q, K, V, DO, LSE2, DELTA, DK, DV, HEAD_MASK, NUM_HEADS,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_gb, stride_gh, stride_gn, stride_gd,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    stride_mask,
    H, N, sm_scale, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_NUM_HEADS: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One key tile per program, looping over all query tiles: dV = P^T dO, dK = scale dS^T Q.

    Works in the transposed frame (rows = keys) so P^T and dS^T come out of the dots directly.
    Computed with the unmasked dO, then scaled by head_mask[h] once at the end.
    """
    pid_bh, b, h, offs_n, col_ok, offs_d = _program_tile(H, N, BLOCK_N, HEAD_DIM)
    offs_m = tl.arange(0, BLOCK_M)
    q_base = Q + b * stride_qb + h * stride_qh
    do_base = DO + b * stride_gb + h * stride_gh
    row_base = pid_bh.to(tl.int64) * N

    k = _load_rows(K + b * stride_kb + h * stride_kh, offs_n, offs_d, stride_kn, stride_kd, col_ok)
    v = _load_rows(V + b * stride_vb + h * stride_vh, offs_n, offs_d, stride_vn, stride_vd, col_ok)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    m_end = _work_end(N, h, HEAD_MASK, NUM_HEADS, stride_mask, HAS_MASK, HAS_NUM_HEADS)
    for start_m in range(0, m_end, BLOCK_M):
        rows = start_m + offs_m
        row_ok = rows < N
        qt = _load_rows_t(q_base, rows, offs_d, stride_qn, stride_qd, row_ok)
        # Padding rows get lse = +inf, hence P = 0: they add nothing to dK or dV.
        lse2 = tl.load(LSE2 + row_base + rows, mask=row_ok, other=float("inf"))
        pt = tl.exp2(tl.dot(k, qt, input_precision=DOT_PRECISION) * qk_scale - lse2[None, :])
        do = _load_rows(do_base, rows, offs_d, stride_gn, stride_gd, row_ok)
        dv += tl.dot(pt.to(do.dtype), do, input_precision=DOT_PRECISION)
        delta = tl.load(DELTA + row_base + rows, mask=row_ok, other=0.0)
        dpt = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        dst = pt * (dpt - delta[None, :])
        dk += tl.dot(dst.to(qt.dtype), tl.trans(qt), input_precision=DOT_PRECISION)

    dk *= sm_scale
    if HAS_MASK:
        m_h = tl.load(HEAD_MASK + h * stride_mask).to(tl.float32)
        dk *= m_h
        dv *= m_h
    _store_rows(DK + b * stride_dkb + h * stride_dkh, offs_n, offs_d, stride_dkn, stride_dkd,
                col_ok, dk)
    _store_rows(DV + b * stride_dvb + h * stride_dvh, offs_n, offs_d, stride_dvn, stride_dvd,
                col_ok, dv)


@triton.jit
def _attn_bwd_dq(
    Q, K, V, DO, LSE2, DELTA, DQ, HEAD_MASK, NUM_HEADS,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_gb, stride_gh, stride_gn, stride_gd,
    stride_dqb, stride_dqh, stride_dqn, stride_dqd,
    stride_mask,
    H, N, sm_scale, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_NUM_HEADS: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One query tile per program, looping over all key tiles: dQ = scale dS K."""
    pid_bh, b, h, offs_m, row_ok, offs_d = _program_tile(H, N, BLOCK_M, HEAD_DIM)
    offs_n = tl.arange(0, BLOCK_N)
    row_base = pid_bh.to(tl.int64) * N
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh

    q = _load_rows(Q + b * stride_qb + h * stride_qh, offs_m, offs_d, stride_qn, stride_qd, row_ok)
    do = _load_rows(DO + b * stride_gb + h * stride_gh, offs_m, offs_d, stride_gn, stride_gd,
                    row_ok)
    lse2 = tl.load(LSE2 + row_base + offs_m, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + row_base + offs_m, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    n_end = _work_end(N, h, HEAD_MASK, NUM_HEADS, stride_mask, HAS_MASK, HAS_NUM_HEADS)
    for start_n in range(0, n_end, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < N
        # Padding columns load as 0 (not undefined) so that 0 * padding stays 0, never NaN.
        kt = _load_rows_t(k_base, cols, offs_d, stride_kn, stride_kd, col_ok)
        vt = _load_rows_t(v_base, cols, offs_d, stride_vn, stride_vd, col_ok)
        s = tl.dot(q, kt, input_precision=DOT_PRECISION) * qk_scale
        p = tl.where(col_ok[None, :], tl.exp2(s - lse2[:, None]), 0.0)
        dp = tl.dot(do, vt, input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(kt.dtype), tl.trans(kt), input_precision=DOT_PRECISION)

    dq *= sm_scale
    if HAS_MASK:
        dq *= tl.load(HEAD_MASK + h * stride_mask).to(tl.float32)
    _store_rows(DQ + b * stride_dqb + h * stride_dqh, offs_m, offs_d, stride_dqn, stride_dqd,
                row_ok, dq)


# --------------------------------------------------------------------------------------------
# Launchers: checks, allocation, grid.
# --------------------------------------------------------------------------------------------


def _interpreted() -> bool:
    """True when triton.jit gave interpreter functions (TRITON_INTERPRET=1 at import)."""
    return not isinstance(_attn_fwd, triton.runtime.JITFunction)


def _describe(t) -> str:
    if isinstance(t, torch.Tensor):
        return f"shape {tuple(t.shape)}, {t.dtype}, on {t.device}"
    return type(t).__name__


def _check_inputs(q, k, v, head_mask=None, num_heads=None) -> None:
    """ValueError naming the bad argument, the allowed values and what to do.

    Always ValueError, also for a wrong type, so callers catch one exception type.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be 4-D [B, heads, N, head_dim], got {_describe(t)}")
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape:
            raise ValueError(
                f"{name} shape {tuple(t.shape)} != q shape {tuple(q.shape)}; "
                "self-attention needs equal shapes"
            )
    if q.dtype not in DTYPES:
        raise ValueError(f"q dtype {q.dtype} unsupported; allowed: {[str(d) for d in DTYPES]}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise ValueError(f"{name} dtype {t.dtype} != q dtype {q.dtype}; use one dtype")
    if q.dtype == torch.bfloat16 and _interpreted():
        raise ValueError(
            "q dtype torch.bfloat16 unsupported in the Triton interpreter (its tl.dot gives wrong "
            "bf16 results); use float16/float32 or CUDA tensors"
        )
    if q.shape[-1] not in HEAD_DIMS:
        raise ValueError(
            f"head_dim d={q.shape[-1]} unsupported; allowed: {list(HEAD_DIMS)} (use ref instead)"
        )
    for name, t in (("k", k), ("v", v)):
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}; use one device")
    if q.device.type not in ("cuda", "meta") and not _interpreted():
        raise ValueError(
            f"q is on {q.device}: the Triton kernels need CUDA tensors "
            "(or TRITON_INTERPRET=1 set before import to run them in the interpreter)"
        )
    H = q.shape[1]
    if head_mask is not None:
        hm = head_mask
        if not isinstance(hm, torch.Tensor) or hm.dim() != 1 or not hm.is_floating_point():
            raise ValueError(f"head_mask must be a 1-D float tensor [>= {H}], got {_describe(hm)}")
        if hm.shape[0] < H:
            raise ValueError(f"head_mask has {hm.shape[0]} entries, fewer than the {H} heads of q")
        if head_mask.device != q.device:
            raise ValueError(f"head_mask is on {head_mask.device} but q is on {q.device}")
    if num_heads is not None:
        if (
            not isinstance(num_heads, torch.Tensor)
            or num_heads.numel() != 1
            or num_heads.is_floating_point()
            or num_heads.dtype == torch.bool
        ):
            raise ValueError(
                "num_heads must be a one-element integer device tensor (no host sync), "
                f"got {_describe(num_heads)}"
            )
        if num_heads.device != q.device:
            raise ValueError(f"num_heads is on {num_heads.device} but q is on {q.device}")
        if head_mask is None:
            raise ValueError("num_heads needs head_mask (pass a mask of ones)")


def _empty_bhnd(like: torch.Tensor) -> torch.Tensor:
    """[B, H, N, d] laid out as [B, N, H, d]: the caller's o.transpose(1, 2).reshape(B, N, H*d)
    is then a view, not a copy; the gradients get the layout of the head-major qkv they feed."""
    B, H, N, d = like.shape
    return like.new_empty((B, N, H, d)).transpose(1, 2)


def _flash_args(q, head_mask, num_heads, dummy):
    """(head-mask pointer, num-heads pointer, head-mask stride, meta-parameters) of the flash
    kernels; `dummy` stands in for an absent tensor (never read: its HAS_* flag is False)."""
    has_mask, has_nh = head_mask is not None, num_heads is not None
    meta = {
        "HEAD_DIM": q.shape[-1], "BLOCK_M": _BLOCK_M, "BLOCK_N": _BLOCK_N, "HAS_MASK": has_mask,
        "HAS_NUM_HEADS": has_nh, "DOT_PRECISION": dot_precision(q.dtype),
        "num_warps": _NUM_WARPS, "num_stages": _NUM_STAGES,
    }
    return (
        head_mask if has_mask else dummy,
        num_heads if has_nh else dummy,
        head_mask.stride(0) if has_mask else 0,
        meta,
    )


def _forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    head_mask: Optional[torch.Tensor] = None,  # noqa: UP045 (schema inference)
    num_heads: Optional[torch.Tensor] = None,  # noqa: UP045 (schema inference)
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(o, o_raw, lse2): o_raw (unmasked output) is empty without head_mask; lse2 [B, H, N] fp32.
    The op `shiftnas::elastic_attention` (public: elastic_attention*)."""
    _check_inputs(q, k, v, head_mask, num_heads)
    B, H, N, d = q.shape
    o = _empty_bhnd(q)
    o_raw = _empty_bhnd(q) if head_mask is not None else q.new_empty(0)
    lse2 = q.new_empty((B, H, N), dtype=torch.float32)
    if q.numel() == 0:
        return o, o_raw, lse2
    r = o_raw if head_mask is not None else o
    mask_arg, nh_arg, stride_mask, meta = _flash_args(q, head_mask, num_heads, lse2)
    _attn_fwd[(triton.cdiv(N, _BLOCK_M), B * H)](
        q, k, v, o, r, lse2, mask_arg, nh_arg,
        *q.stride(), *k.stride(), *v.stride(), *o.stride(), *r.stride(), stride_mask,
        H, N, _LOG2E / math.sqrt(d), **meta,
    )
    return o, o_raw, lse2


def _backward(
    grad_o: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o_raw: torch.Tensor,
    lse2: torch.Tensor,
    head_mask: Optional[torch.Tensor] = None,  # noqa: UP045 (schema inference)
    num_heads: Optional[torch.Tensor] = None,  # noqa: UP045 (schema inference)
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv, d_head_mask); d_head_mask is empty without head_mask. The op
    `shiftnas::elastic_attention_backward`."""
    B, H, N, d = q.shape
    if grad_o.shape != q.shape:
        raise ValueError(f"grad_o shape {tuple(grad_o.shape)} != q shape {tuple(q.shape)}")
    grad_o = grad_o.to(q.dtype)
    dq, dk, dv = _empty_bhnd(q), _empty_bhnd(q), _empty_bhnd(q)
    has_mask = head_mask is not None
    if q.numel() == 0:
        dmask = torch.zeros_like(head_mask) if has_mask else q.new_empty(0)
        return dq, dk, dv, dmask
    delta = q.new_empty((B, H, N), dtype=torch.float32)
    _attn_bwd_preprocess[(triton.cdiv(N, _BLOCK_M), B * H)](
        o_raw, grad_o, delta, *o_raw.stride(), *grad_o.stride(), H, N,
        HEAD_DIM=d, BLOCK_M=_BLOCK_M, num_warps=_NUM_WARPS,
    )
    mask_arg, nh_arg, stride_mask, meta = _flash_args(q, head_mask, num_heads, delta)
    sm_scale = 1.0 / math.sqrt(d)
    # Separate dK/dV and dQ passes: each program owns its output tile, so no atomics and the
    # result is deterministic, at the price of computing P twice.
    _attn_bwd_dkdv[(triton.cdiv(N, _BLOCK_N), B * H)](
        q, k, v, grad_o, lse2, delta, dk, dv, mask_arg, nh_arg,
        *q.stride(), *k.stride(), *v.stride(), *grad_o.stride(), *dk.stride(), *dv.stride(),
        stride_mask,
        H, N, sm_scale, sm_scale * _LOG2E, **meta,
    )
    _attn_bwd_dq[(triton.cdiv(N, _BLOCK_M), B * H)](
        q, k, v, grad_o, lse2, delta, dq, mask_arg, nh_arg,
        *q.stride(), *k.stride(), *v.stride(), *grad_o.stride(), *dq.stride(), stride_mask,
        H, N, sm_scale, sm_scale * _LOG2E, **meta,
    )
    if has_mask:
        # d(head_mask)[h] = sum dO * O_raw = sum over (B, N) of delta; heads past num_heads
        # have O_raw = 0, hence 0. A [B, H, N] reduction: negligible next to the kernels.
        dmask = torch.zeros(head_mask.shape, dtype=torch.float32, device=q.device)
        dmask[:H] = delta.sum(dim=(0, 2))
        dmask = dmask.to(head_mask.dtype)
    else:
        dmask = q.new_empty(0)
    return dq, dk, dv, dmask


# --------------------------------------------------------------------------------------------
# Custom ops (opaque to torch.compile, traced through their fake impls) and autograd.
# --------------------------------------------------------------------------------------------


# The launchers are registered as they are: their annotations give the schemas.
_attention_op = torch.library.custom_op("shiftnas::elastic_attention", _forward, mutates_args=())


@_attention_op.register_fake
def _(q, k, v, head_mask=None, num_heads=None):
    _check_inputs(q, k, v, head_mask, num_heads)
    B, H, N, _ = q.shape
    o_raw = _empty_bhnd(q) if head_mask is not None else q.new_empty(0)
    return _empty_bhnd(q), o_raw, q.new_empty((B, H, N), dtype=torch.float32)


_attention_backward_op = torch.library.custom_op(
    "shiftnas::elastic_attention_backward", _backward, mutates_args=()
)


@_attention_backward_op.register_fake
def _(grad_o, q, k, v, o_raw, lse2, head_mask=None, num_heads=None):
    dmask = head_mask.new_empty(head_mask.shape) if head_mask is not None else q.new_empty(0)
    return _empty_bhnd(q), _empty_bhnd(q), _empty_bhnd(q), dmask


def _autograd_setup_context(ctx, inputs, output):
    """(q, k, v, head_mask, num_heads) -> (o, o_raw, lse2); only o is differentiable."""
    q, k, v, head_mask, num_heads = inputs
    o, o_raw, lse2 = output
    # Without a mask the output itself is the unmasked output the backward needs.
    o_unmasked = o if head_mask is None else o_raw
    ctx.save_for_backward(q, k, v, o_unmasked, lse2, head_mask, num_heads)
    ctx.mark_non_differentiable(o_raw, lse2)


def _autograd_backward(ctx, grad_o, _grad_o_raw, _grad_lse2):
    q, k, v, o_raw, lse2, head_mask, num_heads = ctx.saved_tensors
    dq, dk, dv, dmask = torch.ops.shiftnas.elastic_attention_backward(
        grad_o, q, k, v, o_raw, lse2, head_mask, num_heads
    )
    return dq, dk, dv, (dmask if head_mask is not None else None), None


torch.library.register_autograd(
    "shiftnas::elastic_attention", _autograd_backward, setup_context=_autograd_setup_context
)


# --------------------------------------------------------------------------------------------
# Public functions and the reference.
# --------------------------------------------------------------------------------------------


def elastic_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for q, k, v [B, heads, N, d], d in {32, 64}."""
    return torch.ops.shiftnas.elastic_attention(q, k, v, None, None)[0]


def elastic_attention_masked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    head_mask: torch.Tensor,
    num_heads: torch.Tensor | None = None,
) -> torch.Tensor:
    """attention(q, k, v) * head_mask[h] per head; heads >= num_heads (a device int tensor) are 0.

    head_mask [H_max >= heads] gets the gradient sum over (B, N, d) of dO * O_unmasked.
    """
    if num_heads is not None and not isinstance(num_heads, torch.Tensor):
        # A Python int would fail in the op's schema check with a less helpful message.
        _check_inputs(q, k, v, head_mask, num_heads)  # raises the ValueError
    return torch.ops.shiftnas.elastic_attention(q, k, v, head_mask, num_heads)[0]

