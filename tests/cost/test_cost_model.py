"""`Cost`: FLOPs, parameters and measured latency behind one interface (shiftnas/cost/model.py,
measured.py), and the decoding's guarantee for a latency cost (shiftnas/budget.py)."""

import itertools
import random
import re
from pathlib import Path

import pytest
from archutil import check_masks_against_brute_force, decode_random

from shiftnas.budget import Feasibility, budget_window
from shiftnas.cost import (
    Cost,
    CostBins,
    CostTerm,
    FastCost,
    FlopsBins,
    cost_range,
    cost_terms,
    count_cost,
    count_flops,
    expected_cost,
    fast_cost,
    flops_range,
    get_cost,
    make_bins,
)
from shiftnas.cost.measured import make_monotone
from shiftnas.latency import LatencyTable
from shiftnas.spaces import get_space
from shiftnas.spaces.arch_sample import ArchSample
from shiftnas.spaces.cnn import mbconv_space
from shiftnas.spaces.vit import vit_space

TABLES = Path(__file__).resolve().parents[2] / "bench" / "results" / "latency"
COMMITTED = ["vit-fmnist-b1", "vit-fmnist-b128", "cnn-fmnist-b1", "cnn-fmnist-b128"]

TINY_VIT = vit_space(
    "test-cost-model-vit", embed_dim=(16, 24), mlp_ratio=(1.0, 2.0), num_heads=(1, 2), depth=(1, 2, 3),
    img_size=8, patch_size=4, in_chans=1, num_classes=3, head_dim=8,
    super_embed_dim=24, super_num_heads=2, super_mlp_ratio=2.0, source="tests",
)
TINY_CNN = mbconv_space(
    "test-cost-model-cnn", resolutions=(8, 12), stem={"c": (4, 8), "s": 1},
    stages=[
        {"c": (8, 12), "d": (1, 2), "k": (3, 5), "t": (1, 3), "s": 2, "se": False},
        {"c": (12, 16), "d": (1, 2), "k": (3,), "t": (2, 4), "s": 2, "se": True},
    ],
    head_width=(16, 24), in_chans=1, num_classes=3, source="tests",
)


def table_path(name: str) -> Path:
    return TABLES / f"{name}.json"


def noisy_table(space, seed: int = 0) -> LatencyTable:
    """A latency table of `space` whose entries are its FLOPs plus noise large enough to break
    monotonicity (0 where the FLOPs term is 0, as the probes of inactive blocks are)."""
    rng = random.Random(seed)
    terms = []
    for t in cost_terms(space, "flops"):
        top = max(t.values) or 1.0
        vals = tuple(0.0 if v == 0 else v / top * 0.5 + rng.uniform(0, 0.2) for v in t.values)
        terms.append(CostTerm(t.names, t.shape, vals))
    return LatencyTable(space.name, 1, "float32", {"device": "cpu"}, terms, 0.05)


def test_make_monotone_is_the_smallest_monotone_majorant():
    rng = random.Random(0)
    shape = (3, 4, 2)
    t = CostTerm(("a", "b", "c"), shape, tuple(rng.uniform(0, 10) for _ in range(24)))
    m = make_monotone(t)
    cells = list(itertools.product(*(range(n) for n in shape)))
    for x in cells:
        idx = dict(zip(t.names, x))
        below = [t.at(dict(zip(t.names, y))) for y in cells if all(a <= b for a, b in zip(y, x))]
        assert m.at(idx) == max(below)
    assert sum(a != b for a, b in zip(t.values, m.values)) > 0  # the random table was not monotone
    assert make_monotone(m) == m


@pytest.mark.parametrize("name", COMMITTED)
def test_latency_cost_of_a_committed_table(name):
    table = LatencyTable.load(table_path(name))
    cost = get_cost(table.space, "latency", table=table_path(name))
    assert cost is get_cost(table.space, "latency", table=str(table_path(name)))  # cached
    assert (cost.name, cost.unit, cost.display_unit) == ("latency", "ns", "ms")
    assert cost.constant == round(table.overhead_ms * 1e6)
    assert all(v == int(v) for t in cost.terms for v in t.values)  # whole ns
    assert [(t.names, t.shape) for t in cost.terms] == [(t.names, t.shape) for t in cost_terms(table.space)]
    note = cost.notes
    assert note["max_raise_ms"] == pytest.approx(table.notes["monotone_violation_max_ms"], abs=1e-6)
    assert (note["entries_raised"] == 0) == (note["max_raise_ms"] == 0)
    space = get_space(table.space)
    rounding = (len(cost.terms) + 1) * 0.5e-6  # ms: every entry and the overhead to the nearest ns
    for arch in [space.min(), space.max(), *(space.sample(random.Random(i)) for i in range(30))]:
        ms = count_cost(space, arch, cost) / 1e6
        assert table.predict(arch) - rounding <= ms <= table.predict(arch) + note["max_arch_raise_ms"] + rounding
        s = ArchSample.from_arch(arch)
        assert expected_cost(space, s, cost).item() == count_cost(space, arch, cost)
    same = table.cost()
    assert same is not cost and [t.values for t in same.terms] == [t.values for t in cost.terms]
    assert cost.describe()["monotone"] == note and cost.describe()["table"] == str(table_path(name))


def test_flops_and_params_costs_are_the_analytic_ones():
    sp = get_space("vit-fmnist")
    flops = get_cost(sp, "flops")
    assert flops is get_cost("vit-fmnist") and flops.terms == cost_terms(sp, "flops") and flops.constant == 0
    arch = sp.sample(random.Random(1))
    assert count_cost(sp, arch) == count_cost(sp, arch, flops) == count_flops(sp, arch)
    assert cost_range(sp) == flops_range(sp)
    assert fast_cost(sp) is fast_cost(sp, flops) and fast_cost(sp, "params").what == "params"
    assert type(make_bins(sp, 10)) is FlopsBins and repr(make_bins(sp, 10)) == repr(FlopsBins(sp, n_bins=10))


def test_cost_errors_name_the_value_and_what_is_allowed(tmp_path):
    sp = get_space("vit-fmnist")
    with pytest.raises(ValueError, match="needs a measured table"):
        get_cost(sp, "latency")
    with pytest.raises(ValueError, match="does not exist"):
        get_cost(sp, "latency", table=tmp_path / "nope.json")
    with pytest.raises(ValueError, match="is for space 'cnn-fmnist', not 'vit-fmnist'"):
        get_cost(sp, "latency", table=table_path("cnn-fmnist-b1"))
    with pytest.raises(ValueError, match="cost 'energy'; allowed: flops, params, latency"):
        get_cost(sp, "energy")
    with pytest.raises(ValueError, match="table= is for the latency cost"):
        get_cost(sp, "flops", table=table_path("vit-fmnist-b1"))
    with pytest.raises(ValueError, match="what='latency' needs a measured table"):
        FastCost(sp, "latency")
    cnn = get_cost("cnn-fmnist", "latency", table=table_path("cnn-fmnist-b1"))
    with pytest.raises(ValueError, match="cost of space 'cnn-fmnist', not 'vit-fmnist'"):
        CostBins(sp, n_bins=4, cost=cnn)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="format None"):
        get_cost(sp, "latency", table=tmp_path / "bad.json")


def test_latency_bins():
    cost = get_cost("vit-fmnist", "latency", table=table_path("vit-fmnist-b1"))
    bins = make_bins("vit-fmnist", 10, cost)
    assert type(bins) is CostBins and bins.cost is cost
    lo, hi = cost_range("vit-fmnist", cost)
    assert (bins.lo, bins.hi) == (lo, hi) and len(bins) == 10
    windows = [bins.window(k) for k in range(10)]
    assert windows[0][0] == lo and windows[-1][1] == hi
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(windows))  # a partition of the integers
    assert all(bins.bin_of(w[0]) == k and bins.bin_of(w[1]) == k for k, w in enumerate(windows))
    assert "ms" in repr(bins)
    with pytest.raises(ValueError, match=re.escape(f"ms is outside 'vit-fmnist''s range [{lo / 1e6:.3f}, {hi / 1e6:.3f}] ms")):
        bins.bin_of(hi + 1e6)
    assert len(CostBins("vit-fmnist", step=0.1e6, cost=cost)) == -(-(hi - lo) // int(0.1e6))


@pytest.mark.parametrize("space", [TINY_VIT, TINY_CNN], ids=lambda s: s.name)
def test_masks_match_brute_force_for_a_non_monotone_table(space):
    table = noisy_table(space)
    cost = get_cost(space, "latency", table=table)
    assert cost.notes["entries_raised"] > 0  # the noise broke monotonicity; the cost repaired it
    feas = Feasibility(space, cost)
    archs = [(space.indices(a), count_cost(space, a, cost)) for a in space.enumerate()]
    check_masks_against_brute_force(feas, archs, random.Random(0), 40, r"latency in \[.* ms.*space spans")


@pytest.mark.parametrize("name", ["vit-fmnist-b1", "cnn-fmnist-b128"])
def test_every_decode_lands_in_its_latency_window(name):
    cost = get_cost(name.split("-b")[0], "latency", table=table_path(name))
    feas = Feasibility(cost.space, cost)
    bins = make_bins(cost.space, 10, cost)
    rng = random.Random(0)
    for k in range(len(bins)):
        lo, hi = bins.window(k)
        for _ in range(3):
            assert lo <= decode_random(feas, lo, hi, rng) <= hi
    for _ in range(10):
        lo, hi = budget_window(feas, rng.uniform(feas.lo + bins.width(), feas.hi), bins.width())
        assert lo <= decode_random(feas, lo, hi, rng) <= hi
    with pytest.raises(ValueError, match=r"budget 0\.100 ms latency is outside"):
        budget_window(feas, 0.1e6, bins.width())


def test_cost_is_compared_by_identity():
    cost = get_cost("vit-fmnist", "latency", table=table_path("vit-fmnist-b1"))
    assert isinstance(cost, Cost) and cost != Cost("latency", "vit-fmnist", cost.terms, cost.constant)


@pytest.mark.parametrize("space", ["vit-fmnist", "cnn-fmnist", "autoformer-t", "cnn-bignas"])
def test_fast_cost_deltas_are_the_single_deltas(space):
    """`FastCost.deltas` (one pass over every candidate) gives `delta` of each candidate, gates
    and inactive decisions included, and leaves the indices as they were."""
    sp = get_space(space)
    fc = fast_cost(sp)
    rng = random.Random(0)
    for i in range(40):  # configs, and raw indices (inactive decisions off their index 0)
        idx = sp.indices(sp.sample(rng)) if i % 2 else {d.name: rng.randrange(len(d.choices)) for d in sp.decisions}
        for d in sp.decisions:
            before = dict(idx)
            got = fc.deltas(idx, d.name)
            assert idx == before
            assert got == pytest.approx([fc.delta(idx, d.name, c) for c in range(len(d.choices))], rel=1e-12, abs=1e-6)
