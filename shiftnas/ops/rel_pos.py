"""RelPos2D: AutoFormer's 2-D relative position encoding of a ViT's tokens.

The tokens are a cls token then a `grid` x `grid` raster of patches (N = grid^2 + 1). For a query
patch i and a key patch j the row distance row(j) - row(i) and the column distance col(j) - col(i)
are clipped to [-max_dist, max_dist] and shifted to 1 .. 2 max_dist + 1; every pair with the cls
token (as query or as key) uses entry 0 of both tables. The embedding of (i, j) is
rows[row index] + cols[col index], a [N, N, head_dim] tensor shared by the heads of a layer.
Attention uses two of them (`ops.ref.attention_relpos`): one on the keys (q_i . r_k[i, j] added to
q_i . k_j before the softmax) and one on the values (sum_j p_ij r_v[i, j] added to the output).

Same semantics as microsoft/Cream AutoFormer/model/module/multihead_super.py
(RelativePosition2D_super, embeddings_table_v / embeddings_table_h): each table has 2 max_dist + 2
rows and head_dim columns. `ops.ref.attention_relpos` uses the tables and the index directly
(`tables()`, `index()`), never the [N, N, head_dim] embedding (`forward()`, the definition, for
tests): 2.1x faster forward + backward than building it, at autoformer-t's shapes. AutoFormer slices the columns to the subnet's head dim, which is 64 in
every subnet (qkv width = heads x 64), so the tables are never sliced here either: a layer's
encoding has 2 x 2 x (2 max_dist + 2) x head_dim parameters (7,680 at max_dist 14, head dim 64),
whatever its heads and the embed dim.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

__all__ = ["RelPos2D", "rel_pos_index"]


def rel_pos_index(grid: int, max_dist: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(row index, column index), each [N, N] int64 (N = grid^2 + 1): which table entries the
    pair (query i, key j) uses; 0 for every pair with the cls token (token 0)."""
    pos = torch.arange(grid * grid, device=device)
    out = []
    for coord in (pos // grid, pos % grid):
        dist = (coord[None, :] - coord[:, None]).clamp(-max_dist, max_dist) + max_dist + 1
        out.append(nn.functional.pad(dist, (1, 0, 1, 0), value=0))
    return out[0], out[1]


@functools.lru_cache(maxsize=16)
def _cached_index(grid: int, max_dist: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode(False), torch.no_grad():
        return rel_pos_index(grid, max_dist, torch.device(device))


class RelPos2D(nn.Module):
    """Two tables (row and column distances) of [2 max_dist + 2, dim]; `forward()` -> [N, N, dim]."""

    def __init__(self, grid: int, max_dist: int, dim: int, device=None, dtype=None):
        super().__init__()
        if grid < 1 or max_dist < 1 or dim < 1:
            raise ValueError(f"RelPos2D: grid={grid}, max_dist={max_dist}, dim={dim}; each must be >= 1")
        self.grid, self.max_dist = grid, max_dist
        self.rows = nn.Parameter(torch.empty(2 * max_dist + 2, dim, device=device, dtype=dtype))
        self.cols = nn.Parameter(torch.empty(2 * max_dist + 2, dim, device=device, dtype=dtype))
        nn.init.trunc_normal_(self.rows, std=0.02)
        nn.init.trunc_normal_(self.cols, std=0.02)

    def forward(self) -> torch.Tensor:
        """The embedding [N, N, dim] (rows[row index] + cols[column index]): the definition."""
        r, c = self.index()
        return self.rows[r] + self.cols[c]

    def tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rows, self.cols

    def index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`rel_pos_index` on the tables' device, cached per (grid, max_dist, device) (no buffer
        to go stale when the module is built on the meta device or moved)."""
        return _cached_index(self.grid, self.max_dist, str(self.rows.device))

    def extra_repr(self) -> str:
        return f"grid={self.grid}, max_dist={self.max_dist}, dim={self.rows.shape[1]}"
