"""Per-bin inherited top-1 of a trained run, re-measured on a chosen split.

    run = load_run("runs/demo-shift")
    evaluate_run(run, split="val", max_images=2000)   # writes <run>/evaluate.json + plots/pareto-evaluate.png

The rows are those of `Trainer.evaluate` (summary.json): per bin of the run's cost (FLOPs, or
`sampler.cost`: for latency the bins, rows, table and Pareto x axis are in ms), the generator's
arch for the bin centre (shift runs) and, when asked, one fixed-seed random arch per bin
(`bin_archs`, seed 0), so a ShiftNAS run and its baselines are judged on the same subnets.
summary.json is left as training wrote it.
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Any

from .run import add_run_arguments

__all__ = ["PARETO_PNG", "add_evaluate_parser", "evaluate_run"]

# evaluate's figure, beside (not over) the plots/pareto.png that training wrote
PARETO_PNG = "plots/pareto-evaluate.png"


def evaluate_run(run, split: str = "val", max_images: int | None = None,
                 random_archs: bool | None = None) -> dict[str, Any]:
    """Per-bin top-1 of `run` on the first `max_images` of `split` (all when None).

    `random_archs` (default: the run's `eval.random_archs`; always for runs without a
    generator) adds one fixed-seed random arch per bin. Writes `<run>/evaluate.json` and
    `<run>/plots/pareto-evaluate.png` (PARETO_PNG); returns what evaluate.json holds.
    """
    from ..atomic import write_json_atomic
    from ..train.checkpoint import safe_path
    from ..train.evaluate import arch_row, bin_archs, bins_record
    from ..train.plots import plot_pareto

    if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
        raise ValueError(f"max_images={max_images!r} must be a positive integer (or None: the whole split)")
    # before any work: the outputs stay in the run directory (a symlink out of it is refused)
    out_json, out_plot = safe_path(run.run_dir, "evaluate.json"), safe_path(run.run_dir, PARETO_PNG)
    gen = run.generator
    if random_archs is None:
        random_archs = bool(run.cfg.eval.random_archs)
    random_archs = random_archs or gen is None  # a baseline has nothing else to evaluate
    run.loader(split)  # a missing split fails before any work

    def row(arch, k: int, source: str) -> dict[str, Any]:
        metrics = run.evaluate(arch, split, max_images=max_images)
        return arch_row(run.space, arch, run.bins, k, source, metrics, num_classes=run.num_classes)

    rows = []
    t0 = time.perf_counter()
    if gen is not None:
        for k in range(len(run.bins)):
            rows.append(row(gen.generate(bin=k), k, "generator"))
    if random_archs:
        for e in bin_archs(run.space, run.bins, seed=0):
            if e["hit"]:
                rows.append(row(e["arch"], e["bin"], "random"))
    result = {
        "run": run.cfg.run.name,
        "checkpoint": run.checkpoint.name,
        "space": run.space.name,
        "sampler": run.sampler_name,
        "split": split,
        "images_per_arch": rows[0]["images"] if rows else 0,
        "eval_s": round(time.perf_counter() - t0, 2),
        "bins": bins_record(run.bins),  # as summary.json: edges_mflops, or edges + unit (e.g. ms) + cost
        "rows": rows,
    }
    write_json_atomic(out_json, result)
    if rows:
        plot_pareto(rows, out_plot,
                    title=f"{run.space.name} / {run.sampler_name}: inherited top-1 ({split})")
    return result


def _cmd_evaluate(args) -> int:
    from ..train.evaluate import format_bin_table
    from .run import load_run

    if args.max_images is not None and args.max_images < 1:
        raise ValueError(f"--max-images {args.max_images}: must be >= 1 (omit it for the whole split)")
    run = load_run(args.run, checkpoint=args.checkpoint, device=args.device)
    result = evaluate_run(run, args.split, args.max_images)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['run']} ({result['sampler']}, {result['checkpoint']}): {result['split']}, "
          f"{result['images_per_arch']} images per arch, {result['eval_s']:.1f} s")
    print(format_bin_table(result["rows"]))
    print(f"wrote {run.run_dir / 'evaluate.json'}")
    if result["rows"]:
        print(f"wrote {run.run_dir / PARETO_PNG} (training's plots/pareto.png is left as it was)")
    return 0


def add_evaluate_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``evaluate`` to a ``shiftnas`` sub-parser set."""
    p = subparsers.add_parser(
        "evaluate",
        help="per-bin inherited top-1 of a trained run",
        description=(
            "Evaluate a trained run per bin of its cost (FLOPs, or e.g. latency in ms for a run trained\n"
            "with sampler.cost=latency): the generator's subnet for each bin centre\n"
            "(shift runs) and, when the run's eval.random_archs is set (always for baselines), one\n"
            "fixed-seed random subnet per bin, with the supernet's (EMA) weights; CNN subnets get\n"
            "their BatchNorm statistics recalibrated first. Writes RUN/evaluate.json and\n"
            "RUN/plots/pareto-evaluate.png (summary.json and plots/pareto.png are left as training\n"
            "wrote them).\n\n"
            "examples:\n"
            "  shiftnas evaluate --run runs/fmnist-vit-shift\n"
            "  shiftnas evaluate --run runs/fmnist-cnn-shift --split minival --max-images 2000"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(p)
    p.add_argument("--split", default="val", help="folder of the run's data root to evaluate on (default: val)")
    p.add_argument("--max-images", type=int, default=None, metavar="N",
                   help="evaluate each subnet on the first N images of the split (default: all)")
    p.add_argument("--json", action="store_true", help="print evaluate.json's content as one JSON object")
    p.set_defaults(fn=_cmd_evaluate)
    return p
