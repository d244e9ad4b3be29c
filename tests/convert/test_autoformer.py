"""AutoFormer supernet -> ShiftNAS: the key list, the qkv row order, the tensors' new homes."""
from __future__ import annotations

import pytest
import torch

import shiftnas
from shiftnas.convert import autoformer, check_keys
from shiftnas.spaces import get_space


def autoformer_t_keys() -> dict[str, tuple[int, ...]]:
    """AutoFormer's supernet-T state_dict, written out from its code (microsoft/Cream):
    SUPERNET embed 256, 4 heads, mlp 4.0 (hidden 1024), depth 14 (experiments/supernet/supernet-T.yaml);
    224 px, patch 16: 196 patches + cls; --relative_position with max distance 14: 30-entry tables."""
    keys = {
        "cls_token": (1, 1, 256),  # model/supernet_transformer.py (Vision_TransformerSuper)
        "pos_embed": (1, 197, 256),  # ... abs_pos
        "patch_embed_super.proj.weight": (256, 3, 16, 16),  # model/module/embedding_super.py (PatchembedSuper)
        "patch_embed_super.proj.bias": (256,),
        "norm.weight": (256,),  # model/module/layernorm_super.py (LayerNormSuper), pre_norm
        "norm.bias": (256,),
        "head.weight": (1000, 256),  # model/module/Linear_super.py (LinearSuper)
        "head.bias": (1000,),
    }
    for i in range(14):  # supernet_transformer.py (TransformerEncoderLayer)
        b = f"blocks.{i}."
        keys.update({
            b + "attn.qkv.weight": (768, 256),  # model/module/qkv_super.py (qkv_super), qkv_bias=True
            b + "attn.qkv.bias": (768,),
            b + "attn.rel_pos_embed_k.embeddings_table_v": (30, 64),  # model/module/multihead_super.py
            b + "attn.rel_pos_embed_k.embeddings_table_h": (30, 64),  # (RelativePosition2D_super)
            b + "attn.rel_pos_embed_v.embeddings_table_v": (30, 64),
            b + "attn.rel_pos_embed_v.embeddings_table_h": (30, 64),
            b + "attn.proj.weight": (256, 256),  # multihead_super.py (AttentionSuper.proj, LinearSuper)
            b + "attn.proj.bias": (256,),
            b + "attn_layer_norm.weight": (256,),
            b + "attn_layer_norm.bias": (256,),
            b + "ffn_layer_norm.weight": (256,),
            b + "ffn_layer_norm.bias": (256,),
            b + "fc1.weight": (1024, 256),
            b + "fc1.bias": (1024,),
            b + "fc2.weight": (256, 1024),
            b + "fc2.bias": (256,),
        })
    return keys


def random_state(keys: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * 0.05 for k, s in keys.items()}


def test_expected_keys_are_autoformers():
    assert autoformer.expected_keys("autoformer-t") == autoformer_t_keys()
    s, b = autoformer.expected_keys("autoformer-s"), autoformer.expected_keys("autoformer-b")
    assert s["blocks.13.attn.qkv.weight"] == (3 * 448, 448) and "blocks.14.fc1.weight" not in s
    assert b["blocks.15.fc1.weight"] == (2560, 640) and b["blocks.0.attn.rel_pos_embed_v.embeddings_table_h"] == (30, 64)


def test_every_tensor_lands_once_and_qkv_rows_are_head_major():
    state = random_state(autoformer_t_keys())
    ours = autoformer.to_shiftnas(state, "autoformer-t")
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in shiftnas.build_supernet("autoformer-t").state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.items()} == want
    # every source tensor is used exactly once (the qkv ones as a row permutation)
    for i in range(14):
        b = f"blocks.{i}."
        assert torch.equal(ours[b + "attn.rel_pos_k.rows"], state[b + "attn.rel_pos_embed_k.embeddings_table_v"])
        assert torch.equal(ours[b + "attn.rel_pos_v.cols"], state[b + "attn.rel_pos_embed_v.embeddings_table_h"])
        assert torch.equal(ours[b + "norm2.weight"], state[b + "ffn_layer_norm.weight"])
        assert torch.equal(ours[b + "mlp.fc2.weight"], state[b + "fc2.weight"])
        assert torch.equal(ours[b + "attn.qkv.weight"].sort(0).values, state[b + "attn.qkv.weight"].sort(0).values)
    assert torch.equal(ours["patch_embed.weight"], state["patch_embed_super.proj.weight"])


def test_qkv_of_a_sampled_subnet_is_autoformers():
    """AutoFormer's qkv_super, at h heads of 64 and embed e: the rows [:3 * 64h] of [:, :e], then
    rows 0::3 are q, 1::3 k, 2::3 v, each [64h] read as (head, dim). Ours must give the same q, k, v."""
    state = random_state(autoformer_t_keys(), seed=1)
    net = shiftnas.build_supernet("autoformer-t")
    net.load_state_dict(autoformer.to_shiftnas(state, "autoformer-t"))
    heads, e = 3, 216
    x = torch.randn(2, 5, e)
    w, bias = state["blocks.0.attn.qkv.weight"][: 3 * 64 * heads, :e], state["blocks.0.attn.qkv.bias"][: 3 * 64 * heads]
    theirs = [(x @ w[t::3].T + bias[t::3]).view(2, 5, heads, 64) for t in range(3)]
    y = net.blocks[0].attn.qkv(x, 3 * heads * 64).view(2, 5, heads, 3, 64)
    for t in range(3):
        torch.testing.assert_close(y[:, :, :, t], theirs[t], rtol=1e-5, atol=1e-6)


def test_spaces_and_interface():
    assert autoformer.SPACES == ("autoformer-t", "autoformer-s", "autoformer-b")
    for name in autoformer.SPACES:
        assert get_space(name).hparams["rel_pos"] == 14
    with pytest.raises(ValueError, match=r"convert into \['autoformer-t', 'autoformer-s', 'autoformer-b'\], not 'vit-fmnist'"):
        autoformer.expected_keys("vit-fmnist")


def test_check_keys_lists_missing_extra_and_misshaped():
    keys = autoformer_t_keys()
    state = {k: torch.zeros(s) for k, s in keys.items()}
    for i in range(7):
        del state[f"blocks.{i}.fc1.bias"]
    state["blocks.0.attn.qkv.weight"] = torch.zeros(3 * 240, 256)
    state["blocks.0.attn.extra"] = torch.zeros(1)
    with pytest.raises(ValueError) as e:
        check_keys(state, keys, "the autoformer supernet for space 'autoformer-t'")
    msg = str(e.value)
    assert msg.startswith(f"not the autoformer supernet for space 'autoformer-t' ({len(keys)} keys expected): ")
    assert "7 missing keys (blocks.0.fc1.bias, blocks.1.fc1.bias, blocks.2.fc1.bias, blocks.3.fc1.bias, " \
           "blocks.4.fc1.bias, ... and 2 more); " in msg
    assert "; 1 extra keys (blocks.0.attn.extra); " in msg
    assert msg.endswith("; 1 keys of the wrong shape (blocks.0.attn.qkv.weight: expected (768, 256), got (720, 256))")
    assert "\n" not in msg
