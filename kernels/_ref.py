"""Pure-PyTorch definitions of the ops the Triton kernels implement without a mask: `linear`,
`layer_norm`, `attention`, `dwconv`. Each op reads the *active prefix* of max-size parameters.

The one reference of each of these ops: `shiftnas.ops.ref` (the public home of every reference,
the `ref` backend) imports them from here, and the kernels' `*_ref` functions are built on them.
It lives in the kernels package because `shiftnas.kernels` is a leaf: it imports torch and triton,
never `shiftnas` (tests/test_layers.py).
"""
from __future__ import annotations

import torch.nn.functional as F

__all__ = ["attention", "dwconv", "layer_norm", "linear"]


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
