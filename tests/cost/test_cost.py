"""Exact cost model: count_flops == FlopCounterMode / 2 and count_params == exported params."""
import random
import zlib

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import shiftnas
from shiftnas import ArchSample, FlopsBins, count_flops, count_params, expected_cost, get_space
from shiftnas.models.export import build_static
from shiftnas.models.static_vit import set_fused_attention

from archutil import dummy_input, random_archs


def measured(arch, num_classes=None):
    """(FlopCounterMode MACs, parameter count) of the static model, counted on the meta device."""
    sp = get_space(arch.space)
    with torch.device("meta"):
        model = build_static(arch, num_classes)
        x = dummy_input(sp, 1, arch)
    set_fused_attention(model, False)
    with FlopCounterMode(display=False) as fc:
        model(x)
    return fc.get_total_flops() // 2, sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["vit-fmnist", "autoformer-t", "autoformer-s", "autoformer-b"])
def test_vit_cost_exact(name):
    sp = get_space(name)
    for arch in random_archs(sp, 50, seed=zlib.crc32(name.encode())):
        flops, params = measured(arch)
        assert count_flops(sp, arch) == flops, arch.short()
        assert count_params(sp, arch) == params, arch.short()


def test_meta_counting_matches_cpu():
    sp = get_space("vit-fmnist")
    arch = sp.sample(random.Random(5))
    model = set_fused_attention(build_static(arch), False)
    with FlopCounterMode(display=False) as fc:
        model(dummy_input(sp, 1))
    assert fc.get_total_flops() // 2 == measured(arch)[0]


def test_num_classes_changes_head_cost():
    sp = get_space("autoformer-t")
    arch = sp.min()
    assert count_flops(sp, arch, num_classes=10) == measured(arch, 10)[0]
    assert count_params(sp, arch, num_classes=10) == measured(arch, 10)[1]


@pytest.mark.parametrize("name", ["vit-fmnist", "autoformer-b", "cnn-fmnist"])
def test_expected_cost_exact_at_hard_onehots(name):
    sp = get_space(name)
    for arch in random_archs(sp, 10):
        s = ArchSample.from_arch(arch, requires_grad=True)
        c = expected_cost(sp, s)
        assert c.item() == pytest.approx(count_flops(sp, arch), rel=1e-9)
        assert expected_cost(sp, s, "params").item() == pytest.approx(count_params(sp, arch), rel=1e-9)
        c.backward()
        # every decision with a real choice moves the cost
        assert all(s.onehots[d.name].grad is not None for d in sp.decisions if len(d.choices) > 1)


def test_expected_cost_is_expectation_under_soft_policies():
    """With independent soft policies the expected cost equals the mean over samples."""
    sp = get_space("vit-fmnist")
    torch.manual_seed(0)
    probs = {d.name: torch.softmax(torch.randn(len(d.choices)), 0) for d in sp.decisions}
    s = ArchSample(sp.name, probs)
    rng = torch.Generator().manual_seed(0)
    n, total = 4000, 0.0
    for _ in range(n):
        idx = {k: int(torch.multinomial(v, 1, generator=rng)) for k, v in probs.items()}
        total += count_flops(sp, sp.from_indices(idx))
    assert expected_cost(sp, s).item() == pytest.approx(total / n, rel=0.02)


def test_flops_bins():
    sp = get_space("vit-fmnist")
    lo, hi = shiftnas.flops_range(sp)
    bins = FlopsBins(sp, n_bins=10)
    assert len(bins) == 10 and bins.edges[0] == lo and bins.edges[-1] == hi
    assert bins.bin_of(lo) == 0 and bins.bin_of(hi) == 9
    assert all(bins.bin_of(float(c)) == k for k, c in enumerate(bins.centers))
    lo_t, hi_t = shiftnas.flops_range("autoformer-t")
    assert len(FlopsBins("autoformer-t", step=0.1e9)) == -(-(hi_t - lo_t) // int(0.1e9))
    with pytest.raises(ValueError, match="outside"):
        bins.bin_of(hi + 1)
    with pytest.raises(ValueError, match="exactly one"):
        FlopsBins(sp)
    with pytest.raises(ValueError, match="n_bins=0"):
        FlopsBins(sp, n_bins=0)


# AutoFormer's released subnets: microsoft/Cream AutoFormer/experiments/subnet/AutoFormer-{T,S,B}.yaml
# (RETRAIN: EMBED_DIM, DEPTH, and per layer MLP_RATIO and NUM_HEADS).
RELEASED = {
    "T": (192, [3.5, 3.5, 3.0, 3.5, 3.0, 3.0, 4.0, 4.0, 3.5, 4.0, 3.5, 4.0, 3.5], [3] * 10 + [4, 3, 3]),
    "S": (384, [3.0, 3.5, 3.0, 3.5, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 3.5, 4.0], [6, 6, 5, 7, 5, 5, 5, 6, 6, 7, 7, 6, 7]),
    "B": (576, [3.5, 3.5, 4.0, 3.5, 4.0, 3.5, 3.5, 3.0, 4.0, 4.0, 3.0, 4.0, 3.0, 3.5],
          [9, 9, 9, 9, 9, 10, 9, 9, 10, 9, 10, 9, 9, 10]),
}


def released(which: str, space: str) -> shiftnas.ArchConfig:
    embed, ratios, heads = RELEASED[which]
    values = {"depth": len(ratios), "embed_dim": embed}
    for i, (h, r) in enumerate(zip(heads, ratios)):
        values.update({f"layers.{i}.num_heads": h, f"layers.{i}.mlp_ratio": r})
    return shiftnas.ArchConfig.from_dict(space, values)


@pytest.mark.parametrize("which,readme", [("S", 22.9e6), ("B", 53.7e6)])
def test_released_autoformer_params_match_their_readme(which, readme):
    """AutoFormer's README: S 22.9M, B 53.7M params; with its relative position encodings (on in
    the autoformer spaces) to 0.05%, without them 0.5% and 0.2% under."""
    from shiftnas.spaces.vit import vit_variant

    name = f"autoformer-{which.lower()}"
    arch = released(which, name)
    params = count_params(name, arch)
    assert abs(params - readme) / readme < 0.005, params
    assert params == {"S": 22_891_432, "B": 53_691_688}[which]
    assert (count_flops(name, arch), params) == measured(arch)
    off = vit_variant(name, f"{name}-no-rel-pos", rel_pos=0)
    assert count_params(off, released(which, off.name)) == params - 7680 * len(RELEASED[which][1])


def test_released_autoformer_t_through_a_space_variant():
    """The released T has mlp ratio 3.0 in 4 layers, outside supernet-T's search space (3.5, 4.0):
    a variant of autoformer-t with ratio 3.0 added holds it (the supernet allocates ratio 4.0, so
    its weights are the same tensors). README 5.8M params (the paper: 5.7M, 1.3G FLOPs)."""
    from shiftnas.spaces.vit import vit_variant

    with pytest.raises(ValueError, match=r"mlp_ratio=3.0 is not in the search space; allowed values: \[3.5, 4.0\]"):
        released("T", "autoformer-t")
    sp = vit_variant("autoformer-t", "autoformer-t-mlp3", mlp_ratio=(3.0, 3.5, 4.0))
    arch = released("T", sp.name)
    assert (count_params(sp, arch), count_flops(sp, arch)) == (5_867_944, 1_343_754_752) == measured(arch)[::-1]
    off = vit_variant(sp.name, "autoformer-t-mlp3-no-rel-pos", rel_pos=0)
    assert (count_params(off, released("T", off.name)), count_flops(off, released("T", off.name))) == (5_768_104, 1_283_236_352)
    with torch.device("meta"):
        a, b = shiftnas.build_supernet("autoformer-t"), shiftnas.build_supernet(sp.name)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
