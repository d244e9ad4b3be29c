"""Elastic MLP in Triton: fc2(GELU(fc1(x)) * mask) over an active hidden width.

Semantics: `shiftnas.ops.mlp.ElasticMLP` on the `ref` ops: fc1 reads W1[:hidden, :E], fc2 reads
W2[:E, :hidden] with E = x.shape[-1]; the optional hidden mask multiplies the GELU output
(docs/method.md Eq. 9) and gets its gradient.

Built on the linear kernels: fc1 runs with fused bias + GELU + mask and keeps only its
pre-activation for the backward; the hidden activation h is not saved. The backward
recomputes h inside the d(W2) matmul (a GELU prologue on its B tiles), so the op holds one
[tokens, hidden] tensor for the backward instead of two.

The masked variant takes the hidden width as a device tensor: fc1's tiles past it are
skipped, and fc2's reduction stops at it.

The pure-PyTorch definitions: `shiftnas.ops.ref.mlp` and `shiftnas.ops.ref.mlp_masked`.
"""
from __future__ import annotations

import math

import torch

from ._common import KERNEL_DTYPES, check_device, check_width, fake_grad, fill_empty, needs_grad
from .linear import _act_backward, _matmul, linear_backward, linear_forward

__all__ = ["mlp", "mlp_backward", "mlp_forward", "mlp_masked"]


def _check_mlp(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, hidden, hidden_width, hidden_mask) -> None:
    """ValueError naming the bad argument (the fc1 / fc2 launchers check the rest)."""
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ValueError(f"x must be a tensor with at least one dimension, got {type(x).__name__}")
    if x.dtype not in KERNEL_DTYPES:
        raise ValueError(f"x.dtype={x.dtype}; the Triton mlp supports {[str(d) for d in KERNEL_DTYPES]}")
    check_device("x", x, x.device)
    e = x.shape[-1]
    for name, w in (("fc1_weight", fc1_weight), ("fc2_weight", fc2_weight)):
        if not isinstance(w, torch.Tensor) or w.dim() != 2:
            raise ValueError(f"{name} must be a 2-D tensor, got shape {getattr(w, 'shape', None)}")
    if fc1_weight.shape[1] < e:
        raise ValueError(f"x.shape[-1]={e} exceeds fc1_weight.shape[1]={fc1_weight.shape[1]} (max embed dim)")
    if fc2_weight.shape[0] < e:
        raise ValueError(f"x.shape[-1]={e} exceeds fc2_weight.shape[0]={fc2_weight.shape[0]} (max embed dim)")
    max_hidden = min(fc1_weight.shape[0], fc2_weight.shape[1])
    if not isinstance(hidden, (int, torch.SymInt)) or not 1 <= hidden <= max_hidden:
        raise ValueError(
            f"hidden={hidden!r} must be an int in [1, {max_hidden}] "
            f"(fc1_weight.shape[0]={fc1_weight.shape[0]}, fc2_weight.shape[1]={fc2_weight.shape[1]})"
        )
    for name, b, n in (("fc1_bias", fc1_bias, fc1_weight.shape[0]), ("fc2_bias", fc2_bias, fc2_weight.shape[0])):
        if b is not None and (b.dim() != 1 or b.shape[0] != n):
            raise ValueError(f"{name} must have shape ({n},), got {tuple(b.shape)}")
    if hidden_mask is not None and (hidden_mask.dim() != 1 or hidden_mask.shape[0] != hidden):
        raise ValueError(f"hidden_mask must have shape ({hidden},) (hidden), got {tuple(hidden_mask.shape)}")
    check_width("hidden_width", hidden_width, x.device)
    for name, t in (("fc1_weight", fc1_weight), ("fc1_bias", fc1_bias), ("fc2_weight", fc2_weight),
                    ("fc2_bias", fc2_bias), ("hidden_mask", hidden_mask)):
        if t is not None:
            check_device(name, t, x.device)


def mlp_forward(x: torch.Tensor, fc1_weight: torch.Tensor, fc1_bias: torch.Tensor | None,
                fc2_weight: torch.Tensor, fc2_bias: torch.Tensor | None, hidden: int,
                hidden_width: torch.Tensor | None = None, hidden_mask: torch.Tensor | None = None,
                save_pre: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(y [..., E], fc1 pre-activation [M, hidden] or an empty tensor when not `save_pre`); the
    op `shiftnas::elastic_mlp`."""
    _check_mlp(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, hidden, hidden_width, hidden_mask)
    h, pre1 = linear_forward(x, fc1_weight, fc1_bias, hidden, "gelu", hidden_width, None, hidden_mask, save_pre)
    y, _ = linear_forward(h, fc2_weight, fc2_bias, x.shape[-1], None, None, hidden_width, None, False)
    return y, pre1


def mlp_backward(gy: torch.Tensor, x: torch.Tensor, fc1_weight: torch.Tensor,
                 fc2_weight: torch.Tensor, pre1: torch.Tensor, hidden_mask: torch.Tensor | None,
                 hidden_width: torch.Tensor | None, need_dx: bool, need_dfc1_weight: bool,
                 need_dfc1_bias: bool, need_dfc2_weight: bool, need_dfc2_bias: bool,
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, d fc1_weight, d fc1_bias [fp32], d fc2_weight, d fc2_bias [fp32], d hidden_mask);
    weight and bias gradients max-size, a 0-element tensor for what is not needed; the op
    `shiftnas::elastic_mlp_backward`."""
    E = x.shape[-1]
    H = pre1.shape[1]
    gy2 = gy.reshape(-1, E)
    M = gy2.shape[0]
    if hidden_mask is not None:
        hidden_mask = hidden_mask.contiguous()
    _, db2_part, _ = _act_backward(gy2, None, None, None, 0, need_dfc2_bias)
    dw2 = db2 = None
    if need_dfc2_weight:
        # d W2 = gy^T @ (GELU(pre1) * mask): h is recomputed tile by tile, never stored.
        dw2 = torch.zeros(fc2_weight.shape, device=fc2_weight.device, dtype=fc2_weight.dtype)
        _matmul(gy2.t(), pre1, dw2[:E, :H], b_gelu=True, bscale=hidden_mask, col_lim=hidden_width,
                zero_skipped=False)
    if need_dfc2_bias:
        db2 = torch.zeros(fc2_weight.shape[0], device=gy.device, dtype=torch.float32)
        db2[:E] = db2_part
    dx = dw1 = db1 = dmask = None
    if need_dx or need_dfc1_weight or need_dfc1_bias or hidden_mask is not None:
        dh = torch.empty((M, H), device=gy.device, dtype=gy.dtype)
        _matmul(gy2, fc2_weight[:E, :H], dh, col_lim=hidden_width)
        dx, dw1, db1, dmask = linear_backward(
            dh, x, fc1_weight, pre1, hidden_mask, hidden_width, None, "gelu",
            need_dfc1_bias, need_dx, need_dfc1_weight,
        )
    return fill_empty((dx, dw1, db1, dw2, db2, dmask), x)


# ------------------------------------------------------------------------ custom ops, autograd
# The launchers are registered as they are: their annotations give the schemas.
_elastic_mlp_op = torch.library.custom_op("shiftnas::elastic_mlp", mlp_forward, mutates_args=())


@_elastic_mlp_op.register_fake
def _(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, hidden, hidden_width, hidden_mask, save_pre):
    _check_mlp(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, hidden, hidden_width, hidden_mask)
    m = math.prod(x.shape[:-1])
    return x.new_empty(x.shape), x.new_empty((m, hidden) if save_pre else (0,))


_elastic_mlp_backward_op = torch.library.custom_op(
    "shiftnas::elastic_mlp_backward", mlp_backward, mutates_args=()
)


@_elastic_mlp_backward_op.register_fake
def _(gy, x, fc1_weight, fc2_weight, pre1, hidden_mask, hidden_width, need_dx, need_dfc1_weight,
      need_dfc1_bias, need_dfc2_weight, need_dfc2_bias):
    f32 = torch.float32
    return (
        fake_grad(need_dx, x, x),
        fake_grad(need_dfc1_weight, fc1_weight, x),
        fake_grad(need_dfc1_bias, fc1_weight, x, (fc1_weight.shape[0],), f32),
        fake_grad(need_dfc2_weight, fc2_weight, x),
        fake_grad(need_dfc2_bias, fc2_weight, x, (fc2_weight.shape[0],), f32),
        fake_grad(hidden_mask is not None, hidden_mask, x),
    )


def _setup_context(ctx, inputs, output):
    x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, _hidden, hidden_width, hidden_mask, _save_pre = inputs
    _, pre1 = output
    ctx.mark_non_differentiable(pre1)
    ctx.save_for_backward(x, fc1_weight, fc2_weight, pre1, hidden_mask, hidden_width)
    ctx.bias_dtypes = (
        None if fc1_bias is None else fc1_bias.dtype,
        None if fc2_bias is None else fc2_bias.dtype,
    )


def _backward(ctx, gy, _gpre):
    x, fc1_weight, fc2_weight, pre1, hidden_mask, hidden_width = ctx.saved_tensors
    need = ctx.needs_input_grad
    bt1, bt2 = ctx.bias_dtypes
    need_db1 = bt1 is not None and need[2]
    need_db2 = bt2 is not None and need[4]
    dx, dw1, db1, dw2, db2, dmask = torch.ops.shiftnas.elastic_mlp_backward(
        gy, x, fc1_weight, fc2_weight, pre1, hidden_mask, hidden_width,
        need[0], need[1], need_db1, need[3], need_db2,
    )
    return (
        dx if need[0] else None,
        dw1 if need[1] else None,
        db1.to(bt1) if need_db1 else None,
        dw2 if need[3] else None,
        db2.to(bt2) if need_db2 else None,
        None,
        None,
        dmask if hidden_mask is not None and need[7] else None,
        None,
    )


torch.library.register_autograd("shiftnas::elastic_mlp", _backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------ public API
def mlp(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, hidden: int,
        hidden_mask: torch.Tensor | None = None) -> torch.Tensor:
    """fc2(GELU(fc1(x)) * hidden_mask) with `hidden` active hidden channels; x [..., E] -> [..., E]."""
    return mlp_masked(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, hidden,
                      hidden_mask=hidden_mask)


def mlp_masked(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, hidden: int, *,
               hidden_width: torch.Tensor | None = None,
               hidden_mask: torch.Tensor | None = None) -> torch.Tensor:
    """`mlp` with `hidden` allocated hidden channels of which the first `hidden_width` (a device
    tensor, never read on the host) are computed; the rest act as zero."""
    y, _ = torch.ops.shiftnas.elastic_mlp(
        x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, hidden, hidden_width, hidden_mask,
        needs_grad(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, hidden_mask),
    )
    return y

