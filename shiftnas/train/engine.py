"""The training engine: one loop for every sampler (shift, uniform, sandwich, attentive, bin_uniform).

    trainer = Trainer(load_config("configs/fmnist-vit-shift.yaml"), resume="auto")
    summary = trainer.fit()          # summary.json's content (rank 0; other ranks get it too)

One step (docs/design.md "One training step"): the sampler returns the subnets to train; each is
forwarded on the step's batch (the CNN resizes to the subnet's resolution) and back-propagated
at once (gradients accumulate; DDP all-reduces on the last backward). The max subnet learns
from labels; with a distilling sampler the others learn from its soft logits. The shift
sampler adds the resource loss, and its generator is optimised with the supernet. Every
`shift.update_every` steps after the warm-up B takes its finite-difference step on a minival
batch, against the weights w_{t-1} cloned one step earlier.

A step whose loss or gradient norm is not finite (on any rank) is skipped: no optimizer step,
no EMA update; it is counted and logged, and after `MAX_BAD_STEPS` in a row training stops with
`TrainingDiverged` without writing a checkpoint (the weights never took a non-finite step).
With fp16, a step the GradScaler skips for overflowing gradients while its scale settles is
counted and logged apart ("overflow"), and is not a bad step (see step.py).

Resume: a checkpoint holds everything a step reads (weights, optimizer, scheduler, scaler,
EMA, sampler incl. generator and B, every rank's RNG state, counters, w_{t-1} when the next
step updates B). The data position is derived from the step (epoch, batch within it) with
`drop_last=True`, so `Trainer(cfg, resume="auto").fit()` continues where the run stopped: in
fp32 on CPU, a run interrupted at step s and resumed ends with the same weights, B and AG as an
uninterrupted run (tests/train/test_train_engine.py).

Fault injection for the reliability tests (off unless SHIFTNAS_FAULT_* is set; see faults.py):
a crash before a given step on one rank, nan/inf written into the gradients of given steps.
"""
from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..atomic import write_json_atomic, write_text_atomic
from ..cost import count_cost, count_flops, make_bins
from ..models.registry import build_supernet
from ..sampling import StepContext
from ..spaces import ArchConfig
from ..spaces.arch_sample import ArchSample
from .build import build_loaders, build_optimizer, build_train_sampler, run_cost
from .checkpoint import (
    capture_rng_state,
    find_resume,
    latest_checkpoint,
    restore_rng_state,
    safe_path,
    save_checkpoint,
)
from .config import TrainConfig
from .distributed import (
    DistInfo,
    all_reduce_mean_grads,
    all_reduce_sum,
    barrier,
    gather_objects,
    init_distributed,
    wrap_ddp,
)
from .evaluate import arch_row, bin_archs, bins_record, evaluate_arch, has_batch_norm, prepare_input
from .faults import engine_faults
from .interrupt import StopSignals, TrainingInterrupted
from .precision import amp_name, amp_setup
from .resume import check_same_run, load_train_state
from .runlog import RunLog
from .step import MAX_BAD_STEPS, backward, next_bad_streak, optimizer_step

__all__ = ["MAX_BAD_STEPS", "Trainer", "TrainingDiverged", "lr_factor"]

MIN_LR_RATIO = 0.01  # the cosine ends at lr * MIN_LR_RATIO
PLOTS = ("plots/sampling.png", "plots/pareto.png")
# The step record's key for the shown subnet's cost when the run bins another cost than FLOPs.
COST_KEYS = {"params": "mparams", "latency": "latency_ms"}
# what fit() writes besides checkpoints (metrics.jsonl and tb/: RunLog, also through safe_path)
OUTPUTS = ("config.yaml", "metrics.jsonl", "tb", "summary.json", "sampling.json", *PLOTS)


class TrainingDiverged(RuntimeError):
    """Raised after MAX_BAD_STEPS consecutive steps with a non-finite loss or gradient."""


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine from 1 to MIN_LR_RATIO at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    t = min(1.0, (step - warmup) / span)
    return MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * t))


def _soft_ce(logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a distribution (in-place distillation, mixup targets)."""
    return -(soft * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


class Trainer:
    """Builds data, supernet, sampler, optimizer from a `TrainConfig`; `fit()` trains and evaluates.

    `resume`: None (a fresh run; refuses a run directory that already has checkpoints),
    "auto" (the newest checkpoint of the run directory whose digest verifies, or fresh when it
    has none; failing ones are moved aside as *.corrupt, and a directory where none verifies is
    a ValueError) or a checkpoint path.
    """

    def __init__(self, cfg: TrainConfig, resume: str | None = None, info: DistInfo | None = None):
        self.cfg = cfg
        self.info = info or init_distributed(cfg.run.device)
        self.device = self.info.device
        self.run_dir = Path(cfg.run.out_dir).expanduser() / cfg.run.name
        self._resume_path = find_resume(self.run_dir, resume, move_aside=self.info.is_main)

        torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
        import random

        import numpy as np

        random.seed(cfg.run.seed + self.info.rank)
        np.random.seed((cfg.run.seed * 1009 + self.info.rank) % 2**32)

        self.net = build_supernet(cfg.model.space, num_classes=cfg.model.num_classes).to(self.device)
        self.space = self.net.space
        self.cost = run_cost(cfg, self.space)  # the bins and their counts are in the sampler's cost
        self.bins = make_bins(self.space, cfg.sampler.n_bins, self.cost)
        self.sampler = build_train_sampler(cfg, self.space).to(self.device)
        self.extra_params = [p for m in self.sampler.trainable().values() for p in m.parameters()]

        self.amp_dtype, self.scaler, self._amp_line = amp_setup(cfg.optim.amp, self.device)
        self.optimizer = build_optimizer(cfg, self.net, self.extra_params, self.device)
        total, warm = cfg.optim.steps, cfg.optim.effective_warmup
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, warm, total)
        )
        self.ema = None
        if cfg.optim.ema_decay > 0:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.net, decay=cfg.optim.ema_decay)
        self.mixup = None
        if cfg.optim.mixup > 0 or cfg.optim.cutmix > 0:
            if cfg.data.batch_size % 2:
                raise ValueError(
                    f"mixup/cutmix need an even data.batch_size, got {cfg.data.batch_size}"
                )
            from timm.data import Mixup

            self.mixup = Mixup(
                mixup_alpha=cfg.optim.mixup, cutmix_alpha=cfg.optim.cutmix,
                label_smoothing=cfg.optim.label_smoothing, num_classes=cfg.model.num_classes,
            )
        self.model: nn.Module = wrap_ddp(self.net, self.device) if self.info.distributed else self.net

        self.step = 0
        self.bad_in_row = 0
        self.skipped = 0
        self.overflows = 0  # fp16 steps the GradScaler skipped while its scale settled (not bad steps)
        self.images_seen = 0
        self.bin_counts = [0] * len(self.bins)
        self.windows: list[dict[str, Any]] = []
        self._minival0: tuple[torch.Tensor, torch.Tensor] | None = None  # batch 0, kept
        self._minival: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._minival_next: int | None = None
        self._ctx = StepContext(self.net, self._input, self._autocast, self._minival_batch)
        self._loaders_built = False
        self._restored = False
        self.log = RunLog(self.run_dir, 0, 1, enabled=False)
        self._faults = engine_faults(self.info.rank)  # None unless SHIFTNAS_FAULT_* is set
        self._signals = StopSignals(announce=self.info.is_main)  # Ctrl-C / SIGTERM in fit()

    # ------------------------------------------------------------------ data streams
    def _stream(self, loader, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches from global batch index `start` on, epoch after epoch (set_epoch each pass)."""
        n = len(loader)
        epoch, skip = divmod(start, n)
        while True:
            loader.set_epoch(epoch)
            for i, batch in enumerate(loader):
                if i < skip:
                    continue
                yield batch
            skip = 0
            epoch += 1

    # ------------------------------------------------------------------ checkpoints
    def _state(self) -> dict[str, Any]:
        rngs = gather_objects(capture_rng_state(), self.info)  # every rank's, in rank order
        state = {
            "step": self.step,
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": rngs,
            "config": self.cfg.to_dict(),
            "world_size": self.info.world_size,
            "batches_per_epoch": len(self.train_loader),
            "counters": {"skipped": self.skipped, "bad_in_row": self.bad_in_row, "images_seen": self.images_seen,
                         "overflows": self.overflows},
            "bin_counts": list(self.bin_counts),
            "windows": self.windows,
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        if self.ema is not None:
            state["ema"] = self.ema.module.state_dict()
        return state

    def save(self) -> Path | None:
        self.log.fsync()  # the metrics lines this checkpoint covers survive a power loss
        state = self._state()  # every rank joins the RNG gather
        path = None
        if self.info.is_main:
            path = save_checkpoint(self.run_dir, state, self.step)
        barrier(self.info)
        return path

    def _load(self, path: Path) -> None:
        state = load_train_state(path)
        check_same_run(state["config"], self.cfg, path)
        if int(state["step"]) > self.cfg.optim.steps:
            raise ValueError(f"cannot resume {str(path)!r} with optim.steps={self.cfg.optim.steps}: "
                             f"the checkpoint is at step {int(state['step'])}; optim.steps must be >= it")
        self.net.load_state_dict(state["model"])
        self.sampler.load_state_dict(state["sampler"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and "ema" in state:
            self.ema.module.load_state_dict(state["ema"])
        self.step = int(state["step"])
        c = state["counters"]
        self.skipped, self.bad_in_row, self.images_seen = int(c["skipped"]), int(c["bad_in_row"]), int(c["images_seen"])
        self.overflows = int(c.get("overflows", 0))  # absent before fp16 overflows were counted apart
        self.bin_counts = [int(x) for x in state["bin_counts"]]
        self.windows = list(state["windows"])
        rngs = state["rng"]
        if state.get("world_size") == self.info.world_size:
            restore_rng_state(rngs[self.info.rank])
        else:
            warnings.warn(
                f"resuming a {state.get('world_size')}-process run with {self.info.world_size} processes: "
                "the data order and random streams differ from the original run", stacklevel=2,
            )
            restore_rng_state(rngs[0])
        if state.get("batches_per_epoch") != len(self.train_loader):
            warnings.warn("batches per epoch changed since the checkpoint: the data order differs", stacklevel=2)

    # ------------------------------------------------------------------ the step
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _input(self, x: torch.Tensor, arch: ArchConfig) -> torch.Tensor:
        return prepare_input(self.net, x, arch)

    def _minival_batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch `index` of the minival split in its fixed order (epoch after epoch); batch 0
        is kept, as the shift's "delta" estimator reads it at every update."""
        if index == 0 and self._minival0 is not None:
            return self._minival0
        if self._minival_next != index:
            if self._minival is not None:
                self._minival.close()
            self._minival = self._stream(self.minival_loader, index)
        batch = next(self._minival)
        self._minival_next = index + 1
        if index == 0:
            self._minival0 = batch
        return batch

    def _label_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.mixup is not None:  # target: mixed soft labels
            return _soft_ce(logits, target)
        return F.cross_entropy(logits.float(), target, label_smoothing=self.cfg.optim.label_smoothing)

    def _distill_weight(self, step: int) -> float:
        """Weight of in-place distillation for the non-max subnets at `step` (0 without it):
        labels only for `sampler.distill_warmup_frac` of the run, then a linear ramp to 1 over
        `sampler.distill_ramp_frac`, so the students do not learn from an untrained teacher."""
        if not self.sampler.distill:
            return 0.0
        c, total = self.cfg.sampler, self.cfg.optim.steps
        start, ramp = c.distill_warmup_frac * total, c.distill_ramp_frac * total
        if step < start:
            return 0.0
        return 1.0 if ramp <= 0 else min(1.0, (step - start + 1) / ramp)

    def _score_fn(self, x: torch.Tensor, y: torch.Tensor):
        def score(arch: ArchConfig) -> float:
            with torch.no_grad(), self._autocast():
                loss = F.cross_entropy(self.net(self._input(x, arch), arch).float(), y)
            t = all_reduce_sum(loss.detach().reshape(1).double(), self.info)
            return float(t) / self.info.world_size
        return score

    def _forward_backward(self, x: torch.Tensor, target: torch.Tensor, hard: list, step: int):
        """Forward and backward of every (arch, fed, role) the sampler picked this step (DDP syncs
        the gradients on the last only; the "max" subnet teaches the others where the sampler
        distills). Returns the task losses and the sampler's extra losses, detached."""
        teacher = None
        losses, extras = [], []
        n = len(hard)
        for i, (arch, fed, role) in enumerate(hard):
            sync = contextlib.nullcontext()
            if self.info.distributed and i < n - 1:
                sync = self.model.no_sync()
            with sync:
                with self._autocast():
                    logits = self.model(self._input(x, arch), fed)
                kd = self._distill_weight(step) if role != "max" and teacher is not None else 0.0
                loss = _soft_ce(logits, teacher) if kd >= 1.0 else self._label_loss(logits, target)
                if 0.0 < kd < 1.0:
                    loss = kd * _soft_ce(logits, teacher) + (1.0 - kd) * loss
                if self.sampler.distill and role == "max":
                    teacher = F.softmax(logits.detach().float(), dim=-1)
                total = loss
                extra = self.sampler.extra_loss(fed)
                if extra is not None:
                    extra = extra.float()
                    total = total + extra
                    extras.append(extra.detach())
                backward(total, self.scaler)
                losses.append(loss.detach().float())
        return losses, extras

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        """One optimizer step on batch (x, y); returns the step's metrics (loss is the rank mean)."""
        step = self.step
        self.model.train()
        rec = self.sampler.before_step(step, self._ctx)
        if rec is not None:
            self.log.log(step, {k: v for k, v in rec.items() if k != "step"}, kind="shift")

        score_fn = self._score_fn(x, y) if self.sampler.needs_score_fn else None
        picked = self.sampler.next(step, score_fn)
        hard = [(a.hard() if isinstance(a, ArchSample) else a, a, role) for a, role in picked]

        target = y
        if self.mixup is not None:
            x, target = self.mixup(x, y)
        losses, extras = self._forward_backward(x, target, hard, step)
        n = len(hard)

        loss_sum = torch.stack(losses).sum()
        stop = torch.tensor(float(self._signals.signum is not None), device=loss_sum.device)
        stats = torch.stack([loss_sum, (~torch.isfinite(loss_sum)).float(), stop]).double()  # + a rank's Ctrl-C
        all_reduce_sum(stats, self.info)
        if extras:  # the rank's own resource loss, read with the stats: one host sync for all
            stats = torch.cat([stats, torch.stack(extras).sum().double().reshape(1)])
        host = stats.tolist()
        all_reduce_mean_grads(self.extra_params, self.info)
        if self._faults is not None:
            self._faults.corrupt_grads(step, self.net.parameters(), self.extra_params)
        mean_loss = host[0] / (self.info.world_size * n)
        loss_ok = not host[1] > 0 and math.isfinite(mean_loss)
        lr = self.optimizer.param_groups[0]["lr"]
        res = optimizer_step(  # the generator's gradient too: the resource loss reaches only it
            self.optimizer, [self.net.parameters(), self.extra_params], clip=self.cfg.optim.grad_clip,
            scaler=self.scaler, loss_finite=loss_ok, scheduler=self.scheduler,
        )
        self.bad_in_row = next_bad_streak(res, self.bad_in_row)
        self.skipped += res.bad
        self.overflows += res.overflow
        if res.stepped and self.ema is not None:
            self.ema.update(self.net, step=step)
        self.step += 1
        self.images_seen += x.shape[0] * self.info.world_size

        costs = [count_cost(self.space, a, self.cost) for a, _, _ in hard]
        bins = [self.bins.bin_of(c) for c in costs]
        shown = self.sampler.display_index
        flops = costs if self.cost.name == "flops" else {shown: count_flops(self.space, hard[shown][0])}
        for k in bins:
            self.bin_counts[k] += 1
        out = {
            "loss": mean_loss, "lr": lr, "grad_norm": res.grad_norm, "skipped": not res.stepped,
            "overflow": res.overflow, "stop": host[2] > 0,
            "mflops": flops[shown] / 1e6, "bin": bins[shown], "bins": bins, "n_subnets": n,
            **self.sampler.step_metrics(step),
        }
        if self.cost.name != "flops":  # e.g. latency_ms: the shown subnet's cost in the bins' unit
            out[COST_KEYS[self.cost.name]] = costs[shown] / 1e6
        if extras:
            out["resource_loss"] = host[3]
        return out

    # ------------------------------------------------------------------ the loop
    def _output(self, name: str) -> Path:
        """`run_dir/name` through `safe_path`: a ValueError when a symlink sends it out of the run dir."""
        return safe_path(self.run_dir, name)

    def restore(self) -> None:
        """Build the data loaders and load the resume checkpoint (if any), without training.

        `fit()` starts with it; `shiftnas.search.load_run` uses it to read a finished run.
        """
        if not self._loaders_built:
            self.train_loader, self.minival_loader, self.val_loader = build_loaders(
                self.cfg, self.info, self.space, self.sampler.splits
            )
            self._loaders_built = True
        if self._resume_path is not None and not self._restored:
            self._load(self._resume_path)
            self._restored = True

    def _start(self) -> None:
        """Load the checkpoint, write config.yaml (rank 0), open the run log."""
        cfg = self.cfg
        self.restore()
        if self.info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for name in OUTPUTS:  # a symlink planted in the run dir is refused before anything is written
                self._output(name)
            write_text_atomic(self._output("config.yaml"), cfg.to_yaml())  # a kill never leaves half a config
        barrier(self.info)
        if self._resume_path is not None and self.info.is_main:
            # Before RunLog rewrites metrics.jsonl: whoever sees the rewrite (a fault harness, a
            # kill at that moment) can also read where the run resumed from.
            print(f"resumed from {self._resume_path} at step {self.step}", file=sys.stderr, flush=True)
        self.log = RunLog(
            self.run_dir, self.step, cfg.optim.steps, enabled=self.info.is_main,
            progress=cfg.run.progress, tensorboard=cfg.run.tensorboard,
        )
        self.log.write(self._amp_line)
        if cfg.optim.effective_warmup != cfg.optim.warmup_steps:
            self.log.write(f"optim.warmup_steps={cfg.optim.warmup_steps} >= optim.steps={cfg.optim.steps}: "
                           f"warm-up clipped to steps // 10 = {cfg.optim.effective_warmup}")

    def fit(self) -> dict[str, Any]:
        """Train to optim.steps, save, evaluate. Ctrl-C / SIGTERM: the checkpoint of the step, then
        TrainingInterrupted (interrupt.py)."""
        with self._signals:
            return self._fit()

    def _fit(self) -> dict[str, Any]:
        cfg = self.cfg
        self._start()
        stream = self._stream(self.train_loader, self.step)
        window = {"t": time.perf_counter(), "images": 0, "loss": 0.0, "n": 0, "counts": [0] * len(self.bins)}
        try:
            self._signals.deferring = True
            while self.step < cfg.optim.steps:
                x, y = next(stream)
                if self._faults is not None:
                    self._faults.before_step(self.step)
                m = self.train_step(x, y)
                window["images"] += x.shape[0] * self.info.world_size
                if not m["skipped"]:
                    window["loss"] += m["loss"]
                    window["n"] += 1
                for k in m["bins"]:
                    window["counts"][k] += 1
                if m["skipped"]:
                    rec = {"loss": m["loss"], "grad_norm": m["grad_norm"], "in_a_row": self.bad_in_row,
                           "skipped_total": self.skipped, "overflow_total": self.overflows}
                    if self.scaler is not None:
                        rec["scale"] = self.scaler.get_scale()
                    self.log.log(self.step - 1, rec, kind="overflow" if m["overflow"] else "skipped")
                    if self.bad_in_row >= MAX_BAD_STEPS:
                        raise TrainingDiverged(
                            f"{self.bad_in_row} consecutive steps (up to step {self.step - 1}) had a non-finite "
                            f"loss or gradient; stopping. No checkpoint was written for them; the newest good one "
                            f"is {latest_checkpoint(self.run_dir)}. Lower optim.lr, set optim.grad_clip, or use optim.amp=off"
                        )
                dt = time.perf_counter() - window["t"]
                ips = window["images"] / dt if dt > 0 else 0.0
                self.log.progress(1, loss=f"{m['loss']:.3f}", lr=f"{m['lr']:.2e}", bin=m["bin"],
                                  mflops=f"{m['mflops']:.1f}", ips=f"{ips:.0f}")
                if self.step % cfg.run.log_every == 0 or self.step == cfg.optim.steps:
                    rec = {k: v for k, v in m.items() if k not in ("bins", "skipped", "overflow", "stop")}
                    rec.update(loss=window["loss"] / max(1, window["n"]), img_per_s=ips,
                               skipped_total=self.skipped, overflow_total=self.overflows, bin_counts=window["counts"])
                    rec.update(self.sampler.log_metrics())
                    self.log.log(self.step, rec)
                    self.log.status(self.step, cfg.optim.steps, rec["loss"], rec["lr"], ips)
                    self.windows.append({"step": self.step, "counts": window["counts"]})
                    window = {"t": time.perf_counter(), "images": 0, "loss": 0.0, "n": 0, "counts": [0] * len(self.bins)}
                if m["stop"]:  # SIGINT/SIGTERM on a rank: all ranks save this step and stop
                    self.save()
                    raise TrainingInterrupted(self._signals.signum or signal.SIGTERM)
                if (cfg.run.ckpt_every and self.step % cfg.run.ckpt_every == 0 and self.step < cfg.optim.steps
                        and self.bad_in_row == 0):  # never checkpoint in the middle of a bad streak
                    self.save()
            self._signals.deferring = False
            self.save()
            stream.close()  # end the suspended passes before evaluate() reads the loaders again
            if self._minival is not None:
                self._minival.close()
                self._minival, self._minival_next = None, None
            summary = self.evaluate()
        finally:
            self.log.close()
        return summary

    # ------------------------------------------------------------------ the end
    def evaluate(self) -> dict[str, Any]:
        """Per-bin inherited top-1 on the val split; writes summary.json, sampling.json, plots."""
        cfg = self.cfg
        net = self.ema.module if self.ema is not None else self.net
        calib = None
        if has_batch_norm(net):
            calib = []
            for x, y in self.train_loader:
                calib.append((x, y))
                if len(calib) >= cfg.eval.bn_calib_batches:
                    break
        per_rank = None
        if cfg.eval.max_images is not None:
            per_rank = max(1, math.ceil(cfg.eval.max_images / self.info.world_size))
        amp = self.amp_dtype

        def run(arch, k, source):
            self.val_loader.set_epoch(0)  # the same images (and shard) for every arch
            metrics = evaluate_arch(net, arch, self.val_loader, amp_dtype=amp, max_images=per_rank,
                                    calib_batches=calib, calib_n=cfg.eval.bn_calib_batches)
            return arch_row(self.space, arch, self.bins, k, source, metrics, num_classes=cfg.model.num_classes)

        rows = []
        t0 = time.perf_counter()
        for arch, k in self.sampler.eval_archs():
            rows.append(run(arch, k, "generator"))
        if cfg.eval.random_archs:
            for e in bin_archs(self.space, self.bins, seed=0):
                if e["hit"]:
                    rows.append(run(e["arch"], e["bin"], "random"))
        bins = bins_record(self.bins)
        summary = {
            "run": cfg.run.name, "space": self.space.name, "sampler": cfg.sampler.name,
            "steps": self.step, "images_seen": self.images_seen, "skipped_steps": self.skipped,
            "overflow_steps": self.overflows,
            "world_size": self.info.world_size, "ema": self.ema is not None, "amp": amp_name(self.amp_dtype),
            "eval_images_per_arch": rows[0]["images"] if rows else 0,
            "eval_s": round(time.perf_counter() - t0, 2),
            "bins": bins,
            "rows": rows,
        }
        summary.update(self.sampler.summary())
        if any(r["source"] == "generator" for r in rows):
            summary["generator_in_bin"] = sum(r["in_bin"] for r in rows if r["source"] == "generator")
        sampling = {
            "sampler": cfg.sampler.name, "bins": summary["bins"], "counts": self.bin_counts,
            "windows": self.windows, "updates": self.sampler.history(),
        }
        if self.info.is_main:
            from .plots import plot_run

            write_json_atomic(self._output("summary.json"), summary)
            write_json_atomic(self._output("sampling.json"), sampling)
            plot_run(summary, sampling, self._output(PLOTS[0]), self._output(PLOTS[1]))
        barrier(self.info)
        return summary
