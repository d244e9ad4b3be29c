"""Samplers compared at equal budgets on Fashion-MNIST: uniform, sandwich, attentive, bin_uniform
and shift (ShiftNAS), then the generator against evolutionary search on the shift run.

    python bench/compare_samplers.py                  # train (or resume) all five, then evaluate
    python bench/compare_samplers.py --phase train    # only the training runs
    python bench/compare_samplers.py --phase eval     # only the evaluation of finished runs

Equal budgets: every run has the same config apart from `sampler.name` (configs/fmnist-vit-*.yaml:
same seed, steps, batch, lr schedule, data order), so each sees the same images; samplers that
train several subnets per step (sandwich, attentive) spend more compute on them, which the
training-time columns show. Each run is a `train.py` subprocess (its wall time and CPU time are
measured); a finished run is not retrained, an interrupted one resumes.

Evaluation per run (inherited weights, no retraining):
- per-bin top-1 on `--eval-images` val images: the generator's subnet per bin (shift) and one
  fixed-seed random subnet per bin (every sampler, the same archs for all);
- Kendall tau / Spearman between inherited and fine-tuned top-1 over `--rank-n` archs;
- shift run only: the generator vs evolutionary search (fitness = inherited minival top-1) at
  three budgets (bin centres at ~20/50/80%), top-1 on val, constraint error, wall time.

Writes bench/results/compare_samplers.json, compare_samplers.png, and prints the table.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # for _common
from _common import git_commit, git_dirty, loadavg, machine, write_json

RESULTS = ROOT / "bench" / "results"
SAMPLERS = ("uniform", "sandwich", "attentive", "bin_uniform", "shift")
CONFIG = {"uniform": "fmnist-vit-uniform", "sandwich": "fmnist-vit-sandwich", "attentive": "fmnist-vit-attentive",
          "bin_uniform": "fmnist-vit-binuniform", "shift": "fmnist-vit-shift"}


def _finished(run_dir: Path, steps: int) -> bool:
    p = run_dir / "summary.json"
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text())["steps"] >= steps
    except (ValueError, KeyError):
        return False


def _times_path(out: Path, s: str) -> Path:
    return out / f"{s}.train_time.json"


def load_times(out: Path, samplers) -> dict:
    """{sampler: timing} of the finished training runs (one file per run, so runs may train in
    parallel processes: `--phase train --samplers X`)."""
    return {s: json.loads(_times_path(out, s).read_text()) for s in samplers if _times_path(out, s).is_file()}


def train_all(args, samplers) -> dict:
    """Train (or resume) each sampler's run; returns {sampler: timing}."""
    out = Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    times = load_times(out, samplers)
    for s in samplers:
        run_dir = out / s
        if _finished(run_dir, args.steps) and s in times:
            print(f"[train] {s}: finished earlier ({times[s]['wall_s']:.0f} s)", flush=True)
            continue
        cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs" / f"{CONFIG[s]}.yaml"),
               "--resume", "auto", f"run.out_dir={out}", f"run.name={s}", f"run.seed={args.seed}",
               f"optim.steps={args.steps}", f"data.batch_size={args.batch}", "eval.max_images=2000",
               "run.progress=false", "run.device=cpu"]
        print(f"[train] {s}: {' '.join(cmd[1:])}", flush=True)
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        load0 = loadavg()
        t0 = time.perf_counter()
        with open(out / f"{s}.log", "a") as log:
            rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
        wall = time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if rc != 0:
            raise SystemExit(f"[train] {s} failed with exit code {rc}; see {out / f'{s}.log'}")
        cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        prev = times.get(s, {"wall_s": 0.0, "cpu_s": 0.0, "segments": 0})
        times[s] = {"wall_s": prev["wall_s"] + wall, "cpu_s": prev["cpu_s"] + cpu, "segments": prev["segments"] + 1,
                    "loadavg_before": load0, "loadavg_after": loadavg()}
        _times_path(out, s).write_text(json.dumps(times[s], indent=1))
        print(f"[train] {s}: {wall:.0f} s wall, {cpu:.0f} s CPU", flush=True)
    return times


def _bin_stats(rows: list[dict], source: str) -> dict:
    r = sorted((x for x in rows if x["source"] == source), key=lambda x: x["bin"])
    if not r:
        return {}
    return {"min_bin": r[0]["top1"], "max_bin": r[-1]["top1"], "mean": sum(x["top1"] for x in r) / len(r),
            "per_bin": [{"bin": x["bin"], "mflops": x["mflops"], "top1": x["top1"]} for x in r]}


def evaluate_all(args, samplers, times) -> dict:
    from shiftnas.search import load_run
    from shiftnas.search.evaluate import evaluate_run
    from shiftnas.search.evolution import evolution_search
    from shiftnas.search.generate import generate_arch
    from shiftnas.search.ranking import rank_correlation

    out = Path(args.runs)
    settings = {k: getattr(args, k) for k in ("steps", "batch", "seed", "eval_images", "rank_n", "finetune_steps",
                                               "rank_images", "generations", "evo_images")}
    results = {}
    for s in samplers:
        run_dir = out / s
        if not _finished(run_dir, args.steps):
            raise SystemExit(f"[eval] {s}: run {run_dir} is not finished; run --phase train first")
        cache = out / f"{s}.eval.json"  # one file per run: runs may be evaluated in parallel processes
        if cache.is_file():
            cached = json.loads(cache.read_text())
            if cached.get("settings") == settings:
                print(f"[eval] {s}: evaluated earlier ({cache})", flush=True)
                results[s] = cached["entry"]
                continue
        run = load_run(run_dir, device="cpu")
        t0 = time.perf_counter()
        ev = evaluate_run(run, split="val", max_images=args.eval_images, random_archs=True)
        print(f"[eval] {s}: per-bin top-1 in {time.perf_counter() - t0:.0f} s", flush=True)
        t0 = time.perf_counter()
        rk = rank_correlation(run, n=args.rank_n, finetune_steps=args.finetune_steps, seed=0,
                              images=args.rank_images, split="val", write=True)
        print(f"[eval] {s}: Kendall tau {rk['kendall_tau']:.3f}, Spearman {rk['spearman']:.3f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        entry = {
            "train": times.get(s), "random": _bin_stats(ev["rows"], "random"),
            "generator": _bin_stats(ev["rows"], "generator"), "eval_images": ev["images_per_arch"],
            "rank": {k: rk[k] for k in ("n", "finetune_steps", "images", "kendall_tau", "spearman", "wall_s")},
            "rank_archs": rk["archs"],
        }
        summary = json.loads((run_dir / "summary.json").read_text())
        if "final_probs" in summary:
            entry["final_probs"] = summary["final_probs"]
        if s == "shift":
            entry["generator_vs_evolution"] = generator_vs_evolution(args, run, generate_arch, evolution_search)
        results[s] = entry
        write_json(cache, {"settings": settings, "entry": entry})
    return results


def generator_vs_evolution(args, run, generate_arch, evolution_search) -> list[dict]:
    from shiftnas.spaces import ArchConfig

    K = len(run.bins)
    centers = run.bins.centers.tolist()
    rows = []
    for k in (K // 5, K // 2, (4 * K) // 5):
        budget = centers[k]
        t0 = time.perf_counter()
        g = generate_arch(run, budget)
        g_s = time.perf_counter() - t0
        g_arch = ArchConfig.from_dict(run.space.name, g["arch"])
        g_top1 = run.evaluate(g_arch, "val", args.eval_images)["top1"]
        e = evolution_search(run, flops_limit=budget, generations=args.generations, images=args.evo_images,
                             split="minival", seed=0, log=lambda *a: print("   ", *a, flush=True))
        e_arch = ArchConfig.from_dict(run.space.name, e["best"]["arch"])
        e_top1 = run.evaluate(e_arch, "val", args.eval_images)["top1"]
        rows.append({
            "bin": k, "budget_mflops": budget / 1e6,
            "generator": {"mflops": g["mflops"], "top1": g_top1, "constraint_error": g["rel_error"],
                          "wall_s": g_s, "short": g["short"]},
            "evolution": {"mflops": e["best"]["mflops"], "top1": e_top1, "minival_fitness": e["best"]["fitness"],
                          "constraint_error": e.get("constraint_error"), "wall_s": e["wall_s"],
                          "evaluations": e["evaluations"], "short": e["best"]["short"]},
        })
        print(f"[evo] budget {budget / 1e6:.1f}M: generator {g['mflops']:.1f}M {g_top1:.2f}% ({g_s:.2f} s) | "
              f"evolution {e['best']['mflops']:.1f}M {e_top1:.2f}% ({e['wall_s']:.0f} s, {e['evaluations']} evals)",
              flush=True)
    return rows


def table(results: dict) -> str:
    lines = ["| sampler | min bin | max bin | mean over bins | Kendall tau | Spearman | train wall s | train CPU s |",
             "|---|---|---|---|---|---|---|---|"]
    for s, e in results.items():
        for src in ("random", "generator"):
            st = e.get(src)
            if not st:
                continue
            name = s if src == "random" else f"{s} (generator's subnets)"
            tr = e.get("train") or {}
            lines.append(f"| {name} | {st['min_bin']:.2f} | {st['max_bin']:.2f} | {st['mean']:.2f} | "
                         f"{e['rank']['kendall_tau']:.3f} | {e['rank']['spearman']:.3f} | "
                         f"{tr.get('wall_s', float('nan')):.0f} | {tr.get('cpu_s', float('nan')):.0f} |")
    gve = results.get("shift", {}).get("generator_vs_evolution")
    if gve:
        lines += ["", "| budget MFLOPs | generator MFLOPs / top-1 / error / s | evolution MFLOPs / top-1 / error / s |",
                  "|---|---|---|"]
        for r in gve:
            g, e = r["generator"], r["evolution"]
            lines.append(f"| {r['budget_mflops']:.1f} | {g['mflops']:.1f} / {g['top1']:.2f} / {100 * g['constraint_error']:+.1f}% "
                         f"/ {g['wall_s']:.2f} | {e['mflops']:.1f} / {e['top1']:.2f} / "
                         f"{100 * (e['constraint_error'] or 0):+.1f}% / {e['wall_s']:.0f} ({e['evaluations']} evals) |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(12, 4.5))
    for s, e in results.items():
        for src, ls in (("random", "-"), ("generator", "--")):
            st = e.get(src)
            if st:
                ax[0].plot([p["mflops"] for p in st["per_bin"]], [p["top1"] for p in st["per_bin"]], ls, marker="o",
                           label=s if src == "random" else f"{s} (generator)")
    ax[0].set_xlabel("MFLOPs")
    ax[0].set_ylabel("inherited top-1 (%)")
    ax[0].set_title("per-bin subnets, inherited weights")
    ax[0].legend(fontsize=8)
    names = list(results)
    ax[1].bar(names, [results[s]["rank"]["kendall_tau"] for s in names])
    ax[1].set_ylabel("Kendall tau (inherited vs fine-tuned)")
    ax[1].set_title("ranking correlation")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phase", choices=("all", "train", "eval"), default="all")
    ap.add_argument("--samplers", default=",".join(SAMPLERS), help="comma-separated subset of %(default)s")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "compare"), help="parent of the run dirs (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-images", type=int, default=10000, help="val images per subnet (default: %(default)s)")
    ap.add_argument("--rank-n", type=int, default=15)
    ap.add_argument("--finetune-steps", type=int, default=40)
    ap.add_argument("--rank-images", type=int, default=2000)
    ap.add_argument("--generations", type=int, default=5, help="evolution generations (default: %(default)s)")
    ap.add_argument("--evo-images", type=int, default=500, help="minival images per fitness evaluation")
    ap.add_argument("--out", default=str(RESULTS / "compare_samplers.json"))
    ap.add_argument("--only-cache", action="store_true",
                    help="with --phase eval: evaluate into RUNS/<sampler>.eval.json only (no table, JSON or plot)")
    args = ap.parse_args(argv)
    samplers = [s for s in args.samplers.split(",") if s]
    bad = [s for s in samplers if s not in SAMPLERS]
    if bad:
        ap.error(f"--samplers: unknown {bad}; allowed: {', '.join(SAMPLERS)}")
    for k in ("steps", "batch", "eval_images", "rank_n", "rank_images", "generations", "evo_images"):
        if getattr(args, k) < 1:
            ap.error(f"--{k.replace('_', '-')} must be >= 1, got {getattr(args, k)}")
    times = train_all(args, samplers) if args.phase in ("all", "train") else load_times(Path(args.runs), samplers)
    if args.phase == "eval" and args.only_cache:
        evaluate_all(args, samplers, times)
        return 0
    if args.phase == "train":
        return 0
    results = evaluate_all(args, samplers, times)
    doc = {
        "benchmark": "compare_samplers", "git": {"commit": git_commit(), "dirty": git_dirty()},
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "settings": {k: getattr(args, k) for k in ("steps", "batch", "seed", "eval_images", "rank_n", "finetune_steps",
                                                     "rank_images", "generations", "evo_images")},
        "space": "vit-fmnist", "data": "Fashion-MNIST (55k train / 5k minival / 10k val)",
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, doc)
    plot(results, out.with_suffix(".png"))
    print("\n" + table(results))
    print(f"\nwrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
