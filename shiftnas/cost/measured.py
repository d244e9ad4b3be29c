"""A measured latency table as a cost: reading its terms, and making them monotone.

`shiftnas latency build` (shiftnas/latency/) writes, for every entry of every FLOPs term of a
space, the measured milliseconds of the module that term counts, plus a fixed overhead. This
module reads that file without torch or the models (the cost model may not import them,
tests/test_layers.py), so `LatencyTable.load` and `get_cost(space, "latency", table=...)` share
one reader and one set of checks.

As a cost (`latency_cost`), a table is expressed in integer nanoseconds: every entry and the
overhead are rounded to the nearest ns (at most 0.5 ns each, far below the timing noise), so
sums are exact integers and the decoding's windows stay inclusive integer intervals, as for
FLOPs and parameters. The decoding (shiftnas/budget.py) needs a cost that never falls when a
choice's index rises; a measured table can (noise, or e.g. fewer heads timed slower). Each term
is replaced by its smallest monotone majorant: a cumulative maximum along every axis in turn
(the result is the max over all entries below in the product order, and stays monotone along
the axes done before). How much that raised the table is recorded in the cost's `notes`.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..spaces import SearchSpace, get_space
from .terms import CostTerm

__all__ = ["FORMAT", "NS_PER_MS", "make_monotone", "monotone_ns_terms", "read_table", "to_ns"]

FORMAT = "shiftnas-latency/1"
NS_PER_MS = 1_000_000


def read_table(path: str | os.PathLike, flops_terms) -> dict:
    """The fields of a latency table file, its terms checked against the space's FLOPs terms.

    `flops_terms(space)` gives the space's FLOPs `CostTerm`s (passed in: this module sits below
    `shiftnas.cost`'s `cost_terms`). Returns {"space", "batch", "dtype", "machine", "terms"
    (CostTerms in ms), "overhead_ms", "entries", "notes"}; a file of another format, or whose
    terms no longer match the space (the space changed since it was built), is a ValueError.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable latency table ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"{path}: format {got!r}; expected {FORMAT!r} (written by `shiftnas latency build`)")
    space = get_space(doc["space"])
    want = flops_terms(space)
    terms = []
    for i, (t, w) in enumerate(zip(doc["terms"], want)):
        if tuple(t["names"]) != w.names or tuple(t["shape"]) != w.shape:
            raise ValueError(f"{path}: term {i} is over {t['names']} {t['shape']}, but space {space.name!r} "
                             f"now has {list(w.names)} {list(w.shape)}: rebuild the table")
        vals = [float(v) for v in t["values_ms"]]
        if len(vals) != math.prod(w.shape) or not all(math.isfinite(v) and v >= 0 for v in vals):
            raise ValueError(f"{path}: term {i} needs {math.prod(w.shape)} finite values >= 0")
        terms.append(CostTerm(w.names, w.shape, tuple(vals)))
    if len(doc["terms"]) != len(want):
        raise ValueError(f"{path}: {len(doc['terms'])} terms, space {space.name!r} has {len(want)}: rebuild the table")
    overhead = float(doc["overhead_ms"])
    if not math.isfinite(overhead):
        raise ValueError(f"{path}: overhead_ms={doc['overhead_ms']!r} must be finite")
    return {"space": space.name, "batch": int(doc["batch"]), "dtype": doc["dtype"], "machine": doc["machine"],
            "terms": terms, "overhead_ms": overhead, "entries": doc.get("entries", {}), "notes": doc.get("notes", {})}


def to_ns(ms: float) -> int:
    """Milliseconds as whole nanoseconds (nearest)."""
    return round(ms * NS_PER_MS)


def make_monotone(term: CostTerm) -> CostTerm:
    """The smallest table >= `term` that never falls when one index rises (see module doc)."""
    v = list(term.values)
    for size, stride in zip(term.shape, term.strides):
        for i in range(len(v)):  # row-major: v[i - stride] is final before v[i] is read
            if (i // stride) % size > 0 and v[i - stride] > v[i]:
                v[i] = v[i - stride]
    return CostTerm(term.names, term.shape, tuple(v))


def monotone_ns_terms(terms_ms, space: SearchSpace) -> tuple[tuple[CostTerm, ...], dict]:
    """The terms in whole ns, made monotone; and the correction's size: {"entries_raised",
    "entries", "max_raise_ms" (the largest single raise), "max_arch_raise_ms" (a bound on how
    much any arch's predicted latency rose: the sum over terms of their largest raise)}."""
    out, raised, total, worst, arch_bound = [], 0, 0, 0, 0
    for t in terms_ms:
        ns = CostTerm(t.names, t.shape, tuple(float(to_ns(x)) for x in t.values))
        mono = make_monotone(ns)
        ups = [b - a for a, b in zip(ns.values, mono.values)]
        raised += sum(u > 0 for u in ups)
        total += len(ups)
        worst = max(worst, max(ups, default=0.0))
        arch_bound += max(ups, default=0.0)
        out.append(mono)
    note = {"space": space.name, "entries_raised": raised, "entries": total,
            "max_raise_ms": worst / NS_PER_MS, "max_arch_raise_ms": arch_bound / NS_PER_MS}
    return tuple(out), note
