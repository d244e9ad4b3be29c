"""The `shift` sampler: ShiftNAS's probability shift + architecture generator
(docs/method.md sections 1-3).

Each step: draw a FLOPs bin from G(B) (`ProbabilityShift.draw`), give its one-hot to the
`ArchGenerator`, which emits one `ArchSample` inside that bin (hard Gumbel-softmax one-hots on
feasibility-masked logits). The trainer runs the supernet with that sample (the prefix masks
carry the task gradient to the generator) and adds `extra_loss(sample)`: the resource loss
lam * ((cost(p) - C) / F_max)^2 towards the drawn bin's centre C. B itself is not trained by
that step (the bin is drawn without a gradient to B); `before_step` updates it every
`update_every` steps after the warm-up (see `ProbabilityShift` for the two estimators).

With `explore` > 0, that fraction of the steps trains a random arch inside the drawn bin
instead (`sample_in_bin`, bin_uniform's proposal; no resource loss), so the supernet also learns
the bin beyond the few archs the generator settles on there.

`cost=` makes the bins, the generator's windows and its resource loss another cost than FLOPs
(`shiftnas.cost.get_cost`: parameters, or a measured latency table).

All randomness comes from `seed`: bin draws and Gumbel noise from one `torch.Generator`, the
explore draws from the sampler's `random.Random`. DDP ranks built with the same seed emit the
same architecture every step, and `state_dict()` holds both RNG states, the generator, B and
the estimator's reference losses, so a resumed run continues exactly.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import torch

from ..cost import Cost
from ..generator import ArchGenerator
from ..spaces import ArchConfig, SearchSpace
from ..spaces.arch_sample import ArchSample
from .base import Arch, Sampled, Sampler, ScoreFn, StepContext, register_sampler, sample_in_bin
from .shift import ProbabilityShift, val_losses

__all__ = ["GRAD_PATHS", "ShiftSampler"]

# How the task loss reaches the generator's one-hots (`ArchSample.full_width`): "prefix" runs
# the hard subnet times the first entries of each mask (its own cost); "full" runs every op at
# its widest candidate times the whole mask (Eq. 9 as written; the largest subnet's cost).
GRAD_PATHS = ("prefix", "full")
# The delta estimator's per-bin state beside its reference archs and losses.
_DELTA_STATE = ("ref_steps", "deltas", "known")


@register_sampler
class ShiftSampler(Sampler):
    """`next(step) -> [(ArchSample, "target")]`; `extra_loss(sample)` is the resource loss."""

    name = "shift"
    splits = ("minival",)
    display_index = 0

    def __init__(
        self,
        space: SearchSpace | str,
        seed: int = 0,
        n_bins: int = 10,
        total_steps: int = 1,
        hidden: int = 64,
        tau_start: float = 5.0,
        tau_end: float = 0.5,
        lam: float = 1.0,
        warmup_steps: int = 0,
        update_every: int = 100,
        shift_lr: float = 1e-3,
        estimator: str = "delta",
        probe_stride: int = 2,
        pretrain_steps: int = 0,
        pretrain_lr: float = 1e-2,
        grad_path: str = "prefix",
        explore: float = 0.0,
        device: Any = None,
        cost: str | Cost = "flops",
    ):
        super().__init__(space, seed)
        if grad_path not in GRAD_PATHS:
            raise ValueError(f"shift: grad_path={grad_path!r}; allowed: {', '.join(GRAD_PATHS)}")
        self.grad_path = grad_path
        if not 0.0 <= explore <= 1.0:
            raise ValueError(f"shift: explore={explore!r} must be in [0, 1]")
        self.explore = float(explore)
        if not (isinstance(total_steps, int) and total_steps >= 1):
            raise ValueError(f"shift: total_steps={total_steps!r} must be an integer >= 1")
        if not lam >= 0:
            raise ValueError(f"shift: lam={lam!r} must be >= 0")
        self.total_steps, self.lam = total_steps, float(lam)
        self.generator = ArchGenerator(
            self.space, n_bins, hidden=hidden, tau_start=tau_start, tau_end=tau_end, device=device, cost=cost
        )
        self.bins = self.generator.bins
        self.explored = 0  # steps whose arch came from sample_in_bin instead of the generator
        self.shift = ProbabilityShift(
            self.bins, warmup_steps=warmup_steps, update_every=update_every, lr=shift_lr,
            estimator=estimator, device=device,
        )
        self.device = torch.device(device if device is not None else "cpu")
        self.torch_rng = torch.Generator(device=self.device)
        self.torch_rng.manual_seed(self.seed)
        self.last: dict[str, Any] = {}
        self.prev: dict[str, torch.Tensor] | None = None  # literal estimator: w_{t-1}
        # delta estimator: the archs and losses at the start of the current interval
        self.ref_archs: list[ArchConfig] | None = None
        self.ref_losses: torch.Tensor | None = None
        self.ref_steps: torch.Tensor | None = None  # the step each bin's reference was measured
        self.deltas: torch.Tensor | None = None  # each bin's latest change per interval
        self.known: torch.Tensor | None = None  # which bins have one yet (bool)
        if not (isinstance(probe_stride, int) and probe_stride >= 1):
            raise ValueError(f"shift: probe_stride={probe_stride!r} must be an integer >= 1")
        self.probe_stride = probe_stride
        if not (isinstance(pretrain_steps, int) and pretrain_steps >= 0):
            raise ValueError(f"shift: pretrain_steps={pretrain_steps!r} must be an integer >= 0")
        self.pretrain_steps, self.pretrain_lr = pretrain_steps, pretrain_lr
        self.pretrained: dict[str, Any] = {}  # the generator pre-training's record, once done

    def to(self, device: Any) -> ShiftSampler:
        device = torch.device(device)
        if device != self.device:
            state = self.torch_rng.get_state()
            self.generator.to(device)
            self.shift.to(device)
            self.shift.centers = self.shift.centers.to(device)
            self.device = device
            self.torch_rng = torch.Generator(device=device)
            self.torch_rng.set_state(state)
        return self

    def tau(self, step: int) -> float:
        """The generator's Gumbel temperature at `step` (annealed over `total_steps`)."""
        return self.generator.tau_at(step / self.total_steps)

    def next(self, step: int, score_fn: ScoreFn | None = None) -> list[Sampled]:
        with torch.no_grad():  # B is frozen during the supernet/AG step (docs/method.md section 3)
            bin_vec, k, target = self.shift.draw(1.0, generator=self.torch_rng)
        if self.explore and self.rng.random() < self.explore:
            self.explored += 1
            self.last = {"bin": k}  # no resource loss: the generator has no part in this step
            return [(sample_in_bin(self.space, self.bins, k, self.rng).arch, "target")]
        sample = self.generator(bin_vec, tau=self.tau(step), rng=self.torch_rng)
        if self.grad_path == "full":
            sample = dataclasses.replace(sample, full_width=True)
        self.last = {"bin": k, "target": target}
        return [(sample, "target")]

    def extra_loss(self, arch: Arch) -> torch.Tensor | None:
        if not isinstance(arch, ArchSample) or "target" not in self.last:
            return None
        return self.generator.resource_loss(arch, self.last["target"], self.lam)

    def trainable(self) -> dict[str, Any]:
        return {"generator": self.generator}

    def update_shift(self, supernet, prev, x_val, y_val, step: int, prepare_input=None) -> dict[str, Any]:
        """One literal probability-shift update of B (see `ProbabilityShift.update`)."""
        return self.shift.update(
            supernet, self.generator, prev, x_val, y_val, step,
            tau=1.0, gen_tau=self.tau(step), rng=self.torch_rng, prepare_input=prepare_input,
        )

    # -- lifecycle ----------------------------------------------------------------------------
    def before_step(self, step: int, ctx: StepContext) -> dict[str, Any] | None:
        if self.pretrain_steps and not self.pretrained:  # once, before the first step
            self.pretrained = self.generator.pretrain(self.pretrain_steps, lr=self.pretrain_lr, rng=self.torch_rng)
        sh = self.shift
        if sh.estimator == "literal":
            rec = None
            if sh.should_update(step):
                if self.prev is None:
                    warnings.warn(f"step {step}: no w_(t-1) snapshot, skipping the update of B", stacklevel=2)
                else:
                    xv, yv = ctx.minival(len(sh.history))
                    with ctx.autocast():
                        rec = self.update_shift(ctx.net, self.prev, xv, yv, step, ctx.prepare_input)
            self.prev = sh.snapshot(ctx.net) if sh.needs_snapshot(step) else None
            return rec
        if sh.should_update(step) or sh.should_update(step + sh.update_every):
            return self.delta_update(step, ctx)
        return None

    def delta_update(self, step: int, ctx: StepContext) -> dict[str, Any] | None:
        """Measure the probed bins' archs on the fixed minival batch; step B on every bin's latest
        change per interval (once every bin has one); the probed bins' current archs become
        their next reference.

        The first call measures every bin (the references). Later calls probe the bins k with
        k % probe_stride == (step // update_every) % probe_stride: with stride m each bin is
        measured every m-th update, over m intervals, and its change is scaled to one interval,
        so B's step sees the same units for every m (m = 1: every bin at every update)."""
        x, y = ctx.minival(0)
        K, m, every = self.n_bins, self.probe_stride, self.shift.update_every
        first = self.ref_archs is None
        probed = list(range(K)) if first else [k for k in range(K) if k % m == (step // every) % m]
        archs = {k: self.generator.generate(bin=k) for k in probed}
        rec = None
        with ctx.autocast():
            if first:
                losses = val_losses(ctx.net, [archs[k] for k in probed], x, y, ctx.prepare_input).cpu()
                self.ref_archs, self.ref_losses = [archs[k] for k in probed], losses
                self._reset_deltas(torch.full((K,), step, dtype=torch.long))
                return None
            if self.ref_steps is None:  # a checkpoint from before the stride: refs one interval old
                self._reset_deltas(torch.full((K,), step - every, dtype=torch.long))
            now = val_losses(ctx.net, [self.ref_archs[k] for k in probed], x, y, ctx.prepare_input).cpu()
            span = (step - self.ref_steps[probed]).clamp_min(1).double() / every
            self.deltas[probed] = (now - self.ref_losses[probed]) / span
            self.known[probed] = True
            fresh = [k for k in probed if archs[k] != self.ref_archs[k]]
            latest = self.ref_losses.clone()  # every bin's latest measured loss (the record's)
            latest[probed] = now
            losses = latest.clone()
            if fresh:
                losses[fresh] = val_losses(ctx.net, [archs[k] for k in fresh], x, y, ctx.prepare_input).cpu()
        if bool(self.known.all()):
            rec = self.shift.step_expected(self.deltas.clone(), step, loss=latest.tolist(), probed=probed,
                                           archs_changed=len(fresh))
        for k in probed:
            self.ref_archs[k] = archs[k]
        self.ref_losses, self.ref_steps[probed] = losses, step
        return rec

    def _reset_deltas(self, ref_steps: torch.Tensor) -> None:
        self.ref_steps = ref_steps
        self.deltas = torch.zeros(len(ref_steps), dtype=torch.float64)
        self.known = torch.zeros(len(ref_steps), dtype=torch.bool)

    @property
    def n_bins(self) -> int:
        return len(self.bins)

    def step_metrics(self, step: int) -> dict[str, Any]:
        return {"target_bin": self.last.get("bin"), "tau": self.tau(step)}

    def log_metrics(self) -> dict[str, Any]:
        return {"probs": self.shift.probs().tolist()}

    def eval_archs(self) -> list[tuple[ArchConfig, int]]:
        return [(self.generator.generate(bin=k), k) for k in range(self.n_bins)]

    def summary(self) -> dict[str, Any]:
        return {"final_probs": self.shift.probs().tolist(), "estimator": self.shift.estimator,
                "explore": self.explore, "explored_steps": self.explored,
                "shift_lr": self.shift.lr, "generator_pretrain": self.pretrained}

    def history(self) -> list[dict[str, Any]]:
        return self.shift.history_state()

    # -- resume -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "torch_rng": self.torch_rng.get_state(),
            "generator": self.generator.state_dict(),
            "shift": self.shift.state_dict(),
            "history": self.shift.history_state(),
            "prev": self.prev,
            "ref_archs": None if self.ref_archs is None else [a.to_dict() for a in self.ref_archs],
            "ref_losses": self.ref_losses,
            # copies: delta_update writes these in place
            **{k: None if getattr(self, k) is None else getattr(self, k).clone() for k in _DELTA_STATE},
            "pretrained": dict(self.pretrained),
            "explored": self.explored,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.torch_rng.set_state(state["torch_rng"].cpu())
        self.generator.load_state_dict(state["generator"])
        self.shift.load_state_dict(state["shift"])
        self.shift.load_history(state["history"])
        prev = state.get("prev")
        self.prev = None if prev is None else {k: v.to(self.device) for k, v in prev.items()}
        refs = state.get("ref_archs")
        self.ref_archs = None if refs is None else [ArchConfig.from_dict(self.space.name, a) for a in refs]
        self.ref_losses = state.get("ref_losses")
        for k in _DELTA_STATE:
            setattr(self, k, None if state.get(k) is None else state[k].clone())
        self.pretrained = dict(state.get("pretrained", {}))
        self.explored = int(state.get("explored", 0))

    def __repr__(self) -> str:
        cost = "" if self.bins.cost.name == "flops" else f", cost={self.bins.cost.name!r}"
        return f"ShiftSampler({self.space.name!r}, seed={self.seed}, bins={len(self.bins)}, lam={self.lam}{cost})"
