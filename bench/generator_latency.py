"""Latency budgets end to end: the generator's subnet per latency bin, timed against its budget.

    python bench/generator_latency.py --runs runs/latency/vit-lat-s0,runs/latency/vit-lat-s1
    python bench/generator_latency.py --runs R --budgets 0.9,1.2ms --repeats 30

For each run trained with `sampler.cost=latency` (its table: `sampler.latency_table`) and each
bin k, a user's budget "under X ms" with X = bin k's upper edge (floored to the microsecond;
`--budgets` gives others): `shiftnas.search.generate_latency(run, X)` is the generator's arch,
whose *predicted* latency (the table's) is at most X and at least one bin width below. That arch
is exported and timed end to end the way the table's own check times a subnet
(`shiftnas.latency.table.time_archs`: the table's batch and dtype, random weights, the table's
thread count), in `--passes` rounds over all archs (order reversed every other round) whose
medians' minimum is kept. Each sample is also paired
with one of the table's reference subnet (shiftnas/latency/table.py), which gives the time at
the pace the machine ran when the table was built (`measured_at_table_pace_ms`, the median
ratio times the table's `reference_arch_ms`): the machine's pace drifts by 10-20% within
minutes here, and a table cannot predict that drift.

Reported per arch: budget, predicted and measured ms, measured / budget, `under_budget`
(measured <= budget) and the prediction error; per run and over all runs: how many generated
subnets measured within their budget, the worst measured / budget, and the mean absolute
prediction error. A subnet over its budget by more than the table's error would show here: the
generator guarantees the prediction, the measurement says whether the prediction holds.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from harness import RESULTS_DIR, ForeignLoad, new_doc, write_result


def budgets_ms(run, given: list[float] | None) -> list[float]:
    """The budgets to ask for, in ms: `given`, or every bin's upper edge floored to the us."""
    if given:
        return given
    return [math.floor(e / 1e3) / 1e3 for e in run.bins.edges.tolist()[1:]]


def run_rows(run_dir: str, given: list[float] | None, passes: int, warmup: int, repeats: int) -> dict:
    """One run: the generator's arch for each budget, predicted and measured."""
    from shiftnas.latency.table import DTYPES, LatencyTable, time_archs
    from shiftnas.search import load_run
    from shiftnas.search.generate import generate_latency
    from shiftnas.spaces import ArchConfig

    run = load_run(run_dir, device="cpu")
    if run.cost_name != "latency":
        raise SystemExit(f"{run_dir}: trained with sampler.cost={run.cost_name}; this benchmark needs a latency run")
    table_path = run.cfg.sampler.latency_table
    table = LatencyTable.load(table_path)
    if table.machine["device"] != "cpu":
        raise SystemExit(f"{table_path}: built on {table.machine['device']!r}; this benchmark times on the CPU")
    differs = table.differences("cpu", table.machine["threads"])
    torch.set_num_threads(table.machine["threads"])
    gen = [generate_latency(run, ms) for ms in budgets_ms(run, given)]
    archs = [ArchConfig.from_dict(run.space.name, r["arch"]) for r in gen]
    timed = time_archs(run.space, archs, table.batch, torch.device("cpu"), DTYPES[table.dtype], warmup, repeats, passes)
    built = table.notes.get("reference_arch_ms")  # the reference subnet's time when the table was built
    rows = []
    for r, times, ratios in zip(gen, timed["ms"], timed["ratios"]):
        measured = min(times)
        at_table = statistics.median(ratios) * built if built else None
        rows.append({"budget_ms": r["budget_ms"], "bin": r["bin"], "short": r["short"], "arch": r["arch"],
                     "measured_at_table_pace_ms": at_table, "pass_ratio": ratios,
                     "under_budget_at_table_pace": None if at_table is None else at_table <= r["budget_ms"],
                     "predicted_ms": r["latency_ms"], "measured_ms": measured, "pass_ms": times,
                     "measured_over_budget": measured / r["budget_ms"], "under_budget": measured <= r["budget_ms"],
                     "predicted_within_window": r["within"],
                     "prediction_error_pct": (r["latency_ms"] - measured) / measured * 100})
        print(f"  {Path(run_dir).name} bin {r['bin']}: budget {r['budget_ms']:.3f} ms, predicted "
              f"{r['latency_ms']:.3f}, measured {measured:.3f} ({measured / r['budget_ms']:.3f}x)", flush=True)
    return {"run": str(run_dir), "table": str(table_path), "space": run.space.name, "batch": table.batch,
            "dtype": table.dtype, "threads": table.machine["threads"], "table_differs": differs,
            "rows": rows, "summary": summarize(rows)}


def summarize(rows: list[dict]) -> dict:
    """Counts and extremes over `rows` (one run, or all runs' rows together)."""
    ratio = [r["measured_over_budget"] for r in rows]
    err = [abs(r["prediction_error_pct"]) for r in rows]
    paced = [r for r in rows if r["measured_at_table_pace_ms"] is not None]
    at_table = {} if not paced else {
        "measured_at_table_pace_over_budget_max": max(r["measured_at_table_pace_ms"] / r["budget_ms"] for r in paced),
        "abs_prediction_error_at_table_pace_pct_mean": statistics.fmean(
            abs(r["predicted_ms"] / r["measured_at_table_pace_ms"] - 1) * 100 for r in paced)}
    return {"n": len(rows), "under_budget": sum(r["under_budget"] for r in rows),
            "under_budget_at_table_pace": sum(bool(r["under_budget_at_table_pace"]) for r in rows),
            "predicted_within_window": sum(r["predicted_within_window"] for r in rows),
            "measured_over_budget_max": max(ratio), "measured_over_budget_mean": statistics.fmean(ratio),
            "abs_prediction_error_pct_mean": statistics.fmean(err), "abs_prediction_error_pct_max": max(err),
            **at_table}


def parse_args(argv=None) -> argparse.Namespace:
    from shiftnas.search.budget import parse_latency

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", required=True, help="comma-separated run directories trained with sampler.cost=latency")
    ap.add_argument("--budgets", default=None,
                    help="comma-separated latency budgets (4ms, 900us; a number is ms); default: every bin's upper edge")
    ap.add_argument("--passes", type=int, default=2, help="timing passes per arch; the smallest median is kept")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", default=None, help="result JSON (default bench/results/generator_latency_<space>.json)")
    args = ap.parse_args(argv)
    if args.passes < 1:
        ap.error(f"--passes {args.passes}: must be >= 1")
    if args.repeats < 3 or args.warmup < 0:
        ap.error(f"--warmup {args.warmup} (>= 0), --repeats {args.repeats} (>= 3)")
    try:
        args.budget_list = [parse_latency(b.strip()) / 1e6 for b in args.budgets.split(",")] if args.budgets else None
    except ValueError as e:
        ap.error(str(e))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    with ForeignLoad() as load:
        per_run = [run_rows(r, args.budget_list, args.passes, args.warmup, args.repeats) for r in runs]
    spaces = sorted({r["space"] for r in per_run})
    doc = new_doc("generator_latency", what=__doc__.split("\n\n")[0],
                  settings={"passes": args.passes, "warmup": args.warmup, "repeats": args.repeats,
                            "budgets": "given" if args.budget_list else "each bin's upper edge"},
                  foreign_cpu_load=load.load, bench_seconds=round(load.seconds, 1),
                  runs=per_run, summary=summarize([row for r in per_run for row in r["rows"]]))
    out = Path(args.out) if args.out else RESULTS_DIR / f"generator_latency_{'+'.join(spaces)}.json"
    write_result(out, doc)
    s = doc["summary"]
    print(f"{s['under_budget']}/{s['n']} generated subnets measured within their budget "
          f"({s['under_budget_at_table_pace']}/{s['n']} at the table's pace; worst "
          f"{s['measured_over_budget_max']:.3f}x); prediction error mean {s['abs_prediction_error_pct_mean']:.1f}%, "
          f"max {s['abs_prediction_error_pct_max']:.1f}%; foreign load {load.load} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
