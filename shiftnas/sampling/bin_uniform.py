"""Bin-uniform sampling, the paper's ablation baseline: the FLOPs bin uniform, no shift.

Each step draws a bin of `FlopsBins(space, n_bins)` uniformly, then an architecture inside it
(`sample_in_bin`), so every FLOPs range is trained equally often, unlike uniform sampling.
`cost=` bins another cost instead (`shiftnas.cost.get_cost`: parameters, a latency table).
"""

from __future__ import annotations

from typing import Any

from ..cost import Cost, make_bins
from ..spaces import SearchSpace
from .base import Sampled, Sampler, ScoreFn, register_sampler, sample_in_bin

__all__ = ["BinUniformSampler"]


@register_sampler
class BinUniformSampler(Sampler):
    """`next(step) -> [(arch in a uniformly drawn bin, "target")]`; `last_bins` holds the bins."""

    name = "bin_uniform"

    def __init__(
        self, space: SearchSpace | str, seed: int = 0, n_bins: int = 10, max_tries: int = 200,
        cost: str | Cost = "flops",
    ):
        super().__init__(space, seed)
        self.bins = make_bins(self.space, n_bins, cost)
        self.max_tries = max_tries
        self.fallbacks = 0  # draws that never reached their bin (the closest arch was used)
        self.last_bins: list[int] = []

    def next(self, step: int, score_fn: ScoreFn | None = None) -> list[Sampled]:
        k = self.rng.randrange(len(self.bins))
        draw = sample_in_bin(self.space, self.bins, k, self.rng, self.max_tries)
        self.fallbacks += not draw.hit
        self.last_bins = [k]
        return [(draw.arch, "target")]

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "fallbacks": self.fallbacks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.fallbacks = int(state.get("fallbacks", 0))
