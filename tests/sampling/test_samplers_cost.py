"""The binning samplers with a latency cost: their bins, draws and generator are in that cost."""

import random
from pathlib import Path

import pytest

from shiftnas.cost import CostBins, FlopsBins, count_cost, get_cost
from shiftnas.sampling import (
    AttentiveSampler,
    BinUniformSampler,
    ShiftSampler,
    build_sampler,
    sample_in_bin,
)
from shiftnas.spaces.arch_sample import ArchSample

TABLES = Path(__file__).resolve().parents[2] / "bench" / "results" / "latency"


def latency(name: str):
    return get_cost(name.split("-b")[0], "latency", table=TABLES / f"{name}.json")


@pytest.mark.parametrize("name", ["vit-fmnist-b1", "cnn-fmnist-b128"])
def test_sample_in_bin_reaches_every_latency_bin(name):
    cost = latency(name)
    bins = CostBins(cost.space, n_bins=10, cost=cost)
    rng = random.Random(0)
    for k in range(len(bins)):
        lo, hi = bins.window(k)
        for _ in range(3):
            draw = sample_in_bin(cost.space, bins, k, rng)
            assert draw.hit and lo <= count_cost(cost.space, draw.arch, cost) == draw.flops <= hi


def test_bin_uniform_and_attentive_draw_in_latency_bins():
    cost = latency("cnn-fmnist-b1")
    s = BinUniformSampler(cost.space, seed=1, n_bins=6, cost=cost)
    assert s.bins.cost is cost
    for step in range(12):
        (arch, role), = s.next(step)
        lo, hi = s.bins.window(s.last_bins[0])
        assert role == "target" and lo <= count_cost(cost.space, arch, cost) <= hi
    a = build_sampler("attentive", cost.space, n_bins=6, n_candidates=2, cost=cost)
    assert isinstance(a, AttentiveSampler) and a.bins.cost is cost
    out = a.next(0, score_fn=lambda arch: 0.0)
    for (arch, _), k in zip(out[1:-1], a.last_bins):
        lo, hi = a.bins.window(k)
        assert lo <= count_cost(cost.space, arch, cost) <= hi
    assert type(BinUniformSampler(cost.space, n_bins=6).bins) is FlopsBins  # the default is unchanged


def test_shift_sampler_with_a_latency_cost():
    cost = latency("vit-fmnist-b1")
    s = ShiftSampler(cost.space, n_bins=5, total_steps=20, explore=0.5, seed=2, cost=cost)
    assert s.generator.cost is cost and s.bins.cost is cost and "cost='latency'" in repr(s)
    kinds = set()
    for step in range(20):
        (arch, _), = s.next(step)
        lo, hi = s.bins.window(s.last["bin"])
        hard = arch.hard() if isinstance(arch, ArchSample) else arch
        assert lo <= count_cost(cost.space, hard, cost) <= hi
        kinds.add(isinstance(arch, ArchSample))
        if isinstance(arch, ArchSample):
            assert s.extra_loss(arch).item() >= 0
    assert kinds == {True, False}  # both the generator's archs and the explore draws
    assert [count_cost(cost.space, a, cost) for a, _ in s.eval_archs()] == sorted(
        count_cost(cost.space, a, cost) for a, _ in s.eval_archs())
