"""Pure-PyTorch reference of every elastic op: the definition the other backends must match.

Every reference is defined here, once: the `ref` backend serves these functions, and the tests of
the other backends compare with them. The Triton kernels (`shiftnas.kernels`, a leaf package that
never imports shiftnas) have no references of their own; their tests import this module.

Each op reads the *active prefix* of max-size parameters: slicing a leading prefix gives a
strided view (no copy), and BLAS takes the leading dimension as is.

Masks (docs/method.md Eq. 9): `mask_mul` multiplies an op's output by a mask (the full-width
path, where the mask has zeros past the subnet). On the prefix path (`ArchSample`,
`full_width=False`) the mask's forward value is 1, so the multiply exists only for the mask's
gradient: `mask_tap` returns y itself (a view: no multiply, no copy) and, in the backward, passes
dy through and gives the mask sum(y * dy) over the non-channel dims (`mask_dot`, dispatched: the
cpu backend has a kernel without the [y]-sized product), what `mask_mul` gives it.
The ops that take a mask (`mlp`, `attention_masked`, `attention_relpos`) take `tap` to choose.

The Triton kernels' masked variants (`shiftnas.kernels`: the active width a *device* tensor, never
read on the host; outputs keep their allocated width, zero past it) are defined here too, for
their tests: `linear_masked`, `mlp_masked`, `attention_heads`, `dwconv_masked`. No backend
dispatches them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import dispatch

__all__ = ["apply_mask", "attention", "attention_heads", "attention_masked", "attention_relpos",
           "batch_norm", "conv2d", "dwconv", "dwconv_masked", "layer_norm", "linear", "linear_masked",
           "mask_dot", "mask_mul", "mask_tap", "mlp", "mlp_masked"]


def linear(x, weight, bias, out_features: int, activation: str | None = None):
    """y = act(x @ W[:out, :in]^T + b[:out]) with in = x.shape[-1]."""
    w = weight[:out_features, : x.shape[-1]]
    y = F.linear(x, w, None if bias is None else bias[:out_features])
    if activation == "gelu":
        y = F.gelu(y)
    elif activation is not None:
        raise ValueError(f"activation={activation!r}; allowed: None, 'gelu'")
    return y


def layer_norm(x, weight, bias, active: int, eps: float):
    """LayerNorm over the first `active` channels of x (x may be wider); output width `active`."""
    if x.shape[-1] != active:
        x = x[..., :active]
    return F.layer_norm(x, (active,), weight[:active], bias[:active], eps)


def attention(q, k, v):
    """softmax(q k^T / sqrt(d)) v over [B, heads, N, d] tensors (fused SDPA)."""
    return F.scaled_dot_product_attention(q, k, v)


def dwconv(x, weight, bias, stride: int, padding: int):
    """Depthwise conv of x [B, C, H, W] with the first C channels of `weight` [Cmax, 1, k, k]
    (already cropped / transformed to the active kernel) and of `bias`."""
    c = x.shape[1]
    b = None if bias is None else bias[:c]
    return F.conv2d(x, weight[:c], b, stride, padding, 1, c)


def _mask_shape(y: torch.Tensor, mask: torch.Tensor, dim: int | None) -> list[int] | None:
    """Broadcast shape of `mask` against y: None for a 0-d mask (a gate), else y.shape[dim]
    entries along `dim`."""
    if dim is None:
        if mask.dim() != 0:
            raise ValueError(f"a gate (dim=None) must be a 0-d tensor, got shape {tuple(mask.shape)}")
        return None
    if mask.shape != (y.shape[dim],):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match y.shape[{dim}] = {y.shape[dim]}")
    shape = [1] * y.dim()
    shape[dim] = -1
    return shape


def mask_mul(y: torch.Tensor, mask: torch.Tensor, dim: int | None) -> torch.Tensor:
    """y times `mask` along `dim` (a [y.shape[dim]] vector), or times a 0-d gate (dim=None)."""
    shape = _mask_shape(y, mask, dim)
    m = mask.to(y.dtype)
    return y * (m if shape is None else m.view(shape))


_DOT_DTYPES = (torch.float32, torch.float64)


def mask_dot(y: torch.Tensor, dy: torch.Tensor, dim: int | None) -> torch.Tensor:
    """What `mask_mul`'s mask gets for the output gradient dy: sum(y * dy) over every dim but
    `dim` ([y.shape[dim]]), or over all of them for a gate (dim=None, 0-d). y's dtype."""
    dot = y.dtype == dy.dtype and y.dtype in _DOT_DTYPES and y.is_contiguous() and dy.is_contiguous()
    if dim is None and dot:
        # no [y]-sized temporary: 2.2x mul + sum in fp32 (CPU, 1 thread); bf16 dot is 30x slower
        return torch.dot(y.view(-1), dy.view(-1))
    if dim is None:
        return (y * dy).sum()
    d = dim % y.dim()
    return (y * dy).sum([i for i in range(y.dim()) if i != d])


class _MaskTap(torch.autograd.Function):
    """Forward: y (a view). Backward: dy for y, sum(y * dy) over the non-`dim` dims for the mask
    (the dispatched op `mask_dot`: `ref.mask_dot` or the cpu backend's kernel). Saves y, which the
    next op usually saves anyway (no extra memory then)."""

    @staticmethod
    def forward(ctx, y, mask, dim):
        ctx.save_for_backward(y)
        ctx.dim, ctx.mask_dtype = dim, mask.dtype
        return y.view_as(y)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        (y,) = ctx.saved_tensors
        return dy, dispatch.call("mask_dot", y, dy, ctx.dim).to(ctx.mask_dtype), None


def mask_tap(y: torch.Tensor, mask: torch.Tensor, dim: int | None) -> torch.Tensor:
    """`mask_mul` for a mask whose value is 1 (the prefix path's): y unchanged, the same gradients
    (d y = dy, d mask = sum(y * dy)). Only the mask's value is assumed: it is never read."""
    _mask_shape(y, mask, dim)
    if not (torch.is_grad_enabled() and mask.requires_grad):
        return y
    return _MaskTap.apply(y, mask, dim)


def apply_mask(y: torch.Tensor, mask: torch.Tensor, dim: int | None, tap: bool) -> torch.Tensor:
    """`mask_tap` (the prefix path: the mask's value is 1) or `mask_mul` (the full-width path)."""
    return mask_tap(y, mask, dim) if tap else mask_mul(y, mask, dim)


def mlp(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, hidden: int, hidden_mask=None, tap: bool = False):
    """fc2(GELU(fc1(x)) * hidden_mask) over `hidden` active hidden channels; output width x's.
    `tap`: the mask's value is 1 (`mask_tap`)."""
    h = linear(x, fc1_weight, fc1_bias, hidden, "gelu")
    if hidden_mask is not None:
        h = apply_mask(h, hidden_mask, -1, tap)
    return linear(h, fc2_weight, fc2_bias, x.shape[-1])


def attention_masked(q, k, v, head_mask, tap: bool = False):
    """attention(q, k, v) with head h's output times head_mask[h] (the generator's head mask);
    `tap`: the mask's value is 1 (`mask_tap`)."""
    return apply_mask(attention(q, k, v), head_mask[: q.shape[1]], 1, tap)


def attention_relpos(q, k, v, k_tables, v_tables, index, head_mask=None, tap: bool = False):
    """Attention with relative position encodings (AutoFormer's, `shiftnas.ops.rel_pos`) over
    [B, heads, N, d] tensors. The encodings are factored, as `RelPos2D` defines them: r[i, j] =
    rows[index[0][i, j]] + cols[index[1][i, j]], with `k_tables` / `v_tables` = (rows, cols),
    each [T, d], shared by the heads, and `index` the two [N, N] int64 maps (`rel_pos_index`):

        p_ij = softmax_j((q_i . k_j + q_i . r_k[i, j]) / sqrt(d)),  o_i = sum_j p_ij (v_j + r_v[i, j])

    then head h's output times head_mask[h] when a mask is given (`tap`: as in
    `attention_masked`). Computed without building r [N, N, d]: q_i . r_k[i, j] is q against
    each table ([N, T]) gathered at (i, index[i, j]); sum_j p_ij r_v[i, j] is p summed into the
    T table entries (scatter-add) times each table. Matmuls: QK^T, AV (N x N x d each) and four
    of N x T x d per head; explicit softmax (not SDPA: the value term needs p).
    """
    qs = q * q.shape[-1] ** -0.5
    r, c = (i.expand(*q.shape[:2], *i.shape) for i in index)
    (kr, kc), (vr, vc) = k_tables, v_tables
    logits = qs @ k.transpose(-2, -1) + (qs @ kr.to(q.dtype).t()).gather(-1, r) + (qs @ kc.to(q.dtype).t()).gather(-1, c)
    p = logits.softmax(dim=-1)
    bins = p.shape[:-1] + (vr.shape[0],)
    o = p @ v + p.new_zeros(bins).scatter_add(-1, r, p) @ vr.to(p.dtype) + p.new_zeros(bins).scatter_add(-1, c, p) @ vc.to(p.dtype)
    if head_mask is not None:
        o = apply_mask(o, head_mask[: q.shape[1]], 1, tap)
    return o



# --------------------------------------------------------------- the Triton kernels' masked variants
def _prefix(width: torch.Tensor, n: int, like: torch.Tensor) -> torch.Tensor:
    """[n] in like's dtype: 1 for the first `width` entries (a 0-d or 1-element int tensor; any
    value, clamped to [0, n]), 0 past them."""
    return (torch.arange(n, device=like.device) < width.reshape(())).to(like.dtype)


def linear_masked(x, weight, bias, out_features: int, activation: str | None = None, *,
                  out_width: torch.Tensor | None = None, in_width: torch.Tensor | None = None,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """`shiftnas.kernels.linear.linear_masked`: y[..., n] = mask[n] * act(x[..., :in_width] @
    W[n, :in_width] + b[n]) for n < out_width, 0 for n >= out_width; output width `out_features`.

    Computed at full width: `linear` on x with its columns past `in_width` zeroed, then `mask`
    (one entry per output channel) and the `out_width` prefix multiply (`mask_mul`), so every
    gradient past a width is zero."""
    if in_width is not None:
        x = mask_mul(x, _prefix(in_width, x.shape[-1], x), -1)
    y = linear(x, weight, bias, out_features, activation)
    if mask is not None:
        y = mask_mul(y, mask, -1)
    return y if out_width is None else mask_mul(y, _prefix(out_width, out_features, y), -1)


def mlp_masked(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, hidden: int, *,
               hidden_width: torch.Tensor | None = None,
               hidden_mask: torch.Tensor | None = None) -> torch.Tensor:
    """`shiftnas.kernels.mlp.mlp_masked`: `mlp` (without `tap`) over `hidden` allocated hidden
    channels of which the first `hidden_width` (a device tensor) are computed and the rest act as
    zero: fc1 (GELU, times `hidden_mask`) to width `hidden_width`, fc2 reading that prefix
    (`linear_masked`)."""
    h = linear_masked(x, fc1_weight, fc1_bias, hidden, "gelu", out_width=hidden_width,
                      mask=hidden_mask)
    return linear_masked(h, fc2_weight, fc2_bias, x.shape[-1], in_width=hidden_width)


def attention_heads(q, k, v, head_mask: torch.Tensor | None = None,
                    num_heads: torch.Tensor | None = None) -> torch.Tensor:
    """`shiftnas.kernels.attention.elastic_attention_masked`: `attention_masked` (without `tap`;
    `attention` when no mask is given) over [B, heads, N, d] tensors, with the output of heads
    >= num_heads (a device int tensor) zero."""
    o = attention(q, k, v) if head_mask is None else attention_masked(q, k, v, head_mask)
    return o if num_heads is None else mask_mul(o, _prefix(num_heads, q.shape[1], o), 1)


def dwconv_masked(x, weight, bias=None, stride: int = 1, active: torch.Tensor | None = None,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """`shiftnas.kernels.dwconv.elastic_dwconv_masked`: `dwconv` with padding k // 2 (k =
    weight.shape[-1]), the output channels >= `active` (a device int tensor) zero, then times the
    per-channel `mask` (its first C entries, C = x.shape[1]). Without `active` and `mask`:
    `elastic_dwconv`."""
    c = x.shape[1]
    y = dwconv(x, weight, bias, stride, weight.shape[-1] // 2)
    if active is not None:
        y = mask_mul(y, _prefix(active, c, y), 1)
    return y if mask is None else mask_mul(y, mask[:c], 1)


def conv2d(x, weight, bias, out_channels: int, stride: int, padding: int, groups: int = 1):
    """Convolution with the active prefix of output (and, for groups=1, input) channels.

    `weight` is already cropped to the active kernel size; for depthwise convs (groups equal to
    the active channel count) the input prefix is the output prefix.
    """
    if groups == 1:
        w = weight[:out_channels, : x.shape[1]]
    else:
        w = weight[:out_channels]
    b = None if bias is None else bias[:out_channels]
    return F.conv2d(x, w, b, stride, padding, 1, groups)


def batch_norm(x, running_mean, running_var, weight, bias, training: bool, momentum: float, eps: float):
    """BatchNorm over the active prefix (x.shape[1]) of channels with sliced running stats.

    The sliced running statistics are views, so training updates the prefix in place.
    """
    c = x.shape[1]
    return F.batch_norm(
        x,
        running_mean[:c] if running_mean is not None else None,
        running_var[:c] if running_var is not None else None,
        weight[:c],
        bias[:c],
        training,
        momentum,
        eps,
    )
