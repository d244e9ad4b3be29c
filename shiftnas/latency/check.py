"""How well a latency table predicts: random exported subnets timed end to end vs predicted."""
from __future__ import annotations

import random
import statistics
from collections.abc import Callable
from pathlib import Path

import torch

from ..search.ranking import kendall_tau
from ..spaces import get_space
from .table import DTYPES, LatencyTable, time_archs

__all__ = ["check_table", "plot_check"]


def check_table(table: LatencyTable, n: int = 50, seed: int = 1, device: str | None = None,
                warmup: int = 3, repeats: int = 15, progress: Callable[[str], None] | None = None,
                rounds: int = 3) -> dict:
    """Time `n` uniformly random subnets (seed `seed`: other archs than the table's calibration,
    which uses seed 0) at the table's batch and dtype; compare with `table.predict`.

    Every subnet is timed against the reference subnet (`probes.reference_arch`, sample by
    sample: table.py's module doc) once per round, `rounds` rounds, the order reversed every
    other round; its time is the median over the rounds of its ratio to the reference, times the
    reference's median time over the whole check (the check's pace). The table was built at the
    pace of its build (`notes["reference_arch_ms"]`): "pace_vs_table" is check / build, and
    "mape_pct_at_table_pace" compares at the build's pace (the model's error without the
    machine's drift since the build); "mape_pct" and "kendall_tau" are at the check's own pace.

    Returns {"mape_pct", "kendall_tau", "max_abs_pct", ..., "rows": [{arch, predicted_ms,
    measured_ms, rounds_ratio}]}.
    """
    if n < 2:
        raise ValueError(f"n={n!r}: need at least 2 subnets to compare")
    space = get_space(table.space)
    dev = torch.device(device or table.machine["device"])
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"the table was built on {table.machine['device']!r}; no CUDA device is visible here")
    torch.set_num_threads(table.machine["threads"])
    rng = random.Random(seed)
    archs = [space.sample(rng) for _ in range(n)]
    predicted = [table.predict(a) for a in archs]
    say = progress or (lambda s: None)
    timed = time_archs(space, archs, table.batch, dev, DTYPES[table.dtype], warmup, repeats, rounds,
                       lambda r, i, rec: say(f"[round {r + 1}/{rounds}, {i + 1}/{n}] measured {rec['ms']:.3f} ms, "
                                             f"predicted {predicted[i]:.3f} ms"))
    ratios, pace = timed["ratios"], timed["pace_ms"]
    built = table.notes.get("reference_arch_ms")
    rows = [{"arch": a.to_dict(), "predicted_ms": p, "measured_ms": statistics.median(t) * pace, "rounds_ratio": t}
            for a, p, t in zip(archs, predicted, ratios)]
    out = {"space": table.space, "batch": table.batch, "dtype": table.dtype, "n": n, "seed": seed, "rounds": rounds,
           **_errors(predicted, [r["measured_ms"] for r in rows]), "reference_ms": pace,
           "pace_vs_table": pace / built if built else None, "rows": rows}
    if built:
        out["mape_pct_at_table_pace"] = _errors(predicted, [statistics.median(t) * built for t in ratios])["mape_pct"]
    return out


def _errors(predicted: list[float], measured: list[float]) -> dict:
    err = [abs(p - m) / m * 100 for p, m in zip(predicted, measured)]
    return {"mape_pct": statistics.fmean(err), "max_abs_pct": max(err), "kendall_tau": kendall_tau(predicted, measured)}


def plot_check(result: dict, path: str | Path) -> Path:
    """Predicted vs measured scatter with the y = x line, MAPE and tau in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..atomic import atomic_write

    p = [r["predicted_ms"] for r in result["rows"]]
    m = [r["measured_ms"] for r in result["rows"]]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(m, p, s=14)
    lo, hi = min(p + m) * 0.95, max(p + m) * 1.05
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="measured ms (exported subnet)", ylabel="predicted ms (table)",
           title=f"{result['space']} batch {result['batch']}: MAPE {result['mape_pct']:.1f}%, "
                 f"tau {result['kendall_tau']:.3f}")
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    return path
