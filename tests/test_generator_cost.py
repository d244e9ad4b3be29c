"""ArchGenerator with a latency cost: every decode lands in its latency window, untrained."""

import random
from pathlib import Path

import pytest
import torch

from shiftnas.cost import CostBins, FlopsBins, count_cost, expected_cost, get_cost
from shiftnas.generator import ArchGenerator

TABLES = Path(__file__).resolve().parents[1] / "bench" / "results" / "latency"


def latency(name: str):
    return get_cost(name.split("-b")[0], "latency", table=TABLES / f"{name}.json")


def test_flops_is_the_default():
    g = ArchGenerator("vit-fmnist", n_bins=4)
    assert g.cost is get_cost("vit-fmnist", "flops") and type(g.bins) is FlopsBins
    assert "cost='flops'" in repr(g)


@pytest.mark.parametrize("name", ["vit-fmnist-b1", "cnn-fmnist-b128"])
def test_untrained_generator_decodes_into_every_latency_bin(name):
    torch.manual_seed(0)
    cost = latency(name)
    g = ArchGenerator(cost.space, n_bins=8, cost=cost)
    assert type(g.bins) is CostBins and g.bins.cost is cost and g.feasibility.cost.cost is cost
    assert torch.equal(g.targets, g.bins.centers)
    rng = torch.Generator().manual_seed(0)
    for k in range(g.n_bins):
        lo, hi = g.bins.window(k)
        assert lo <= count_cost(g.space, g.generate(bin=k), cost) <= hi  # deployment
        s = g(g.bin_vector(k), tau=1.0, rng=rng)  # a training sample
        c = count_cost(g.space, s.hard(), cost)
        assert lo <= c <= hi
        assert float(expected_cost(g.space, s, cost).detach()) == c
        loss = g.resource_loss(s, g.targets[k], lam=2.0)
        assert float(loss.detach()) == pytest.approx(2.0 * ((c - float(g.targets[k])) / g.bins.hi) ** 2)


@pytest.mark.parametrize("name", ["vit-fmnist-b128", "cnn-fmnist-b1"])
def test_no_random_latency_budget_is_exceeded(name):
    torch.manual_seed(0)
    cost = latency(name)
    g = ArchGenerator(cost.space, n_bins=10, cost=cost)
    rng = random.Random(0)
    width = g.bins.width()
    budgets = [rng.uniform(g.bins.lo + width, g.bins.hi) for _ in range(25)]
    exceeded = [b for b in budgets if count_cost(g.space, g.generate(b), cost) > b]
    assert exceeded == []
    assert all(b - width <= count_cost(g.space, g.generate(b), cost) for b in budgets[:5])
    lo, hi = g.bins.window(3)
    assert lo <= count_cost(g.space, g.generate(interval=(lo, hi)), cost) <= hi
    with pytest.raises(ValueError, match=r"budget .* ms latency is outside .* ms"):
        g.generate(g.bins.lo - 1e6)


def test_pretraining_on_the_latency_loss_runs():
    torch.manual_seed(0)
    cost = latency("vit-fmnist-b1")
    g = ArchGenerator(cost.space, n_bins=4, cost=cost)
    rec = g.pretrain(3, rng=torch.Generator().manual_seed(0))
    assert rec["steps"] == 3 and rec["loss"] >= 0
