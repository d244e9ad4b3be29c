"""bench/compare_samplers.py: the panel no sampler proposes, and the generator-diversity count
that tells a generator spreading its draws over a bin from one that always emits the same arch."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import compare_samplers as cs

from shiftnas.cost import FlopsBins, count_flops
from shiftnas.generator import ArchGenerator


def test_panel_has_min_max_and_two_archs_per_bin_at_its_quarter_points():
    pan = cs.panel("vit-fmnist", 4)
    bins = FlopsBins("vit-fmnist", n_bins=4)
    assert [p["name"] for p in pan[:2]] == ["min", "max"] and len(pan) == 2 + 2 * 4
    for p in pan[2:]:
        k, q = p["bin"], int(p["name"].split("@")[1].rstrip("%")) / 100
        pos = float(bins.edges[k]) + q * bins.width()
        assert abs(count_flops("vit-fmnist", p["arch"]) - pos) <= 0.05 * bins.width()
    assert [p["arch"] for p in cs.panel("vit-fmnist", 4)] == [p["arch"] for p in pan]  # fixed


def test_diversity_separates_a_spread_generator_from_a_collapsed_one():
    space = "vit-fmnist"
    torch.manual_seed(0)
    spread = ArchGenerator(space, n_bins=4)  # untrained: near-uniform logits over the feasible choices
    collapsed = ArchGenerator(space, n_bins=4)
    with torch.no_grad():  # logits ordered by candidate, far beyond the Gumbel noise: one arch per bin
        for head in collapsed.heads.values():
            head.weight.zero_()
            head.bias.copy_(100.0 * torch.arange(head.bias.numel()))
    wide = cs.generator_diversity(spread, draws=30)
    one = cs.generator_diversity(collapsed, draws=30)
    assert all(d["distinct"] == 1 and d["modal_share"] == 1.0 for d in one)
    assert sum(d["distinct"] for d in wide) > 4 * 10 and all(d["modal_share"] < 1.0 for d in wide)
