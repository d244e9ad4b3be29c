"""Samplers compared on Fashion-MNIST, several seeds, on a fixed evaluation panel no sampler proposes.

    python bench/compare_samplers.py                                   # vit-fmnist + cnn-fmnist, 3 seeds
    python bench/compare_samplers.py --spaces vit-fmnist --seeds 0 1 --steps 300
    python bench/compare_samplers.py --samplers uniform,bin_uniform,shift,sandwich --phase train

Runs: every (space, sampler, seed) is a `train.py` subprocess on the space's Fashion-MNIST
config (configs/fmnist-vit-shift.yaml or fmnist-cnn-shift.yaml) with only `sampler.name` and
`run.seed` changed, fp32 (`optim.amp=off`: the same on every CPU). Uniform, bin_uniform and
shift train one subnet per step; sandwich and attentive train n_random + 2 = 4, so they get a
quarter of the steps: equal subnet gradients (`--equal-steps` gives them the same steps). A
finished run is not retrained; an interrupted one resumes.

Evaluation panel (the same for every run): the min and max subnets plus two archs per bin at
its 25% and 75% FLOPs positions, drawn by feasibility-masked decoding with uniformly random
choices into a window of +-1% of a bin width around the position (no sampler proposes these),
(widened where no arch costs that close), each evaluated with inherited weights on the same `--eval-images` val images. Shift runs also
evaluate the generator's arch of every bin.

Report: per arch and seed, top-1 minus uniform's (paired: same seed, same arch, same images),
then mean and standard deviation over seeds; per bin (the mean of its two panel archs), the
bottom and top bins and the all-bin mean as headlines; sampled-bin histograms and softmax(B)
over time. Writes bench/results/compare_samplers.json and .png.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS_DIR as RESULTS
from harness import ROOT, new_doc, write_figure, write_json, write_result

SAMPLERS = ("uniform", "bin_uniform", "shift", "sandwich", "attentive")
# Variants: a label -> (sampler, config overrides). shift_full: Eq. 9 at full width (the task
# loss reaches every candidate); shift_m1: see below; *_warm: in-place distillation after a
# labels-only warm-up of 30% of the steps, ramped in over the next 20%.
VARIANTS = {
    "shift_full": ("shift", ["generator.grad_path=full"]),
    # the probability shift with a fifth of the paper's total movement of B (shift.movement
    # 5.6 -> 1.1): a short run has few updates of B, each a large step on a noisy estimate
    "shift_m1": ("shift", ["shift.movement=1.1"]),
    # generator.explore: the fraction of the steps on a random arch inside the drawn bin
    # (shift_explore = the default since it was measured; shift_paper = the paper's sampler)
    "shift_explore": ("shift", ["generator.explore=0.5"]),
    "shift_paper": ("shift", ["generator.explore=0"]),
    # B's estimator "rate" (the loss change per unit of sampling share); `shift` runs the default, delta
    "shift_rate": ("shift", ["shift.estimator=rate"]),
    "sandwich_warm": ("sandwich", ["sampler.distill_warmup_frac=0.3", "sampler.distill_ramp_frac=0.2"]),
    "attentive_warm": ("attentive", ["sampler.distill_warmup_frac=0.3", "sampler.distill_ramp_frac=0.2"]),
}
CONFIG = {"vit-fmnist": "fmnist-vit-shift", "cnn-fmnist": "fmnist-cnn-shift"}
SUBNETS_PER_STEP = {"sandwich": 4, "attentive": 4}  # max + n_random (2) + min


def panel(space_name: str, n_bins: int, seed: int = 0) -> list[dict]:
    """min, max and two archs per bin at 25% / 75% of the bin's FLOPs span."""
    from shiftnas.budget import feasibility
    from shiftnas.cost import FlopsBins, count_flops
    from shiftnas.spaces import get_space

    space, bins, feas = get_space(space_name), FlopsBins(space_name, n_bins=n_bins), feasibility(space_name)
    rng = random.Random(seed)
    out = [{"name": "min", "bin": 0, "arch": space.min()}, {"name": "max", "bin": n_bins - 1, "arch": space.max()}]
    w = bins.width()
    for k in range(n_bins):
        for q in (0.25, 0.75):
            pos = float(bins.edges[k]) + q * w
            half = 0.01 * w  # widened (doubling) only where no arch costs within +-1%
            while not any(feas.mask(feas.start(), int(pos - half), int(pos + half))):
                half *= 2
            lo, hi = int(pos - half), int(pos + half)
            st = feas.start()
            for _ in space.decisions:
                feas.commit(st, rng.choice([c for c, ok in enumerate(feas.mask(st, lo, hi)) if ok]))
            idx = {d.name: c for d, c in zip(space.decisions, st.chosen)}
            out.append({"name": f"bin{k}@{int(q * 100)}%", "bin": k, "arch": space.from_indices(idx)})
    for p in out:
        p["mflops"] = count_flops(space, p["arch"]) / 1e6
    return out


def train(args, space: str, sampler: str, seed: int) -> dict:
    out = Path(args.runs) / space
    name = f"{sampler}-s{seed}"
    run_dir = out / name
    base, overrides = VARIANTS.get(sampler, (sampler, []))
    steps = args.steps if args.equal_steps else args.steps // SUBNETS_PER_STEP.get(base, 1)
    summary = run_dir / "summary.json"
    if summary.is_file() and json.loads(summary.read_text()).get("steps") == steps:
        timed = out / f"{name}.time"  # absent when the run finished outside this script
        return {"run": str(run_dir), "steps": steps, "wall_s": json.loads(timed.read_text()) if timed.is_file() else None}
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs" / f"{CONFIG[space]}.yaml"),
           "--resume", "auto", f"run.out_dir={out}", f"run.name={name}", f"run.seed={seed}",
           f"sampler.name={base}", *overrides, f"optim.steps={steps}", f"optim.warmup_steps={max(1, steps // 10)}",
           f"data.batch_size={args.batch}",
           "optim.amp=off", "run.progress=false", "run.device=cpu", "eval.max_images=500",
           "eval.random_archs=false", "run.tensorboard=false"]
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(out / f"{name}.log", "a") as log:
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    if rc != 0:
        raise SystemExit(f"[train] {space}/{name} failed (exit {rc}); see {out / f'{name}.log'}")
    wall = time.perf_counter() - t0
    write_json(out / f"{name}.time", wall)
    print(f"[train] {space}/{name}: {steps} steps, {wall:.0f} s", flush=True)
    return {"run": str(run_dir), "steps": steps, "wall_s": wall}


def evaluate(args, space: str, info: dict, archs: list[dict]) -> dict:
    """Top-1 of every panel arch (and the generator's, for shift runs) on the run's final weights;
    cached in the run dir, keyed by the panel and the number of images."""
    key = {"panel": [[p["name"], round(p["mflops"], 6)] for p in archs], "eval_images": args.eval_images}
    cache = Path(info["run"]) / "compare_eval.json"
    doc = json.loads(cache.read_text()) if cache.is_file() else {}
    fresh = doc.get("key") != key
    res = _evaluate(args, space, info, archs) if fresh else doc["result"]
    if "generator" in res and "diversity" not in res:  # newer than some caches: filled in
        res["diversity"], fresh = diversity(info["run"]), True
    if fresh:
        write_json(cache, {"key": key, "result": res})
    return res


DIVERSITY_DRAWS = 60


def diversity(run_dir: str, draws: int = DIVERSITY_DRAWS) -> list[dict]:
    """`generator_diversity` of a run's final generator."""
    from shiftnas.search import load_run

    return generator_diversity(load_run(run_dir, device="cpu").trainer.sampler.generator, draws)


def generator_diversity(gen, draws: int = DIVERSITY_DRAWS, seed: int = 0) -> list[dict]:
    """How many distinct archs `gen` emits per bin in `draws` training draws (hard Gumbel
    samples: arg-max of logits + noise, whatever the temperature), and the most frequent one's
    share: few distinct archs mean that the supernet trains few subnets there."""
    import collections

    import torch

    rng = torch.Generator().manual_seed(seed)
    out = []
    with torch.no_grad():
        for k in range(gen.n_bins):
            seen = collections.Counter(gen(gen.bin_vector(k), rng=rng).hard() for _ in range(draws))
            out.append({"bin": k, "distinct": len(seen), "modal_share": seen.most_common(1)[0][1] / draws})
    return out


def _evaluate(args, space: str, info: dict, archs: list[dict]) -> dict:
    from shiftnas.search import load_run

    run = load_run(info["run"], device="cpu")
    top1 = [run.evaluate(p["arch"], "val", args.eval_images)["top1"] for p in archs]
    res = {"top1": top1}
    gen = getattr(run.trainer.sampler, "generator", None)
    if gen is not None:
        res["generator"] = [{"bin": k, "mflops": 0.0, "top1": run.evaluate(a, "val", args.eval_images)["top1"]}
                            for k, a in enumerate(gen.generate(bin=k) for k in range(len(run.bins)))]
        from shiftnas.cost import count_flops
        for r in res["generator"]:
            r["mflops"] = count_flops(space, gen.generate(bin=r["bin"])) / 1e6
    sampling = json.loads((Path(info["run"]) / "sampling.json").read_text())
    res["bin_counts"] = sampling["counts"]
    res["probs"] = [u["probs"] for u in sampling.get("updates", [])]
    return res


def _ms(xs: list[float]) -> dict:
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "n": len(xs)}


def verdict(pan: list[dict], evals: dict, seeds: list[int], n_bins: int) -> dict:
    """Paired differences from uniform: per arch, per bin and over all bins, mean +- std over seeds."""
    out = {}
    for s, per_seed in evals.items():
        if s == "uniform":
            continue
        diffs = {seed: [a - b for a, b in zip(per_seed[seed]["top1"], evals["uniform"][seed]["top1"])]
                 for seed in seeds}
        per_bin = []
        for k in range(n_bins):
            idx = [i for i, p in enumerate(pan) if p["bin"] == k and p["name"].startswith("bin")]
            per_bin.append(_ms([statistics.fmean(diffs[seed][i] for i in idx) for seed in seeds]))
        idx_bins = [i for i, p in enumerate(pan) if p["name"].startswith("bin")]
        out[s] = {
            "per_arch": [_ms([diffs[seed][i] for seed in seeds]) for i in range(len(pan))],
            "per_bin": per_bin, "bottom_bin": per_bin[0], "top_bin": per_bin[-1],
            "all_bins": _ms([statistics.fmean(diffs[seed][i] for i in idx_bins) for seed in seeds]),
            "min_subnet": _ms([diffs[seed][0] for seed in seeds]), "max_subnet": _ms([diffs[seed][1] for seed in seeds]),
        }
        if all("generator" in per_seed[seed] for seed in seeds):  # the generator's arch vs the panel's, same run
            gvp = [[per_seed[seed]["generator"][k]["top1"]
                    - statistics.fmean(per_seed[seed]["top1"][i] for i, p in enumerate(pan)
                                       if p["bin"] == k and p["name"].startswith("bin")) for k in range(n_bins)]
                   for seed in seeds]
            out[s]["generator_vs_panel"] = {"per_bin": [_ms([g[k] for g in gvp]) for k in range(n_bins)],
                                            "all_bins": _ms([statistics.fmean(g) for g in gvp])}
    return out


def table(space: str, ver: dict, evals: dict, seeds: list[int]) -> str:
    lines = [f"{space}: top-1 minus uniform's (points; mean +- std over seeds {seeds})",
             "| sampler | bottom bin | top bin | all bins | min subnet | max subnet | uniform all-bin top-1 |",
             "|---|---|---|---|---|---|---|"]
    u = _ms([statistics.fmean(evals["uniform"][s]["top1"][2:]) for s in seeds])
    lines.append(f"| uniform | 0 | 0 | 0 | 0 | 0 | {u['mean']:.2f} +- {u['std']:.2f} |")
    for s, v in ver.items():
        f = lambda m: f"{m['mean']:+.2f} +- {m['std']:.2f}"
        lines.append(f"| {s} | {f(v['bottom_bin'])} | {f(v['top_bin'])} | {f(v['all_bins'])} | "
                     f"{f(v['min_subnet'])} | {f(v['max_subnet'])} | |")
    for s, v in ver.items():
        if "generator_vs_panel" in v:
            g = v["generator_vs_panel"]
            lines.append(f"{s}: generator's arch minus the bin's panel archs (same run): all bins "
                         f"{g['all_bins']['mean']:+.2f} +- {g['all_bins']['std']:.2f}; per bin "
                         + " ".join(f"{b['mean']:+.1f}" for b in g["per_bin"]))
    for s, per_seed in evals.items():
        if all("diversity" in r for r in per_seed.values()):
            lines.append(f"{s}: distinct archs in {DIVERSITY_DRAWS} generator draws per bin, per seed: " + "; ".join(
                " ".join(str(d["distinct"]) for d in per_seed[x]["diversity"]) for x in seeds))
    return "\n".join(lines)


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spaces = list(doc["spaces"])
    fig, ax = plt.subplots(len(spaces), 3, figsize=(16, 4.2 * len(spaces)), squeeze=False)
    for row, space in enumerate(spaces):
        d = doc["spaces"][space]
        K = d["n_bins"]
        for s, v in d["verdict"].items():
            m = [b["mean"] for b in v["per_bin"]]
            e = [b["std"] for b in v["per_bin"]]
            ax[row][0].errorbar(range(K), m, yerr=e, marker="o", capsize=3, label=s)
        ax[row][0].axhline(0, color="k", lw=0.8)
        ax[row][0].set(xlabel="FLOPs bin", ylabel="top-1 minus uniform (points)", title=f"{space}: panel, paired")
        ax[row][0].legend(fontsize=8)
        for s, per_seed in d["evals"].items():
            counts = [sum(per_seed[str(x)]["bin_counts"][k] for x in d["seeds"]) for k in range(K)]
            tot = max(1, sum(counts))
            ax[row][1].plot(range(K), [c / tot for c in counts], marker=".", label=s)
        ax[row][1].set(xlabel="FLOPs bin", ylabel="fraction of trained subnets", title="sampled bins")
        ax[row][1].legend(fontsize=8)
        for seed in d["seeds"]:
            probs = d["evals"].get("shift", {}).get(str(seed), {}).get("probs", [])
            if probs:
                im = [[p[k] for p in probs] for k in range(K)]
                for k in range(K):
                    ax[row][2].plot(im[k], color=plt.cm.viridis(k / max(1, K - 1)), lw=0.8,
                                    label=f"bin {k}" if seed == d["seeds"][0] else None)
        ax[row][2].set(xlabel="update of B", ylabel="softmax(B)", title="shift: softmax(B) per bin (all seeds)")
        ax[row][2].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    write_figure(fig, path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phase", choices=("all", "train"), default="all")
    ap.add_argument("--spaces", nargs="+", default=list(CONFIG), choices=list(CONFIG))
    ap.add_argument("--samplers", default="uniform,bin_uniform,shift", help=f"comma-separated, from {SAMPLERS + tuple(VARIANTS)}")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--equal-steps", action="store_true", help="sandwich/attentive: the same steps, not a quarter")
    ap.add_argument("--eval-images", type=int, default=3000)
    ap.add_argument("--n-bins", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the training runs and the evaluation")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "compare"))
    ap.add_argument("--out", default=str(RESULTS / "compare_samplers.json"))
    args = ap.parse_args(argv)
    samplers = [s for s in args.samplers.split(",") if s]
    known = SAMPLERS + tuple(VARIANTS)
    if "uniform" not in samplers or any(s not in known for s in samplers):
        ap.error(f"--samplers must include uniform and come from {known}, got {samplers}")
    import torch

    torch.set_num_threads(args.threads)
    doc = new_doc("compare_samplers", settings=vars(args), spaces={})
    for space in args.spaces:
        runs = {s: {} for s in samplers}
        for seed in args.seeds:  # seed-major: an interrupted sweep leaves whole seeds
            for s in samplers:
                runs[s][seed] = train(args, space, s, seed)
        if args.phase == "train":
            continue
        pan = panel(space, args.n_bins)
        evals = {s: {seed: evaluate(args, space, runs[s][seed], pan) for seed in args.seeds} for s in samplers}
        ver = verdict(pan, evals, args.seeds, args.n_bins)
        print("\n" + table(space, ver, evals, args.seeds), flush=True)
        doc["spaces"][space] = {
            "n_bins": args.n_bins, "seeds": args.seeds,
            "panel": [{"name": p["name"], "bin": p["bin"], "mflops": p["mflops"], "arch": p["arch"].to_dict()} for p in pan],
            "runs": {s: {str(k): v for k, v in r.items()} for s, r in runs.items()},
            "evals": {s: {str(k): v for k, v in r.items()} for s, r in evals.items()},
            "verdict": ver,
        }
        write_result(args.out, doc)
    if args.phase == "all":
        plot(doc, Path(args.out).with_suffix(".png"))
        print(f"wrote {args.out} and {Path(args.out).with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
