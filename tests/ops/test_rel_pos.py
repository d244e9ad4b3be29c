"""Relative position encodings (AutoFormer's, the `rel_pos` hparam of a vit space): the index,
the attention formula, the supernet's two paths, the export, the cost; vit-fmnist untouched."""
import random

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import shiftnas
from shiftnas import ArchSample, count_flops, count_params, get_space
from shiftnas.models.export import build_static
from shiftnas.models.static_vit import set_fused_attention
from shiftnas.ops import ref
from shiftnas.ops.rel_pos import rel_pos_index
from shiftnas.spaces.vit import vit_variant

from archutil import dummy_input, random_archs

# vit-fmnist (7 x 7 patches) with rel-pos of max distance 2 (distances up to 6 get clipped) and
# AutoFormer's mean pooling: small enough for exact float64 checks on CPU.
SMALL = vit_variant("vit-fmnist", "vit-fmnist-relpos", rel_pos=2, pool="mean", ln_eps=1e-5)


def test_index_cls_clipping_and_sign():
    r, c = rel_pos_index(3, 1)  # 3 x 3 patches, max distance 1: entries 0 (cls), 1..3
    assert r.shape == c.shape == (10, 10)
    assert (r[0] == 0).all() and (r[:, 0] == 0).all() and (c[0] == 0).all() and (c[:, 0] == 0).all()
    # token 1 + k is patch k = (k // 3, k % 3); entry = clip(key - query, -1, 1) + 1 + 1
    assert r[1, 9].item() == 3 and c[1, 9].item() == 3  # patch (0,0) -> (2,2): +2 clipped to +1
    assert r[9, 1].item() == 1 and c[9, 1].item() == 1  # (2,2) -> (0,0): -2 clipped to -1
    assert r[2, 4].item() == 3 and c[2, 4].item() == 1  # (0,1) -> (1,0): row +1, col -1
    assert (r.diagonal()[1:] == 2).all() and (c.diagonal()[1:] == 2).all()


def test_attention_relpos_is_the_formula():
    g = torch.Generator().manual_seed(0)
    B, H, grid, m, d = 2, 3, 3, 1, 4  # N = 10 tokens, 2 * 1 + 2 = 4 table entries
    N = grid * grid + 1
    q, k, v = (torch.randn(B, H, N, d, generator=g, dtype=torch.double) for _ in range(3))
    tk, tv = (tuple(torch.randn(4, d, generator=g, dtype=torch.double) for _ in range(2)) for _ in range(2))
    index = rel_pos_index(grid, m)
    rk, rv = (t[0][index[0]] + t[1][index[1]] for t in (tk, tv))  # the embeddings, as RelPos2D defines them
    mask = torch.tensor([1.0, 0.5, 0.0], dtype=torch.double)
    want = torch.empty(B, H, N, d, dtype=torch.double)
    for b in range(B):
        for h in range(H):
            for i in range(N):
                s = torch.stack([q[b, h, i] @ (k[b, h, j] + rk[i, j]) for j in range(N)]) / d**0.5
                p = s.softmax(0)
                want[b, h, i] = sum(p[j] * (v[b, h, j] + rv[i, j]) for j in range(N)) * mask[h]
    torch.testing.assert_close(ref.attention_relpos(q, k, v, tk, tv, index, mask), want, rtol=1e-12, atol=1e-12)


def test_attention_relpos_gradients_equal_the_built_embeddings_form():
    """The factored op (gather / scatter-add on the tables) against attention with the [N, N, d]
    embeddings built and multiplied in, forward and backward, odd sizes (grid 4, max distance 2)."""
    g = torch.Generator().manual_seed(1)
    B, H, grid, m, d = 3, 2, 4, 2, 5
    N, T = grid * grid + 1, 2 * m + 2
    leaves = [torch.randn(B, H, N, d, generator=g, dtype=torch.double, requires_grad=True) for _ in range(3)]
    leaves += [torch.randn(T, d, generator=g, dtype=torch.double, requires_grad=True) for _ in range(4)]
    q, k, v, kr, kc, vr, vc = leaves
    index = rel_pos_index(grid, m)
    rk, rv = kr[index[0]] + kc[index[1]], vr[index[0]] + vc[index[1]]
    qs = q / d**0.5
    p = (qs @ k.transpose(-2, -1) + torch.einsum("bhid,ijd->bhij", qs, rk)).softmax(-1)
    want = p @ v + torch.einsum("bhij,ijd->bhid", p, rv)
    got = ref.attention_relpos(q, k, v, (kr, kc), (vr, vc), index)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    gy = torch.randn(want.shape, generator=g, dtype=torch.double)
    for a, b in zip(torch.autograd.grad(got, leaves, gy), torch.autograd.grad(want, leaves, gy)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_supernet_paths_export_and_cost():
    torch.manual_seed(0)
    net = shiftnas.build_supernet(SMALL.name).double().eval()
    assert net.blocks[0].attn.rel_pos_k.rows.shape == (6, 32)  # 2 * 2 + 2 entries, head dim 32
    for arch in random_archs(SMALL, 3, seed=1):
        x = dummy_input(SMALL, 2).double()
        y = net(x, arch)
        for full in (False, True):
            s = ArchSample.from_arch(arch)
            s = ArchSample(s.space, {n: t.double().requires_grad_() for n, t in s.onehots.items()}, full)
            torch.testing.assert_close(net(x, s), y, rtol=1e-9, atol=1e-10)
        sub = shiftnas.export_subnet(net, arch)
        assert sum(p.numel() for p in sub.parameters()) == count_params(SMALL, arch)
        torch.testing.assert_close(sub(x), y, rtol=0, atol=1e-12)
        with torch.device("meta"):
            static = set_fused_attention(build_static(arch), False)
            xm = dummy_input(SMALL, 1)
        with FlopCounterMode(display=False) as fc:
            static(xm)
        assert fc.get_total_flops() // 2 == count_flops(SMALL, arch), arch.short()


def test_rel_pos_tables_train_and_cost_what_they_should():
    net = shiftnas.build_supernet(SMALL.name)
    arch = SMALL.min()  # depth 4 of 6
    net(dummy_input(SMALL), arch).square().mean().backward()
    for i, blk in enumerate(net.blocks):
        for t in (blk.attn.rel_pos_k.rows, blk.attn.rel_pos_k.cols, blk.attn.rel_pos_v.rows, blk.attn.rel_pos_v.cols):
            assert (t.grad is not None and t.grad.abs().sum() > 0) == (i < 4), i
    plain = vit_variant(SMALL.name, "vit-fmnist-relpos-off", rel_pos=0)
    plain_arch = shiftnas.ArchConfig.from_dict(plain.name, arch.to_dict())
    # params: 2 encodings x 2 tables x 6 x 32 per active layer; FLOPs: four N x T x h*d matmuls (T = 6)
    assert count_params(SMALL, arch) - count_params(plain, plain_arch) == 4 * 768
    heads = sum(arch[f"layers.{i}.num_heads"] for i in range(4))
    assert count_flops(SMALL, arch) - count_flops(plain, plain_arch) == 4 * 50 * 6 * 32 * heads


def test_vit_fmnist_is_unchanged():
    """Other experiments depend on vit-fmnist: no rel-pos, cls pooling, eps 1e-6, the same costs."""
    sp = get_space("vit-fmnist")
    assert (sp.hparams["rel_pos"], sp.hparams["pool"], sp.hparams["ln_eps"]) == (0, "cls", 1e-6)
    with torch.device("meta"):
        net = shiftnas.build_supernet("vit-fmnist")
    assert not [n for n, _ in net.named_parameters() if "rel_pos" in n]
    assert sum(p.numel() for p in net.parameters()) == 1199882 and len(net.state_dict()) == 80
    # the values before rel-pos existed (commit 6ba0750)
    assert (count_params(sp, sp.min()), count_flops(sp, sp.min())) == (139018, 7884416)
    assert (count_params(sp, sp.max()), count_flops(sp, sp.max())) == (1199882, 62924032)
    arch = sp.sample(random.Random(3))
    assert (count_params(sp, arch), count_flops(sp, arch)) == (638794, 33471232)


@pytest.mark.parametrize("name", ["autoformer-t", "autoformer-s", "autoformer-b"])
def test_autoformer_spaces_are_built_as_autoformer_trains_them(name):
    sp = get_space(name)
    assert (sp.hparams["rel_pos"], sp.hparams["pool"], sp.hparams["ln_eps"]) == (14, "mean", 1e-5)
    with torch.device("meta"):
        net = shiftnas.build_supernet(name)
    per_layer = [sum(p.numel() for n, p in blk.named_parameters() if "rel_pos" in n) for blk in net.blocks]
    assert per_layer == [7680] * sp.hparams["super_depth"]  # AutoFormer's 2 x 2 x 30 x 64


def test_vit_variant_errors():
    assert vit_variant("vit-fmnist", "vit-fmnist-relpos", rel_pos=2, pool="mean", ln_eps=1e-5) is SMALL
    with pytest.raises(ValueError, match=r"already exists with other arguments"):
        vit_variant("vit-fmnist", "vit-fmnist-relpos", rel_pos=3)
    with pytest.raises(ValueError, match=r"already exists \(a cnn space\)"):
        vit_variant("vit-fmnist", "cnn-fmnist", rel_pos=3)
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['relpos'\]; allowed: \[.*'rel_pos'"):
        vit_variant("vit-fmnist", "x", relpos=3)
    with pytest.raises(ValueError, match=r"base 'cnn-fmnist' is not a vit space; allowed: \["):
        vit_variant("cnn-fmnist", "x", rel_pos=3)
    with pytest.raises(ValueError, match=r"rel_pos=-1; allowed: an int >= 0"):
        vit_variant("vit-fmnist", "x", rel_pos=-1)
    with pytest.raises(ValueError, match=r"pool='max'; allowed: \['cls', 'mean'\]"):
        vit_variant("vit-fmnist", "x", pool="max")
