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
