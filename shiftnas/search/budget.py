"""Budgets on the command line: `25M`, `1.3G`, `900k` or a plain number of multiply-adds."""
from __future__ import annotations

import math
import re

__all__ = ["format_budget", "parse_budget"]

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


def format_budget(flops: float) -> str:
    """25000000 -> '25.0M', 1.3e9 -> '1.30G'."""
    if flops >= 1e9:
        return f"{flops / 1e9:.2f}G"
    return f"{flops / 1e6:.1f}M"
