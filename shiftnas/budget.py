"""Exact feasibility of a cost window during one-decision-at-a-time decoding.

The generator emits decisions in `space.decisions` order. Before it chooses decision i, every
candidate whose completions cannot land in the target window [lo, hi] is masked, so whatever
it then picks (arg-max or Gumbel), the finished architecture costs between lo and hi.

Why this is exact. Every cost is monotone in every choice (a larger candidate never costs
less), so with decisions 0..i fixed the cheapest completion sets every later decision to its
smallest candidate and the dearest to its largest: `cmin` and `cmax`, kept incrementally. A
window outside [cmin, cmax] is infeasible. A window inside it may still fall in a gap of the
reachable costs; but walking from the cheapest completion to the dearest one step (one
candidate of one decision) at a time -- depth-like gates first, while the decisions they switch
on still sit at their smallest candidate -- changes the cost by at most `gap_bound[i]`, the sum
of the largest single-step changes of that decision's terms, maximised over the later
decisions. So a window at least that wide always holds a reachable cost. Only a narrower window
strictly inside (cmin, cmax) needs a search (the bound is taken with the decisions made so far
fixed, cached per position and the values it depends on): a depth-first search for one completion, pruned by
the same interval test, which almost always succeeds on its first path. `mask` therefore
answers exactly; the search has a node limit only as a guard (`search_limit`), past which a
candidate counts as infeasible, which can only make the mask stricter, never let a sample out
of the window.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

from .cost import Cost, FastCost, as_cost, fast_cost
from .spaces import SearchSpace, get_space

__all__ = ["DecodeState", "Feasibility", "budget_window", "feasibility"]


@dataclass
class DecodeState:
    """Decisions 0..pos-1 fixed; `idx_min` / `idx_max` complete them at the smallest / largest
    candidates and `cmin` / `cmax` are those completions' costs."""

    pos: int
    idx_min: dict[str, int]
    idx_max: dict[str, int]
    cmin: float
    cmax: float
    chosen: list[int] = field(default_factory=list)


class Feasibility:
    """Masks for decoding `space` into the cost window [lo, hi] (`what`: 'flops', 'params' or a
    `Cost`, e.g. a latency table's: any cost monotone in every choice, `shiftnas.cost.model`)."""

    def __init__(self, space: SearchSpace | str, what: str | Cost = "flops", search_limit: int = 20_000):
        self.space = get_space(space)
        self.cost: FastCost = fast_cost(self.space, what)
        self.decs = self.space.decisions
        self.search_limit = int(search_limit)
        self.pos_of = {d.name: i for i, d in enumerate(self.decs)}
        self.tables = self.cost.cost.terms
        self._chain_bounds()
        first = self.start()
        self.lo, self.hi = first.cmin, first.cmax
        self.searches = 0  # how many depth-first searches ran (for tests and benchmarks)

    def start(self) -> DecodeState:
        idx_min = {d.name: 0 for d in self.decs}
        idx_max = {d.name: len(d.choices) - 1 for d in self.decs}
        return DecodeState(0, idx_min, idx_max, self.cost.total(idx_min), self.cost.total(idx_max))

    # -- one decision -------------------------------------------------------------------------
    def bounds(self, st: DecodeState, c: int) -> tuple[float, float]:
        """(cmin, cmax) after fixing decision `st.pos` to candidate `c`."""
        name = self.decs[st.pos].name
        return (st.cmin + self.cost.delta(st.idx_min, name, c),
                st.cmax + self.cost.delta(st.idx_max, name, c))

    def candidate_bounds(self, st: DecodeState) -> list[tuple[float, float]]:
        """`bounds(st, c)` for every candidate c of decision `st.pos`."""
        name = self.decs[st.pos].name
        lo = self.cost.deltas(st.idx_min, name)
        hi = self.cost.deltas(st.idx_max, name)
        return [(st.cmin + a, st.cmax + b) for a, b in zip(lo, hi)]

    def commit(self, st: DecodeState, c: int, bounds: tuple[float, float] | None = None) -> None:
        """Fix decision `st.pos` to candidate `c` (in place); `bounds`: its `bounds(st, c)` when
        already known."""
        name = self.decs[st.pos].name
        st.cmin, st.cmax = self.bounds(st, c) if bounds is None else bounds
        st.idx_min[name] = st.idx_max[name] = c
        st.chosen.append(c)
        st.pos += 1

    def _undo(self, st: DecodeState, saved: tuple) -> None:
        st.pos -= 1
        name = self.decs[st.pos].name
        st.idx_min[name], st.idx_max[name], st.cmin, st.cmax = saved
        st.chosen.pop()

    def mask(self, st: DecodeState, lo: float, hi: float,
             bounds: list[tuple[float, float]] | None = None) -> list[bool]:
        """For each candidate of decision `st.pos`: can the architecture still cost in [lo, hi]?
        `bounds`: its `candidate_bounds(st)` when the caller has them."""
        budget = [self.search_limit]
        if bounds is None:
            bounds = self.candidate_bounds(st)
        return [self._feasible(st, c, lo, hi, budget, b) for c, b in enumerate(bounds)]

    def _feasible(self, st: DecodeState, c: int, lo: float, hi: float, budget: list[int],
                  bounds: tuple[float, float]) -> bool:
        cmin, cmax = bounds
        if cmin > hi or cmax < lo:
            return False
        if lo <= cmin <= hi or lo <= cmax <= hi:
            return True
        if st.pos + 1 == len(self.decs):
            return False  # cmin == cmax when nothing is left, and it is outside the window
        name = self.decs[st.pos].name
        saved = (st.idx_min[name], st.idx_max[name], st.cmin, st.cmax)
        self.commit(st, c, bounds)
        try:
            if hi - lo >= self.gap_bound(st):
                return True
            self.searches += 1
            return self._search(st, lo, hi, budget)
        finally:
            self._undo(st, saved)

    def gap_bound(self, st: DecodeState) -> float:
        """No two consecutive reachable costs of `st`'s completions are further apart than this."""
        if st.pos == 0:
            return self._bound0
        return self._bounds[(st.pos, st.idx_min[self.decs[0].name])]

    def _chain_bounds(self) -> None:
        """The largest step of the chain from the cheapest to the dearest completion, at every
        position, for every value of decision 0 (the ViT depth, the CNN resolution: the values
        that scale the most terms), the other earlier decisions at their worst.

        The chain increments the later decisions one candidate at a time: first the gates
        (depths: the blocks they add sit at their smallest candidates), then the others, most
        shared first, each to its largest candidate before the next moves. Its steps are table
        differences; per term the largest over the free earlier decisions is taken, so the sum
        bounds every step of that decision.
        """
        gates = {d.gate[0] for d in self.decs if d.gate is not None}
        shared = {d.name: sum(d.name in t.names for t in self.tables) for d in self.decs}
        first = self.decs[0].name

        def bound(i: int, v0: int | None) -> float:
            later = [d.name for d in self.decs[i:]]
            order = sorted(later, key=lambda m: (m not in gates, -shared[m], self.pos_of[m]))
            rank = {m: r for r, m in enumerate(order)}
            worst = 0.0
            for d in later:
                step = 0.0
                for t in self.tables:
                    if d not in t.names:
                        continue
                    ix, free = [], []
                    for m in t.names:
                        if m == first and v0 is not None:
                            ix.append(v0)
                        elif m == d or self.pos_of[m] < i:
                            ix.append(slice(None))
                            free.append(m)
                        else:  # a later decision: at its largest if it moved before d, else smallest
                            ix.append(-1 if rank[m] < rank[d] else 0)
                    sub = t.table[tuple(ix)]
                    axis = free.index(d)
                    if sub.shape[axis] > 1:
                        step += float(sub.diff(dim=axis).abs().max())
                worst = max(worst, step)
            return worst

        self._bound0 = bound(0, None)
        self._bounds = {(i, v): bound(i, v) for i in range(1, len(self.decs) + 1)
                        for v in range(len(self.decs[0].choices))}

    def _search(self, st: DecodeState, lo: float, hi: float, budget: list[int]) -> bool:
        """Is there a completion of `st` in [lo, hi]? Depth-first, first the candidate whose cheapest
        or dearest completion comes nearest the window (so the first path almost always succeeds)."""
        budget[0] -= 1
        if budget[0] < 0:
            return False
        order = []
        for c, (b0, b1) in enumerate(self.candidate_bounds(st)):
            if b0 > hi or b1 < lo:
                continue
            if lo <= b0 <= hi or lo <= b1 <= hi:
                return True
            order.append((min(b1 - hi, lo - b0), c, (b0, b1)))
        return any(self._feasible(st, c, lo, hi, budget, b) for _, c, b in sorted(order))

    # -- whole architectures ------------------------------------------------------------------
    def fmt(self, v: float) -> str:
        """A cost for messages (ms for latency, G/M/k-scaled otherwise)."""
        return self.cost.cost.fmt(v)

    def check_window(self, lo: float, hi: float) -> None:
        """Raise ValueError unless some architecture costs in [lo, hi]."""
        if not any(self.mask(self.start(), lo, hi)):
            raise ValueError(
                f"no {self.space.name!r} subnet has {self.cost.what} in [{self.fmt(lo)}, {self.fmt(hi)}]; "
                f"the space spans [{self.fmt(self.lo)}, {self.fmt(self.hi)}]"
            )


@functools.cache
def _feasibility(cost: Cost) -> Feasibility:
    return Feasibility(cost.space, cost)


def feasibility(space: SearchSpace | str, what: str | Cost = "flops") -> Feasibility:
    """The (cached per `Cost`: its chain bounds take ~1 s for cnn-bignas) `Feasibility` of a
    space for `what` ('flops', 'params' or a `Cost`)."""
    return _feasibility(as_cost(space, what))


def budget_window(feas: Feasibility, budget: float, width: float) -> tuple[int, int]:
    """A user's budget as a window: at most `budget`, at least `budget - width` (integers).

    A budget below the space's smallest cost is an error naming the range; above the largest,
    the window is capped at the largest (every subnet fits, the largest is within `width`
    only when budget - width <= max, otherwise it is an error too).
    """
    b = float(budget)
    if not math.isfinite(b) or b < feas.lo or b - width > feas.hi:
        raise ValueError(
            f"budget {feas.fmt(b)} {feas.cost.what} is outside {feas.space.name!r}'s range "
            f"[{feas.fmt(feas.lo)}, {feas.fmt(feas.hi)}] (a budget may exceed the top by at most one bin width, "
            f"{feas.fmt(width)})"
        )
    hi = min(math.floor(b), int(feas.hi))
    lo = max(math.ceil(b - width), int(feas.lo))
    return lo, hi
