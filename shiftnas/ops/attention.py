"""ElasticAttention: multi-head self-attention over an active number of heads.

The head dim is fixed (AutoFormer: 64), so qkv width = heads x head_dim, independent of the
embed dim. The qkv weight is stored head-major (rows [head0: q k v, head1: q k v, ...]) so the
active heads are a *prefix* of rows: slicing is a view, never a gather or concatenation.

With `rel_pos` > 0 (and the patch `grid`) the layer has AutoFormer's relative position encodings
on the keys and on the values (`rel_pos_k`, `rel_pos_v`, `shiftnas.ops.rel_pos`) and runs the
`attention_relpos` op, which only the ref backend implements (the Triton kernel has no rel-pos).
"""
from __future__ import annotations

import torch
from torch import nn

from . import dispatch
from .linear import ElasticLinear
from .rel_pos import RelPos2D

__all__ = ["ElasticAttention"]


class ElasticAttention(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, qkv_bias: bool = True, rel_pos: int = 0,
                 grid: int = 0, device=None, dtype=None):
        super().__init__()
        self.head_dim = head_dim
        self.qkv = ElasticLinear(embed_dim, 3 * num_heads * head_dim, bias=qkv_bias, device=device, dtype=dtype)
        self.proj = ElasticLinear(num_heads * head_dim, embed_dim, device=device, dtype=dtype)
        self.rel_pos_k = self.rel_pos_v = None
        if rel_pos:
            self.rel_pos_k = RelPos2D(grid, rel_pos, head_dim, device=device, dtype=dtype)
            self.rel_pos_v = RelPos2D(grid, rel_pos, head_dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, heads: int, head_mask: torch.Tensor | None = None,
                tap: bool = False) -> torch.Tensor:
        """x[B, N, E] -> [B, N, E] with `heads` active heads; `head_mask` [heads] scales each head
        (`tap`: its value is 1, the prefix path's; `ref.mask_tap`)."""
        B, N, E = x.shape
        d = self.head_dim
        # unbind, not qkv[0..2]: indexing makes backward zero-fill and add three full-size
        # qkv gradients (vit-fmnist min step: supernet/exported 1.097 -> 1.029, 1 thread).
        q, k, v = self.qkv(x, 3 * heads * d).view(B, N, heads, 3, d).permute(3, 0, 2, 1, 4).unbind(0)
        if self.rel_pos_k is not None:
            o = dispatch.call("attention_relpos", q, k, v, self.rel_pos_k.tables(), self.rel_pos_v.tables(),
                              self.rel_pos_k.index(), head_mask, tap)
        elif head_mask is None:
            o = dispatch.call("attention", q, k, v)  # [B, heads, N, d]
        else:  # the mask multiply fused into the kernel where a backend has one
            o = dispatch.call("attention_masked", q, k, v, head_mask, tap)
        o = o.transpose(1, 2).reshape(B, N, heads * d)
        return self.proj(o, E)
