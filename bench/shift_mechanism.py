"""Does the probability shift move B towards the under-trained bins? (docs/method.md section 3)

The paper's own validation plan: "verify that the sampling distribution shifts towards the
subnets with high-performance variance". Phase 1 trains a supernet only on archs of the lower
half of the FLOPs bins (or, mirrored, the upper half); phase 2 trains it with the shift sampler
(uniform B at the start, no warm-up) and updates B. A working estimator moves softmax(B)'s
mass to the half phase 1 left out; an estimator without signal leaves it near 1/2.

    python bench/shift_mechanism.py                       # 3 seeds x {lower, upper} x {delta, rate, literal}
    python bench/shift_mechanism.py --seeds 0 --estimators delta --phase1 100 --phase2 100

Writes bench/results/shift_mechanism.json (per run: softmax(B) after every update, the mass on
the half phase 1 left out, the bins drawn in phase 2, seconds). Every estimator of a (half,
seed) starts phase 2 from the same phase-1 supernet. `run_mechanism` is also what
tests/sampling/test_shift_mechanism.py runs at a small scale.
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
import torch.nn.functional as F

from shiftnas.models.registry import build_supernet
from shiftnas.sampling import ShiftSampler, StepContext, sample_in_bin
from shiftnas.sampling.shift import shift_lr


def load_images(root: Path, split: str, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `n` images of `root/split` in a fixed shuffled order, as two tensors."""
    from shiftnas.data import build_loader

    loader = build_loader(root, split, min(n, 256), 28, train=True, augment=False, backend="torch",
                          num_threads=1, seed=seed, channels=1)
    xs, ys = [], []
    for x, y in loader:
        xs.append(x)
        ys.append(y)
        if sum(len(t) for t in ys) >= n:
            break
    return torch.cat(xs)[:n], torch.cat(ys)[:n]


def train_phase1(train: tuple[torch.Tensor, torch.Tensor], *, space: str = "vit-fmnist", half: str = "lower",
                 seed: int = 0, n_bins: int = 10, phase1: int = 200, batch: int = 64, lr: float = 1e-3) -> dict:
    """Phase 1: `phase1` steps on random archs of the `half` ("lower" | "upper") of the bins.
    Returns the state phase 2 starts from (supernet, optimizer and batch RNG), to share across
    estimators."""
    from shiftnas.cost import make_bins

    torch.manual_seed(seed)
    rng = random.Random(seed)
    net = build_supernet(space).train()
    bins = make_bins(space, n_bins)  # the shift sampler's bins
    first = list(range(n_bins // 2)) if half == "lower" else list(range(n_bins // 2, n_bins))
    x_all, y_all = train
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.05)
    t0 = time.perf_counter()
    for _ in range(phase1):
        arch = sample_in_bin(net.space, bins, rng.choice(first), rng).arch
        i = torch.randint(0, len(x_all), (batch,), generator=g)
        loss = F.cross_entropy(net(x_all[i], arch), y_all[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return {"space": space, "half": half, "seed": seed, "n_bins": n_bins, "phase1": phase1, "batch": batch,
            "lr": lr, "net": copy.deepcopy(net.state_dict()), "opt": copy.deepcopy(opt.state_dict()),
            "g": g.get_state(), "seconds": round(time.perf_counter() - t0, 1)}


def run_mechanism(
    train: tuple[torch.Tensor, torch.Tensor],
    minival: tuple[torch.Tensor, torch.Tensor],
    *,
    space: str = "vit-fmnist",
    half: str = "lower",
    estimator: str = "delta",
    seed: int = 0,
    n_bins: int = 10,
    phase1: int | dict = 200,
    phase2: int = 200,
    update_every: int = 10,
    batch: int = 64,
    lr: float = 1e-3,
    movement: float = 5.6,
    max_lr: float = float("inf"),
    probe_stride: int = 1,
) -> dict:
    """Phase 1 on the `half` ("lower" | "upper") of the bins, phase 2 with the shift sampler.

    `phase1`: its number of steps, or the state `train_phase1` returned (then shared: the
    same trained supernet for every estimator). Returns softmax(B) after every update
    ("trajectory"), the final mass on the other half ("mass_untrained_half") and the seconds
    each phase took.
    """
    start = phase1 if isinstance(phase1, dict) else train_phase1(
        train, space=space, half=half, seed=seed, n_bins=n_bins, phase1=phase1, batch=batch, lr=lr)
    if (start["space"], start["half"], start["seed"], start["n_bins"]) != (space, half, seed, n_bins):
        raise ValueError(f"run_mechanism: phase-1 state of {start['space']}/{start['half']}/seed {start['seed']}/"
                         f"{start['n_bins']} bins, asked for {space}/{half}/seed {seed}/{n_bins} bins")
    torch.manual_seed(seed)  # the generator's initial weights depend on the seed only
    net = build_supernet(space).train()
    net.load_state_dict(start["net"])
    sampler = ShiftSampler(
        space, seed=seed, n_bins=n_bins, total_steps=phase2, tau_start=1.0, tau_end=0.5, lam=1.0,
        warmup_steps=0, update_every=update_every, estimator=estimator, probe_stride=probe_stride,
        # the whole movement over phase 2's few updates, uncapped unless max_lr is given (the
        # recorded results before shift_mechanism_capped.json used it uncapped)
        shift_lr=shift_lr(None, movement, 0, update_every, phase2, max_lr=max_lr, probe_stride=probe_stride),
    )
    first = list(range(n_bins // 2)) if half == "lower" else list(range(n_bins // 2, n_bins))
    x_all, y_all = train
    g = torch.Generator()
    g.set_state(start["g"])

    def batch_at() -> tuple[torch.Tensor, torch.Tensor]:
        i = torch.randint(0, len(x_all), (batch,), generator=g)
        return x_all[i], y_all[i]

    opt = torch.optim.AdamW(net.parameters(), lr=start["lr"], weight_decay=0.05)
    opt.load_state_dict(start["opt"])
    t1 = time.perf_counter()
    opt.add_param_group({"params": list(sampler.generator.parameters()), "lr": 1e-2, "weight_decay": 0.0})
    ctx = StepContext(net, minival=lambda i: minival)
    drawn = [0] * n_bins
    for step in range(phase2):
        sampler.before_step(step, ctx)
        (sample, _), = sampler.next(step)
        drawn[sampler.last["bin"]] += 1
        x, y = batch_at()
        loss = F.cross_entropy(net(x, sample), y) + sampler.extra_loss(sample).float()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    t2 = time.perf_counter()
    probs = sampler.shift.probs()
    other = [k for k in range(n_bins) if k not in first]
    return {
        "space": space, "half": half, "estimator": estimator, "seed": seed,
        "phase1": start["phase1"], "phase2": phase2, "update_every": update_every, "shift_lr": sampler.shift.lr,
        "probe_stride": probe_stride,
        "final_probs": probs.tolist(), "mass_untrained_half": float(probs[other].sum()),
        "trajectory": [r["probs"] for r in sampler.shift.history],
        "losses": [[round(v, 4) for v in r["loss"]] for r in sampler.shift.history if "loss" in r],
        "drawn": drawn,
        "seconds": {"phase1": start["seconds"], "phase2": round(t2 - t1, 1)},
    }


def main() -> None:
    from harness import new_doc, write_result

    from shiftnas.data.prepare import default_data_root

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=str(default_data_root() / "fashion-mnist"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--halves", nargs="+", default=["lower", "upper"])
    ap.add_argument("--estimators", nargs="+", default=["delta", "rate", "literal"])
    ap.add_argument("--phase1", type=int, default=200)
    ap.add_argument("--phase2", type=int, default=200)
    ap.add_argument("--update-every", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-lr", type=float, default=float("inf"),
                    help="cap on B's derived lr per update (training's default: 0.075; default: none)")
    ap.add_argument("--probe-strides", type=int, nargs="+", default=[1],
                    help="shift.probe_stride values (delta/rate), each from the same phase-1 supernet")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "shift_mechanism.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    doc = new_doc("shift_mechanism", args=vars(a), runs=[])
    root = Path(a.root)
    train, minival = load_images(root, "train", 20000), load_images(root, "minival", 256, seed=1)
    runs = doc["runs"]
    for half in a.halves:
        for seed in a.seeds:
            start = train_phase1(train, half=half, seed=seed, phase1=a.phase1, batch=a.batch)
            # every estimator and stride from the same phase-1 supernet (literal: stride 1 only)
            for est, m in [(e, m) for e in a.estimators for m in a.probe_strides if e != "literal" or m == 1]:
                r = run_mechanism(train, minival, half=half, estimator=est, seed=seed, phase1=start,
                                  phase2=a.phase2, update_every=a.update_every, batch=a.batch, max_lr=a.max_lr,
                                  probe_stride=m)
                runs.append(r)
                print(f"{est:8s} stride {m} {half:5s} seed {seed}: mass on the untrained half "
                      f"{r['mass_untrained_half']:.3f} ({r['seconds']['phase1']:.0f}+{r['seconds']['phase2']:.0f} s)",
                      flush=True)
    write_result(a.out, doc)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
