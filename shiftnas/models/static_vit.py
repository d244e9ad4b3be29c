"""StaticViT: an exported ViT subnet built from plain torch modules (no supernet needed).

Per-layer heads and MLP widths follow the arch; the qkv weight keeps the supernet's head-major
row order ([head0: q k v, head1: ...]). Attention is fused (`scaled_dot_product_attention`);
`set_fused_attention(model, False)` switches to the explicit softmax(QK^T)V path, which
`FlopCounterMode` can count (it counts 0 for SDPA on CPU). With relative position encodings
(the space's `rel_pos`) attention is always explicit: `shiftnas.ops.ref.attention_relpos`, the
function the supernet dispatches to.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import ref
from ..ops.rel_pos import RelPos2D
from ..spaces import ArchConfig, get_space
from ..spaces.vit import mlp_hidden, vit_layers

__all__ = ["StaticViT", "set_fused_attention"]


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, head_dim: int, fused: bool = True, rel_pos: int = 0, grid: int = 0,
                 device=None, dtype=None):
        super().__init__()
        self.num_heads, self.head_dim, self.fused = num_heads, head_dim, fused
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * num_heads * head_dim, device=device, dtype=dtype)
        self.proj = nn.Linear(num_heads * head_dim, dim, device=device, dtype=dtype)
        if rel_pos:
            self.rel_pos_k = RelPos2D(grid, rel_pos, head_dim, device=device, dtype=dtype)
            self.rel_pos_v = RelPos2D(grid, rel_pos, head_dim, device=device, dtype=dtype)
        else:
            self.rel_pos_k = self.rel_pos_v = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        h, d = self.num_heads, self.head_dim
        q, k, v = self.qkv(x).view(B, N, h, 3, d).permute(3, 0, 2, 1, 4)
        if self.rel_pos_k is not None:
            o = ref.attention_relpos(q, k, v, self.rel_pos_k.tables(), self.rel_pos_v.tables(), self.rel_pos_k.index())
        elif self.fused:
            o = F.scaled_dot_product_attention(q, k, v)
        else:
            o = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        return self.proj(o.transpose(1, 2).reshape(B, N, h * d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, device=None, dtype=None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, device=device, dtype=dtype)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, head_dim: int, hidden: int, rel_pos: int = 0, grid: int = 0,
                 eps: float = 1e-6, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.norm1 = nn.LayerNorm(dim, eps=eps, **kw)
        self.attn = Attention(dim, num_heads, head_dim, rel_pos=rel_pos, grid=grid, **kw)
        self.norm2 = nn.LayerNorm(dim, eps=eps, **kw)
        self.mlp = Mlp(dim, hidden, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class StaticViT(nn.Module):
    """The subnet `arch` of a vit space as an ordinary ViT."""

    def __init__(self, arch: ArchConfig, num_classes: int | None = None, device=None, dtype=None):
        super().__init__()
        space = get_space(arch.space)
        if space.family != "vit":
            raise ValueError(f"StaticViT needs an arch of a vit space, got {arch.space!r}")
        hp = space.hparams
        self.arch = arch
        self.num_classes = hp["num_classes"] if num_classes is None else int(num_classes)
        self.in_chans, self.img_size = hp["in_chans"], hp["img_size"]
        E, p = arch["embed_dim"], hp["patch_size"]
        kw = dict(device=device, dtype=dtype)
        self.patch_embed = nn.Conv2d(hp["in_chans"], E, p, stride=p, **kw)
        n = (hp["img_size"] // p) ** 2 + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, E, **kw))
        self.pos_embed = nn.Parameter(torch.zeros(1, n, E, **kw))
        grid, eps, self.pool = hp["img_size"] // p, hp["ln_eps"], hp["pool"]
        self.blocks = nn.Sequential(*(
            Block(E, h, hp["head_dim"], mlp_hidden(E, r), hp["rel_pos"], grid, eps, **kw) for h, r in vit_layers(arch)
        ))
        self.norm = nn.LayerNorm(E, eps=eps, **kw)
        self.head = nn.Linear(E, self.num_classes, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        want = (self.in_chans, self.img_size, self.img_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"expected input [B, {want[0]}, {want[1]}, {want[2]}], got {list(x.shape)}")
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1) + self.pos_embed
        t = self.blocks(t)
        if self.pool == "cls":
            return self.head(self.norm(t[:, 0]))
        return self.head(self.norm(t[:, 1:]).mean(dim=1))


def set_fused_attention(model: nn.Module, fused: bool) -> nn.Module:
    """Switch every exported attention between fused SDPA and the explicit (countable) path."""
    for m in model.modules():
        if isinstance(m, Attention):
            m.fused = fused
    return model
