"""Ranking correlation: does inherited top-1 rank subnets as fine-tuning them would?

    run = load_run("runs/fmnist-vit-shift")
    res = rank_correlation(run, n=25, finetune_steps=100, images=2000)
    res["kendall_tau"], res["spearman"]      # also <run>/rank.json and <run>/plots/rank.png

A one-shot supernet is useful for search only if the accuracy a subnet inherits orders subnets
as their stand-alone accuracy does (docs/method.md, Deployment: inherited vs fine-tuned vs
retrained top-1). For `n` subnets spread over the FLOPs range this measures the inherited top-1
(supernet weights, BN recalibrated for CNNs) and the top-1 after a short fine-tuning of the
exported subnet, both on the same images, and reports Kendall's tau-b and Spearman's rho between
the two lists.

- `kendall_tau(x, y)`, `spearman(x, y)`: the two coefficients (ties handled, no scipy).
- `finetune(run, arch, steps)`: the exported subnet after `steps` AdamW steps on the run's
  training data; the supernet is not touched.
- `rank_correlation(run, ...)`: the whole measurement; `add_rank_parser(sub)`: `shiftnas rank`.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..spaces import ArchConfig, SearchSpace, get_space
from .run import add_run_arguments

__all__ = [
    "RANK_JSON",
    "RANK_PLOT",
    "add_rank_parser",
    "finetune",
    "kendall_tau",
    "rank_archs",
    "rank_correlation",
    "spearman",
]

RANK_JSON = "rank.json"  # relative to the run directory
RANK_PLOT = "plots/rank.png"


# ---------------------------------------------------------------------------- coefficients
def _pairs(x: Sequence[float], y: Sequence[float], what: str) -> tuple[list[float], list[float]]:
    xs, ys = [float(v) for v in x], [float(v) for v in y]
    if len(xs) != len(ys):
        raise ValueError(f"{what}: x has {len(xs)} values and y has {len(ys)}; give one y per x")
    if len(xs) < 2:
        raise ValueError(f"{what}: needs at least 2 pairs, got {len(xs)}")
    for i, (a, b) in enumerate(zip(xs, ys)):
        if not (math.isfinite(a) and math.isfinite(b)):
            raise ValueError(f"{what}: pair {i} is not finite (x={a}, y={b}); drop or fix it first")
    return xs, ys


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b of paired values: (C - D) / sqrt((n0 - n1) (n0 - n2)), with C/D the
    concordant/discordant pairs, n0 = n(n-1)/2 and n1 (n2) the pairs tied in x (y). O(n^2).

    Returns nan when x or y is constant (every pair tied: the coefficient is undefined, as in
    scipy). Raises ValueError for different lengths, fewer than 2 pairs or non-finite values.
    """
    xs, ys = _pairs(x, y, "kendall_tau")
    n = len(xs)
    conc = disc = tied_x = tied_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = xs[i] - xs[j], ys[i] - ys[j]
            if dx == 0 or dy == 0:
                tied_x += dx == 0
                tied_y += dy == 0
            elif (dx > 0) == (dy > 0):
                conc += 1
            else:
                disc += 1
    n0 = n * (n - 1) // 2
    denom = math.sqrt((n0 - tied_x) * (n0 - tied_y))
    return (conc - disc) / denom if denom > 0 else math.nan


def _average_ranks(v: list[float]) -> list[float]:
    """1-based ranks; tied values share the mean of the ranks they span."""
    order = sorted(range(len(v)), key=v.__getitem__)
    ranks = [0.0] * len(v)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: the Pearson correlation of the average ranks (ties share their mean rank).

    Returns nan when x or y is constant (zero rank variance), like `kendall_tau`. Raises
    ValueError for different lengths, fewer than 2 pairs or non-finite values.
    """
    xs, ys = _pairs(x, y, "spearman")
    rx, ry = _average_ranks(xs), _average_ranks(ys)
    mean = (len(rx) + 1) / 2  # the mean of 1..n, ties included
    sxy = sum((a - mean) * (b - mean) for a, b in zip(rx, ry))
    sxx = sum((a - mean) ** 2 for a in rx)
    syy = sum((b - mean) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return math.nan
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def _finite_or_none(v: float) -> float | None:
    """nan/inf -> None, so that the result is valid JSON (write_json_atomic refuses nan)."""
    return v if math.isfinite(v) else None


# ---------------------------------------------------------------------------- fine-tuning
class _StaticAsSupernet(nn.Module):
    """A static subnet behind the supernet interface (`.space`, `forward(x, arch)`), so that
    `prepare_input`, `calibrate_bn` and `evaluate_arch` treat it exactly as they treat the
    supernet's subnet: same resize (CNN resolution), same BN recalibration, same counting."""

    def __init__(self, model: nn.Module, arch: ArchConfig):
        super().__init__()
        self.model = model
        self.arch = arch
        self.space = get_space(arch.space)

    def forward(self, x: torch.Tensor, arch: ArchConfig) -> torch.Tensor:
        if arch != self.arch:
            raise ValueError(f"this static model is subnet {self.arch.short()}, not {arch.short()}")
        return self.model(x)


def _finetune_loader(run, batch_size: int, seed: int):
    """The run's train split with its training preprocessing (augmentation as the run), shuffled
    by a seed derived from `seed`, full batches only."""
    from ..data import build_loader
    from ..train.build import data_root

    c = run.cfg
    loader = build_loader(
        data_root(c), c.data.train_split, batch_size, c.data.image_size, train=True,
        augment=c.data.augment, seed=c.run.seed + 1000 * (seed + 1), drop_last=True,
        backend=c.data.backend, num_threads=c.data.num_threads, device=run.device,
        channels=run.space.hparams["in_chans"],
        # load_run's trainer already checked every file of this split; with data.skip_corrupt the
        # check runs again to leave the same files out
        **c.data.corrupt_checks(verify="none"),
    )
    if len(loader) < 1:
        raise ValueError(
            f"fine-tuning batch_size={batch_size} is larger than the train split "
            f"({loader.dataset_size} images); give a smaller batch_size"
        )
    return loader


def _endless(loader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine from 1 down to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def finetune(run, arch: ArchConfig, steps: int, *, lr: float | None = None,
             batch_size: int | None = None, seed: int = 0) -> nn.Module:
    """The subnet `arch` exported from `run.net` and trained `steps` more steps on its own.

    As the run trained: its train split and preprocessing (shuffled in an order set by `seed`),
    AdamW with its weight decay (none on norms, biases and tokens), its label smoothing, AMP
    dtype and gradient clipping; no mixup, distillation or EMA. `lr` defaults to 0.1x the run's
    `optim.lr`, with a linear warm-up over `steps // 10` steps and a cosine to 0 at `steps`.
    `batch_size` defaults to the run's `data.batch_size`. The supernet is not changed (the
    export copies its weights). CNNs train their BatchNorm as usual (train mode), and at the
    end the running statistics are re-estimated on `run.calib_batches()`, as the inherited
    evaluation does for the supernet; so with steps=0 the result is the inherited subnet (same
    weights, same statistics) for both families. Deterministic for a seed on CPU (the global
    RNG is left as it was). Returns the model in eval mode on the run's device.
    """
    return _finetune(run, arch, steps, lr=lr, batch_size=batch_size, seed=seed, loader=None)


def _finetune(run, arch: ArchConfig, steps: int, *, lr: float | None, batch_size: int | None,
              seed: int, loader) -> nn.Module:
    from ..models.export import export_subnet
    from ..train.evaluate import calibrate_bn

    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"finetune: steps={steps!r} must be an integer >= 0 (0: no fine-tuning)")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"finetune: lr={lr!r} must be > 0 (default: 0.1x the run's optim.lr)")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"finetune: batch_size={batch_size!r} must be an integer >= 1")
    run.space.check(arch)  # an ArchConfig of the run's space
    c = run.cfg
    devices = [run.device] if run.device.type == "cuda" else []
    # export draws initial weights (then overwrites them); training draws dropout masks
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model = export_subnet(run.net, arch)
        wrapped = _StaticAsSupernet(model, arch)
        if steps > 0:
            if loader is None:
                loader = _finetune_loader(run, batch_size or c.data.batch_size, seed)
            base_lr = c.optim.lr * 0.1 if lr is None else float(lr)
            _train(run, wrapped, arch, steps, base_lr, loader)
        calib = run.calib_batches()
        if calib is not None:
            calibrate_bn(wrapped, arch, calib, c.eval.bn_calib_batches)
    return model.eval()


def _train(run, wrapped: _StaticAsSupernet, arch: ArchConfig, steps: int, base_lr: float, loader) -> None:
    """`steps` optimizer steps of `wrapped.model` (see `finetune`); a non-finite step is skipped."""
    from ..train.build import split_decay
    from ..train.evaluate import prepare_input
    from ..train.step import MAX_BAD_STEPS, backward, next_bad_streak, optimizer_step

    c, model = run.cfg, wrapped.model
    decay, no_decay = split_decay(model.named_parameters())
    groups = [{"params": decay, "weight_decay": c.optim.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    kw = {"fused": True} if run.device.type == "cuda" else {}
    opt = torch.optim.AdamW(groups, lr=base_lr, **kw)
    scaler = torch.amp.GradScaler("cuda") if run.amp_dtype == torch.float16 else None
    warmup = steps // 10
    stream = _endless(loader)
    bad_in_row = 0
    model.train()
    try:
        for step in range(steps):
            for g in opt.param_groups:
                g["lr"] = base_lr * _lr_factor(step, warmup, steps)
            x, y = next(stream)
            amp = (torch.autocast(run.device.type, dtype=run.amp_dtype) if run.amp_dtype is not None
                   else contextlib.nullcontext())
            with amp:
                logits = model(prepare_input(wrapped, x, arch))
            loss = F.cross_entropy(logits.float(), y, label_smoothing=c.optim.label_smoothing)
            backward(loss, scaler)
            out = optimizer_step(opt, [model.parameters()], clip=c.optim.grad_clip, scaler=scaler,
                                 loss_finite=bool(torch.isfinite(loss)))
            bad_in_row = next_bad_streak(out, bad_in_row)  # as the engine: a non-finite step is skipped
            if bad_in_row >= MAX_BAD_STEPS:
                raise RuntimeError(
                    f"fine-tuning {arch.short()}: {bad_in_row} consecutive steps (up to step "
                    f"{step}) had a non-finite loss or gradient; lower lr (now {base_lr:g})"
                )
    finally:
        stream.close()  # end the suspended pass of the loader


@torch.no_grad()
def _evaluate_static(run, model: nn.Module, arch: ArchConfig, split: str,
                     max_images: int | None) -> dict[str, Any]:
    """Top-1/loss of a static `model` of `arch` exactly as `run.evaluate` measures the supernet's
    subnet: the same loader and images (set_epoch(0), the first `max_images`), input resize and
    AMP. No BN recalibration here: `finetune` already did it."""
    from ..train.evaluate import evaluate_arch

    loader = run.loader(split)
    loader.set_epoch(0)
    return evaluate_arch(_StaticAsSupernet(model, arch), arch, loader, amp_dtype=run.amp_dtype,
                         max_images=max_images)


# ---------------------------------------------------------------------------- the measurement
def rank_archs(space: SearchSpace | str, bins, n: int, seed: int = 0, max_tries: int = 200) -> list[ArchConfig]:
    """`n` distinct architectures spread over the FLOPs range: with n >= K bins draw i falls in
    bin i mod K, with fewer in bin round(i (K - 1) / (n - 1)) (from the first bin to the last)
    (`sample_in_bin`, walked into the bin; the closest arch when a bin is unreachable), all from
    one `random.Random(seed)`. A duplicate is redrawn (up to 100 times) before it is an error."""
    from ..sampling.base import sample_in_bin

    space = get_space(space)
    rng = random.Random(seed)
    archs: list[ArchConfig] = []
    seen: set[ArchConfig] = set()
    for i in range(n):
        k = i % len(bins) if n >= len(bins) else round(i * (len(bins) - 1) / max(n - 1, 1))
        for _ in range(100):
            arch = sample_in_bin(space, bins, k, rng, max_tries).arch
            if arch not in seen:
                break
        else:
            raise ValueError(
                f"could draw only {len(archs)} distinct architectures of space {space.name!r} "
                f"(asked for n={n}); use a smaller n"
            )
        seen.add(arch)
        archs.append(arch)
    return archs


def _check_int(name: str, v: Any, lo: int, hint: str = "") -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise ValueError(f"{name}={v!r} must be an integer >= {lo}{hint}")


def _check_rank_args(n: int, finetune_steps: int, images: int | None, lr: float | None) -> None:
    """rank_correlation's argument checks, in its order: a ValueError names the first bad one."""
    _check_int("n", n, 2, " (a correlation needs at least 2 subnets)")
    _check_int("finetune_steps", finetune_steps, 0, " (0: no fine-tuning)")
    if images is not None:
        _check_int("images", images, 1)
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr={lr!r} must be > 0 (default: 0.1x the run's optim.lr)")


def _rank_row(run, arch: ArchConfig, inherited: dict[str, Any], tuned: dict[str, Any]) -> dict[str, Any]:
    """One subnet's entry of rank_correlation's "archs": its cost and both measurements."""
    from ..cost import count_flops, count_params

    return {
        "short": arch.short(),
        "arch": arch.to_dict(),
        "mflops": count_flops(run.space, arch, run.num_classes) / 1e6,
        "params": count_params(run.space, arch, run.num_classes),
        "inherited": inherited["top1"],
        "finetuned": tuned["top1"],
        "inherited_loss": _finite_or_none(inherited["loss"]),
        "finetuned_loss": _finite_or_none(tuned["loss"]),
    }


def _rank_settings(run, n: int, finetune_steps: int, *, seed: int, lr: float | None,
                   batch_size: int) -> dict[str, Any]:
    """rank_correlation's "settings": what the measurement ran with (run, draw, fine-tuning)."""
    from ..train.precision import amp_name

    c = run.cfg
    return {
        "run": str(run.run_dir),
        "checkpoint": str(run.checkpoint),
        "space": run.space.name,
        "ema": run.trainer.ema is not None,
        "arch_draw": f"rank_archs: {n} archs spread over {len(run.bins)} FLOPs bins, random.Random({seed})",
        "lr": c.optim.lr * 0.1 if lr is None else float(lr),
        "schedule": f"linear warm-up {finetune_steps // 10} steps, cosine to 0",
        "batch_size": batch_size,
        "weight_decay": c.optim.weight_decay,
        "label_smoothing": c.optim.label_smoothing,
        "grad_clip": c.optim.grad_clip,
        "amp": amp_name(run.amp_dtype),  # optim.amp resolved (auto: bf16 or fp32 by device)
        "augment": c.data.augment,
        "bn_recalibrated": run.calib_batches() is not None,
        "device": str(run.device),
    }


def rank_correlation(run, n: int = 25, finetune_steps: int = 100, *, seed: int = 0,
                     images: int | None = None, split: str = "val", lr: float | None = None,
                     log: Callable[[str], None] | None = None, write: bool = True) -> dict[str, Any]:
    """Kendall tau-b and Spearman rho between inherited and fine-tuned top-1 of `n` subnets.

    The subnets: `rank_archs(run.space, run.bins, n, seed)` (spread over the FLOPs bins). Each
    is evaluated with `run.evaluate` (inherited; BN recalibrated for CNNs), then fine-tuned with
    `finetune(run, arch, finetune_steps, lr=lr, seed=seed)` (the same data order for every arch)
    and evaluated on exactly the same images: the first `images` of `split` (None: the run's
    `eval.max_images`, None there too: the whole split). `log` receives one line per subnet.

    Returns {"n", "finetune_steps", "split", "images", "seed", "archs": [{"short", "arch",
    "mflops", "params", "inherited", "finetuned", "inherited_loss", "finetuned_loss"}],
    "kendall_tau", "spearman", "wall_s", "settings"}: top-1 in %, the coefficients over the
    top-1 pairs, None when undefined (one list constant, e.g. every subnet at the same top-1 on
    a few images). With `write`, also `<run>/rank.json` and the scatter `<run>/plots/rank.png`.
    """
    _check_rank_args(n, finetune_steps, images, lr)
    if write:  # before any work: outputs stay in the run directory (no '..', no symlink out)
        from ..train.checkpoint import safe_path

        out_json, out_plot = safe_path(run.run_dir, RANK_JSON), safe_path(run.run_dir, RANK_PLOT)
    c = run.cfg
    if images is None:
        images = c.eval.max_images
    t0 = time.perf_counter()
    run.loader(split)  # an unknown split fails before any work
    archs = rank_archs(run.space, run.bins, n, seed)
    batch_size = c.data.batch_size
    ft_loader = _finetune_loader(run, batch_size, seed) if finetune_steps > 0 else None
    rows: list[dict[str, Any]] = []
    evaluated = None
    for i, arch in enumerate(archs):
        inherited = run.evaluate(arch, split, images)
        model = _finetune(run, arch, finetune_steps, lr=lr, batch_size=batch_size, seed=seed, loader=ft_loader)
        tuned = _evaluate_static(run, model, arch, split, images)
        del model
        evaluated = inherited["images"]
        row = _rank_row(run, arch, inherited, tuned)
        rows.append(row)
        if log is not None:
            log(f"{i + 1:>3}/{n}  {row['mflops']:8.2f} MFLOPs  inherited {row['inherited']:6.2f}  "
                f"fine-tuned {row['finetuned']:6.2f}  {row['short']}")
    inh = [r["inherited"] for r in rows]
    tun = [r["finetuned"] for r in rows]
    result = {
        "n": n,
        "finetune_steps": finetune_steps,
        "split": split,
        "images": evaluated,
        "seed": seed,
        "archs": rows,
        "kendall_tau": _finite_or_none(kendall_tau(inh, tun)),
        "spearman": _finite_or_none(spearman(inh, tun)),
        "wall_s": round(time.perf_counter() - t0, 2),
        "settings": _rank_settings(run, n, finetune_steps, seed=seed, lr=lr, batch_size=batch_size),
    }
    if write:
        from ..atomic import write_json_atomic

        write_json_atomic(out_json, result)
        _plot(result, out_plot)
    return result


def _fmt_coef(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _plot(result: dict[str, Any], path: Path) -> Path:
    """Scatter of fine-tuned vs inherited top-1, coloured by MFLOPs, y = x dashed."""
    from ..train.plots import _pyplot, _save

    rows = result["archs"]
    x = [r["inherited"] for r in rows]
    y = [r["finetuned"] for r in rows]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    try:
        sc = ax.scatter(x, y, c=[r["mflops"] for r in rows], cmap="viridis", s=30, zorder=3)
        fig.colorbar(sc, ax=ax, label="MFLOPs (multiply-accumulates)")
        lo, hi = min(x + y), max(x + y)
        pad = max(0.5, 0.05 * (hi - lo))
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="gray", linestyle="--", linewidth=1, label="y = x")
        ax.set_xlabel("inherited top-1 (%)")
        ax.set_ylabel(f"fine-tuned top-1 (%), {result['finetune_steps']} steps")
        ax.set_title(f"{result['settings']['space']}: n={result['n']}, {result['images']} {result['split']} images\n"
                     f"Kendall tau = {_fmt_coef(result['kendall_tau'])}, "
                     f"Spearman rho = {_fmt_coef(result['spearman'])}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        return _save(fig, path)
    finally:
        plt.close(fig)


# ---------------------------------------------------------------------------- command line
_DESCRIPTION = """\
Ranking correlation of a trained run: n subnets spread over the FLOPs range, each evaluated with
its inherited weights and again after a short fine-tuning of the exported subnet (AdamW, 0.1x the
run's lr, warm-up + cosine, the run's train split), on the same images. Prints Kendall's tau-b
and Spearman's rho and writes RUN/rank.json and RUN/plots/rank.png.

--finetune-steps 0 fine-tunes nothing: the exported subnet is the inherited one (CNNs: with its
BN statistics re-estimated the same way), so both columns agree up to kernel rounding.

example:
  shiftnas rank --run runs/fmnist-vit-shift --n 25 --finetune-steps 100 --images 2000
"""


def _cmd_rank(args) -> int:
    from .run import load_run

    _check_int("--n", args.n_archs, 2, " (a correlation needs at least 2 subnets)")
    _check_int("--finetune-steps", args.finetune_steps, 0, " (0: no fine-tuning)")
    if args.images is not None:
        _check_int("--images", args.images, 1)
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise ValueError(f"--lr {args.lr!r} must be > 0 (default: 0.1x the run's optim.lr)")
    run = load_run(args.run, checkpoint=args.checkpoint, device=args.device)
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if args.json else (lambda s: print(s, flush=True))
    res = rank_correlation(run, args.n_archs, args.finetune_steps, seed=args.seed, images=args.images,
                           split=args.split, lr=args.lr, log=log, write=True)
    paths = [str(Path(run.run_dir) / RANK_JSON), str(Path(run.run_dir) / RANK_PLOT)]
    if args.json:
        print(json.dumps(res))
    else:
        print(f"Kendall tau = {_fmt_coef(res['kendall_tau'])}  Spearman rho = {_fmt_coef(res['spearman'])}  "
              f"(n={res['n']}, {res['finetune_steps']} fine-tuning steps, {res['images']} {res['split']} images, "
              f"{res['wall_s']:.1f} s)")
        print("wrote " + ", ".join(paths))
    return 0


def add_rank_parser(subparsers) -> argparse.ArgumentParser:
    """Add `rank` to a `shiftnas` sub-parser set."""
    p = subparsers.add_parser(
        "rank", help="Kendall tau / Spearman between inherited and fine-tuned top-1",
        description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(p)
    p.add_argument("--n", dest="n_archs", metavar="N", type=int, default=25,
                   help="subnets, spread over the FLOPs bins (default: 25; >= 2)")
    p.add_argument("--finetune-steps", type=int, default=100,
                   help="fine-tuning steps per subnet (default: 100; 0: none)")
    p.add_argument("--images", type=int, default=None,
                   help="images of the split per evaluation (default: the run's eval.max_images, else all)")
    p.add_argument("--split", default="val", help="split to evaluate on (default: val)")
    p.add_argument("--lr", type=float, default=None, help="fine-tuning lr (default: 0.1x the run's optim.lr)")
    p.add_argument("--seed", type=int, default=0, help="seed of the arch draw and the fine-tuning order (default: 0)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object (progress on stderr)")
    p.set_defaults(fn=_cmd_rank)
    return p
