"""Attentive sampling (AttentiveNAS, Wang et al. 2021) on top of the sandwich rule.

Each of the `n_random` middle subnets is chosen by a FLOPs target: draw a bin of
`FlopsBins(space, n_bins)` uniformly, draw `n_candidates` architectures inside it
(`sample_in_bin`), score each by its minibatch loss and keep the lowest loss
(`mode="best"`, AttentiveNAS BestUp: push the Pareto front) or the highest (`mode="worst"`,
WorstUp). `max` and `min` are trained as in BigNAS, with in-place distillation. `cost=` bins
another cost instead of FLOPs (`shiftnas.cost.get_cost`: parameters, a latency table).

Under DDP every rank must see the same scores (all-reduce the loss in `score_fn`), or the
ranks would pick different subnets; the RNG draws do not depend on the scores, so the ranks'
sampler states stay in step either way.
"""

from __future__ import annotations

from typing import Any

from ..cost import Cost, make_bins
from ..spaces import SearchSpace
from .base import Sampled, Sampler, ScoreFn, register_sampler, sample_in_bin

__all__ = ["AttentiveSampler"]

MODES = ("best", "worst")


@register_sampler
class AttentiveSampler(Sampler):
    """`next(step, score_fn) -> [(max, "max"), (picked, "target") x n_random, (min, "min")]`."""

    name = "attentive"
    needs_score_fn = True

    def __init__(
        self,
        space: SearchSpace | str,
        seed: int = 0,
        n_random: int = 2,
        n_candidates: int = 3,
        mode: str = "best",
        n_bins: int = 10,
        max_tries: int = 200,
        cost: str | Cost = "flops",
    ):
        super().__init__(space, seed)
        if mode not in MODES:
            raise ValueError(
                f"attentive: mode={mode!r}; allowed: {list(MODES)} (best = lowest loss)"
            )
        if not isinstance(n_random, int) or n_random < 0:
            raise ValueError(f"attentive: n_random={n_random!r} must be an integer >= 0")
        if not isinstance(n_candidates, int) or n_candidates < 1:
            raise ValueError(f"attentive: n_candidates={n_candidates!r} must be an integer >= 1")
        self.n_random, self.n_candidates, self.mode = n_random, n_candidates, mode
        self.bins = make_bins(self.space, n_bins, cost)
        self.max_tries = max_tries
        self.fallbacks = 0  # candidate draws that never reached their bin
        self.last_bins: list[int] = []
        self._max, self._min = self.space.max(), self.space.min()

    @property
    def distill(self) -> bool:
        return True

    def next(self, step: int, score_fn: ScoreFn | None = None) -> list[Sampled]:
        if score_fn is None and self.n_random > 0:
            raise ValueError(
                "attentive sampler needs score_fn: pass next(step, score_fn=f) with f(arch) -> "
                "minibatch loss of that subnet (the trainer builds it from the current batch)"
            )
        picked, self.last_bins = [], []
        for _ in range(self.n_random):
            k = self.rng.randrange(len(self.bins))
            cands = []
            for _ in range(self.n_candidates):
                draw = sample_in_bin(self.space, self.bins, k, self.rng, self.max_tries)
                self.fallbacks += not draw.hit
                cands.append(draw.arch)
            scores = [float(score_fn(a)) for a in cands]
            pick = min if self.mode == "best" else max
            i = pick(range(len(cands)), key=scores.__getitem__)  # ties: the first candidate
            picked.append((cands[i], "target"))
            self.last_bins.append(k)
        return [(self._max, "max"), *picked, (self._min, "min")]

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "fallbacks": self.fallbacks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.fallbacks = int(state.get("fallbacks", 0))
