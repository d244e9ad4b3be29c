"""`Cost`: one interface for FLOPs, parameters and measured latency.

A cost is a sum of terms (`CostTerm`: a table over a few decisions' candidates) plus a constant.
FLOPs (MACs) and parameters come from the analytic models of `vit.py` / `mbconv.py`; latency from
a table measured by `shiftnas latency build`, in whole nanoseconds and made monotone
(`measured.py`). Every consumer (`FastCost`, `expected_cost`, `CostBins`, `Feasibility`, the
generator and the samplers) takes a `Cost` or the name 'flops' / 'params', so one code path
serves all three:

    get_cost(space, "flops")                       # MACs
    get_cost(space, "params")                      # parameters
    get_cost(space, "latency", table="vit.json")   # ns, or table=<LatencyTable>

All three are integers per architecture, so a cost window is an inclusive integer interval.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..spaces import SearchSpace, get_space
from .terms import CostTerm

__all__ = ["COSTS", "Cost", "as_cost", "get_cost"]

COSTS = ("flops", "params", "latency")
UNITS = {"flops": "MACs", "params": "params", "latency": "ns"}
# Values are shown in millions of the unit: MFLOPs, M params, and ms (1e6 ns).
DISPLAY = {"flops": "MFLOPs", "params": "M params", "latency": "ms"}


@dataclass(frozen=True, eq=False)
class Cost:
    """cost(arch) = constant + sum of `terms` at the arch's indices, in `unit` (an integer).

    `source`: the latency table's path (None for the analytic costs); `notes`: the monotone
    correction of a measured table (`measured.monotone_ns_terms`). Compared and hashed by
    identity: `get_cost` caches, so equal requests give the same object (and share the
    caches of `fast_cost` / `feasibility`).
    """

    name: str
    space: str
    terms: tuple[CostTerm, ...]
    constant: float = 0.0
    source: str | None = None
    notes: Mapping = field(default_factory=dict)

    @property
    def unit(self) -> str:
        return UNITS[self.name]

    @property
    def display_unit(self) -> str:
        """The unit of `value / 1e6`: MFLOPs, M params or ms."""
        return DISPLAY[self.name]

    def at(self, idx: dict[str, int]) -> float:
        """The cost at candidate indices (`SearchSpace.indices`: inactive decisions at 0)."""
        return self.constant + sum(t.at(idx) for t in self.terms)

    def fmt(self, v: float) -> str:
        """A value for messages: ms for latency; G/M/k-scaled for FLOPs and parameters."""
        if self.name == "latency":
            return f"{v / 1e6:.3f} ms"
        for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
            if abs(v) >= scale:
                return f"{v / scale:.3f}{unit}"
        return f"{v:g}"

    def describe(self) -> dict:
        """What a run records about its cost (summaries, evaluation tables)."""
        out = {"name": self.name, "unit": self.unit}
        if self.source is not None:
            out["table"] = self.source
        if self.name == "latency":
            out["overhead_ms"] = self.constant / 1e6
            out["monotone"] = dict(self.notes)
        return out

    def __repr__(self) -> str:
        src = "" if self.source is None else f", table={self.source!r}"
        return f"Cost({self.name!r}, {self.space!r}, {len(self.terms)} terms, unit={self.unit!r}{src})"


@functools.cache
def _terms(space_name: str, what: str, num_classes: int | None) -> tuple[CostTerm, ...]:
    space = get_space(space_name)
    num_classes = space.hparams["num_classes"] if num_classes is None else num_classes
    if space.family == "vit":
        from .vit import vit_cost_terms as fn
    elif space.family == "cnn":
        from .mbconv import mbconv_cost_terms as fn
    else:  # pragma: no cover - registry only holds the two families
        raise ValueError(f"no cost model for family {space.family!r}")
    flops, params = fn(space, num_classes)
    return tuple(flops if what == "flops" else params)


@functools.cache
def _analytic(space_name: str, what: str, num_classes: int | None) -> Cost:
    return Cost(what, space_name, _terms(space_name, what, num_classes))


def _from_fields(space: SearchSpace, terms_ms, overhead_ms: float, source: str | None) -> Cost:
    from .measured import monotone_ns_terms, to_ns

    terms, note = monotone_ns_terms(terms_ms, space)
    return Cost("latency", space.name, terms, float(to_ns(overhead_ms)), source, note)


@functools.cache
def _latency_file(path: str, stamp: tuple[int, int]) -> Cost:
    from .measured import read_table

    doc = read_table(path, lambda sp: _terms(sp.name, "flops", None))
    return _from_fields(get_space(doc["space"]), doc["terms"], doc["overhead_ms"], path)


def _latency(space: SearchSpace, table) -> Cost:
    if table is None:
        raise ValueError(f"a latency cost needs a measured table: get_cost({space.name!r}, 'latency', table=PATH) "
                         f"(built by `shiftnas latency build --space {space.name}`)")
    if isinstance(table, (str, os.PathLike)):
        path = Path(table).resolve()
        if not path.is_file():
            raise ValueError(f"latency table {str(table)!r} does not exist (build one with `shiftnas latency build "
                             f"--space {space.name} --out {table}`)")
        st = path.stat()
        cost = _latency_file(str(path), (st.st_mtime_ns, st.st_size))
    elif all(hasattr(table, a) for a in ("space", "terms", "overhead_ms")):  # a LatencyTable
        cost = _from_fields(get_space(table.space), table.terms, table.overhead_ms, None)
    else:
        raise ValueError(f"table={table!r}: give a latency table's path or a LatencyTable")
    if cost.space != space.name:
        where = cost.source or "the latency table"
        raise ValueError(f"{where} is for space {cost.space!r}, not {space.name!r}: build one with "
                         f"`shiftnas latency build --space {space.name}`")
    return cost


def get_cost(space: SearchSpace | str, what: str = "flops", *, table=None, num_classes: int | None = None) -> Cost:
    """The `Cost` of `space`: 'flops' | 'params' (analytic), or 'latency' with `table` (a path
    to a `shiftnas latency build` file, or a `LatencyTable`). Cached: the same request (the same
    file, unchanged) gives the same object."""
    space = get_space(space)
    if what in ("flops", "params"):
        if table is not None:
            raise ValueError(f"table= is for the latency cost, not {what!r}")
        return _analytic(space.name, what, num_classes)
    if what == "latency":
        if num_classes is not None:
            raise ValueError("num_classes= is for the analytic costs; a latency table was measured with its own head")
        return _latency(space, table)
    raise ValueError(f"cost {what!r}; allowed: {', '.join(COSTS)}")


def as_cost(space: SearchSpace | str, what: str | Cost = "flops", num_classes: int | None = None) -> Cost:
    """`what` as a `Cost` of `space`: a name ('flops' / 'params') or a `Cost` (checked to be
    `space`'s)."""
    space = get_space(space)
    if isinstance(what, Cost):
        if what.space != space.name:
            raise ValueError(f"{what!r} is a cost of space {what.space!r}, not {space.name!r}")
        if num_classes is not None:
            raise ValueError("num_classes= applies to a cost name, not to a Cost (give it to get_cost)")
        return what
    if what == "latency":
        raise ValueError(f"what='latency' needs a measured table: pass get_cost({space.name!r}, 'latency', table=PATH)")
    if what not in ("flops", "params"):
        raise ValueError(f"what={what!r}; allowed: 'flops', 'params' or a Cost (get_cost)")
    return _analytic(space.name, what, num_classes)
