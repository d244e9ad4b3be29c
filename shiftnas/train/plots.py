"""Figures of a run: the FLOPs-bin sampling distribution over training and the accuracy/FLOPs front.

matplotlib is imported inside the functions (with the non-interactive Agg backend), never when
`shiftnas` is imported. Every figure is written with `shiftnas.atomic.atomic_write`, so a reader
never sees a half-written image.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..atomic import atomic_write

__all__ = ["plot_pareto", "plot_run", "plot_sampling", "sampling_grid"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    """Write `fig` to `path` with `atomic_write` (format from the suffix, PNG when there is none)."""
    path = Path(path)
    fmt = path.suffix[1:].lower() or "png"
    return atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=120, bbox_inches="tight"))


def _sampling_history(history: Sequence[Mapping[str, Any]], centers: list[float] | None,
                      counts: Sequence[int] | None) -> tuple[int, list[int], list[list[float]]]:
    """(K, steps ascending, probs per step) of plot_sampling's arguments, checked."""
    entries: list[tuple[int, list[float]]] = []
    for i, h in enumerate(history):
        if not isinstance(h, Mapping) or "step" not in h or "probs" not in h:
            raise ValueError(f"plot_sampling: history[{i}] must be a dict with 'step' and 'probs'")
        p = [float(v) for v in h["probs"]]
        if entries and len(p) != len(entries[0][1]):
            raise ValueError(
                f"plot_sampling: history[{i}] has {len(p)} probabilities, earlier entries {len(entries[0][1])}"
            )
        entries.append((int(h["step"]), p))
    if entries:
        k = len(entries[0][1])
        if k == 0:
            raise ValueError("plot_sampling: 'probs' is empty; expected one probability per bin")
        if centers is not None and len(centers) != k:
            raise ValueError(f"plot_sampling: {len(centers)} bin centres given for {k} bin probabilities")
    elif centers:
        k = len(centers)
    else:
        raise ValueError("plot_sampling: empty history and no centers_mflops; cannot tell the number of bins")
    if counts is not None and len(counts) != k:
        raise ValueError(f"plot_sampling: {len(counts)} bin counts given for {k} bins")
    entries.sort(key=lambda e: e[0])
    return k, [e[0] for e in entries], [e[1] for e in entries]


def sampling_grid(steps: Sequence[int], probs: Sequence[Sequence[float]]) -> tuple[list[float], list[list[float]]]:
    """The heat map of plot_sampling: x edges (entry t holds from its step to the next one's; the
    last for the median gap, or 1) and rows[b][t] = K * probs[t][b] (1 = uniform)."""
    gaps = sorted(b - a for a, b in itertools.pairwise(steps))
    last = gaps[len(gaps) // 2] if gaps and gaps[len(gaps) // 2] > 0 else 1
    edges = [float(x) for x in steps] + [float(steps[-1] + last)] if steps else []
    k = len(probs[0]) if probs else 0
    return edges, [[k * p[b] for p in probs] for b in range(k)]


def plot_sampling(
    history: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    centers_mflops: Sequence[float] | None = None,
    title: str | None = None,
    counts: Sequence[int] | None = None,
    unit: str = "MFLOPs",
    cost: str = "flops",
) -> Path:
    """Bin probabilities over training as a heat map (bins x steps, colour = K * P(bin): white at
    uniform, red above, blue below), and beside it bars of the last entry's P(bin) and of the
    share of draws per bin (`counts`, when given) against the uniform 1/K.

    `history`: dicts {"step": int, "probs": [K floats]}, e.g. softmax(B) at every update. With an
    empty history only the bars are drawn (K = len(centers_mflops)). `unit`: the centres' unit
    and `cost` the cost binned (a run binned by latency gives "ms" and "latency"). Returns the written path.
    """
    from matplotlib.colors import TwoSlopeNorm

    centers = None if centers_mflops is None else [float(c) for c in centers_mflops]
    k, steps, probs = _sampling_history(history, centers, counts)
    edges, grid = sampling_grid(steps, probs)
    plt = _pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(9, 0.9 + 0.32 * max(k, 6)), sharey=True,
                                 gridspec_kw={"width_ratios": [3, 1], "wspace": 0.15})
    try:
        if probs:
            flat = [v for row in grid for v in row]
            norm = TwoSlopeNorm(vcenter=1.0, vmin=min(min(flat), 0.99), vmax=max(max(flat), 1.01))
            mesh = ax.pcolormesh(edges, [b - 0.5 for b in range(k + 1)], grid, cmap="RdBu_r", norm=norm)
            fig.colorbar(mesh, ax=[ax, bx], pad=0.02, label="P(bin) x K  (1 = uniform)")
        else:
            ax.text(0.5, 0.5, "no updates of B yet", transform=ax.transAxes, ha="center", va="center", color="gray")
        ax.set_ylim(-0.5, k - 0.5)
        ax.set_yticks(range(k))
        tick = (lambda c: f"{c:.1f}M") if unit == "MFLOPs" else (lambda c: f"{c:.3g} {unit}")
        ax.set_yticklabels([f"{b}" + (f" ({tick(centers[b])})" if centers is not None else "") for b in range(k)],
                           fontsize=7)
        ax.set_xlabel("step")
        what = "FLOPs" if cost == "flops" else cost
        ax.set_ylabel(f"{what} bin (centre, {unit})" if centers is not None else f"{what} bin")
        ax.set_title(title or "FLOPs-bin sampling distribution", fontsize=10)
        ys = list(range(k))
        if probs:
            bx.barh([y - 0.2 for y in ys], probs[-1], height=0.4, color="tab:red", label=f"P(bin), step {steps[-1]}")
        if counts is not None and sum(counts) > 0:
            bx.barh([y + 0.2 for y in ys], [c / sum(counts) for c in counts], height=0.4, color="tab:gray",
                    label=f"share of {sum(counts):,} draws")
        bx.axvline(1.0 / k, color="black", linestyle="--", linewidth=1, label=f"uniform 1/{k}")
        bx.set_xlabel("probability")
        bx.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18))
        bx.grid(axis="x", alpha=0.3)
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_pareto(
    rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str | None = None
) -> Path:
    """Top-1 (%) vs MFLOPs, one series per row "source", points joined in MFLOPs order; rows of
    a run binned by another cost ("cost_unit", e.g. ms for latency) are plotted against that
    cost ("cost", edges "lo_cost"/"hi_cost") instead.

    `rows`: `evaluate.arch_row` dicts with "top1". Bin edges ("lo_mflops"/"hi_mflops"), when
    present, are drawn as light vertical lines. Returns the written path.
    """
    if not rows:
        raise ValueError("plot_pareto: no rows to plot")
    unit = next((r["cost_unit"] for r in rows if "cost_unit" in r), None)
    xkey, lo, hi = ("mflops", "lo_mflops", "hi_mflops") if unit is None else ("cost", "lo_cost", "hi_cost")
    series: dict[str, list[tuple[float, float]]] = {}
    edges: set[float] = set()
    for i, r in enumerate(rows):
        try:
            x, y = float(r[xkey]), float(r["top1"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"plot_pareto: rows[{i}] needs numeric '{xkey}' and 'top1', got keys {sorted(r)}"
            ) from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ValueError(f"plot_pareto: rows[{i}] has non-finite {xkey}/top1 ({x}, {y})")
        series.setdefault(str(r.get("source", "")), []).append((x, y))
        for key in (lo, hi):
            if isinstance(r.get(key), (int, float)):
                edges.add(float(r[key]))

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        for e in sorted(edges):
            ax.axvline(e, color="gray", alpha=0.2, linewidth=0.8)
        markers = "osD^v<>p*"
        for j, (source, pts) in enumerate(sorted(series.items())):
            pts.sort()
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker=markers[j % len(markers)],
                label=source or "(no source)",
            )
        xlabel = {None: "MFLOPs (multiply-accumulates)", "ms": "predicted latency (ms)"}.get(unit, unit)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("top-1 (%)")
        ax.set_title(title or f"top-1 vs {'FLOPs' if unit is None else xlabel}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_run(summary: Mapping[str, Any], sampling: Mapping[str, Any], sampling_png: str | os.PathLike,
             pareto_png: str | os.PathLike) -> None:
    """The two figures of a finished training run from its summary.json and sampling.json: the
    learned softmax(B) at every update (shift) or the sampled bin frequency per logging window
    (the other samplers), and the inherited top-1 front (when there are evaluated rows)."""
    bins = summary["bins"]
    centers = bins["centers_mflops"] if "centers_mflops" in bins else bins["centers"]
    unit = bins.get("unit", "MFLOPs")
    cost = bins.get("cost", {}).get("name", "flops")  # bins_record: "cost" is absent for FLOPs
    k = len(centers)
    if "final_probs" in summary:  # a learned distribution: softmax(B) at every update
        history = [{"step": 0, "probs": [1.0 / k] * k}] + [
            {"step": r["step"], "probs": r["probs"]} for r in sampling["updates"]
        ]
        title = "ShiftNAS: softmax(B) over training"
    else:  # the empirical bin frequencies per logging window
        history = [
            {"step": w["step"], "probs": [c / max(1, sum(w["counts"])) for c in w["counts"]]}
            for w in sampling["windows"]
        ]
        title = f"{summary['sampler']}: sampled bin frequency per window"
    plot_sampling(history, sampling_png, centers_mflops=centers, title=title, counts=sampling.get("counts"),
                  unit=unit, cost=cost)
    if summary["rows"]:
        plot_pareto(summary["rows"], pareto_png, title=f"{summary['space']} / {summary['sampler']}: inherited top-1")
