"""Is the generator exact about budgets? Bin hit rate and budget error, per space and seed.

An untrained `ArchGenerator` (random weights: what it emits owes nothing to learning) per space
and seed: the arg-max arch of every bin and `--samples` Gumbel samples per bin (tau 5, nearly
uniform choices among the feasible ones) must land in their bin; `--budgets` random budgets
drawn uniformly from [F_min, F_max + one bin width] must give a subnet at most the budget and
at least one bin width below it. Also the decode time per arch.

    python bench/generator_budget.py                  # -> bench/results/generator_budget.json
    python bench/generator_budget.py --spaces vit-fmnist --seeds 0 --budgets 100
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch

from shiftnas.cost import count_flops
from shiftnas.generator import ArchGenerator


def measure(space: str, seed: int, n_bins: int, samples: int, budgets: int) -> dict:
    torch.manual_seed(seed)
    g = ArchGenerator(space, n_bins=n_bins)
    rng = torch.Generator().manual_seed(seed)
    hits_argmax = hits_sampled = n_sampled = 0
    t0 = time.perf_counter()
    for k in range(n_bins):
        hits_argmax += g.bins.bin_of(count_flops(space, g.generate(bin=k))) == k
        for _ in range(samples):
            s = g(g.bin_vector(k), tau=5.0, rng=rng)
            hits_sampled += g.bins.bin_of(count_flops(space, s.hard())) == k
            n_sampled += 1
    t1 = time.perf_counter()
    r, width = random.Random(seed), g.bins.width()
    over = below = 0
    rel = []
    for _ in range(budgets):
        b = r.uniform(g.bins.lo, g.bins.hi + width)
        f = count_flops(space, g.generate(b))
        over += f > b
        below += f < b - width
        rel.append((f - b) / b)
    t2 = time.perf_counter()
    return {
        "space": space, "seed": seed, "n_bins": n_bins,
        "bins_hit_argmax": hits_argmax, "samples_in_bin": hits_sampled, "samples": n_sampled,
        "budgets": budgets, "budgets_exceeded": over, "more_than_a_bin_below": below,
        "rel_error": {"min": min(rel), "median": statistics.median(rel), "max": max(rel)} if rel else None,
        "ms_per_decode": {"bins": 1e3 * (t1 - t0) / (n_bins * (1 + samples)),
                          "budgets": 1e3 * (t2 - t1) / max(1, budgets)},
    }


def main() -> None:
    from harness import new_doc, write_result

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spaces", nargs="+", default=["vit-fmnist", "cnn-fmnist", "autoformer-t", "cnn-bignas"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--small-spaces", nargs="*", default=["vit-fmnist", "cnn-fmnist"],
                    help="spaces run at every seed; the others at the first seed only (time)")
    ap.add_argument("--n-bins", type=int, default=10)
    ap.add_argument("--samples", type=int, default=10, help="Gumbel samples per bin")
    ap.add_argument("--budgets", type=int, default=1000)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "generator_budget.json"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    doc = new_doc("generator_budget", args=vars(a), rows=[])
    rows = doc["rows"]
    for space in a.spaces:
        for seed in (a.seeds if space in a.small_spaces else a.seeds[:1]):
            row = measure(space, seed, a.n_bins, a.samples, a.budgets)
            rows.append(row)
            print(f"{space:13s} seed {seed}: bins hit {row['bins_hit_argmax']}/{a.n_bins} (arg-max), "
                  f"{row['samples_in_bin']}/{row['samples']} (Gumbel); budgets exceeded "
                  f"{row['budgets_exceeded']}/{a.budgets}, more than a bin below {row['more_than_a_bin_below']}; "
                  f"rel. error {row['rel_error']['min']:+.3f}..{row['rel_error']['max']:+.3f}; "
                  f"{row['ms_per_decode']['budgets']:.1f} ms/decode", flush=True)
        # after every space: a long run that is stopped keeps what it measured
        write_result(a.out, doc)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
