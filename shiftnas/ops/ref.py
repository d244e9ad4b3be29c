"""Pure-PyTorch reference of every elastic op: the definition the other backends must match.

Each op reads the *active prefix* of max-size parameters: slicing a leading prefix gives a
strided view (no copy), and BLAS takes the leading dimension as is.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["attention", "attention_masked", "attention_relpos", "batch_norm", "conv2d", "dwconv", "layer_norm",
           "linear", "mlp"]


def linear(x, weight, bias, out_features: int, activation: str | None = None):
    """y = act(x @ W[:out, :in]^T + b[:out]) with in = x.shape[-1]."""
    w = weight[:out_features, : x.shape[-1]]
    y = F.linear(x, w, None if bias is None else bias[:out_features])
    if activation == "gelu":
        y = F.gelu(y)
    elif activation is not None:
        raise ValueError(f"activation={activation!r}; allowed: None, 'gelu'")
    return y


def mlp(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, hidden: int, hidden_mask=None):
    """fc2(GELU(fc1(x)) * hidden_mask) over `hidden` active hidden channels; output width x's."""
    h = linear(x, fc1_weight, fc1_bias, hidden, "gelu")
    if hidden_mask is not None:
        h = h * hidden_mask.to(h.dtype)
    return linear(h, fc2_weight, fc2_bias, x.shape[-1])


def layer_norm(x, weight, bias, active: int, eps: float):
    """LayerNorm over the first `active` channels of x (x may be wider); output width `active`."""
    if x.shape[-1] != active:
        x = x[..., :active]
    return F.layer_norm(x, (active,), weight[:active], bias[:active], eps)


def attention(q, k, v):
    """softmax(q k^T / sqrt(d)) v over [B, heads, N, d] tensors (fused SDPA)."""
    return F.scaled_dot_product_attention(q, k, v)


def attention_masked(q, k, v, head_mask):
    """attention(q, k, v) with head h's output times head_mask[h] (the generator's head mask)."""
    o = attention(q, k, v)
    return o * head_mask[: q.shape[1]].view(1, -1, 1, 1).to(o.dtype)


def attention_relpos(q, k, v, rel_k, rel_v, head_mask=None):
    """Attention with relative position encodings (AutoFormer's, `shiftnas.ops.rel_pos`) over
    [B, heads, N, d] tensors; rel_k, rel_v [N, N, d] are shared by the heads:

        p_ij = softmax_j((q_i . k_j + q_i . rel_k[i, j]) / sqrt(d)),  o_i = sum_j p_ij (v_j + rel_v[i, j])

    then head h's output times head_mask[h] when a mask is given. Explicit (not SDPA: the value term
    needs p), four matmuls of N x N x d per head; FlopCounterMode counts all four.
    """
    qs = q * q.shape[-1] ** -0.5
    logits = qs @ k.transpose(-2, -1) + torch.einsum("bhid,ijd->bhij", qs, rel_k.to(q.dtype))
    p = logits.softmax(dim=-1)
    o = p @ v + torch.einsum("bhij,ijd->bhid", p, rel_v.to(p.dtype))
    if head_mask is not None:
        o = o * head_mask[: q.shape[1]].view(1, -1, 1, 1).to(o.dtype)
    return o


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


def dwconv(x, weight, bias, stride: int, padding: int):
    """Depthwise conv of x [B, C, H, W] with the first C channels of `weight` [Cmax, 1, k, k]
    (already cropped / transformed to the active kernel) and of `bias`."""
    c = x.shape[1]
    b = None if bias is None else bias[:c]
    return F.conv2d(x, weight[:c], b, stride, padding, 1, c)


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
