"""AutoFormer supernet checkpoints (microsoft/Cream AutoFormer) -> ShiftNAS ViT supernets.

The source is `Vision_TransformerSuper` (AutoFormer/model/supernet_transformer.py) as
`supernet_train.py` builds it with the flags of AutoFormer's README (`--gp --change_qkv
--relative_position`, max relative distance 14, qkv_bias=True), whose `state_dict()` the
checkpoint stores under "model" (`utils.save_on_master({'model': ..., 'args': ...})`). Its keys,
with E the SUPERNET embed dim, H its heads, hidden = int(mlp_ratio * E), m = 14:

    cls_token [1, 1, E]; pos_embed [1, N, E]             supernet_transformer.py
    patch_embed_super.proj.{weight [E, C, p, p], bias}   module/embedding_super.py (PatchembedSuper)
    blocks.{i}.attn.qkv.{weight [3E, E], bias}           module/qkv_super.py (qkv_super)
    blocks.{i}.attn.proj.{weight [E, E], bias}           module/Linear_super.py (LinearSuper)
    blocks.{i}.attn.rel_pos_embed_{k,v}.embeddings_table_{v,h} [2m + 2, E // H]
                                                         module/multihead_super.py (RelativePosition2D_super)
    blocks.{i}.{attn,ffn}_layer_norm.{weight, bias}      module/layernorm_super.py (LayerNormSuper)
    blocks.{i}.fc1.{weight [hidden, E], bias}; blocks.{i}.fc2.{weight [E, hidden], bias}
    norm.{weight, bias}; head.{weight [classes, E], bias}

Mapping (every other tensor is copied as is, under our name):

- qkv: AutoFormer's qkv_super samples rows 0::3, 1::3, 2::3 of the active prefix as q, k, v, so
  its row 3c + t (t = 0, 1, 2 for q, k, v) is channel c = head * 64 + j of q, k or v. Ours is
  head-major ([head0: q k v, head1: ...], shiftnas/ops/attention.py): row head * 3d + t * d + j.
  Both keep the active heads a prefix of rows, so a permutation of rows maps one to the other.
- rel-pos: embeddings_table_v (row distances) -> `rows`, embeddings_table_h -> `cols`
  (shiftnas/ops/rel_pos.py); their width E // H is the head dim, 64, in all three supernets.
- attn_layer_norm / ffn_layer_norm -> norm1 / norm2; fc1, fc2 -> mlp.fc1, mlp.fc2;
  patch_embed_super.proj -> patch_embed.

The autoformer spaces carry AutoFormer's model options (shiftnas/spaces/vit.py: rel_pos=14,
pool="mean" for --gp, LayerNorm eps 1e-5), so a converted subnet computes what AutoFormer's
does with `set_sample_config` (up to float rounding).
"""
from __future__ import annotations

import torch

from ..spaces import get_space
from ..spaces.vit import mlp_hidden

__all__ = ["SPACES", "expected_keys", "to_shiftnas"]

SPACES = ("autoformer-t", "autoformer-s", "autoformer-b")

# AutoFormer name (after "blocks.{i}.") -> ours, for the tensors copied as they are.
_BLOCK = {
    "attn.proj.weight": "attn.proj.weight",
    "attn.proj.bias": "attn.proj.bias",
    "attn.rel_pos_embed_k.embeddings_table_v": "attn.rel_pos_k.rows",
    "attn.rel_pos_embed_k.embeddings_table_h": "attn.rel_pos_k.cols",
    "attn.rel_pos_embed_v.embeddings_table_v": "attn.rel_pos_v.rows",
    "attn.rel_pos_embed_v.embeddings_table_h": "attn.rel_pos_v.cols",
    "attn_layer_norm.weight": "norm1.weight",
    "attn_layer_norm.bias": "norm1.bias",
    "ffn_layer_norm.weight": "norm2.weight",
    "ffn_layer_norm.bias": "norm2.bias",
    "fc1.weight": "mlp.fc1.weight",
    "fc1.bias": "mlp.fc1.bias",
    "fc2.weight": "mlp.fc2.weight",
    "fc2.bias": "mlp.fc2.bias",
}
_TOP = {
    "cls_token": "cls_token",
    "pos_embed": "pos_embed",
    "patch_embed_super.proj.weight": "patch_embed.weight",
    "patch_embed_super.proj.bias": "patch_embed.bias",
    "norm.weight": "norm.weight",
    "norm.bias": "norm.bias",
    "head.weight": "head.weight",
    "head.bias": "head.bias",
}


def _dims(space: str) -> dict:
    if space not in SPACES:
        raise ValueError(f"AutoFormer supernets convert into {list(SPACES)}, not {space!r}")
    hp = get_space(space).hparams
    E, H, d = hp["super_embed_dim"], hp["super_num_heads"], hp["head_dim"]
    if E != H * d or hp["rel_pos"] < 1:  # AutoFormer: qkv 3E wide, rel-pos tables E // H wide
        raise ValueError(f"space {space!r} (embed {E}, {H} heads of {d}, rel_pos {hp['rel_pos']}) cannot hold "
                         "an AutoFormer supernet: it needs embed = heads x head_dim and rel_pos >= 1")
    n = (hp["img_size"] // hp["patch_size"]) ** 2 + 1
    return {"E": E, "H": H, "d": d, "n": n, "c": hp["in_chans"], "p": hp["patch_size"], "depth": hp["super_depth"],
            "hidden": mlp_hidden(E, hp["super_mlp_ratio"]), "table": 2 * hp["rel_pos"] + 2,
            "classes": hp["num_classes"]}


def expected_keys(space: str) -> dict[str, tuple[int, ...]]:
    """Every key of AutoFormer's supernet state_dict for `space`, with its shape."""
    g = _dims(space)
    E, hidden = g["E"], g["hidden"]
    out = {
        "cls_token": (1, 1, E),
        "pos_embed": (1, g["n"], E),
        "patch_embed_super.proj.weight": (E, g["c"], g["p"], g["p"]),
        "patch_embed_super.proj.bias": (E,),
    }
    block = {
        "attn.qkv.weight": (3 * E, E), "attn.qkv.bias": (3 * E,),
        "attn.proj.weight": (E, E), "attn.proj.bias": (E,),
        **{f"attn.rel_pos_embed_{t}.embeddings_table_{a}": (g["table"], E // g["H"]) for t in "kv" for a in "vh"},
        "attn_layer_norm.weight": (E,), "attn_layer_norm.bias": (E,),
        "ffn_layer_norm.weight": (E,), "ffn_layer_norm.bias": (E,),
        "fc1.weight": (hidden, E), "fc1.bias": (hidden,),
        "fc2.weight": (E, hidden), "fc2.bias": (E,),
    }
    for i in range(g["depth"]):
        out.update({f"blocks.{i}.{k}": s for k, s in block.items()})
    out.update({"norm.weight": (E,), "norm.bias": (E,), "head.weight": (g["classes"], E), "head.bias": (g["classes"],)})
    return out


def qkv_rows(heads: int, head_dim: int) -> torch.Tensor:
    """Our qkv row r (head-major: head * 3d + t * d + j) is AutoFormer's row perm[r] = 3 (head * d + j) + t."""
    h, t, j = torch.meshgrid(torch.arange(heads), torch.arange(3), torch.arange(head_dim), indexing="ij")
    return (3 * (h * head_dim + j) + t).reshape(-1)


def to_shiftnas(state: dict[str, torch.Tensor], space: str) -> dict[str, torch.Tensor]:
    """AutoFormer's supernet state_dict (the keys of `expected_keys(space)`) as ours."""
    g = _dims(space)
    perm = qkv_rows(g["H"], g["d"])
    out = {ours: state[theirs] for theirs, ours in _TOP.items()}
    for i in range(g["depth"]):
        src = f"blocks.{i}."
        out.update({src + ours: state[src + theirs] for theirs, ours in _BLOCK.items()})
        out[src + "attn.qkv.weight"] = state[src + "attn.qkv.weight"][perm]
        out[src + "attn.qkv.bias"] = state[src + "attn.qkv.bias"][perm]
    return out
