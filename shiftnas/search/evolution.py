"""The AutoFormer-style evolutionary search baseline under a FLOPs and/or params limit.

    run = load_run("runs/fmnist-vit-shift")
    evolution_search(run, flops_limit=25e6)   # {"best": {...}, "evaluations", "history", ...}

AutoFormer (microsoft/Cream, AutoFormer/evolution.py; defaults of its `search` script): an
initial population of 50 random subnets inside the limit; every generation keeps the top 10
of all subnets evaluated so far, makes 25 mutations of random parents (each per-layer decision
re-drawn with probability 0.2, structural decisions with 0.4) and 25 crossovers (each decision
from one of two random parents), rejects children outside the limit or already evaluated, and
tops the population up with random subnets; 20 generations. The fitness is the inherited top-1
on a held-out split (here `minival`, carved from train, so the test set is never searched on).

`EvolutionSearch` is the algorithm over a space and any `fitness(arch) -> float` callable;
`evolution_search` runs it with a trained run's inherited accuracy.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import write_json_atomic
from ..cost import cost_terms, count_flops, count_params
from ..spaces import ArchConfig, SearchSpace, get_space
from .budget import format_budget, parse_budget
from .run import add_run_arguments

__all__ = ["EvolutionResult", "EvolutionSearch", "add_search_parser", "evolution_search"]

Fitness = Callable[[ArchConfig], float]
_TRIES_PER_ARCH = 20  # plain uniform draws (then as many walks) per random subnet wanted


@dataclass
class EvolutionResult:
    """What one search found. `evaluated` maps every arch evaluated to its fitness, in order."""

    best: ArchConfig
    fitness: float
    flops: int
    params: int
    evaluations: int
    wall_s: float
    history: list[dict[str, Any]]
    evaluated: dict[ArchConfig, float] = field(repr=False)
    top: list[tuple[ArchConfig, float]] = field(repr=False)  # the final parents, best first


class _CostTables:
    """FLOPs and params from candidate indices of every decision (inactive ones too, read at
    index 0 as `SearchSpace.indices` does): plain lists, for the many moves of `_walk`."""

    def __init__(self, space: SearchSpace, num_classes: int | None):
        self.decs = {d.name: d for d in space.decisions}
        self.terms = {
            what: [(t.names, t.table.tolist()) for t in cost_terms(space, what, num_classes)]
            for what in ("flops", "params")
        }

    def active(self, name: str, idx: dict[str, int]) -> bool:
        gate = self.decs[name].gate
        return gate is None or self.decs[gate[0]].choices[idx[gate[0]]] > gate[1]

    def cost(self, what: str, idx: dict[str, int]) -> int:
        total = 0.0
        for names, table in self.terms[what]:
            v = table
            for n in names:
                v = v[idx[n] if self.active(n, idx) else 0]
            total += v
        return round(total)


def _check_int(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name}={value!r} must be an integer >= {lo}")
    return value


def _check_prob(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value!r} must be a probability in [0, 1]")
    return float(value)


def _check_limit(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a positive finite number (or None)")
    return float(value)


def check_settings(*, population: int, mutations: int, crossovers: int, parents: int, generations: int,
                   mutate_prob: float, depth_prob: float) -> None:
    """Raise a ValueError naming the first bad hyperparameter (before any work is done)."""
    _check_int("population", population, 1)
    _check_int("mutations", mutations, 0)
    _check_int("crossovers", crossovers, 0)
    _check_int("parents", parents, 1)
    _check_int("generations", generations, 0)
    if parents > population:
        raise ValueError(f"parents={parents} must be <= population={population} (the parents are the top of it)")
    _check_prob("mutate_prob", mutate_prob)
    _check_prob("depth_prob", depth_prob)


class EvolutionSearch:
    """AutoFormer's genetic search over `space` maximising `fitness` inside a cost box.

    Upper limits `flops_limit` / `params_limit` (at least one), optional lower limits
    `flops_min` / `params_min`; costs use `num_classes` (default: the space's). Depth decisions
    (kind "depth", or gating other decisions) mutate with `depth_prob`, the others with
    `mutate_prob`; a layer a deeper mutation switches on gets random choices. All randomness
    comes from `random.Random(seed)`, and no arch is evaluated twice.
    """

    def __init__(
        self,
        space: SearchSpace | str,
        fitness: Fitness,
        *,
        flops_limit: float | None = None,
        params_limit: float | None = None,
        flops_min: float | None = None,
        params_min: float | None = None,
        population: int = 50,
        mutations: int = 25,
        crossovers: int = 25,
        parents: int = 10,
        generations: int = 20,
        mutate_prob: float = 0.2,
        depth_prob: float = 0.4,
        seed: int = 0,
        num_classes: int | None = None,
        log: Callable[[str], Any] | None = None,
    ):
        self.space = get_space(space)
        check_settings(population=population, mutations=mutations, crossovers=crossovers, parents=parents,
                       generations=generations, mutate_prob=mutate_prob, depth_prob=depth_prob)
        self.fitness_fn = fitness
        self.population, self.mutations, self.crossovers = population, mutations, crossovers
        self.parents, self.generations = parents, generations
        self.mutate_prob, self.depth_prob = float(mutate_prob), float(depth_prob)
        self.seed, self.num_classes, self.log = seed, num_classes, log
        self.limits = {
            "flops": (_check_limit("flops_min", flops_min), _check_limit("flops_limit", flops_limit)),
            "params": (_check_limit("params_min", params_min), _check_limit("params_limit", params_limit)),
        }
        if flops_limit is None and params_limit is None:
            raise ValueError("give a flops_limit and/or a params_limit: the search needs an upper limit")
        gates = {d.gate[0] for d in self.space.decisions if d.gate is not None}
        self.depth_like = {d.name for d in self.space.decisions if d.kind == "depth" or d.name in gates}
        self._tables = _CostTables(self.space, num_classes)
        self._check_range()
        self._costs: dict[ArchConfig, tuple[int, int]] = {}
        self.evaluated: dict[ArchConfig, float] = {}

    # -- the constraint --------------------------------------------------------------------------
    def _range(self, what: str) -> tuple[int, int]:
        count = count_flops if what == "flops" else count_params
        return (count(self.space, self.space.min(), self.num_classes),
                count(self.space, self.space.max(), self.num_classes))

    def describe_limits(self) -> str:
        """E.g. "flops <= 25.0M (space 'vit-fmnist': 7.9M .. 62.9M)"."""
        parts = []
        for what, (lo, hi) in self.limits.items():
            if lo is None and hi is None:
                continue
            a, b = self._range(what)
            box = (f"{format_budget(lo)} <= " if lo is not None else "") + what
            box += f" <= {format_budget(hi)}" if hi is not None else ""
            parts.append(f"{box} (space {self.space.name!r}: {format_budget(a)} .. {format_budget(b)})")
        return "; ".join(parts)

    def _check_range(self) -> None:
        for what, (lo, hi) in self.limits.items():
            a, b = self._range(what)
            rng = f"{self.space.name!r} spans {format_budget(a)} .. {format_budget(b)} {what}"
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"{what} lower limit {format_budget(lo)} is above its upper limit {format_budget(hi)}")
            if hi is not None and hi < a:
                raise ValueError(
                    f"{what} limit {format_budget(hi)} is below the smallest subnet: {rng}; raise the limit"
                )
            if lo is not None and lo > b:
                raise ValueError(
                    f"{what} lower limit {format_budget(lo)} is above the largest subnet: {rng}; lower it"
                )

    def costs(self, arch: ArchConfig) -> tuple[int, int]:
        """(FLOPs, params) of `arch`, cached."""
        if arch not in self._costs:
            self._costs[arch] = (count_flops(self.space, arch, self.num_classes),
                                 count_params(self.space, arch, self.num_classes))
        return self._costs[arch]

    def _inside(self, flops: float, params: float) -> bool:
        for (lo, hi), v in zip(self.limits.values(), (flops, params)):
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                return False
        return True

    def feasible(self, arch: ArchConfig) -> bool:
        return self._inside(*self.costs(arch))

    # -- random subnets inside the limit ---------------------------------------------------------
    def _walk(self, rng: random.Random) -> ArchConfig | None:
        """A uniform draw walked into the box one candidate step at a time (as `sample_in_bin`
        does for a FLOPs bin): for budgets where plain rejection sampling almost never hits."""
        t, decs = self._tables, self.space.decisions
        limits = {w: lim for w, lim in self.limits.items() if lim != (None, None)}  # costs to compute
        idx = {d.name: rng.randrange(len(d.choices)) for d in decs}
        for _ in range(4 * sum(len(d.choices) for d in decs)):
            cur = {w: t.cost(w, idx) for w in limits}
            over = [w for w, (_, hi) in limits.items() if hi is not None and cur[w] > hi]
            under = [w for w, (lo, _) in limits.items() if lo is not None and cur[w] < lo]
            if not over and not under:
                return self.space.from_indices(idx)
            step, fix = (-1, over) if over else (1, under)
            moves, safe = [], []
            for d in decs:  # fixed order: the walk depends on rng alone
                new = idx[d.name] + step
                if not t.active(d.name, idx) or not 0 <= new < len(d.choices):
                    continue
                old, idx[d.name] = idx[d.name], new
                nxt = {w: t.cost(w, idx) for w in limits}
                idx[d.name] = old
                if any((nxt[w] - cur[w]) * step > 0 for w in fix):
                    moves.append((d.name, new))
                    side = 0 if step < 0 else 1  # the limits this step must not jump past
                    if all(lim[side] is None or (nxt[w] - lim[side]) * step <= 0 for w, lim in limits.items()):
                        safe.append((d.name, new))
            if not moves:
                return None
            name, new = rng.choice(safe or moves)
            idx[name] = new
        return None

    def _random(self, rng: random.Random, taken: set[ArchConfig]) -> ArchConfig | None:
        """A new subnet inside the limit: plain uniform draws first (AutoFormer's rejection
        sampling), then walks into the box; None if neither finds one."""
        for _ in range(_TRIES_PER_ARCH):
            arch = self.space.sample(rng)
            if arch not in taken and self.feasible(arch):
                return arch
        for _ in range(_TRIES_PER_ARCH):
            arch = self._walk(rng)
            if arch is not None and arch not in taken and self.feasible(arch):
                return arch
        return None

    # -- genetic operators -----------------------------------------------------------------------
    def mutate(self, parent: ArchConfig, rng: random.Random) -> ArchConfig:
        """Each decision re-drawn with its probability; newly active layers drawn uniformly."""
        old, values = parent.to_dict(), {}
        for d in self.space.decisions:
            if not self.space.is_active(d, values):
                continue
            p = self.depth_prob if d.name in self.depth_like else self.mutate_prob
            if d.name not in old or rng.random() < p:
                values[d.name] = rng.choice(d.choices)
            else:
                values[d.name] = old[d.name]
        return ArchConfig.from_dict(self.space.name, values)

    def crossover(self, a: ArchConfig, b: ArchConfig, rng: random.Random) -> ArchConfig:
        """Each decision from one of the two parents, uniformly; a layer only one parent has
        comes from that parent."""
        va, vb, values = a.to_dict(), b.to_dict(), {}
        for d in self.space.decisions:
            if not self.space.is_active(d, values):
                continue
            have = [v[d.name] for v in (va, vb) if d.name in v]
            values[d.name] = rng.choice(have) if len(have) == 2 else have[0]
        return ArchConfig.from_dict(self.space.name, values)

    def _children(self, n: int, make: Callable[[], ArchConfig], taken: set[ArchConfig]) -> list[ArchConfig]:
        """Up to `n` new feasible children of `make`, in at most 10 n tries (AutoFormer's bound)."""
        out: list[ArchConfig] = []
        for _ in range(10 * n):
            if len(out) == n:
                break
            child = make()
            if child not in taken and self.feasible(child):
                taken.add(child)
                out.append(child)
        return out

    # -- the search ------------------------------------------------------------------------------
    def _evaluate(self, archs: list[ArchConfig]) -> None:
        for arch in archs:
            if arch in self.evaluated:  # pragma: no cover - callers only pass new archs
                continue
            self.evaluated[arch] = float(self.fitness_fn(arch))

    def _top(self) -> list[tuple[ArchConfig, float]]:
        # sorted() is stable: ties keep evaluation order, so the ranking depends on the seed alone.
        return sorted(self.evaluated.items(), key=lambda kv: -kv[1])[: self.parents]

    def _record(self, history: list[dict[str, Any]], g: int) -> list[ArchConfig]:
        top = self._top()
        best, fit = top[0]
        flops, params = self.costs(best)
        row = {
            "generation": g,
            "evaluations": len(self.evaluated),
            "best": fit,
            "mean_topk": sum(f for _, f in top) / len(top),
            "best_short": best.short(),
            "best_mflops": flops / 1e6,
            "best_params": params,
        }
        history.append(row)
        if self.log is not None:
            self.log(
                f"gen {g:>3}/{self.generations}  evals {row['evaluations']:>5}  best {fit:8.3f}  "
                f"top-{len(top)} mean {row['mean_topk']:8.3f}  {flops / 1e6:7.2f} MFLOPs  {best.short()}"
            )
        return [a for a, _ in top]

    def run(self) -> EvolutionResult:
        t0 = time.perf_counter()
        rng = random.Random(self.seed)
        self.evaluated = {}
        taken: set[ArchConfig] = set()
        first: list[ArchConfig] = []
        while len(first) < self.population:
            arch = self._random(rng, taken)
            if arch is None:
                raise ValueError(
                    f"found only {len(first)} of population={self.population} distinct subnets inside "
                    f"the limit ({self.describe_limits()}) after {2 * _TRIES_PER_ARCH} tries for the next "
                    "one; loosen the limit or lower the population"
                )
            taken.add(arch)
            first.append(arch)
        self._evaluate(first)
        history: list[dict[str, Any]] = []
        top = self._record(history, 0)
        for g in range(1, self.generations + 1):
            kids = self._children(self.mutations, lambda top=top: self.mutate(rng.choice(top), rng), taken)
            kids += self._children(
                self.crossovers, lambda top=top: self.crossover(rng.choice(top), rng.choice(top), rng), taken
            )
            while len(kids) < self.population:  # AutoFormer tops the population up at random
                arch = self._random(rng, taken)
                if arch is None:
                    break
                taken.add(arch)
                kids.append(arch)
            self._evaluate(kids)
            top = self._record(history, g)
        best, fit = self._top()[0]
        flops, params = self.costs(best)
        return EvolutionResult(
            best=best, fitness=fit, flops=flops, params=params, evaluations=len(self.evaluated),
            wall_s=time.perf_counter() - t0, history=history, evaluated=dict(self.evaluated), top=self._top(),
        )


def evolution_search(
    run,
    flops_limit: float | None = None,
    params_limit: float | None = None,
    *,
    flops_min: float | None = None,
    params_min: float | None = None,
    population: int = 50,
    mutations: int = 25,
    crossovers: int = 25,
    parents: int = 10,
    generations: int = 20,
    mutate_prob: float = 0.2,
    depth_prob: float = 0.4,
    images: int = 1000,
    split: str = "minival",
    seed: int = 0,
    log: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """Evolutionary search on a loaded run (`load_run`): the fitness of a subnet is its inherited
    top-1 (%) on the first `images` of `split` (BN recalibrated for CNNs, inside `run.evaluate`).

    Keys: method, space, limit {flops, params} (+ min {flops, params}), best {arch, short, flops,
    mflops, params, fitness}, constraint_error ((best flops - flops_limit) / flops_limit, None
    without a FLOPs limit), evaluations, wall_s, history (per generation: best and mean top-k
    fitness, evaluations so far), top (the final parents), settings.
    """
    _check_int("images", images, 1)
    settings = {"population": population, "mutations": mutations, "crossovers": crossovers, "parents": parents,
                    "generations": generations, "mutate_prob": mutate_prob, "depth_prob": depth_prob}
    check_settings(**settings)
    run.loader(split)  # a missing split fails before the initial population is drawn

    def fitness(arch: ArchConfig) -> float:
        return float(run.evaluate(arch, split, max_images=images)["top1"])

    search = EvolutionSearch(
        run.space, fitness, flops_limit=flops_limit, params_limit=params_limit, flops_min=flops_min,
        params_min=params_min, seed=seed, num_classes=run.num_classes, log=log, **settings,
    )
    res = search.run()

    def row(arch: ArchConfig, fit: float) -> dict[str, Any]:
        flops, params = search.costs(arch)
        return {"arch": arch.to_dict(), "short": arch.short(), "flops": flops, "mflops": flops / 1e6,
                "params": params, "fitness": fit}

    return {
        "method": "evolution",
        "space": run.space.name,
        "run": str(run.run_dir),
        "limit": {"flops": flops_limit, "params": params_limit},
        "min": {"flops": flops_min, "params": params_min},
        "best": row(res.best, res.fitness),
        "constraint_error": None if flops_limit is None else (res.flops - flops_limit) / flops_limit,
        "evaluations": res.evaluations,
        "wall_s": res.wall_s,
        "history": res.history,
        "top": [row(a, f) for a, f in res.top],
        "settings": {**settings, "images": images, "split": split, "seed": seed, "fitness": f"top1 on {split}"},
    }


# -- the command ------------------------------------------------------------------------------------
def _params_range(run) -> tuple[float, float]:
    sp = run.space
    return (float(count_params(sp, sp.min(), run.num_classes)), float(count_params(sp, sp.max(), run.num_classes)))


def _cmd_search(args) -> int:
    import sys

    from .run import load_run

    if args.flops is None and args.params is None:
        raise ValueError("give --flops and/or --params: the search needs an upper limit")
    check_settings(population=args.population, mutations=args.mutations, crossovers=args.crossovers,
                   parents=args.parents, generations=args.generations, mutate_prob=args.mutate_prob,
                   depth_prob=args.depth_prob)
    _check_int("--images", args.images, 1)
    for what in ("flops", "params", "min_flops", "min_params"):  # malformed budgets fail before loading
        if getattr(args, what) is not None:
            parse_budget(getattr(args, what), what="--" + what.replace("_", "-"))
    if args.out is not None and Path(args.out).is_dir():
        raise ValueError(f"--out {args.out!r} is a folder; give a JSON file path")
    run = load_run(args.run, checkpoint=args.checkpoint, device=args.device)
    flo, fhi = run.flops_range()
    plo, phi = _params_range(run)
    limits = {
        "flops_limit": parse_budget(args.flops, flo, fhi, "--flops") if args.flops is not None else None,
        "params_limit": parse_budget(args.params, plo, phi, "--params") if args.params is not None else None,
        "flops_min": parse_budget(args.min_flops, flo, fhi, "--min-flops") if args.min_flops is not None else None,
        "params_min": parse_budget(args.min_params, plo, phi, "--min-params") if args.min_params is not None else None,
    }
    stream = sys.stderr if args.json else sys.stdout  # --json keeps stdout one JSON document

    def log(line: str) -> None:
        print(line, file=stream, flush=True)

    r = evolution_search(
        run, **limits, population=args.population, mutations=args.mutations, crossovers=args.crossovers,
        parents=args.parents, generations=args.generations, mutate_prob=args.mutate_prob,
        depth_prob=args.depth_prob, images=args.images, split=args.split, seed=args.seed, log=log,
    )
    if args.out is not None:
        write_json_atomic(Path(args.out).expanduser(), r)
    if args.json:
        print(json.dumps(r))
    else:
        b = r["best"]
        lim = ", ".join(f"{k} <= {format_budget(v)}" for k, v in r["limit"].items() if v is not None)
        print(f"best ({lim}): {b['short']}")
        print(f"  {b['mflops']:.2f} MFLOPs  {b['params'] / 1e6:.3f}M params  top-1 {b['fitness']:.2f}% "
              f"on {args.images} {args.split} images (inherited)")
        if r["constraint_error"] is not None:
            print(f"  constraint error {100 * r['constraint_error']:+.2f}% of the FLOPs limit")
        print(f"  {r['evaluations']} subnets evaluated in {r['wall_s']:.1f} s")
        print(f"  arch: {json.dumps(b['arch'])}")
        if args.out is not None:
            print(f"  written to {args.out}")
    return 0


def add_search_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``search`` to a ``shiftnas`` sub-parser set."""
    p = subparsers.add_parser(
        "search",
        help="evolutionary search for the best subnet under a FLOPs/params limit (baseline)",
        description=(
            "Search a trained run's supernet for the subnet with the best inherited top-1 under a\n"
            "FLOPs and/or params limit: AutoFormer's evolutionary search (a random initial population\n"
            "inside the limit; each generation the top --parents breed --mutations mutations and\n"
            "--crossovers crossovers; no subnet is evaluated twice). The fitness is top-1 on the first\n"
            "--images of --split. Prints one line per generation, then the best subnet, its MFLOPs,\n"
            "params, fitness, FLOPs constraint error, evaluations and wall time.\n\n"
            "examples:\n"
            "  shiftnas search --run runs/fmnist-vit-shift --flops 25M\n"
            "  shiftnas search --run runs/fmnist-vit-shift --params 0.5M --generations 10 --json\n"
            "  shiftnas search --run runs/fmnist-cnn-shift --flops 8M --out search-8M.json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(p)
    p.add_argument("--flops", metavar="BUDGET", default=None,
                   help="upper FLOPs (multiply-adds) limit: 25M, 1.3G, 900k or a plain number")
    p.add_argument("--params", metavar="BUDGET", default=None,
                   help="upper parameter limit, same syntax (0.5M, 500k); with --flops both apply")
    p.add_argument("--min-flops", metavar="BUDGET", default=None, help="optional lower FLOPs limit")
    p.add_argument("--min-params", metavar="BUDGET", default=None, help="optional lower parameter limit")
    p.add_argument("--method", default="evolution", choices=["evolution"], help="search method (default: evolution)")
    p.add_argument("--generations", type=int, default=20, help="generations after the initial population (default: 20)")
    p.add_argument("--population", type=int, default=50, help="initial population; later ones are topped up to it (default: 50)")
    p.add_argument("--mutations", type=int, default=25, help="mutations per generation (default: 25)")
    p.add_argument("--crossovers", type=int, default=25, help="crossovers per generation (default: 25)")
    p.add_argument("--parents", type=int, default=10, help="top subnets kept as parents, <= population (default: 10)")
    p.add_argument("--mutate-prob", type=float, default=0.2,
                   help="probability to re-draw each per-layer decision in a mutation (default: 0.2)")
    p.add_argument("--depth-prob", type=float, default=0.4,
                   help="the same for depth decisions (default: 0.4, AutoFormer's s_prob)")
    p.add_argument("--images", type=int, default=1000, help="images of --split per fitness evaluation (default: 1000)")
    p.add_argument("--split", default="minival",
                   help="split the fitness is measured on (default: minival, held out of train)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the search (default: 0)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object (progress to stderr)")
    p.add_argument("--out", default=None, metavar="FILE.json", help="also write the result to this JSON file")
    p.set_defaults(fn=_cmd_search)
    return p
