"""Exact cost terms of a vit space (see `shiftnas.cost` for the term machinery).

MACs of one image, as FlopCounterMode / 2 counts them on `StaticViT` with explicit attention:
patch conv N*E*C*p*p; per layer qkv N*E*3hd, QK^T and AV 2*N*N*hd, proj N*hd*E, fc1 and fc2
2*N*E*hidden (N tokens including cls); head E*classes on the pooled token.

Relative position encodings (the space's `rel_pos` > 0, AutoFormer's), as `ops.ref.attention_relpos`
computes them (factored, never building the [N, N, d] embeddings): per layer four matmuls of
N x T x hd, T = 2 * rel_pos + 2 table entries (q against the key encoding's row and column
tables; the attention summed per table entry against the value encoding's two tables), so
4*N*T*hd more MACs; the gathers, scatter-adds and adds are not counted (FlopCounterMode counts
matmuls and convolutions only, as for the bias, position-embedding and residual adds). AutoFormer
builds the [N, N, d] embeddings and multiplies by them (2*N*N*hd); its published FLOPs leave
most of that out. Params: 2 encodings x 2 tables x (2*rel_pos + 2) x head_dim per active layer,
independent of the subnet (ops/rel_pos.py). Mean pooling (`pool`) adds no MACs and no params.
"""
from __future__ import annotations

from ..spaces import SearchSpace
from ..spaces.vit import mlp_hidden
from .terms import CostTerm, tabulate

__all__ = ["vit_cost_terms"]


def vit_cost_terms(space: SearchSpace, num_classes: int) -> tuple[list[CostTerm], list[CostTerm]]:
    hp = space.hparams
    p, c, d = hp["patch_size"], hp["in_chans"], hp["head_dim"]
    n_patch = (hp["img_size"] // p) ** 2
    N = n_patch + 1
    rel = hp["rel_pos"]
    rel_mm = 4 * (2 * rel + 2) if rel else 0  # N x T x hd, four times
    rel_params = 2 * 2 * (2 * rel + 2) * d if rel else 0

    def layer_flops(E: int, h: int, r: float) -> int:
        hd, hid = h * d, mlp_hidden(E, r)
        return N * E * 3 * hd + 2 * N * N * hd + rel_mm * N * hd + N * hd * E + 2 * N * E * hid

    def layer_params(E: int, h: int, r: float) -> int:
        hd, hid = h * d, mlp_hidden(E, r)
        return 4 * E + (E * 3 * hd + 3 * hd) + (hd * E + E) + (E * hid + hid) + (hid * E + E) + rel_params

    flops = [tabulate(space, ["embed_dim"], lambda E: n_patch * E * c * p * p + E * num_classes)]
    params = [
        tabulate(
            space,
            ["embed_dim"],
            # patch conv + bias, cls token, pos embed, final norm, head
            lambda E: E * c * p * p + E + E + N * E + 2 * E + E * num_classes + num_classes,
        )
    ]
    for i in range(hp["super_depth"]):
        names = ["depth", "embed_dim", f"layers.{i}.num_heads", f"layers.{i}.mlp_ratio"]
        flops.append(tabulate(space, names, lambda D, E, h, r, i=i: layer_flops(E, h, r) if D > i else 0))
        params.append(tabulate(space, names, lambda D, E, h, r, i=i: layer_params(E, h, r) if D > i else 0))
    return flops, params
