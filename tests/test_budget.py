"""Feasibility masks: exact against brute force on small spaces, and every decode lands in its window."""

import random

import pytest
from archutil import check_masks_against_brute_force

from shiftnas.budget import Feasibility, budget_window
from shiftnas.cost import count_flops
from shiftnas.spaces.cnn import mbconv_space
from shiftnas.spaces.vit import vit_space

# Two spaces small enough to enumerate (a few hundred / thousand archs).
TINY_VIT = vit_space(
    "test-tiny-vit", embed_dim=(16, 24), mlp_ratio=(1.0, 2.0), num_heads=(1, 2), depth=(1, 2, 3),
    img_size=8, patch_size=4, in_chans=1, num_classes=3, head_dim=8,
    super_embed_dim=24, super_num_heads=2, super_mlp_ratio=2.0, source="tests",
)
TINY_CNN = mbconv_space(
    "test-tiny-cnn", resolutions=(8, 12), stem=dict(c=(4, 8), s=1),
    stages=[
        dict(c=(8, 12), d=(1, 2), k=(3, 5), t=(1, 3), s=2, se=False),
        dict(c=(12, 16), d=(1, 2), k=(3,), t=(2, 4), s=2, se=True),
    ],
    head_width=(16, 24), in_chans=1, num_classes=3, source="tests",
)


def _all_costs(space):
    return [(space.indices(a), count_flops(space, a)) for a in space.enumerate()]


@pytest.mark.parametrize("space", [TINY_VIT, TINY_CNN], ids=lambda s: s.name)
def test_masks_match_brute_force(space):
    feas = Feasibility(space)
    archs = _all_costs(space)
    # Narrow windows too (down to a single cost, or between two reachable costs): these are
    # the ones an interval test alone gets wrong.
    check_masks_against_brute_force(feas, archs, random.Random(0), 60, "space spans")


def test_gap_bound_holds_on_reachable_costs():
    # The chain bound at the start is never below the largest gap between reachable costs.
    for space in (TINY_VIT, TINY_CNN):
        feas = Feasibility(space)
        costs = sorted({f for _, f in _all_costs(space)})
        assert max(b - a for a, b in zip(costs, costs[1:])) <= feas.gap_bound(feas.start())


def test_budget_window():
    feas = Feasibility(TINY_VIT)
    assert budget_window(feas, feas.lo + 100.5, 50) == (feas.lo + 51, feas.lo + 100)
    assert budget_window(feas, feas.hi + 10, 50) == (feas.hi - 40, feas.hi)
    for bad in (feas.lo - 1, feas.hi + 51, float("nan")):
        with pytest.raises(ValueError, match="outside"):
            budget_window(feas, bad, 50)
