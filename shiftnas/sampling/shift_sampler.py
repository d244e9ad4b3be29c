"""The `shift` sampler: ShiftNAS's probability shift + architecture generator (PAPER.md 1-3).

Each step: draw a FLOPs bin from G(B) (`ProbabilityShift.draw`), give its one-hot to the
`ArchGenerator`, which emits one `ArchSample` (hard Gumbel-softmax one-hots). The trainer runs
the supernet with that sample (the prefix masks carry the task gradient to the generator) and
adds `extra_loss(sample)`: the resource loss lam * ((cost(p) - C) / F_max)^2 towards the drawn
bin's centre C. B itself is not trained by that step (the bin is drawn without a gradient to
B); the trainer calls `shift.update(...)` every `update_every` steps after the warm-up.

All randomness (bin draws, Gumbel noise) comes from one `torch.Generator` seeded with `seed`:
DDP ranks built with the same seed emit the same architecture every step, and `state_dict()`
holds the generator's RNG state, the generator and B, so a resumed run continues exactly.
"""

from __future__ import annotations

from typing import Any

import torch

from ..generator import ArchGenerator
from ..spaces import SearchSpace
from ..spaces.arch_sample import ArchSample
from .base import Arch, Sampled, Sampler, ScoreFn, register_sampler
from .shift import ProbabilityShift

__all__ = ["ShiftSampler"]


@register_sampler
class ShiftSampler(Sampler):
    """`next(step) -> [(ArchSample, "target")]`; `extra_loss(sample)` is the resource loss."""

    name = "shift"

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
        device: Any = None,
    ):
        super().__init__(space, seed)
        if not (isinstance(total_steps, int) and total_steps >= 1):
            raise ValueError(f"shift: total_steps={total_steps!r} must be an integer >= 1")
        if not lam >= 0:
            raise ValueError(f"shift: lam={lam!r} must be >= 0")
        self.total_steps, self.lam = total_steps, float(lam)
        self.generator = ArchGenerator(
            self.space, n_bins, hidden=hidden, tau_start=tau_start, tau_end=tau_end, device=device
        )
        self.bins = self.generator.bins
        self.shift = ProbabilityShift(
            self.bins, warmup_steps=warmup_steps, update_every=update_every, lr=shift_lr, device=device
        )
        self.device = torch.device(device if device is not None else "cpu")
        self.torch_rng = torch.Generator(device=self.device)
        self.torch_rng.manual_seed(self.seed)
        self.last: dict[str, Any] = {}

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
        with torch.no_grad():  # B is frozen during the supernet/AG step (PAPER.md section 3)
            bin_vec, k, target = self.shift.draw(1.0, generator=self.torch_rng)
        sample = self.generator(bin_vec, tau=self.tau(step), rng=self.torch_rng)
        self.last = {"bin": k, "target": target}
        return [(sample, "target")]

    def extra_loss(self, arch: Arch) -> torch.Tensor | None:
        if not isinstance(arch, ArchSample) or "target" not in self.last:
            return None
        return self.generator.resource_loss(arch, self.last["target"], self.lam)

    def trainable(self) -> dict[str, Any]:
        return {"generator": self.generator}

    def update_shift(self, supernet, prev, x_val, y_val, step: int, prepare_input=None) -> dict[str, Any]:
        """One probability-shift update of B (see `ProbabilityShift.update`)."""
        return self.shift.update(
            supernet, self.generator, prev, x_val, y_val, step,
            tau=1.0, gen_tau=self.tau(step), rng=self.torch_rng, prepare_input=prepare_input,
        )

    # -- resume -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "torch_rng": self.torch_rng.get_state(),
            "generator": self.generator.state_dict(),
            "shift": self.shift.state_dict(),
            "history": self.shift.history_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.torch_rng.set_state(state["torch_rng"].cpu())
        self.generator.load_state_dict(state["generator"])
        self.shift.load_state_dict(state["shift"])
        self.shift.load_history(state["history"])

    def __repr__(self) -> str:
        return f"ShiftSampler({self.space.name!r}, seed={self.seed}, bins={len(self.bins)}, lam={self.lam})"
