"""Is the sampler verdict of bench/compare_samplers.py stable in the run length?

    python bench/ranking_stability.py bench/results/compare_samplers_vit.json \\
        bench/results/compare_samplers_vit_600.json --out bench/results/ranking_stability_vit.json

Reads two or more compare_samplers results (the same space, run at different `--steps`) and
reports, per run length: every sampler's all-bin paired difference from uniform (mean +- std over
seeds), the order of the samplers by it, and in how many seeds that order holds. Between each
pair of lengths, for the samplers both ran (matched by name; `--same A=B` pairs two names, e.g.
a variant at one length with the default at the other; the shorter run's own B is then left
out): whether their order agrees, and
Kendall's tau-b (`shiftnas.search.ranking.kendall_tau`) of the per-arch mean differences (the same panel archs at both lengths: does the
sampler help the same archs?). A verdict is called stable when the order of the samplers is the
same at the two longest lengths.
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS_DIR, new_doc, write_result

from shiftnas.search.ranking import kendall_tau


def length_summary(doc: dict, space: str) -> dict:
    d = doc["spaces"][space]
    seeds = [str(s) for s in d["seeds"]]
    ver = d["verdict"]
    out = {"steps": doc["settings"]["steps"], "seeds": d["seeds"],
           "all_bins": {s: v["all_bins"] for s, v in ver.items()},
           "per_arch_mean": {s: [a["mean"] for a in v["per_arch"]] for s, v in ver.items()}}
    mean = {s: v["all_bins"]["mean"] for s, v in ver.items()} | {"uniform": 0.0}  # paired: uniform is 0
    order = sorted(mean, key=lambda s: -mean[s])
    out["order"] = order
    # the same order within each seed: every sampler's all-bin difference for that seed
    idx = [i for i, p in enumerate(d["panel"]) if p["name"].startswith("bin")]
    held = 0
    for seed in seeds:
        u = d["evals"]["uniform"][seed]["top1"]
        per = {s: statistics.fmean(d["evals"][s][seed]["top1"][i] - u[i] for i in idx) for s in ver}
        per["uniform"] = 0.0
        held += sorted(per, key=lambda s: -per[s]) == order
    out["order_holds_in_seeds"] = f"{held}/{len(seeds)}"
    return out


def compare(a: dict, b: dict, same: dict[str, str]) -> dict:
    replaced = set(same.values())  # --same A=B: the shorter run's own B is not the longer run's B
    names = [(s, same.get(s, s)) for s in a["all_bins"]
             if same.get(s, s) in b["all_bins"] and (s in same or s not in replaced)]
    a_of_b = {y: x for x, y in names}
    order_a = [s for s in a["order"] if s in dict(names) or s == "uniform"]
    mapped_b = [a_of_b.get(s, s) for s in b["order"] if s in a_of_b or s == "uniform"]
    return {
        "steps": [a["steps"], b["steps"]], "samplers": [f"{x}={y}" if x != y else x for x, y in names],
        "order": [order_a, [same.get(s, s) for s in mapped_b]], "order_agrees": order_a == mapped_b,
        "per_arch_kendall_tau": {f"{x}={y}" if x != y else x: round(kendall_tau(a["per_arch_mean"][x], b["per_arch_mean"][y]), 3)
                                 for x, y in names},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", nargs="+", help="compare_samplers JSON files, any order")
    ap.add_argument("--space", default=None, help="the space (default: the one space all files share)")
    ap.add_argument("--same", action="append", default=[], metavar="A=B",
                    help="sampler A of the shorter run is sampler B of the longer (repeatable)")
    ap.add_argument("--out", default=str(RESULTS_DIR / "ranking_stability.json"))
    args = ap.parse_args(argv)
    if len(args.results) < 2:
        ap.error(f"{len(args.results)} result file(s): give two or more of different --steps")
    docs = [json.loads(Path(p).read_text()) for p in args.results]
    spaces = set.intersection(*(set(d["spaces"]) for d in docs))
    space = args.space or (next(iter(spaces)) if len(spaces) == 1 else None)
    if space not in spaces:
        ap.error(f"--space {args.space!r}: the files share {sorted(spaces)}; name one of them")
    same = dict(p.split("=", 1) for p in args.same)
    lengths = sorted((length_summary(d, space) for d in docs), key=lambda x: x["steps"])
    pairs = [compare(x, y, same) for x, y in itertools.pairwise(lengths)]
    doc = new_doc("bench/ranking_stability.py", settings={"results": args.results, "space": space, "same": same},
                  space=space, lengths=lengths, pairs=pairs, stable=pairs[-1]["order_agrees"])
    for x in lengths:
        print(f"{x['steps']} steps: " + ", ".join(f"{s} {v['mean']:+.2f}+-{v['std']:.2f}" for s, v in x["all_bins"].items())
              + f"; order {' > '.join(x['order'])} (holds in {x['order_holds_in_seeds']} seeds)")
    for p in pairs:
        print(f"{p['steps'][0]} -> {p['steps'][1]} steps: order agrees: {p['order_agrees']}; "
              f"per-arch Kendall tau {p['per_arch_kendall_tau']}")
    write_result(args.out, doc)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
