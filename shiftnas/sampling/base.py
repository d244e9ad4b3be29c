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
import difflib
import random
from collections.abc import Callable
from typing import Any, NamedTuple

from ..cost import FlopsBins, cost_terms
from ..spaces import ArchConfig, SearchSpace, get_space
from ..spaces.arch_sample import ArchSample

__all__ = [
    "ROLES",
    "BinDraw",
    "Sampled",
    "Sampler",
    "ScoreFn",
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


class Sampler(abc.ABC):
    """Base class: owns the space, a seeded RNG and the (de)serialisation of its state."""

    name = "base"
    needs_score_fn = False  # True: next() must be given score_fn (the trainer builds one)

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
    flops: float
    hit: bool  # False: no arch inside the bin was found; `arch` is the closest one seen


class _FastFlops:
    """FLOPs from candidate indices via the tables of `shiftnas.cost` (no ArchConfig per step).

    Indices are kept for every decision, inactive ones too (so a layer that a depth increase
    switches on brings its own random choices); an inactive decision reads the table at index 0,
    as `SearchSpace.indices` does, so the value equals `count_flops` of the config.
    """

    def __init__(self, space: SearchSpace):
        self.space = space
        self.decs = {d.name: d for d in space.decisions}
        # Flat python lists: a list lookup is ~50x cheaper than indexing a torch tensor.
        self.terms = []
        for t in cost_terms(space, "flops"):
            shape = list(t.table.shape)
            strides, s = [], 1
            for n in reversed(shape):
                strides.append(s)
                s *= n
            self.terms.append((t.names, tuple(reversed(strides)), t.table.flatten().tolist()))
        gated_by: dict[str, set[str]] = {}
        for d in space.decisions:
            if d.gate is not None:
                gated_by.setdefault(d.gate[0], set()).add(d.name)
        # Terms whose value can change when decision n moves (directly or by (de)activation).
        self.touch = {
            d.name: [
                i
                for i, (names, _, _) in enumerate(self.terms)
                if d.name in names or gated_by.get(d.name, set()) & set(names)
            ]
            for d in space.decisions
        }

    def active(self, name: str, idx: dict[str, int]) -> bool:
        gate = self.decs[name].gate
        return gate is None or self.decs[gate[0]].choices[idx[gate[0]]] > gate[1]

    def term(self, i: int, idx: dict[str, int]) -> float:
        names, strides, flat = self.terms[i]
        off = 0
        for n, s in zip(names, strides):
            if self.active(n, idx):
                off += idx[n] * s
        return flat[off]

    def total(self, idx: dict[str, int]) -> float:
        return sum(self.term(i, idx) for i in range(len(self.terms)))

    def delta(self, idx: dict[str, int], name: str, new: int) -> float:
        touched = self.touch[name]
        before = sum(self.term(i, idx) for i in touched)
        old, idx[name] = idx[name], new
        after = sum(self.term(i, idx) for i in touched)
        idx[name] = old
        return after - before


_FAST: dict[str, _FastFlops] = {}


def _fast(space: SearchSpace) -> _FastFlops:
    if space.name not in _FAST:
        _FAST[space.name] = _FastFlops(space)
    return _FAST[space.name]


def sample_in_bin(
    space: SearchSpace | str, bins: FlopsBins, k: int, rng: random.Random, max_tries: int = 200
) -> BinDraw:
    """An architecture whose FLOPs fall in bin `k`: a uniform draw walked greedily into the bin.

    Pure rejection sampling is hopeless at the edges (uniform FLOPs concentrate in the middle,
    PAPER.md Remark 1), so: draw every decision uniformly; while the FLOPs are below (above) the
    bin, move one randomly chosen active decision one candidate up (down), choosing among the
    moves that do not jump past the bin when there are any. At most `max_tries` moves; if the
    bin is never reached the closest arch seen is returned with `hit=False`.
    """
    space = get_space(space)
    if not 0 <= k < len(bins):
        raise ValueError(f"bin k={k} is out of range; {bins!r} has bins 0..{len(bins) - 1}")
    ff = _fast(space)
    lo, hi = float(bins.edges[k]), float(bins.edges[k + 1])
    last = k == len(bins) - 1

    def inside(f: float) -> bool:  # same convention as FlopsBins.bin_of (top edge -> last bin)
        f = round(f)  # as count_flops rounds
        return lo <= f < hi or (last and f == hi)

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
