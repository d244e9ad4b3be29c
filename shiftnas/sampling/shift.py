"""`ProbabilityShift`: the learnable bin distribution softmax(B) and its update
(docs/method.md sections 1, 3).

B (K logits, zeros = uniform) picks a FLOPs bin each step through hard Gumbel-softmax G(B),
giving the target C = G(B) . centres. After a warm-up (B stays uniform while the generator
learns to hit targets) B takes an Adam step every `update_every` steps. Three estimators of the
direction (`estimator`):

- "delta" (the default): the paper's intent, "bins whose validation loss is still dropping
  fast gain probability", as an expected-improvement objective over the bins. At every update
  the generator's arch a_k of every bin k is evaluated on one fixed minival batch; with
  Delta_k = L_val(w_t, a_k) - L_val(w_{t-D}, a_k) across the update interval D,

      min_B  sum_k softmax(B)_k Delta_k,   d/dB_i = p_i (Delta_i - sum_j p_j Delta_j)   (exact).

  The same a_k (and the same images) are used at both ends of the interval, so Delta_k
  measures how much training moved bin k's loss, not the batch or the arch. No weight copies.
- "rate": "delta" per unit of training share. A bin's loss drops in part because it was drawn:
  the more probability B gives it, the faster it drops, so "delta" rewards the bins B already
  favours (a rich-get-richer loop, measured in bench/shift_mechanism.py). "rate" divides each
  Delta_k by K p_k, the bin's sampling share over the interval relative to uniform, so B
  follows the improvement per draw; under a uniform B it equals "delta". Its gradient,
  (Delta_i - p_i sum_j Delta_j) / K, is that of (1/K) sum_k Delta_k log softmax(B)_k: while
  every bin improves, B settles where each bin's probability is its share of the improvement.
- "literal": docs/method.md Eq. 7-8 as written: one bin drawn from G(B), one arch, the difference
  L_val(w_t) - L_val(w_{t-1}) against the weights one optimizer step back, back-propagated to
  B through the generator's bin input. Measured (bench/shift_mechanism.py): it does not move B
  towards under-trained bins; kept for comparison.

Previous weights (literal only). Cloning them every step would double the weight memory
traffic for nothing, so the sampler clones only when the *next* step is an update step.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..cost import CostBins

__all__ = ["ESTIMATORS", "PAPER_MOVEMENT", "ProbabilityShift", "shift_lr", "val_losses"]

# The paper updates B every 100 of ~1250 iterations per epoch for 450 epochs after a 50-epoch
# warm-up: ~5,600 Adam steps at lr 1e-3, so each logit can move by about 5.6 in all.
PAPER_MOVEMENT = 5.6
# The largest Adam step on B a derived lr may take (Adam's first steps move each logit by about
# lr). Measured (bench/compare_samplers.py, 200-step runs with 15 updates of B, seeds 0-2): the
# paper's movement over 15 updates (0.37 per update) collapsed softmax(B) onto 1-2 bins on
# cnn-fmnist (all-bin top-1 -3.35 +- 4.50 points vs uniform), 0.073 per update kept every bin at
# 0.05-0.20 (-0.03 +- 0.98) and matched 0.37 on vit-fmnist (+5.44 +- 3.55 vs +5.34 +- 2.81).
MAX_DERIVED_LR = 0.075


def shift_lr(lr: float | None, movement: float, warmup_steps: int, update_every: int, steps: int,
             max_lr: float = MAX_DERIVED_LR, probe_stride: int = 1) -> float:
    """B's learning rate: `lr` when given; else `movement` / (the number of steps of B in the
    run), so a run gets the paper's total movement budget, but at most `max_lr` per step: a
    short run (fewer than movement / max_lr = 75 steps at the defaults) moves B less in all
    rather than take steps larger than one minival batch's noise supports. With a probe stride m
    the first m - 1 updates only measure (ShiftSampler.delta_update), so they take no step."""
    if lr is not None:
        return float(lr)
    first = max(warmup_steps, 1)
    n = max(0, (steps - 1) // update_every - (first - 1) // update_every - (probe_stride - 1))
    return min(float(movement) / max(1, n), float(max_lr))

ESTIMATORS = ("delta", "rate", "literal")


@torch.no_grad()
def val_losses(supernet: nn.Module, archs, x: torch.Tensor, y: torch.Tensor, prepare_input=None) -> torch.Tensor:
    """Cross-entropy of each arch on (x, y) at the current weights, float64 [len(archs)].

    The supernet runs in the mode the caller left it in, with a fixed dropout seed, so the same
    weights give the same losses. Its buffers (BN running statistics) are put back after each
    arch, so they are left as they were.
    """
    buffers = list(supernet.buffers())
    saved = [b.clone() for b in buffers]
    out = []
    for a in archs:
        xa = prepare_input(x, a) if prepare_input is not None else x
        try:
            with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
                torch.manual_seed(0)
                logits = supernet(xa, a)
        finally:
            if buffers:
                torch._foreach_copy_(buffers, saved)
        out.append(F.cross_entropy(logits.float(), y).double())
    return torch.stack(out)


class ProbabilityShift(nn.Module):
    """Learnable logits B over K FLOPs bins, drawn with hard Gumbel-softmax (docs/method.md
    section 1)."""

    def __init__(
        self,
        bins: CostBins | torch.Tensor,
        warmup_steps: int = 0,
        update_every: int = 100,
        lr: float = 1e-3,
        estimator: str = "delta",
        device=None,
    ):
        super().__init__()
        if estimator not in ESTIMATORS:
            raise ValueError(f"ProbabilityShift: estimator={estimator!r}; allowed: {list(ESTIMATORS)}")
        if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
            raise ValueError(f"ProbabilityShift: lr={lr!r} must be a finite number > 0")
        self.estimator = estimator
        centers = bins.centers if isinstance(bins, CostBins) else torch.as_tensor(bins)
        if centers.dim() != 1 or len(centers) < 1:
            raise ValueError(
                f"ProbabilityShift: bin centres must be a non-empty vector, got shape {tuple(centers.shape)}"
            )
        if not (isinstance(update_every, int) and update_every >= 1):
            raise ValueError(
                f"ProbabilityShift: update_every={update_every!r} must be an integer >= 1"
            )
        if not (isinstance(warmup_steps, int) and warmup_steps >= 0):
            raise ValueError(
                f"ProbabilityShift: warmup_steps={warmup_steps!r} must be an integer >= 0"
            )
        self.n_bins = len(centers)
        self.warmup_steps, self.update_every, self.lr = warmup_steps, update_every, lr
        self.B = nn.Parameter(torch.zeros(self.n_bins, device=device))
        self.register_buffer(
            "centers", centers.to(device=device, dtype=torch.float64), persistent=False
        )
        # B has its own optimizer: the trainer's optimizer never sees it, so B stays frozen
        # while the generator and supernet step (docs/method.md section 3).
        self.optimizer = torch.optim.Adam([self.B], lr=lr)
        self.history: list[dict[str, Any]] = []

    # -- the distribution ----------------------------------------------------------------------
    def probs(self) -> torch.Tensor:
        """softmax(B), detached."""
        return F.softmax(self.B.detach(), dim=0)

    def draw(self, tau: float = 1.0, generator: torch.Generator | None = None):
        """One bin from G(B): (bin_vec [K] hard one-hot, straight-through to B; k; C = bin_vec . centres).

        `generator` (a `torch.Generator` on B's device) makes the draw reproducible.
        """
        if not tau > 0:
            raise ValueError(f"ProbabilityShift.draw: tau={tau} must be > 0")
        u = torch.rand(self.n_bins, generator=generator, device=self.B.device)
        expo = -torch.log(u.clamp_min(1e-20))  # Exp(1); clamps keep u = 0 finite
        gumbel = -torch.log(expo.clamp_min(1e-20))
        soft = F.softmax((self.B + gumbel) / tau, dim=0)
        k = int(soft.detach().argmax())
        hard = F.one_hot(torch.tensor(k, device=soft.device), self.n_bins).to(soft.dtype)
        bin_vec = hard - soft.detach() + soft
        target = bin_vec.double() @ self.centers
        return bin_vec, k, target

    # -- schedule ------------------------------------------------------------------------------
    def in_warmup(self, step: int) -> bool:
        """B stays uniform (no updates) for steps < warmup_steps."""
        return step < self.warmup_steps

    def should_update(self, step: int) -> bool:
        """Update B at step t when t >= warmup_steps, t > 0 (w_{t-1} exists) and t % update_every == 0."""
        return step > 0 and not self.in_warmup(step) and step % self.update_every == 0

    def needs_snapshot(self, step: int) -> bool:
        """True when step + 1 updates B: clone the weights now (before this step's optimizer step)."""
        return self.should_update(step + 1)

    @staticmethod
    @torch.no_grad()
    def snapshot(supernet: nn.Module) -> dict[str, torch.Tensor]:
        """Detached clones of the supernet's parameters and buffers: the previous weights w_{t-1}."""
        out = {n: p.detach().clone() for n, p in supernet.named_parameters()}
        out.update({n: b.detach().clone() for n, b in supernet.named_buffers()})
        return out

    # -- the update ----------------------------------------------------------------------------
    def update(
        self,
        supernet: nn.Module,
        generator: nn.Module,
        prev: Mapping[str, torch.Tensor] | nn.Module,
        x_val: torch.Tensor,
        y_val: torch.Tensor,
        step: int,
        tau: float = 1.0,
        gen_tau: float | None = None,
        rng: torch.Generator | None = None,
        prepare_input=None,
    ) -> dict[str, Any]:
        """One Adam step on B along d/dB [L_val(w_t | G(B)) - L_val(w_{t-1} | G(B))] (Eq. 7-8).

        `prev` is `snapshot(supernet)` taken one step earlier (or a module holding w_{t-1}).
        Only B changes: the gradient is taken w.r.t. B alone, and both forwards run on cloned
        buffers, so BN running statistics of the supernet are left as they were. The supernet
        runs in whatever mode (train/eval) the caller left it in. `rng` draws both the bin and the
        generator's Gumbel noise; `prepare_input(x, arch)` adapts the batch to the generated
        arch (the CNN resizes to its resolution).
        """
        if isinstance(prev, nn.Module):
            prev = self.snapshot(prev)
        bin_vec, k, _ = self.draw(tau, generator=rng)
        sample = generator(bin_vec, tau=gen_tau, rng=rng)  # one architecture for both losses
        if prepare_input is not None:
            x_val = prepare_input(x_val, sample.hard())

        params = dict(supernet.named_parameters())
        cur = {**params, **{n: b.detach().clone() for n, b in supernet.named_buffers()}}
        old = {n: t.clone() if n not in params else t for n, t in prev.items()}
        missing = sorted(set(cur) - set(old))
        if missing:
            raise ValueError(
                f"ProbabilityShift.update: previous weights lack {missing[:5]}; pass snapshot(supernet)"
            )
        loss_t = F.cross_entropy(functional_call(supernet, cur, (x_val, sample)), y_val)
        loss_prev = F.cross_entropy(functional_call(supernet, old, (x_val, sample)), y_val)
        diff = loss_t - loss_prev
        (grad,) = torch.autograd.grad(diff, [self.B], allow_unused=True)
        self.B.grad = torch.zeros_like(self.B) if grad is None else grad
        self.optimizer.step()
        rec = {
            "step": int(step),
            "bin": k,
            "probs": self.probs().tolist(),
            "loss_t": float(loss_t.detach()),
            "loss_prev": float(loss_prev.detach()),
            "grad_norm": float(self.B.grad.norm()),
        }
        self.optimizer.zero_grad(set_to_none=True)
        self.history.append(rec)
        return rec

    def step_expected(self, deltas: torch.Tensor, step: int, **extra: Any) -> dict[str, Any]:
        """One Adam step on B along the exact gradient of sum_k softmax(B)_k deltas_k.

        `deltas` [K]: each bin's validation-loss change over the last interval (the "delta"
        estimator). Bins whose loss dropped more than the softmax(B)-weighted mean gain
        probability. The "rate" estimator first divides deltas_k by K p_k, the share of the
        draws softmax(B) gave bin k over the interval (B only changes here) relative to uniform.
        Returns (and records) the update; "deltas" in the record are the measured changes.
        """
        d = torch.as_tensor(deltas, dtype=torch.float32, device=self.B.device).detach()
        if d.shape != (self.n_bins,) or not bool(torch.isfinite(d).all()):
            raise ValueError(
                f"ProbabilityShift.step_expected: deltas must be {self.n_bins} finite numbers, got {d.tolist()}"
            )
        p = F.softmax(self.B.detach(), dim=0)
        if self.estimator == "rate":  # p_i (g_i - sum_j p_j g_j) with g = d / (K p), division-free
            self.B.grad = (d - p * d.sum()) / self.n_bins
        else:
            self.B.grad = p * (d - (p * d).sum())
        self.optimizer.step()
        rec = {"step": int(step), "probs": self.probs().tolist(), "deltas": d.tolist(),
               "grad_norm": float(self.B.grad.norm()), **extra}
        self.optimizer.zero_grad(set_to_none=True)
        self.history.append(rec)
        return rec

    # -- checkpointing -------------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        # Saved under "_extra_state" of state_dict(): the Adam moments of B. Deep copies:
        # Adam's state_dict() hands out its live moment tensors, and loading keeps them, so
        # without a copy two instances would share (and double-step) one set of moments.
        return {"optimizer": copy.deepcopy(self.optimizer.state_dict())}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))

    def history_state(self) -> list[dict[str, Any]]:
        """The update history as JSON-able lists (kept out of state_dict)."""
        return [dict(r, probs=list(r["probs"])) for r in self.history]

    def load_history(self, history: list[dict[str, Any]]) -> None:
        self.history = [dict(r, probs=list(r["probs"])) for r in history]

    def extra_repr(self) -> str:
        return f"n_bins={self.n_bins}, warmup_steps={self.warmup_steps}, update_every={self.update_every}, lr={self.lr}"
