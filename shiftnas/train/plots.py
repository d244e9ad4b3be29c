"""Figures of a run: the FLOPs-bin sampling distribution over training and the accuracy/FLOPs front.

matplotlib is imported inside the functions (with the non-interactive Agg backend), never when
`shiftnas` is imported. Every figure is written atomically: to a temporary file in the target's
directory, then `os.replace`d over the target, so a reader never sees a half-written image.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_pareto", "plot_run", "plot_sampling"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    """Write `fig` to `path` atomically (format from the suffix, PNG when there is none)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix[1:].lower() or "png"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format=fmt, dpi=120, bbox_inches="tight")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a plot is as readable as any output
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def plot_sampling(
    history: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    centers_mflops: Sequence[float] | None = None,
    title: str | None = None,
) -> Path:
    """Bin probabilities softmax(B) vs training step: one line per bin, dashed uniform 1/K.

    `history`: dicts {"step": int, "probs": [K floats]}. With an empty history only the
    uniform line is drawn (K = len(centers_mflops)). Returns the written path.
    """
    centers = None if centers_mflops is None else [float(c) for c in centers_mflops]
    steps: list[int] = []
    probs: list[list[float]] = []
    for i, h in enumerate(history):
        if not isinstance(h, Mapping) or "step" not in h or "probs" not in h:
            raise ValueError(f"plot_sampling: history[{i}] must be a dict with 'step' and 'probs'")
        p = [float(v) for v in h["probs"]]
        if probs and len(p) != len(probs[0]):
            raise ValueError(
                f"plot_sampling: history[{i}] has {len(p)} probabilities, earlier entries {len(probs[0])}"
            )
        steps.append(int(h["step"]))
        probs.append(p)
    if probs:
        k = len(probs[0])
        if k == 0:
            raise ValueError("plot_sampling: 'probs' is empty; expected one probability per bin")
        if centers is not None and len(centers) != k:
            raise ValueError(
                f"plot_sampling: {len(centers)} bin centres given for {k} bin probabilities"
            )
    else:
        if not centers:
            raise ValueError(
                "plot_sampling: empty history and no centers_mflops; cannot tell the number of bins"
            )
        k = len(centers)

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    try:
        order = sorted(range(len(steps)), key=lambda i: steps[i])
        xs = [steps[i] for i in order]
        cmap = plt.get_cmap("viridis")
        for b in range(k if probs else 0):
            label = f"bin {b}" + (f" ({centers[b]:.2f} MFLOPs)" if centers is not None else "")
            color = cmap(b / max(k - 1, 1))
            ax.plot(
                xs,
                [probs[i][b] for i in order],
                marker="." if len(xs) < 30 else None,
                color=color,
                label=label,
            )
        ax.axhline(1.0 / k, color="gray", linestyle="--", linewidth=1, label=f"uniform 1/{k}")
        if not probs:
            ax.text(
                0.5,
                0.6,
                "no updates of B yet",
                transform=ax.transAxes,
                ha="center",
                va="center",
                color="gray",
            )
            ax.set_xlim(0, 1)
        ax.set_ylim(0, max([1.0 / k] + [max(p) for p in probs]) * 1.1)
        ax.set_xlabel("step")
        ax.set_ylabel("P(bin) = softmax(B)")
        ax.set_title(title or "FLOPs-bin sampling distribution")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_pareto(
    rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str | None = None
) -> Path:
    """Top-1 (%) vs MFLOPs, one series per row "source", points joined in MFLOPs order.

    `rows`: `evaluate.arch_row` dicts with "top1". Bin edges ("lo_mflops"/"hi_mflops"), when
    present, are drawn as light vertical lines. Returns the written path.
    """
    if not rows:
        raise ValueError("plot_pareto: no rows to plot")
    series: dict[str, list[tuple[float, float]]] = {}
    edges: set[float] = set()
    for i, r in enumerate(rows):
        try:
            x, y = float(r["mflops"]), float(r["top1"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"plot_pareto: rows[{i}] needs numeric 'mflops' and 'top1', got keys {sorted(r)}"
            ) from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ValueError(f"plot_pareto: rows[{i}] has non-finite mflops/top1 ({x}, {y})")
        series.setdefault(str(r.get("source", "")), []).append((x, y))
        for key in ("lo_mflops", "hi_mflops"):
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
        ax.set_xlabel("MFLOPs (multiply-accumulates)")
        ax.set_ylabel("top-1 (%)")
        ax.set_title(title or "top-1 vs FLOPs")
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
    centers = summary["bins"]["centers_mflops"]
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
    plot_sampling(history, sampling_png, centers_mflops=centers, title=title)
    if summary["rows"]:
        plot_pareto(summary["rows"], pareto_png, title=f"{summary['space']} / {summary['sampler']}: inherited top-1")
