"""Budgets on the command line: `25M`, `1.3G`, `900k` or a plain number of multiply-adds."""
from __future__ import annotations

import math
import re

__all__ = ["format_budget", "parse_budget", "parse_latency"]

_UNITS = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}
_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmg]?)(?:flops|macs)?\s*$", re.IGNORECASE)


def parse_budget(text: str | float, lo: float | None = None, hi: float | None = None,
                 what: str = "--flops") -> float:
    """Multiply-adds from `25M` / `1.3G` / `900k` / `25000000` (case-insensitive; an optional
    trailing `FLOPs`/`MACs`). With `lo`/`hi`, a budget outside [lo, hi] is an error that gives
    the range. `what` names the option in errors; for a `...params` option the messages count
    parameters instead of multiply-adds."""
    unit = "parameters" if "param" in what else "multiply-adds"
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        m = _RE.match(str(text))
        if not m:
            raise ValueError(
                f"{what} {text!r}: not a budget; write a number of {unit} with an optional "
                "unit k/M/G, e.g. 25M, 1.3G, 900k or 25000000"
            )
        value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} {text!r}: a budget must be a positive finite number of {unit}")
    if lo is not None and hi is not None and not lo <= value <= hi:
        raise ValueError(
            f"{what} {text!r} = {format_budget(value)} is outside this space's range "
            f"{format_budget(lo)} .. {format_budget(hi)} (smallest to largest subnet)"
        )
    return value


_TIME_UNITS = {"": 1e6, "ms": 1e6, "us": 1e3, "s": 1e9}  # -> nanoseconds; a plain number is ms
_TIME_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*(ms|us|s)?\s*$", re.IGNORECASE)


def parse_latency(text: str | float, lo: float | None = None, hi: float | None = None,
                  what: str = "--latency", table: str | None = None) -> float:
    """Nanoseconds (the latency cost's unit) from `4ms` / `4000us` / `0.004s` / `4` (a plain
    number is milliseconds). With `lo`/`hi` (ns), a budget outside [lo, hi] is an error that
    gives the range in ms (and the latency `table` that predicts it, when given)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text) * 1e6
    else:
        m = _TIME_RE.match(str(text))
        if not m:
            raise ValueError(f"{what} {text!r}: not a latency; write a time with an optional unit ms/us/s, "
                             "e.g. 4ms, 4000us, 0.004s or 4 (milliseconds)")
        value = float(m.group(1)) * _TIME_UNITS[(m.group(2) or "").lower()]
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} {text!r}: a latency budget must be a positive finite time")
    if lo is not None and hi is not None and not lo <= value <= hi:
        by = "its table's prediction" if table is None else f"predicted by latency table {str(table)!r}"
        raise ValueError(f"{what} {text!r} = {value / 1e6:.3f} ms is outside this run's latency range "
                         f"{lo / 1e6:.3f} .. {hi / 1e6:.3f} ms (smallest to largest subnet, {by})")
    return value


def format_budget(flops: float) -> str:
    """25000000 -> '25.0M', 1.3e9 -> '1.30G'."""
    if flops >= 1e9:
        return f"{flops / 1e9:.2f}G"
    return f"{flops / 1e6:.1f}M"
