"""The generator's subnet against evolutionary search, per FLOPs bin, on compare_samplers' runs.

    python bench/generator_vs_search.py --runs runs/compare600/cnn-fmnist --space cnn-fmnist
    python bench/generator_vs_search.py --runs ... --generator shift_explore --search-on uniform,shift_explore

For every seed and bin k of the `--generator` run (a shift run, `<sampler>-s<seed>` in --runs):
  generator  its `ArchGenerator.generate(bin=k)`: no search, one decode
  search     `evolution_search` inside bin k's FLOPs window on each `--search-on` run, fitness
             = inherited top-1 on the first --fitness-images of minival (carved from train)
Every arch is then scored on the same first --eval-images of val, each on its own run's
supernet, so "generator - search(uniform)" compares the two pipelines (ShiftNAS's supernet +
generator vs a uniform supernet + search) and "generator - search(shift)" asks how far the
generator is from what a search finds on its own supernet. Paired per bin and seed; mean and
standard deviation over seeds; also the search's evaluations and wall time against the
generator's decode time. Reuses the runs; nothing is trained here.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS_DIR, new_doc, write_result


def search_settings(population: int, generations: int) -> dict:
    """A small evolution in AutoFormer's proportions (its own: population 50, 25 mutations, 25
    crossovers, 10 parents, 20 generations): by default 16 + 4 x 16 evaluations per bin."""
    return {"population": population, "mutations": population // 2, "crossovers": population // 2,
            "parents": max(1, population // 4), "generations": generations}


def _ms(xs: list[float]) -> dict:
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "n": len(xs)}


def seed_rows(args, seed: int) -> dict:
    """One seed: the generator's arch per bin and each search's, all scored on val."""
    from shiftnas.cost import count_flops
    from shiftnas.search import load_run
    from shiftnas.search.evolution import evolution_search
    from shiftnas.spaces import ArchConfig

    gen_run = load_run(Path(args.runs) / f"{args.generator}-s{seed}", device="cpu")
    gen = getattr(gen_run.trainer.sampler, "generator", None)
    if gen is None:
        raise SystemExit(f"{args.generator}-s{seed} has no generator (sampler {gen_run.trainer.sampler.name!r})")
    bins = gen.bins
    out = {"generator": [], "search": {}}
    for k in range(len(bins)):
        t0 = time.perf_counter()
        arch = gen.generate(bin=k)
        decode_s = time.perf_counter() - t0
        out["generator"].append({"bin": k, "mflops": count_flops(gen_run.space, arch) / 1e6, "decode_s": decode_s,
                                 "arch": arch.to_dict(),
                                 "top1": gen_run.evaluate(arch, "val", args.eval_images)["top1"]})
    for name in args.search_on:
        run = gen_run if name == args.generator else load_run(Path(args.runs) / f"{name}-s{seed}", device="cpu")
        rows = []
        for k in range(len(bins)):
            lo, hi = bins.window(k)
            res = evolution_search(run, flops_limit=hi, flops_min=lo, images=args.fitness_images,
                                   seed=seed, **search_settings(args.population, args.generations))
            arch = ArchConfig.from_dict(run.space.name, res["best"]["arch"])
            rows.append({"bin": k, "mflops": res["best"]["mflops"], "fitness": res["best"]["fitness"],
                         "evaluations": res["evaluations"], "wall_s": res["wall_s"], "arch": res["best"]["arch"],
                         "top1": run.evaluate(arch, "val", args.eval_images)["top1"]})
            print(f"[seed {seed}] search on {name} bin {k}: {rows[-1]['mflops']:.2f} MFLOPs, "
                  f"val top-1 {rows[-1]['top1']:.2f} (generator {out['generator'][k]['top1']:.2f}), "
                  f"{res['evaluations']} evaluations, {res['wall_s']:.0f} s", flush=True)
        out["search"][name] = rows
    return out


def summarise(per_seed: dict, search_on: list[str], n_bins: int) -> dict:
    seeds = sorted(per_seed)
    out = {}
    for name in search_on:
        diffs = [[per_seed[s]["generator"][k]["top1"] - per_seed[s]["search"][name][k]["top1"] for k in range(n_bins)]
                 for s in seeds]
        out[f"generator_minus_search_on_{name}"] = {
            "per_bin": [_ms([d[k] for d in diffs]) for k in range(n_bins)],
            "all_bins": _ms([statistics.fmean(d) for d in diffs]),
            "bins_generator_ahead": [sum(x > 0 for x in d) for d in diffs],
            "search_wall_s_per_bin": _ms([r["wall_s"] for s in seeds for r in per_seed[s]["search"][name]]),
            "search_evaluations_per_bin": _ms([r["evaluations"] for s in seeds for r in per_seed[s]["search"][name]]),
        }
    out["generator_decode_s"] = _ms([r["decode_s"] for s in seeds for r in per_seed[s]["generator"]])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True, help="a compare_samplers runs folder of one space (<sampler>-s<seed>)")
    ap.add_argument("--space", required=True)
    ap.add_argument("--generator", default="shift", help="the run label whose generator is scored")
    ap.add_argument("--search-on", default="uniform,shift", help="comma-separated run labels to search on")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--fitness-images", type=int, default=500)
    ap.add_argument("--eval-images", type=int, default=3000)
    ap.add_argument("--population", type=int, default=16)
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    args.search_on = [s for s in args.search_on.split(",") if s]
    out = args.out or str(RESULTS_DIR / f"generator_vs_search_{args.space}.json")
    import torch

    torch.set_num_threads(args.threads)
    doc = new_doc("generator_vs_search", settings={**vars(args), "evolution": search_settings(args.population, args.generations)}, seeds={})
    for seed in args.seeds:
        doc["seeds"][str(seed)] = seed_rows(args, seed)
        write_result(out, doc)  # partial results survive an interruption
    n_bins = len(doc["seeds"][str(args.seeds[0])]["generator"])
    doc["summary"] = summarise({int(s): v for s, v in doc["seeds"].items()}, args.search_on, n_bins)
    write_result(out, doc)
    for key, v in doc["summary"].items():
        if key.startswith("generator_minus"):
            a = v["all_bins"]
            print(f"{key}: all bins {a['mean']:+.2f} +- {a['std']:.2f} points; generator ahead in "
                  f"{v['bins_generator_ahead']} of {n_bins} bins per seed; search "
                  f"{v['search_wall_s_per_bin']['mean']:.0f} s per bin")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
