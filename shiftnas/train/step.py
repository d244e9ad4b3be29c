"""One optimizer step, shared by the training engine and fine-tuning (`shiftnas.search.ranking`).

    backward(loss, scaler)            # as often as there are losses (gradients accumulate)
    out = optimizer_step(optimizer, [net.parameters(), extra], clip=5.0, scaler=scaler,
                         loss_finite=loss_ok, scheduler=scheduler)
    bad_in_row = next_bad_streak(out, bad_in_row)   # stop at MAX_BAD_STEPS

`optimizer_step` unscales (fp16), clips each parameter set on its own and measures its norm,
takes the step only when the loss and every gradient norm are finite, updates the GradScaler,
zeroes the gradients and steps the scheduler (every step, taken or not). Its `StepOutcome`
says which of three things happened:

- taken: a good step;
- overflow: the GradScaler skipped it. The loss was finite, the gradients were not, while the
  loss scale was above `SETTLING_SCALE`: fp16 gradients overflowing at a scale that is still
  settling (the scaler halves it and tries again). Normal at the start of an fp16 run (from
  65536 it takes up to 16 halvings), so it does not count toward MAX_BAD_STEPS;
- bad: a non-finite loss, or non-finite gradients without a scaler or at a scale at or below
  `SETTLING_SCALE` (where a smaller scale cannot help). MAX_BAD_STEPS of them in a row stop
  training; an overflow step neither extends nor breaks such a streak.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["MAX_BAD_STEPS", "SETTLING_SCALE", "StepOutcome", "backward", "next_bad_streak", "optimizer_step"]

MAX_BAD_STEPS = 10  # consecutive bad steps that stop training
SETTLING_SCALE = 1.0  # a GradScaler overflow above this scale is the scale settling, not a bad step


@dataclass(frozen=True)
class StepOutcome:
    grad_norm: float  # of the first parameter set, after unscaling, before clipping (nan/inf kept)
    stepped: bool  # the optimizer step was taken
    overflow: bool  # skipped by the GradScaler while its scale settles (not a bad step)

    @property
    def bad(self) -> bool:
        """Skipped for a non-finite loss or gradient that is not a scaler overflow."""
        return not self.stepped and not self.overflow


def backward(loss: torch.Tensor, scaler: Any = None) -> None:
    """`loss.backward()`, through `scaler.scale` when there is a GradScaler (fp16)."""
    (scaler.scale(loss) if scaler is not None else loss).backward()


def optimizer_step(optimizer: torch.optim.Optimizer, param_sets: Sequence[Iterable[torch.Tensor]], *,
                   clip: float | None, scaler: Any = None, loss_finite: bool = True,
                   scheduler: Any = None) -> StepOutcome:
    """Unscale, clip each set of `param_sets` to `clip` (None: no clipping, the norm is still
    measured), step when `loss_finite` and every norm is finite, update the scaler, zero the
    gradients, step `scheduler`. See the module docstring for the outcome."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    limit = clip if clip is not None else math.inf
    norms = [torch.nn.utils.clip_grad_norm_(params, limit) for params in param_sets]
    grads_finite = all(bool(torch.isfinite(n)) for n in norms)
    overflow = False
    if loss_finite and grads_finite:
        if scaler is not None:
            scaler.step(optimizer)
        else:
            optimizer.step()
    elif scaler is not None and loss_finite:
        overflow = scaler.get_scale() > SETTLING_SCALE  # the scale before update() lowers it
    if scaler is not None:
        scaler.update()  # halves the scale when unscale_ found non-finite gradients
    optimizer.zero_grad(set_to_none=True)
    if scheduler is not None:
        scheduler.step()
    return StepOutcome(float(norms[0]), loss_finite and grads_finite, overflow)


def next_bad_streak(out: StepOutcome, in_row: int) -> int:
    """Consecutive bad steps after `out`: one more after a bad step, 0 after a step taken,
    unchanged after a scaler overflow."""
    if out.stepped:
        return 0
    return in_row if out.overflow else in_row + 1
