"""Uniform sampling (AutoFormer, SPOS): one architecture per step, every decision uniform.

Its FLOPs concentrate around the middle of the range (a sum of independent choices, the
Irwin-Hall effect of docs/method.md Remark 1): the extremes are rarely trained.
"""

from __future__ import annotations

from .base import Sampled, Sampler, ScoreFn, register_sampler

__all__ = ["UniformSampler"]


@register_sampler
class UniformSampler(Sampler):
    """`next(step) -> [(uniform arch, "random")]`."""

    name = "uniform"

    def next(self, step: int, score_fn: ScoreFn | None = None) -> list[Sampled]:
        return [(self.space.sample(self.rng), "random")]
