"""Exact FLOPs, parameter and latency costs, their differentiable expectation, and cost bins.

FLOPs are multiply-accumulates (MACs), the convention of the AutoFormer and ShiftNAS tables:
`torch.utils.flop_counter.FlopCounterMode` on the exported model (explicit attention) counts 2
per MAC, so `count_flops == FlopCounterMode total / 2`. Normalisation, biases, activations and
pooling are not counted (FlopCounterMode does not count them either).

A network's cost is a sum of *terms*. Each term depends on a few decisions (e.g. one ViT layer
on depth, embed dim, its heads and its mlp ratio) and is tabulated over all their candidate
combinations. `count_flops` reads the table at the arch's indices; `expected_cost` contracts
the table with the one-hot (or soft) policies: multilinear, so it is differentiable and equal
to `count_flops` at hard one-hots (docs/method.md Eq. 10).

The terms themselves (`CostTerm`, `tabulate`) are in `terms.py`, those of each family in `vit.py`
and `mbconv.py`; they read the width and shape rules from `shiftnas.spaces` and never import the
models (tests/test_layers.py).

The tables are plain Python floats, so counting (`count_flops`, `flops_range`, `FastCost`) needs
no torch; torch is imported by the functions that return tensors (`expected_cost`, `CostBins`,
`CostTerm.table`).

Every function here that takes `what` ('flops' | 'params') also takes a `Cost` (`model.py`;
`get_cost(space, "latency", table=PATH)` for a measured latency table, in whole nanoseconds), so
FLOPs, parameters and latency share one code path: `FastCost`, `expected_cost`, `CostBins`
(`FlopsBins` is its FLOPs case) and `shiftnas.budget.Feasibility`.
"""
from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

from ..spaces import ArchConfig, SearchSpace, get_space
from .model import COSTS, Cost, _terms, as_cost, get_cost
from .terms import CostTerm, tabulate

if TYPE_CHECKING:
    import torch

    from ..spaces.arch_sample import ArchSample

__all__ = [
    "COSTS",
    "Cost",
    "CostBins",
    "CostTerm",
    "FastCost",
    "FlopsBins",
    "as_cost",
    "cost_range",
    "cost_terms",
    "count_cost",
    "count_flops",
    "count_params",
    "expected_cost",
    "fast_cost",
    "flops_range",
    "get_cost",
    "make_bins",
    "tabulate",
]


def cost_terms(
    space: SearchSpace | str, what: str | Cost = "flops", num_classes: int | None = None
) -> tuple[CostTerm, ...]:
    """The terms whose sum (plus the cost's constant) is the cost (cached per space): for
    samplers that walk the space."""
    return as_cost(space, what, num_classes).terms


def _count(space: SearchSpace | str, arch: ArchConfig, what: str, num_classes: int | None) -> int:
    space = get_space(space)
    space.check(arch)
    idx = space.indices(arch)
    return int(round(sum(t.at(idx) for t in _terms(space.name, what, num_classes))))


def count_flops(space: SearchSpace | str, arch: ArchConfig, num_classes: int | None = None) -> int:
    """Multiply-accumulates of one forward pass of one image at `arch`.

    `num_classes` defaults to the space's (1000 for the ImageNet spaces, 10 for Fashion-MNIST).
    """
    return _count(space, arch, "flops", num_classes)


def count_params(space: SearchSpace | str, arch: ArchConfig, num_classes: int | None = None) -> int:
    """Parameters of the exported subnet at `arch` (buffers such as BN statistics excluded)."""
    return _count(space, arch, "params", num_classes)


def count_cost(space: SearchSpace | str, arch: ArchConfig, what: str | Cost = "flops") -> int:
    """The cost of `arch` in its unit (MACs, parameters or ns): `count_flops` / `count_params` /
    the latency table's prediction (monotone, in whole ns)."""
    space = get_space(space)
    cost = as_cost(space, what)
    space.check(arch)
    return round(cost.at(space.indices(arch)))


def expected_cost(
    space: SearchSpace | str, sample: ArchSample, what: str | Cost = "flops", num_classes: int | None = None
) -> torch.Tensor:
    """Differentiable cost of an `ArchSample` (its one-hots may be soft): a float64 scalar."""
    import torch

    space = get_space(space)
    if sample.space != space.name:
        raise ValueError(f"sample is from space {sample.space!r}, expected {space.name!r}")
    cost = as_cost(space, what, num_classes)
    total = None
    for t in cost.terms:
        # float64: costs reach 1e10 MACs, past float32's exact integers.
        ps = [sample.onehots[n].double() for n in t.names]
        table = t.table.to(device=ps[0].device)
        letters = "abcdefghijklmnopqrstuvwxyz"[: len(ps)]
        v = torch.einsum(f"{letters},{','.join(letters)}->", table, *ps)
        total = v if total is None else total + v
    return total + cost.constant if cost.constant else total


class FastCost:
    """A cost from candidate indices via the term tables, with no ArchConfig per call.

    For the loops that walk a space one decision at a time (the generator's feasibility masks,
    `sample_in_bin`). Indices are kept for every decision, inactive ones too; an inactive
    decision reads the tables at index 0, as `SearchSpace.indices` does, so `total` equals
    `count_flops` / `count_params` / `count_cost` of the config. `what`: 'flops', 'params' or
    a `Cost` (`self.cost`; `self.what` is its name).
    """

    def __init__(self, space: SearchSpace, what: str | Cost = "flops"):
        self.cost = as_cost(space, what)
        self.space, self.what = space, self.cost.name
        self.constant = self.cost.constant
        self.decs = {d.name: d for d in space.decisions}
        # Flat python lists: a list lookup is ~50x cheaper than indexing a torch tensor. Per
        # term: (names, flat table, per name (name, stride, gate name or None, gate choices,
        # gate layer)) so `term` needs no lookups beyond the indices.
        self.terms = []
        for t in self.cost.terms:
            axes = []
            for n, st in zip(t.names, t.strides):
                g = self.decs[n].gate
                axes.append((n, st, None, (), 0) if g is None else (n, st, g[0], self.decs[g[0]].choices, g[1]))
            self.terms.append((t.names, tuple(axes), list(t.values)))
        gated_by: dict[str, set[str]] = {}
        for d in space.decisions:
            if d.gate is not None:
                gated_by.setdefault(d.gate[0], set()).add(d.name)
        self.gates = set(gated_by)  # the decisions that switch others on or off
        # Terms whose value can change when decision n moves (directly or by (de)activation).
        self.touch = {
            d.name: [
                i
                for i, (names, _, _) in enumerate(self.terms)
                if d.name in names or gated_by.get(d.name, set()) & set(names)
            ]
            for d in space.decisions
        }
        # The largest change one step (index j -> j + 1) of each decision can make, over every
        # setting of the others: a bound on the gaps between reachable costs (see budget.py).
        self.step_bound = {d.name: 0.0 for d in space.decisions}
        for t in self.cost.terms:
            for axis, n in enumerate(t.names):
                self.step_bound[n] += t.max_step(axis)

    def active(self, name: str, idx: dict[str, int]) -> bool:
        gate = self.decs[name].gate
        return gate is None or self.decs[gate[0]].choices[idx[gate[0]]] > gate[1]

    def term(self, i: int, idx: dict[str, int]) -> float:
        _, axes, flat = self.terms[i]
        off = 0
        for n, s, gate, choices, layer in axes:
            if gate is None or choices[idx[gate]] > layer:
                off += idx[n] * s
        return flat[off]

    def total(self, idx: dict[str, int]) -> float:
        total = sum(self.term(i, idx) for i in range(len(self.terms)))
        return total + self.constant if self.constant else total

    def delta(self, idx: dict[str, int], name: str, new: int) -> float:
        """total(idx with idx[name] = new) - total(idx); `idx` is left as it was."""
        touched = self.touch[name]
        before = sum(self.term(i, idx) for i in touched)
        old, idx[name] = idx[name], new
        after = sum(self.term(i, idx) for i in touched)
        idx[name] = old
        return after - before

    def deltas(self, idx: dict[str, int], name: str) -> list[float]:
        """`delta(idx, name, c)` for every candidate c of `name`, in one pass: a decision that
        gates no other moves along one stride of each term it is active in, so each term's
        offset is computed once; a gate (de)activates others' axes and is read per candidate."""
        n = len(self.decs[name].choices)
        if name in self.gates:
            return [self.delta(idx, name, c) for c in range(n)]
        out, old = [0.0] * n, idx[name]
        for i in self.touch[name]:
            _, axes, flat = self.terms[i]
            off = stride = 0
            for m, s, gate, choices, layer in axes:
                if gate is None or choices[idx[gate]] > layer:
                    if m == name:
                        stride = s
                    else:
                        off += idx[m] * s
            if stride:  # inactive here (its gate is off): this term does not move
                base = flat[off + old * stride]
                for c in range(n):
                    out[c] += flat[off + c * stride] - base
        return out


@functools.cache
def _fast_cost(cost: Cost) -> FastCost:
    return FastCost(get_space(cost.space), cost)


def fast_cost(space: SearchSpace | str, what: str | Cost = "flops") -> FastCost:
    """The (cached) `FastCost` of `space` for `what`: 'flops', 'params' or a `Cost`."""
    return _fast_cost(as_cost(space, what))


def flops_range(space: SearchSpace | str) -> tuple[int, int]:
    """(min, max) FLOPs over the space: every cost is monotone in every choice."""
    space = get_space(space)
    return count_flops(space, space.min()), count_flops(space, space.max())


def cost_range(space: SearchSpace | str, what: str | Cost = "flops") -> tuple[int, int]:
    """(min, max) of a cost over the space (a latency cost is made monotone, so these are its
    smallest and largest subnets too)."""
    space = get_space(space)
    return count_cost(space, space.min(), what), count_cost(space, space.max(), what)


class CostBins:
    """[C_min, C_max] of a cost cut into K equal bins; bin k targets its centre C_k
    (docs/method.md section 1). `cost`: 'flops', 'params' or a `Cost` (e.g. latency, in ns).

    Give either `n_bins` or `step` (in the cost's unit: MACs, e.g. 0.1e9 for the paper's
    ViT-tiny bins; ns for latency).
    """

    def __init__(
        self, space: SearchSpace | str, n_bins: int | None = None, step: float | None = None, cost: str | Cost = "flops"
    ):
        import torch

        self.space = get_space(space)
        self.cost = as_cost(self.space, cost)
        lo, hi = cost_range(self.space, self.cost)
        name = type(self).__name__
        if (n_bins is None) == (step is None):
            raise ValueError(f"{name}: give exactly one of n_bins or step")
        if n_bins is not None:
            if not isinstance(n_bins, int) or n_bins < 1:
                raise ValueError(f"{name}: n_bins={n_bins!r} must be a positive integer")
            k = n_bins
        else:
            if not step > 0:
                raise ValueError(f"{name}: step={step!r} must be > 0")
            k = max(1, math.ceil((hi - lo) / step))
        self.lo, self.hi = float(lo), float(hi)
        width = (self.hi - self.lo) / k
        self.edges = torch.tensor([self.lo + i * width for i in range(k)] + [self.hi], dtype=torch.float64)
        self.centers = (self.edges[:-1] + self.edges[1:]) / 2

    def __len__(self) -> int:
        return len(self.centers)

    def width(self) -> float:
        """The width of one bin in the cost's unit."""
        return (self.hi - self.lo) / len(self)

    def window(self, k: int) -> tuple[int, int]:
        """Bin `k` as an inclusive integer interval [lo, hi] of the cost (costs are integers):
        exactly the costs that `bin_of` maps to `k`."""
        if not (isinstance(k, int) and 0 <= k < len(self)):
            raise ValueError(f"bin {k!r} is out of range; {self!r} has bins 0..{len(self) - 1}")
        lo = math.ceil(float(self.edges[k]))
        hi = int(self.hi) if k == len(self) - 1 else math.ceil(float(self.edges[k + 1])) - 1
        return lo, hi

    def bin_of(self, value: float) -> int:
        """Index of the bin holding `value` (the top edge belongs to the last bin)."""
        if not (self.lo <= value <= self.hi):
            u = self.cost.display_unit
            raise ValueError(
                f"{value / 1e6:.3f} {u} is outside {self.space.name!r}'s range "
                f"[{self.lo / 1e6:.3f}, {self.hi / 1e6:.3f}] {u}"
            )
        import torch

        k = int(torch.searchsorted(self.edges, torch.tensor(float(value), dtype=torch.float64), right=True)) - 1
        return min(max(k, 0), len(self) - 1)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.space.name!r}, {len(self)} bins, "
            f"{self.lo / 1e6:.2f}-{self.hi / 1e6:.2f} {self.cost.display_unit})"
        )


class FlopsBins(CostBins):
    """`CostBins` of the FLOPs (MACs): [F_min, F_max] cut into K equal bins.

    Give either `n_bins` or `step` (in MACs: e.g. 0.1e9 for the paper's ViT-tiny bins).
    """

    def __init__(self, space: SearchSpace | str, n_bins: int | None = None, step: float | None = None):
        super().__init__(space, n_bins=n_bins, step=step, cost="flops")


def make_bins(space: SearchSpace | str, n_bins: int, cost: str | Cost = "flops") -> CostBins:
    """`n_bins` bins of `cost`: a `FlopsBins` for the FLOPs (so flops runs keep their bins'
    type and messages), a `CostBins` otherwise."""
    c = as_cost(space, cost)
    if c is as_cost(space, "flops"):
        return FlopsBins(space, n_bins=n_bins)
    return CostBins(space, n_bins=n_bins, cost=c)
