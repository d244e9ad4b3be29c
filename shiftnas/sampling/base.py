"""The sampler interface, the sampler registry and the shared FLOPs-bin sampler.

A sampler decides which subnets one training step trains: `sampler.next(step)` returns a list
of `(arch, role)` pairs, role in `ROLES`. The trainer forwards each arch, trains the "max"
subnet on labels and, where `sampler.distill` is true, every other subnet on the max subnet's
soft logits (BigNAS in-place distillation).

Determinism: a sampler draws only from its own `random.Random(seed)`, so DDP ranks that build
it with the same seed draw the same architectures, and `state_dict()` / `load_state_dict()`
(the RNG state as JSON-able lists) make a resumed run continue the exact sequence.
"""

from __future__ import annotations

import abc
import contextlib
import difflib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..cost import CostBins, fast_cost
from ..spaces import ArchConfig, SearchSpace, get_space
from ..spaces.arch_sample import ArchSample

__all__ = [
    "ROLES",
    "BinDraw",
    "Sampled",
    "Sampler",
    "ScoreFn",
    "StepContext",
    "build_sampler",
    "list_samplers",
    "register_sampler",
    "sample_in_bin",
]

ROLES = ("max", "min", "random", "target")

Arch = ArchConfig | ArchSample
Sampled = tuple[Arch, str]  # (arch, role), role in ROLES
ScoreFn = Callable[[ArchConfig], float]  # arch -> minibatch loss (lower is better)

_SAMPLERS: dict[str, type] = {}


@dataclass
class StepContext:
    """What a sampler's `before_step` hook may use: the supernet, how to adapt a batch to an
    arch (the CNN resizes), the step's autocast, and the minival split's batches by index
    (`minival(i)`: the i-th batch of a fixed order; `minival(0)` is the same batch every time)."""

    net: Any
    prepare_input: Callable[[Any, ArchConfig], Any] | None = None
    autocast: Callable[[], Any] = field(default=contextlib.nullcontext)
    minival: Callable[[int], tuple[Any, Any]] | None = None


class Sampler(abc.ABC):
    """Base class: owns the space, a seeded RNG and the (de)serialisation of its state."""

    name = "base"
    needs_score_fn = False  # True: next() must be given score_fn (the trainer builds one)
    splits: tuple[str, ...] = ()  # data splits it reads besides train/val ("minival")
    display_index = -1  # which of next()'s subnets the progress line and metrics show

    def __init__(self, space: SearchSpace | str, seed: int = 0):
        self.space = get_space(space)
        self.seed = int(seed)
        self.rng = random.Random(self.seed)

    @property
    def distill(self) -> bool:
        """Whether non-max subnets learn from the max subnet's soft logits (in-place KD)."""
        return False

    @abc.abstractmethod
    def next(self, step: int, score_fn: ScoreFn | None = None) -> list[Sampled]:
        """The (arch, role) pairs to train at `step`."""

    def extra_loss(self, arch: Arch) -> Any:
        """A loss term the sampler adds for `arch` (the shift sampler: the resource loss), or None."""
        return None

    def trainable(self) -> dict[str, Any]:
        """Modules the trainer optimises together with the supernet (name -> nn.Module)."""
        return {}

    def to(self, device: Any) -> Sampler:
        """Move the sampler's modules (if any) to `device`."""
        return self

    # -- lifecycle hooks: the engine calls them for every sampler alike -------------------------
    def before_step(self, step: int, ctx: StepContext) -> dict[str, Any] | None:
        """Called at the start of step `step`, before `next`; may return a record to log."""
        return None

    def step_metrics(self, step: int) -> dict[str, Any]:
        """Extra fields of this step's metrics (e.g. the drawn bin)."""
        return {}

    def log_metrics(self) -> dict[str, Any]:
        """Extra fields of each periodic metrics.jsonl line (e.g. softmax(B))."""
        return {}

    def eval_archs(self) -> list[tuple[ArchConfig, int]]:
        """(arch, bin) pairs the sampler proposes for the end-of-run evaluation (the generator's)."""
        return []

    def summary(self) -> dict[str, Any]:
        """Extra fields of summary.json."""
        return {}

    def history(self) -> list[dict[str, Any]]:
        """The distribution's update history for sampling.json (empty: a fixed distribution)."""
        return []

    # -- resume -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = self.rng.getstate()
        return {"name": self.name, "seed": self.seed, "rng": [version, list(internal), gauss]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name", self.name) != self.name:
            raise ValueError(
                f"sampler state is from {state['name']!r}, this sampler is {self.name!r}; "
                "resume with the sampler the run was started with"
            )
        version, internal, gauss = state["rng"]
        self.rng.setstate((int(version), tuple(int(x) for x in internal), gauss))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.space.name!r}, seed={self.seed})"


def register_sampler(cls: type) -> type:
    _SAMPLERS[cls.name] = cls
    return cls


def list_samplers() -> list[str]:
    return sorted(_SAMPLERS)


def build_sampler(name: str, space: SearchSpace | str, **cfg: Any) -> Sampler:
    """Sampler `name` over `space`; `cfg` goes to its constructor (seed, n_bins, ...)."""
    try:
        cls = _SAMPLERS[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), list_samplers(), n=3)
        raise ValueError(
            f"unknown sampler {name!r}; known samplers: {list_samplers()}; close matches: {close}"
        ) from None
    return cls(space, **cfg)


# -- drawing an architecture inside one FLOPs bin -------------------------------------------------
class BinDraw(NamedTuple):
    arch: ArchConfig
    flops: float  # the arch's cost, in the bins' cost (FLOPs unless the bins are of another)
    hit: bool  # False: no arch inside the bin was found; `arch` is the closest one seen


def sample_in_bin(
    space: SearchSpace | str, bins: CostBins, k: int, rng: random.Random, max_tries: int = 200
) -> BinDraw:
    """An architecture whose FLOPs fall in bin `k`: a uniform draw walked greedily into the bin.

    The cost is the bins' (`bins.cost`: FLOPs for `FlopsBins`; parameters or a latency table
    for `CostBins(..., cost=...)`); "FLOPs" below reads as that cost.

    Pure rejection sampling is hopeless at the edges (uniform FLOPs concentrate in the middle,
    docs/method.md Remark 1), so: draw every decision uniformly; while the FLOPs are below (above)
    the bin, move one randomly chosen active decision one candidate up (down), choosing among the
    moves that do not jump past the bin when there are any. At most `max_tries` moves; if the
    bin is never reached the closest arch seen is returned with `hit=False`.
    """
    space = get_space(space)
    if not 0 <= k < len(bins):
        raise ValueError(f"bin k={k} is out of range; {bins!r} has bins 0..{len(bins) - 1}")
    ff = fast_cost(space, bins.cost)
    lo, hi = bins.window(k)  # the integer costs bins.bin_of maps to k
    last = k == len(bins) - 1

    def inside(f: float) -> bool:
        return lo <= round(f) <= hi  # round: as count_flops does

    def gap(f: float) -> float:
        return 0.0 if inside(f) else (lo - f if f < lo else f - hi)

    idx = {d.name: rng.randrange(len(d.choices)) for d in space.decisions}
    f = ff.total(idx)
    best_idx, best_f = dict(idx), f
    for _ in range(max_tries):
        if inside(f):
            break
        up = f < lo
        moves = []
        for d in space.decisions:  # fixed order: the draw depends on rng alone
            if not ff.active(d.name, idx):
                continue
            new = idx[d.name] + (1 if up else -1)
            if 0 <= new < len(d.choices):
                df = ff.delta(idx, d.name, new)
                if df != 0.0:
                    moves.append((d.name, new, f + df))
        if not moves:  # already at the space's max (min): the bin is unreachable from here
            break
        if up:  # moves that do not jump past the bin (any move is fine below the first bin)
            ok = [m for m in moves if m[2] <= hi or last]
        else:
            ok = [m for m in moves if m[2] >= lo or k == 0]
        name, new, f = rng.choice(ok) if ok else min(moves, key=lambda m: gap(m[2]))
        idx[name] = new
        if gap(f) < gap(best_f):
            best_idx, best_f = dict(idx), f
    if inside(f):
        best_idx, best_f = idx, f
    return BinDraw(space.from_indices(best_idx), float(round(best_f)), inside(best_f))
