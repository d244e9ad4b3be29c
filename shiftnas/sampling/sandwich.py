"""The sandwich rule with in-place distillation (BigNAS, Yu et al. 2020).

Each step trains the largest subnet on labels, then `n_random` uniform subnets and the
smallest subnet on the largest one's soft logits (`distill` is true).
"""

from __future__ import annotations

from ..spaces import SearchSpace
from .base import Sampled, Sampler, ScoreFn, register_sampler

__all__ = ["SandwichSampler"]


@register_sampler
class SandwichSampler(Sampler):
    """`next(step) -> [(max, "max"), (uniform, "random") x n_random, (min, "min")]`."""

    name = "sandwich"

    def __init__(self, space: SearchSpace | str, seed: int = 0, n_random: int = 2):
        super().__init__(space, seed)
        if not isinstance(n_random, int) or n_random < 0:
            raise ValueError(f"sandwich: n_random={n_random!r} must be an integer >= 0")
        self.n_random = n_random
        self._max, self._min = self.space.max(), self.space.min()

    @property
    def distill(self) -> bool:
        return True

    def next(self, step: int, score_fn: ScoreFn | None = None) -> list[Sampled]:
        middle = [(self.space.sample(self.rng), "random") for _ in range(self.n_random)]
        return [(self._max, "max"), *middle, (self._min, "min")]
