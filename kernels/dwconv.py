"""Elastic depthwise conv 2-D in Triton: active channel prefix, active kernel k in {3, 5, 7}.

Same semantics as `shiftnas.ops.ref.conv2d` with groups = active channels: the module
(`ElasticDWConv2d.active_weight`, OFA crop + transform) hands over a weight whose spatial size
already is the active kernel k; the kernels read its first C channels in place (no copy),
stride 1 or 2, padding k // 2.

The masked variant takes the active channel count as a *device* tensor (no `.item()`, so
no host sync: CUDA-graph and torch.compile friendly). Channel tiles past it exit at once and
write zeros, so cost follows the subnet. An optional per-channel `mask` multiplies the output;
its gradient, sum_{b,h,w} dY * Y_unmasked, is returned for the computed channels (docs/design.md,
"Kernels": the mask multiply stays in the graph, truncated straight-through).

Layering (Triton tutorials / Liger): `@triton.jit` kernels -> launchers (checks, allocation,
grid) -> custom ops `shiftnas::elastic_dwconv{,_backward}` (+ fake impls for tracing; autograd
through `torch.library.register_autograd`) -> `elastic_dwconv` / `elastic_dwconv_masked`. The
PyTorch definitions the tests hold them to: `shiftnas.ops.ref.dwconv` (padding k // 2) and
`shiftnas.ops.ref.dwconv_masked`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import KERNEL_DTYPES, check_width, interpret_mode

__all__ = [
    "KERNEL_SIZES",
    "MAX_BATCH",
    "STRIDES",
    "elastic_dwconv",
    "elastic_dwconv_masked",
]

KERNEL_SIZES = (3, 5, 7)
STRIDES = (1, 2)
# TRITON_INTERPRET is read when the kernels below are decorated; with it, CPU tensors work.
_INTERPRET = interpret_mode()
# Elements per program. GPU: 1024 for the [channels, pixels] kernels (forward, grad_x) and
# 4096 for the [channels, taps, pixels] weight-gradient accumulator (32 fp32 registers/thread
# at 4 warps). The interpreter pays ~0.1-0.2 ms per tl op whatever the block size (a 2x40x7x7
# k=7 forward took 1 s in 6 programs), so it gets whole planes and many channels per program;
# tests shrink these to cover multi-tile grids.
_TILE = 16384 if _INTERPRET else 1024
_WGRAD_TILE = 65536 if _INTERPRET else 4096
# Programs the weight-gradient stage 1 aims for: a few waves on a ~132-SM GPU.
_WGRAD_PROGRAMS = 1024
_MAX_GRID_YZ = 65535
MAX_BATCH = _MAX_GRID_YZ  # one grid axis runs over the batch


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _plane_tile(C, PH, PW, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """Program (pixel tile, channel tile, image b) of a [channels, pixels] kernel over PH x PW
    planes: (channel tile index, b, channels c, pixels p, c < C, p < PH * PW, the tile's int64
    element offsets in a [B, C, PH * PW] tensor, the tile's in-bounds mask)."""
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = tl.program_id(2)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    c_ok = c < C
    p_ok = p < PH * PW
    offs = ((b * C + c).to(tl.int64) * (PH * PW))[:, None] + p[None, :]
    return pid_c, b, c, p, c_ok, p_ok, offs, c_ok[:, None] & p_ok[None, :]


@triton.jit
def _dwconv_fwd_kernel(
    # pointers
    x_ptr, w_ptr, b_ptr, active_ptr, mask_ptr, y_ptr,
    # sizes
    C, H, W, OH, OW,
    # strides of the (possibly wider, possibly non-contiguous) weight
    stride_wc, stride_wh, stride_ww,
    # meta-parameters
    K: tl.constexpr, STRIDE: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_ACTIVE: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """y[b, c, p] for a [BLOCK_C channels, BLOCK_P output pixels] tile of one image."""
    PAD: tl.constexpr = K // 2
    pid_c, b, c, p, c_ok, p_ok, y_offs, out_ok = _plane_tile(C, OH, OW, BLOCK_C, BLOCK_P)
    c_live = c_ok
    if HAS_ACTIVE:
        n_active = tl.load(active_ptr)
        if pid_c * BLOCK_C >= n_active:  # the whole tile is inactive: zeros, no reads
            tl.store(y_ptr + y_offs, tl.zeros([BLOCK_C, BLOCK_P], y_ptr.dtype.element_ty), out_ok)
            return
        c_live = c_live & (c < n_active)

    # Input corner of each output pixel; tap (kh, kw) reads corner + (kh, kw). Index math is
    # hoisted out of the k*k loop (it also sets the interpreter's cost: ~0.1 ms per tl op).
    ih0 = (p // OW) * STRIDE - PAD
    iw0 = (p % OW) * STRIDE - PAD
    x_tap0 = x_ptr + ((b * C + c).to(tl.int64) * (H * W))[:, None] + (ih0 * W + iw0)[None, :]
    w_tap0 = w_ptr + c * stride_wc
    c_live2 = c_live[:, None]
    acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    # Rows loop at run time, columns unrolled: all k*k taps unrolled held k*k loads in flight
    # and, at k=7, 255 registers plus 448 B of spills per thread (sm_90, BLOCK 4x256).
    for kh in range(K):
        ih = ih0 + kh
        h_ok = p_ok & (ih >= 0) & (ih < H)
        for kw in tl.static_range(K):
            iw = iw0 + kw
            ok = c_live2 & (h_ok & (iw >= 0) & (iw < W))[None, :]
            xv = tl.load(x_tap0 + (kh * W + kw), mask=ok, other=0.0)
            wv = tl.load(w_tap0 + (kh * stride_wh + kw * stride_ww), mask=c_live, other=0.0)
            acc += xv.to(tl.float32) * wv.to(tl.float32)[:, None]
    if HAS_BIAS:
        acc += tl.load(b_ptr + c, mask=c_live, other=0.0).to(tl.float32)[:, None]
    if HAS_MASK:
        acc *= tl.load(mask_ptr + c, mask=c_live, other=0.0).to(tl.float32)[:, None]
    tl.store(y_ptr + y_offs, acc.to(y_ptr.dtype.element_ty), out_ok)


@triton.jit
def _source(t, ok, n_out, STRIDE: tl.constexpr):
    """grad_x gathers from output index o with o * STRIDE = t (one axis): (o, ok where t is a
    multiple of STRIDE and 0 <= o < n_out)."""
    if STRIDE == 1:
        o = t
        ok = ok & (t >= 0) & (t < n_out)
    else:
        o = t // STRIDE
        ok = ok & (t >= 0) & (t % STRIDE == 0) & (o < n_out)
    return o, ok


@triton.jit
def _dwconv_bwd_x_kernel(
    # pointers
    gy_ptr, w_ptr, active_ptr, mask_ptr, gx_ptr,
    # sizes
    C, H, W, OH, OW,
    stride_wc, stride_wh, stride_ww,
    # meta-parameters
    K: tl.constexpr, STRIDE: tl.constexpr,
    HAS_ACTIVE: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """grad_x: the transposed depthwise conv, gathered per input pixel (no atomics).

    Input pixel ih receives tap kh from output oh with oh * STRIDE = ih + PAD - kh.
    """
    PAD: tl.constexpr = K // 2
    pid_c, b, c, p, c_ok, p_ok, x_offs, out_ok = _plane_tile(C, H, W, BLOCK_C, BLOCK_P)
    c_live = c_ok
    if HAS_ACTIVE:
        n_active = tl.load(active_ptr)
        if pid_c * BLOCK_C >= n_active:
            tl.store(gx_ptr + x_offs, tl.zeros([BLOCK_C, BLOCK_P], gx_ptr.dtype.element_ty), out_ok)
            return
        c_live = c_live & (c < n_active)

    th0 = p // W + PAD  # oh * STRIDE for tap kh = 0; tap kh reads th0 - kh
    tw0 = p % W + PAD
    gy_plane = gy_ptr + ((b * C + c).to(tl.int64) * (OH * OW))[:, None]
    w_tap0 = w_ptr + c * stride_wc
    c_live2 = c_live[:, None]
    scale = tl.full([BLOCK_C], 1.0, tl.float32)
    if HAS_MASK:  # y = mask * conv(x): the mask scales every tap of its channel
        scale = tl.load(mask_ptr + c, mask=c_live, other=0.0).to(tl.float32)
    acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    for kh in range(K):  # run-time rows, unrolled columns: see the forward kernel
        oh, h_ok = _source(th0 - kh, p_ok, OH, STRIDE)
        gy_row = gy_plane + (oh * OW)[None, :]
        for kw in tl.static_range(K):
            ow, ok = _source(tw0 - kw, h_ok, OW, STRIDE)
            gy = tl.load(gy_row + ow[None, :], mask=c_live2 & ok[None, :], other=0.0)
            wv = tl.load(w_tap0 + (kh * stride_wh + kw * stride_ww), mask=c_live, other=0.0)
            acc += gy.to(tl.float32) * (wv.to(tl.float32) * scale)[:, None]
    tl.store(gx_ptr + x_offs, acc.to(gx_ptr.dtype.element_ty), out_ok)


@triton.jit
def _dwconv_bwd_w_kernel(
    # pointers
    x_ptr, gy_ptr, active_ptr, part_w_ptr, part_b_ptr,
    # sizes
    B, C, H, W, OH, OW, n_split,
    # meta-parameters
    K: tl.constexpr, STRIDE: tl.constexpr, HAS_ACTIVE: tl.constexpr,
    BLOCK_C: tl.constexpr, KK_PAD: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """Stage 1 of the weight/bias/mask gradient reduction over (B, OH, OW) per channel.

    Program (channel tile, s) walks the (image, pixel tile) items s, s + n_split, ... and
    accumulates G[c, tap] = sum dY * x_shifted(tap) in a [channels, taps, pixels] fp32 tile
    (all taps of a pixel from one dY load), plus S[c] = sum dY; it writes one partial row per
    split. Stage 2 (deterministic, no atomics) sums the n_split rows in the launcher.
    """
    PAD: tl.constexpr = K // 2
    pid_c = tl.program_id(0)
    s = tl.program_id(1)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    r = tl.arange(0, KK_PAD)
    c_ok = c < C
    out_w = part_w_ptr + ((s * C + c).to(tl.int64) * KK_PAD)[:, None] + r[None, :]
    out_b = part_b_ptr + s * C + c
    c_live = c_ok
    if HAS_ACTIVE:
        n_active = tl.load(active_ptr)
        if pid_c * BLOCK_C >= n_active:
            tl.store(out_w, tl.zeros([BLOCK_C, KK_PAD], tl.float32), c_ok[:, None])
            tl.store(out_b, tl.zeros([BLOCK_C], tl.float32), c_ok)
            return
        c_live = c_live & (c < n_active)

    kh = (r // K)[None, :, None]
    kw = (r % K)[None, :, None]
    tap_ok = c_live[:, None, None] & (r < K * K)[None, :, None]
    n_pix = OH * OW
    n_tiles = tl.cdiv(n_pix, BLOCK_P)
    acc = tl.zeros([BLOCK_C, KK_PAD, BLOCK_P], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    for item in range(s, B * n_tiles, n_split):
        b = item // n_tiles
        p = (item % n_tiles) * BLOCK_P + tl.arange(0, BLOCK_P)
        p_ok = p < n_pix
        plane = (b * C + c).to(tl.int64)
        gy = tl.load(
            gy_ptr + (plane * n_pix)[:, None] + p[None, :],
            mask=c_live[:, None] & p_ok[None, :],
            other=0.0,
        ).to(tl.float32)
        ih = ((p // OW) * STRIDE - PAD)[None, None, :] + kh
        iw = ((p % OW) * STRIDE - PAD)[None, None, :] + kw
        ok = tap_ok & p_ok[None, None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        xv = tl.load(x_ptr + (plane * (H * W))[:, None, None] + (ih * W + iw), mask=ok, other=0.0)
        acc += xv.to(tl.float32) * gy[:, None, :]
        acc_b += gy
    tl.store(out_w, tl.sum(acc, axis=2), c_ok[:, None])
    tl.store(out_b, tl.sum(acc_b, axis=1), c_ok)


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------


def _check(x, weight, bias, stride, active, mask) -> None:
    """ValueError naming the bad argument; reads shapes and dtypes only (also used by fakes)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"elastic_dwconv: x must be a 4-D [B, C, H, W] tensor, got {_desc(x)}")
    if x.dtype not in KERNEL_DTYPES:
        raise ValueError(
            f"elastic_dwconv: x.dtype={x.dtype}; allowed: "
            f"{[str(d) for d in KERNEL_DTYPES]} (use the ref backend for other dtypes)"
        )
    if x.device.type != "meta" and not (x.is_cuda or _INTERPRET):
        raise ValueError(
            f"elastic_dwconv: x is on {x.device}; the Triton kernels need CUDA tensors "
            "(or TRITON_INTERPRET=1 set before import for CPU tensors)"
        )
    B, C = x.shape[:2]
    if B > _MAX_GRID_YZ:
        raise ValueError(f"elastic_dwconv: x batch size {B} exceeds {_MAX_GRID_YZ}; split the batch")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4 or weight.shape[1] != 1:
        raise ValueError(
            f"elastic_dwconv: weight must be [Cmax, 1, k, k], got {_desc(weight)}"
        )
    k = weight.shape[2]
    if weight.shape[3] != k or k not in KERNEL_SIZES:
        raise ValueError(
            f"elastic_dwconv: weight kernel {tuple(weight.shape[2:])}; allowed: square k in "
            f"{list(KERNEL_SIZES)} (crop/transform to the active kernel first)"
        )
    if weight.shape[0] < C:
        raise ValueError(
            f"elastic_dwconv: weight has {weight.shape[0]} channels < x's {C} active channels"
        )
    if weight.dtype not in KERNEL_DTYPES:
        raise ValueError(
            f"elastic_dwconv: weight.dtype={weight.dtype}; allowed: {list(KERNEL_DTYPES)}"
        )
    if stride not in STRIDES:
        raise ValueError(f"elastic_dwconv: stride={stride!r}; allowed: {list(STRIDES)}")
    for name, v in (("bias", bias), ("mask", mask)):
        if v is None:
            continue
        if v.dim() != 1 or v.shape[0] < C or v.dtype not in KERNEL_DTYPES:
            raise ValueError(
                f"elastic_dwconv: {name} must be a 1-D float tensor with >= {C} entries, "
                f"got {_desc(v)}"
            )
    check_width("active", active, x.device)
    for name, v in (("weight", weight), ("bias", bias), ("active", active), ("mask", mask)):
        if v is not None and v.device != x.device:
            raise ValueError(f"elastic_dwconv: {name} is on {v.device}, x on {x.device}")


def _desc(v) -> str:
    if isinstance(v, torch.Tensor):
        return f"{tuple(v.shape)} {v.dtype} on {v.device}"
    return repr(v)


def _empty(like: torch.Tensor) -> torch.Tensor:
    """A fresh 0-element tensor for an output not asked for (custom-op outputs may not alias)."""
    return like.new_empty(0)


def _out_size(n: int, k: int, stride: int) -> int:
    return (n + 2 * (k // 2) - k) // stride + 1


def _tile(n_pix: int, n_chan: int, budget: int, min_p: int = 1) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_P): whole small planes, several channels per program when they fit."""
    block_p = min(triton.next_power_of_2(n_pix), max(min_p, budget))
    block_c = min(triton.next_power_of_2(n_chan), max(1, budget // block_p))
    return block_c, block_p


def _plane_grid(n_pix: int, C: int, B: int):
    """(grid, BLOCK_C, BLOCK_P) of a [channels, pixels] kernel (`_plane_tile`) over B x C planes."""
    block_c, block_p = _tile(n_pix, C, _TILE)
    return (triton.cdiv(n_pix, block_p), triton.cdiv(C, block_c), B), block_c, block_p


def _dwconv_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int,
                active: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
    """y = the masked depthwise conv (the op `shiftnas::elastic_dwconv`)."""
    _check(x, weight, bias, stride, active, mask)
    x = x.contiguous()
    B, C, H, W = x.shape
    k = weight.shape[2]
    OH, OW = _out_size(H, k, stride), _out_size(W, k, stride)
    y = torch.empty((B, C, OH, OW), device=x.device, dtype=x.dtype)
    if y.numel() == 0:
        return y
    grid, block_c, block_p = _plane_grid(OH * OW, C, B)
    dummy = x  # never read: its HAS_* flag is False
    _dwconv_fwd_kernel[grid](
        x, weight,
        dummy if bias is None else bias.contiguous(),
        dummy if active is None else active,
        dummy if mask is None else mask.contiguous(),
        y,
        C, H, W, OH, OW,
        weight.stride(0), weight.stride(2), weight.stride(3),
        K=k, STRIDE=stride,
        HAS_BIAS=bias is not None, HAS_ACTIVE=active is not None, HAS_MASK=mask is not None,
        BLOCK_C=block_c, BLOCK_P=block_p,
    )
    return y


def _dwconv_bwd(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None, stride: int, active: torch.Tensor | None,
                mask: torch.Tensor | None, need_x: bool,
                need_params: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x, grad_weight, grad_bias, grad_mask); empty tensors for what was not asked (the
    op `shiftnas::elastic_dwconv_backward`)."""
    _check(x, weight, bias, stride, active, mask)
    x = x.contiguous()
    grad_y = grad_y.contiguous()
    B, C, H, W = x.shape
    k = weight.shape[2]
    OH, OW = grad_y.shape[2:]
    dummy = x
    gx = _empty(x)
    if need_x:
        gx = torch.empty_like(x)
        if gx.numel():
            grid, block_c, block_p = _plane_grid(H * W, C, B)
            _dwconv_bwd_x_kernel[grid](
                grad_y, weight,
                dummy if active is None else active,
                dummy if mask is None else mask.contiguous(),
                gx,
                C, H, W, OH, OW,
                weight.stride(0), weight.stride(2), weight.stride(3),
                K=k, STRIDE=stride,
                HAS_ACTIVE=active is not None, HAS_MASK=mask is not None,
                BLOCK_C=block_c, BLOCK_P=block_p,
            )
    if not need_params:
        return gx, _empty(x), _empty(x), _empty(x)

    kk = k * k
    kk_pad = triton.next_power_of_2(kk)
    block_c, block_p = _tile(OH * OW, C, _WGRAD_TILE // kk_pad, min_p=16)
    n_ctiles = triton.cdiv(C, block_c)
    n_items = B * triton.cdiv(OH * OW, block_p)
    n_split = max(1, min(n_items, triton.cdiv(_WGRAD_PROGRAMS, n_ctiles), _MAX_GRID_YZ))
    part_w = torch.empty((n_split, C, kk_pad), device=x.device, dtype=torch.float32)
    part_b = torch.empty((n_split, C), device=x.device, dtype=torch.float32)
    if C and n_items:
        _dwconv_bwd_w_kernel[(n_ctiles, n_split)](
            x, grad_y, dummy if active is None else active, part_w, part_b,
            B, C, H, W, OH, OW, n_split,
            K=k, STRIDE=stride, HAS_ACTIVE=active is not None,
            BLOCK_C=block_c, KK_PAD=kk_pad, BLOCK_P=block_p,
        )
    else:
        part_w.zero_()
        part_b.zero_()
    # Stage 2: a deterministic sum over the splits (n_split x C x k^2 floats, negligible).
    g = part_w.sum(0)[:, :kk]  # G[c, tap] = sum dY * x_tap, w.r.t. the *masked* output
    s = part_b.sum(0)  # S[c] = sum dY
    scale = None if mask is None else mask[:C].float()
    gw = torch.zeros_like(weight)
    gw[:C] = (g if scale is None else g * scale[:, None]).view(C, 1, k, k).to(weight.dtype)
    gb = _empty(x)
    if bias is not None:
        gb = torch.zeros_like(bias)
        gb[:C] = (s if scale is None else s * scale).to(bias.dtype)
    gm = _empty(x)
    if mask is not None:
        # sum dY * Y_unmasked = sum_tap w[c, tap] * G[c, tap] + bias[c] * S[c]: no saved output.
        dm = (g * weight[:C].reshape(C, kk).float()).sum(1)
        if bias is not None:
            dm = dm + bias[:C].float() * s
        gm = torch.zeros_like(mask)
        gm[:C] = dm.to(mask.dtype)
    return gx, gw, gb, gm


# --------------------------------------------------------------------------------------------
# Custom ops (torch.compile traces these through their fake implementations). The launchers
# above are registered as they are: their annotations give the schemas.
# --------------------------------------------------------------------------------------------


_elastic_dwconv_op = torch.library.custom_op("shiftnas::elastic_dwconv", _dwconv_fwd, mutates_args=())


@_elastic_dwconv_op.register_fake
def _(x, weight, bias, stride, active, mask):
    _check(x, weight, bias, stride, active, mask)
    B, C, H, W = x.shape
    k = weight.shape[2]
    return x.new_empty((B, C, _out_size(H, k, stride), _out_size(W, k, stride)))


_elastic_dwconv_backward_op = torch.library.custom_op(
    "shiftnas::elastic_dwconv_backward", _dwconv_bwd, mutates_args=()
)


@_elastic_dwconv_backward_op.register_fake
def _(grad_y, x, weight, bias, stride, active, mask, need_x, need_params):
    gx = torch.empty_like(x, memory_format=torch.contiguous_format) if need_x else _empty(x)
    if not need_params:
        return gx, _empty(x), _empty(x), _empty(x)
    return (
        gx,
        torch.empty_like(weight),
        _empty(x) if bias is None else torch.empty_like(bias),
        _empty(x) if mask is None else torch.empty_like(mask),
    )


def _setup_context(ctx, inputs, output):
    x, weight, bias, stride, active, mask = inputs
    ctx.save_for_backward(x, weight, bias, active, mask)
    ctx.stride = stride


def _backward(ctx, grad_y):
    x, weight, bias, active, mask = ctx.saved_tensors
    need = ctx.needs_input_grad
    need_params = need[1] or need[2] or need[5]
    if not (need[0] or need_params):
        return None, None, None, None, None, None
    gx, gw, gb, gm = torch.ops.shiftnas.elastic_dwconv_backward(
        grad_y, x, weight, bias, ctx.stride, active, mask, need[0], need_params
    )
    return (
        gx if need[0] else None,
        gw if need[1] else None,
        gb if need[2] else None,
        None,
        None,
        gm if need[5] else None,
    )


torch.library.register_autograd("shiftnas::elastic_dwconv", _backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def elastic_dwconv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int = 1,
) -> torch.Tensor:
    """Depthwise conv of x [B, C, H, W] with weight[:C] ([Cmax, 1, k, k]), padding k // 2.

    Gradients of weight and bias are full-size, zero past C.
    """
    return torch.ops.shiftnas.elastic_dwconv(x, weight, bias, stride, None, None)


def elastic_dwconv_masked(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int = 1,
    active: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """`elastic_dwconv` over the first `active` channels of x (a device int tensor, no host
    sync; None = all), zeros for the rest, times the per-channel `mask` when given.

    d(mask) = sum over (B, H, W) of dY * Y_unmasked for the computed channels, zero past them.
    """
    return torch.ops.shiftnas.elastic_dwconv(x, weight, bias, stride, active, mask)

