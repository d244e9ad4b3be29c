"""Shift-sampler training-step time split into generator / supernet / shift update vs. uniform (CPU).

One ShiftNAS training step (`Trainer.train_step` with the `shift` sampler) is taken apart and
each part timed with `time.perf_counter`, per space:

  gen fwd     `sampler.next(step)` (bin draw from G(B) + LSTM decode with hard Gumbel-softmax),
              `sample.hard()` (the trainer does it right after), `sampler.extra_loss(sample)`
              (the resource loss L_RC forward)
  gen bwd     the generator's share of the backward: from the gradient the supernet's masks
              hand to the one-hots, plus L_RC, back through the LSTM; plus the generator's
              gradient clipping
  supernet    `model(x, sample)` under autocast (the masked ArchSample path), label-smoothed
              cross-entropy, backward into the supernet weights (and the masks)
  optim       clip_grad_norm_ of the supernet, AdamW step (supernet + generator groups),
              zero_grad(set_to_none=True), scheduler step
  shift upd   `ProbabilityShift.snapshot(net)` (w_{t-1}, once per update) and
              `sampler.update_shift(net, prev, x_val, y_val, step)` under autocast, timed
              apart; amortised = (snapshot + update) / update_every (100 as the paper; the
              paper's ablated minimum 50 is reported too)

How the generator's backward is separated: the supernet is run on a *leaf copy* of the
sample (the same one-hot values, detached, requires_grad), so `loss.backward()` stops at the
one-hots and holds only the supernet's backward (weights + masks); then
`torch.autograd.backward([L_RC, *onehots], [None, *leaf grads])` carries those gradients on
through the generator. By the chain rule this is the trainer's single
`(CE + L_RC).backward()`, split at the one-hots; the split is checked once per space against
the fused backward (max gradient difference in the JSON, `split_check`).

`shift_full`: the same step with the full-width Eq. 9 path (`ArchSample.full_width`: every op
at its widest candidate times the whole mask), on the same sample.

Baseline `uniform`: the same supernet step with the hard `ArchConfig` of the same sample (no
generator, no masks, no resource loss; the generator's AdamW group gets no gradient, so it
is skipped) -- the plain uniform-sampler step on the same subnet. `trainer`: the unmodified
`Trainer.train_step(x, y)` drawing the same sample (same RNG state), as a check that the parts
add up (it also does the trainer's per-step bookkeeping: loss stats, count_flops, bin counts).

Every repeat draws a fresh architecture (the sampler's RNG is reseeded per repeat, and every
path of the repeat starts from that state, so shift / uniform / trainer train the same subnet;
the JSON counts how often the regenerated arch matched), and one untimed forward + backward of it
runs first (`Bench.warm`: no path pays alone for the first run of the subnet's shapes). Paths are
interleaved, the starting path rotating per repeat; median and p20/p80 over the repeats after warm-up. Inputs and labels
are synthetic (fixed seed); no data loader. Built through `Trainer(cfg)` (the default config:
lr 1e-3, wd 0.05, label smoothing 0.1, grad clip 5, generator hidden 64, lam 1) with
n_bins 10, update_every 100, shift warm-up 0, generator.explore 0 (the default's mix is derived:
see below).

The default configuration (`generator.explore`, 0.5) trains half the steps on a random arch
inside the drawn bin with no generator: a uniform step after `sampler.next` (bin draw +
`sample_in_bin`, timed as the path `explore`). The bench builds its trainer with explore 0, so
every timed shift step is a generator step, and reports the default's mix apart (`default_mix`):
per repeat, (1 - e) * shift step + e * (uniform step + explore draw) + the amortised update of B
(it runs every `update_every` steps, explore or not), over the uniform step on the same subnet.

Targets (reported, not asserted): (gen fwd + gen bwd + amortised shift) / step total <= 10%;
the shift step over the uniform step <= +10% (the generator step) and <= +5% (the default mix).

    python bench/bench_train_step.py                   # -> bench/results/train_step_cpu.json
    python bench/bench_train_step.py --quick           # smoke run -> $TMPDIR/train_step_cpu_quick.json
    python bench/bench_train_step.py --spaces vit-fmnist --amp off --repeats 10
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    RESULTS_DIR,
    ForeignLoad,
    backends,
    dtype_name,
    new_doc,
    quantile,
    schedule,
    stats,
    write_result,
)
from train_step_report import (
    DEFINITIONS,
    METHOD,
    UPDATE_EVERY,
    UPDATE_EVERY_MIN,
    print_space,
    print_summary,
)

DEFAULT_OUT = RESULTS_DIR / "train_step_cpu.json"
QUICK_OUT = Path(tempfile.gettempdir()) / "train_step_cpu_quick.json"
DEFAULT_SPACES = ("vit-fmnist", "autoformer-t")
BATCH = {
    "vit-fmnist": 64,
    "cnn-fmnist": 64,
    "autoformer-t": 8,
    "autoformer-s": 8,
    "autoformer-b": 8,
    "cnn-bignas": 8,
}
N_BINS = 10
TOTAL_STEPS = 1000  # the config default; only sets the Gumbel temperature schedule
PATHS = ("shift", "shift_full", "uniform", "trainer", "update", "explore")
SEED = 0



# -- building -------------------------------------------------------------------------------------
def input_size(space) -> int:
    hp = space.hparams
    if "img_size" in hp:
        return hp["img_size"]
    return max(space.decision("resolution").choices)  # CNN: prepare_input resizes per subnet


def build_trainer(space_name: str, batch: int, amp: str, run_dir: str, probe_stride: int):
    """A CPU `Trainer` for the space with the shift sampler (no data: its loaders are lazy)."""
    import shiftnas
    from shiftnas.train.config import TrainConfig
    from shiftnas.train.engine import Trainer

    space = shiftnas.get_space(space_name)
    cfg = TrainConfig.from_dict(
        {
            "run": {
                "name": f"bench-{space_name}",
                "out_dir": run_dir,
                "seed": SEED,
                "device": "cpu",
                "progress": False,
                "tensorboard": False,
            },
            "data": {"batch_size": batch, "image_size": input_size(space)},
            "model": {"space": space_name, "num_classes": space.hparams["num_classes"]},
            "optim": {"amp": amp, "steps": TOTAL_STEPS},
            "sampler": {"name": "shift", "n_bins": N_BINS},
            "generator": {"explore": 0.0},  # every timed step a generator step; the mix: default_mix()
            "shift": {"update_every": UPDATE_EVERY, "warmup_frac": 0.0, "probe_stride": probe_stride},
        }
    )
    tr = Trainer(cfg, resume=None)
    assert tr.sampler.name == "shift" and tr.sampler.shift.update_every == UPDATE_EVERY
    assert tr.sampler.shift.warmup_steps == 0 and len(tr.sampler.bins) == N_BINS
    return tr


def make_batch(space, batch: int, seed: int):
    import torch

    hp = space.hparams
    s = input_size(space)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, hp["in_chans"], s, s, generator=g)
    y = torch.randint(0, hp["num_classes"], (batch,), generator=g)
    return x, y


class Bench:
    """The timed paths of one space; every path leaves all gradients None (as the trainer does)."""

    def __init__(self, tr, x, y, xv, yv):
        import torch
        import torch.nn.functional as F

        from shiftnas.spaces.arch_sample import ArchSample

        self.torch, self.F, self.ArchSample = torch, F, ArchSample
        self.tr, self.net, self.sampler = tr, tr.net, tr.sampler
        self.x, self.y, self.xv, self.yv = x, y, xv, yv
        c = tr.cfg.optim
        self.ls = c.label_smoothing
        self.clip = c.grad_clip if c.grad_clip is not None else float("inf")
        self.net_params = list(self.net.parameters())
        self.gen_params = list(tr.extra_params)
        self.net.train()

    # the RNG state every path of a repeat starts from
    def seed_rng(self, seed: int) -> None:
        self.sampler.torch_rng.manual_seed(seed)

    def peek_arch(self, seed: int, step: int):
        """The hard arch the shift path will draw from `seed` (untimed; RNG left at `seed`)."""
        self.seed_rng(seed)
        with self.torch.no_grad():
            arch = self.sampler.next(step)[0][0].hard()
        self.seed_rng(seed)
        return arch

    def _optim(self) -> None:
        tr, torch = self.tr, self.torch
        gnorm = torch.nn.utils.clip_grad_norm_(self.net_params, self.clip)
        if not bool(torch.isfinite(gnorm)):  # the trainer's skip rule (never hit here)
            raise RuntimeError("non-finite gradient norm in the benchmark step")
        tr.optimizer.step()
        tr.optimizer.zero_grad(set_to_none=True)
        tr.scheduler.step()

    def shift_split(self, step: int, full: bool = False) -> tuple[dict[str, float], object]:
        """The shift step, split into parts; returns ({part: ms}, hard arch). `full`: the
        full-width Eq. 9 path (`ArchSample.full_width`, the sampler's grad_path="full")."""
        torch, F, pc = self.torch, self.F, time.perf_counter
        tr, sampler = self.tr, self.sampler
        t0 = pc()
        sample = sampler.next(step)[0][0]
        if full:
            sample = dataclasses.replace(sample, full_width=True)
        arch = sample.hard()
        extra = sampler.extra_loss(sample).float()
        t1 = pc()
        # untimed harness: the leaf copy the supernet backward stops at
        leaf = self.ArchSample(
            sample.space, {n: v.detach().requires_grad_(True) for n, v in sample.onehots.items()},
            sample.full_width,
        )
        t2 = pc()
        with tr._autocast():
            logits = tr.model(tr._input(self.x, arch), leaf)
        loss = F.cross_entropy(logits.float(), self.y, label_smoothing=self.ls)
        loss.backward()
        t3 = pc()
        outs, grads = [extra], [None]
        for n, v in leaf.onehots.items():
            if v.grad is not None:
                outs.append(sample.onehots[n])
                grads.append(v.grad)
        torch.autograd.backward(outs, grads)
        torch.nn.utils.clip_grad_norm_(self.gen_params, self.clip)
        t4 = pc()
        self._optim()
        t5 = pc()
        ms = {"gen_fwd": t1 - t0, "supernet_fwd_bwd": t3 - t2, "gen_bwd": t4 - t3, "optim": t5 - t4}
        return {k: v * 1e3 for k, v in ms.items()}, arch

    def warm(self, arch) -> None:
        """An untimed forward + backward of `arch` (no optimizer step): the first run of a new
        subnet's shapes costs ~8% more (measured on cnn-fmnist: the masked path / uniform 1.10 when
        the masked path ran first on a repeat's arch, 1.02 when the uniform one did), and the
        rotation led with the shift path in 3 of 6 repeats and with uniform in 1; warmed, every
        timed path sees the subnet's shapes for the second time at least."""
        with self.tr._autocast():
            logits = self.tr.model(self.tr._input(self.x, arch), arch)
        self.F.cross_entropy(logits.float(), self.y).backward()
        self.tr.optimizer.zero_grad(set_to_none=True)

    def uniform(self, arch) -> dict[str, float]:
        """The plain uniform-sampler step on `arch` (an ArchConfig): no generator, no masks."""
        F, pc, tr = self.F, time.perf_counter, self.tr
        t0 = pc()
        with tr._autocast():
            logits = tr.model(tr._input(self.x, arch), arch)
        loss = F.cross_entropy(logits.float(), self.y, label_smoothing=self.ls)
        loss.backward()
        t1 = pc()
        self._optim()
        t2 = pc()
        return {"fwd_bwd": (t1 - t0) * 1e3, "optim": (t2 - t1) * 1e3}

    def trainer_step(self, step: int) -> tuple[float, float]:
        """`Trainer.train_step` as is, at a step that neither updates B nor snapshots."""
        tr = self.tr
        shift = self.sampler.shift
        assert not shift.should_update(step) and not shift.needs_snapshot(step)
        tr.step = step
        t0 = time.perf_counter()
        m = tr.train_step(self.x, self.y)
        return (time.perf_counter() - t0) * 1e3, m["mflops"]

    def explore_next(self, step: int) -> float:
        """`sampler.next(step)` on an explore step (the default mix's other half), in ms."""
        sampler = self.sampler
        sampler.explore = 1.0
        try:
            t0 = time.perf_counter()
            (arch, _), = sampler.next(step)
            ms = (time.perf_counter() - t0) * 1e3
        finally:
            sampler.explore = 0.0
        assert not isinstance(arch, self.ArchSample)
        return ms

    def update(self, step: int) -> dict[str, float]:
        """One update of B by the "delta" estimator (the default) at update step `step`: the
        probed bins' generated archs (every bin at probe stride 1) evaluated on the fixed minival
        batch, B's step, the new reference. `snapshot` is 0: the
        estimator keeps no weight copy. The first call of a space only sets the reference."""
        from shiftnas.sampling import StepContext

        pc, tr = time.perf_counter, self.tr
        ctx = StepContext(self.net, tr._input, tr._autocast, lambda i: (self.xv, self.yv))
        if self.sampler.ref_archs is None:
            self.sampler.delta_update(step, ctx)
        t0 = pc()
        self.sampler.delta_update(step, ctx)
        t1 = pc()
        return {"snapshot": 0.0, "update_shift": (t1 - t0) * 1e3}

    def split_check(self, seed: int, step: int) -> dict:
        """Gradients of the split backward vs. the trainer's fused (CE + L_RC).backward(), no step."""
        torch, F, tr, sampler = self.torch, self.F, self.tr, self.sampler
        params = self.net_params + self.gen_params

        def grads():
            g = [
                p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
                for p in params
            ]
            tr.optimizer.zero_grad(set_to_none=True)
            return g

        self.seed_rng(seed)
        sample = sampler.next(step)[0][0]
        arch = sample.hard()
        with tr._autocast():
            logits = tr.model(tr._input(self.x, arch), sample)
        loss = F.cross_entropy(logits.float(), self.y, label_smoothing=self.ls)
        (loss + sampler.extra_loss(sample).float()).backward()
        fused = grads()

        self.seed_rng(seed)
        sample = sampler.next(step)[0][0]
        extra = sampler.extra_loss(sample).float()
        leaf = self.ArchSample(
            sample.space, {n: v.detach().requires_grad_(True) for n, v in sample.onehots.items()}
        )
        with tr._autocast():
            logits = tr.model(tr._input(self.x, sample.hard()), leaf)
        F.cross_entropy(logits.float(), self.y, label_smoothing=self.ls).backward()
        outs, gs = [extra], [None]
        for n, v in leaf.onehots.items():
            if v.grad is not None:
                outs.append(sample.onehots[n])
                gs.append(v.grad)
        torch.autograd.backward(outs, gs)
        split = grads()

        n_net = len(self.net_params)

        def maxdiff(a, b):
            d = max((float((u - v).abs().max()) for u, v in zip(a, b)), default=0.0)
            s = max((float(u.abs().max()) for u in a), default=0.0)
            return d, s

        dn, sn = maxdiff(fused[:n_net], split[:n_net])
        dg, sg = maxdiff(fused[n_net:], split[n_net:])
        return {
            "supernet_max_abs_diff": dn,
            "supernet_max_abs_grad": sn,
            "generator_max_abs_diff": dg,
            "generator_max_abs_grad": sg,
        }


def step_of(r: int) -> int:
    """A training step that neither updates B nor snapshots (1 .. UPDATE_EVERY - 2)."""
    return 1 + r % (UPDATE_EVERY - 2)


def run_repeat(b: Bench, r: int, order: list[str], rec: dict | None) -> None:
    step = step_of(r)
    seed = 1000 + r
    arch = b.peek_arch(seed, step)
    b.warm(arch)
    for path in order:
        if path in ("shift", "shift_full"):
            b.seed_rng(seed)
            parts, got = b.shift_split(step, full=path == "shift_full")
            if rec is not None:
                for k, v in parts.items():
                    rec[path][k].append(v)
                rec[path]["step"].append(sum(parts.values()))
                rec["same_arch"][path] += int(got == arch)
        elif path == "uniform":
            parts = b.uniform(arch)
            if rec is not None:
                for k, v in parts.items():
                    rec["uniform"][k].append(v)
                rec["uniform"]["step"].append(sum(parts.values()))
        elif path == "trainer":
            b.seed_rng(seed)
            ms, mflops = b.trainer_step(step)
            if rec is not None:
                rec["trainer"]["step"].append(ms)
                rec["same_arch"]["trainer"] += int(abs(mflops - rec["mflops_of"](arch)) < 1e-6)
        elif path == "explore":
            ms = b.explore_next(step)
            if rec is not None:
                rec["explore"]["next"].append(ms)
        elif path == "update":
            b.seed_rng(seed + 500_000)  # the update draws its own bin and arch
            parts = b.update((r + 1) * UPDATE_EVERY)  # an update step: the probed bins rotate with r
            if rec is not None:
                for k, v in parts.items():
                    rec["update"][k].append(v)
                rec["update"]["total"].append(sum(parts.values()))
    if rec is not None:
        rec["archs_mflops"].append(round(rec["mflops_of"](arch), 3))


# -- driver ---------------------------------------------------------------------------------------
def derive(rec: dict, med: dict, amort: dict) -> dict:
    """Per update interval: the shift step's total, its overhead shares and its cost vs uniform."""
    gen = med["shift"]["gen_fwd"] + med["shift"]["gen_bwd"]
    derived = {}
    for n, a in amort.items():
        total = med["shift"]["step"] + a
        paired = [(s + a) / u - 1 for s, u in zip(rec["shift"]["step"], rec["uniform"]["step"])]
        derived[f"every_{n}"] = {
            "total_ms": round(total, 3),
            "generator_ms": round(gen, 3),
            "overhead_pct": round(100 * (gen + a) / total, 2),
            "generator_pct": round(100 * gen / total, 2),
            "shift_update_pct": round(100 * a / total, 2),
            "vs_uniform_pct": round(
                100 * (total - med["uniform"]["step"]) / med["uniform"]["step"], 2
            ),
            "vs_uniform_pct_paired_median": round(100 * quantile(paired, 0.5), 2),
            "full_vs_uniform_pct_paired_median": round(100 * quantile(
                [(s + a) / u - 1 for s, u in zip(rec["shift_full"]["step"], rec["uniform"]["step"])], 0.5), 2),
            "trainer_total_ms": round(med["trainer"]["step"] + a, 3),
            "target_met": (gen + a) / total <= 0.10,
            "vs_uniform_target_met": quantile(paired, 0.5) <= 0.10,
        }
    return derived


def default_mix(rec: dict, amort: float) -> dict:
    """The default config's step (`generator.explore` e of the steps explore: a uniform step
    after the explore draw; the update of B amortised over every step) over the uniform step on
    the same subnet, per repeat."""
    from shiftnas.train.config import GeneratorConfig

    e = GeneratorConfig().explore
    mixed = [(1 - e) * s + e * (u + x) + amort
             for s, u, x in zip(rec["shift"]["step"], rec["uniform"]["step"], rec["explore"]["next"])]
    paired = [m / u - 1 for m, u in zip(mixed, rec["uniform"]["step"])]
    pct = 100 * quantile(paired, 0.5)
    return {
        "explore": e,
        "step_ms": round(quantile(mixed, 0.5), 3),
        "uniform_ms": round(quantile(rec["uniform"]["step"], 0.5), 3),
        "explore_next_ms": round(quantile(rec["explore"]["next"], 0.5), 3),
        "vs_uniform_pct_paired_median": round(pct, 2),
        "target_10_met": pct <= 10.0,
        "target_5_met": pct <= 5.0,
    }


def bench_space(space_name: str, args) -> dict:
    import shiftnas

    space = shiftnas.get_space(space_name)
    batch = args.batch or BATCH.get(space_name, 8)
    with tempfile.TemporaryDirectory(prefix="bench_train_step_") as run_dir:
        tr = build_trainer(space_name, batch, args.amp, run_dir, args.probe_stride)
    x, y = make_batch(space, batch, seed=SEED)
    xv, yv = make_batch(space, batch, seed=SEED + 1)  # the minival batch of the shift update
    b = Bench(tr, x, y, xv, yv)
    check = b.split_check(seed=7, step=1)

    def mflops_of(arch):
        return shiftnas.count_flops(space, arch) / 1e6

    rec = {
        **{p: {k: [] for k in ("gen_fwd", "gen_bwd", "supernet_fwd_bwd", "optim", "step")}
           for p in ("shift", "shift_full")},
        "uniform": {k: [] for k in ("fwd_bwd", "optim", "step")},
        "trainer": {"step": []},
        "update": {k: [] for k in ("snapshot", "update_shift", "total")},
        "explore": {"next": []},
        "same_arch": {"shift": 0, "shift_full": 0, "trainer": 0},
        "archs_mflops": [],
        "mflops_of": mflops_of,
    }
    with ForeignLoad() as meter:
        for r, order, timed in schedule(PATHS, args.warmup, args.repeats):
            run_repeat(b, r if timed else 10_000 + r, order, rec if timed else None)
    seconds, foreign = meter.seconds, meter.load
    del rec["mflops_of"]

    med = {
        g: {k: quantile(v, 0.5) for k, v in d.items()}
        for g, d in rec.items()
        if g in ("shift", "shift_full", "uniform", "trainer", "update", "explore")
    }
    upd = med["update"]["total"]
    amort = {n: upd / n for n in (UPDATE_EVERY, UPDATE_EVERY_MIN)}
    res = {
        "space": space_name,
        "batch": batch,
        "input": list(x.shape),
        "amp": "off" if tr.amp_dtype is None else dtype_name(tr.amp_dtype),
        "n_decisions": len(space.decisions),
        "supernet_params_m": round(sum(p.numel() for p in b.net_params) / 1e6, 4),
        "generator_params": sum(p.numel() for p in b.gen_params),
        "archs_mflops": rec["archs_mflops"],
        "archs_mflops_median": round(quantile(rec["archs_mflops"], 0.5), 3),
        "same_arch_as_uniform": {k: f"{v}/{args.repeats}" for k, v in rec["same_arch"].items()},
        "split_check": check,
        "times": {
            g: {k: stats(v) for k, v in rec[g].items()}
            for g in ("shift", "shift_full", "uniform", "trainer", "update", "explore")
        },
        "amortised_shift_ms": {f"every_{n}": round(v, 3) for n, v in amort.items()},
        "foreign_cpu_load": foreign,
        "bench_seconds": round(seconds, 1),
    }
    res["derived"] = derive(rec, med, amort)
    res["default_mix"] = default_mix(rec, amort[UPDATE_EVERY])
    res["mask_overhead_pct"] = round(
        100 * (med["shift"]["supernet_fwd_bwd"] / med["uniform"]["fwd_bwd"] - 1), 2
    )
    print(
        f"  {space_name:13s} done in {seconds:.0f}s (foreign cpu load {foreign})",
        file=sys.stderr,
        flush=True,
    )
    del b, tr
    gc.collect()
    return res


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--spaces", default=",".join(DEFAULT_SPACES), help="comma-separated space names")
    p.add_argument(
        "--amp",
        choices=("auto", "bf16", "off"),
        default="auto",
        help="the trainer's optim.amp (default auto: bf16 only where the CPU has AMX)",
    )
    p.add_argument("--batch", type=int, default=None,
                   help="the batch of every space (default per space: " + ", ".join(f"{k} {v}" for k, v in BATCH.items()) + ")")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (>= 10; default 20)")
    p.add_argument("--warmup", type=int, default=None, help="untimed repeats first (default 5)")
    # Fixed, as in bench_supernet.py: on a loaded 2-core machine 2 threads can be several times
    # slower than 1. Compare runs at equal load only (foreign_cpu_load is recorded per space).
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--probe-stride", type=int, default=None,
                   help="shift.probe_stride: the update of B measures every m-th bin (default: the config's)")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: 3 repeats, 1 warm-up, output {QUICK_OUT} unless --out",
    )
    p.add_argument("--out", default=None, help=f"JSON output path (default {DEFAULT_OUT})")
    args = p.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # keep the table and the stderr progress in order

    if args.batch is not None and args.batch < 1:
        p.error(f"--batch {args.batch}: must be >= 1")
    if args.repeats is None:
        args.repeats = 3 if args.quick else 20
    if args.warmup is None:
        args.warmup = 1 if args.quick else 5
    if args.repeats < (1 if args.quick else 10):
        p.error(f"--repeats {args.repeats}: need >= 10 for a median (or --quick for a smoke run)")
    if args.probe_stride is None:
        from shiftnas.train.config import ShiftConfig

        args.probe_stride = ShiftConfig().probe_stride
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    if args.out is None:
        args.out = str(QUICK_OUT if args.quick else DEFAULT_OUT)
    args.spaces = [s for s in args.spaces.split(",") if s]

    import timm
    import torch

    import shiftnas

    for s in args.spaces:
        shiftnas.get_space(s)  # fail early on a typo
    torch.set_num_threads(args.threads)
    result = new_doc("bench/bench_train_step.py")
    rows = [bench_space(s, args) for s in args.spaces]
    result.update({
        "what": (
            "one ShiftNAS training step (Trainer.train_step, shift sampler) split into generator "
            "fwd/bwd, supernet fwd+bwd, optimizer, and the amortised probability-shift update; "
            "vs. the uniform-sampler step on the same subnets"
        ),
        "quick": args.quick,
        "backends": backends("cpu", (torch.float32, torch.bfloat16)),
        "timm": timm.__version__,
        "amp": args.amp,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "settings": {
            "n_bins": N_BINS,
            "update_every": UPDATE_EVERY,
            "probe_stride": args.probe_stride,
            "update_every_min": UPDATE_EVERY_MIN,
            "shift_warmup_steps": 0,
            "generator_explore": 0.0,
            "total_steps": TOTAL_STEPS,
            "seed": SEED,
            "trainer_config": "TrainConfig defaults (lr 1e-3, wd 0.05, label smoothing 0.1, "
            "grad clip 5, generator hidden 64, lam 1, generator lr 1e-3)",
            "inputs": "synthetic randn images / randint labels, fixed seed; minival batch = a "
            "second synthetic batch of the same size",
        },
        "method": METHOD,
        "definitions": DEFINITIONS,
        "targets": {"overhead_pct": "<= 10 (generator + amortised shift update, per step)",
                    "default_mix.vs_uniform_pct_paired_median": "<= 10 (the method), <= 5 (the performance "
                                                                "target): the default explore mix over uniform",
                    "vs_uniform_pct_paired_median": "<= 10 (the shift step, update of B amortised, over "
                                                    "the uniform step on the same subnet)"},
        "results": rows,
    })
    write_result(args.out, result)
    for r in rows:
        print_space(r)
    print_summary(rows)
    print(f"\nwrote {Path(args.out)}")


if __name__ == "__main__":
    main()
