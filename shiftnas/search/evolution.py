"""The AutoFormer-style evolutionary search baseline under a FLOPs, params and/or latency limit.

    run = load_run("runs/fmnist-vit-shift")
    evolution_search(run, flops_limit=25e6)   # {"best": {...}, "evaluations", "history", ...}
    evolution_search(run, latency_limit=4e6, latency_table="bench/results/latency/vit-fmnist-b1.json")

AutoFormer (microsoft/Cream, AutoFormer/evolution.py; defaults of its `search` script): an
initial population of 50 random subnets inside the limit; every generation keeps the top 10
of all subnets evaluated so far, makes 25 mutations of random parents (each per-layer decision
re-drawn with probability 0.2, structural decisions with 0.4) and 25 crossovers (each decision
from one of two random parents), rejects children outside the limit or already evaluated, and
tops the population up with random subnets; 20 generations. The fitness is the inherited top-1
on a held-out split (here `minival`, carved from train, so the test set is never searched on).

`EvolutionSearch` is the algorithm over a space and any `fitness(arch) -> float` callable;
`evolution_search` runs it with a trained run's inherited accuracy. Both take the same keywords
(`SearchSettings` holds the hyperparameters once). A latency limit is in whole ns, on the
prediction of a measured table (`get_cost(space, "latency", table=...)`), as training uses it.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..atomic import write_json_atomic
from ..cost import Cost, as_cost, cost_range, count_cost, fast_cost, get_cost
from ..spaces import ArchConfig, SearchSpace, get_space
from .budget import format_budget, parse_budget, parse_latency
from .run import add_run_arguments

__all__ = ["EvolutionResult", "EvolutionSearch", "SearchSettings", "add_search_parser", "evolution_search",
           "latency_cost"]

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
    latency_ns: int | None = None  # the best arch's predicted latency, when the search has a latency table


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


@dataclass(frozen=True)
class SearchSettings:
    """AutoFormer's search hyperparameters (its `search` script's defaults) and the seed: the
    keywords `EvolutionSearch`, `evolution_search` and `shiftnas search` share. Checked on
    construction: a ValueError names the first bad one."""

    population: int = 50
    mutations: int = 25
    crossovers: int = 25
    parents: int = 10
    generations: int = 20
    mutate_prob: float = 0.2
    depth_prob: float = 0.4
    seed: int = 0

    def __post_init__(self) -> None:
        for name, lo in (("population", 1), ("mutations", 0), ("crossovers", 0), ("parents", 1), ("generations", 0)):
            _check_int(name, getattr(self, name), lo)
        if self.parents > self.population:
            raise ValueError(f"parents={self.parents} must be <= population={self.population} (the parents are "
                             "the top of it)")
        for name in ("mutate_prob", "depth_prob"):
            object.__setattr__(self, name, _check_prob(name, getattr(self, name)))

    @classmethod
    def of(cls, who: str, kwargs: dict[str, Any]) -> SearchSettings:
        """The settings in `kwargs`; a keyword that is none of them is a TypeError naming `who`."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise TypeError(f"{who}() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
                            f"its search settings are {', '.join(names)}")
        return cls(**kwargs)


def _latency_of(space: SearchSpace, table: Any) -> Cost:
    """`table` as a latency `Cost` of `space`: a path, a LatencyTable or such a Cost."""
    if table is None:
        raise ValueError(f"a latency limit needs latency_table= (a table of space {space.name!r}, built by "
                         f"`shiftnas latency build --space {space.name}`)")
    cost = as_cost(space, table) if isinstance(table, Cost) else get_cost(space, "latency", table=table)
    if cost.name != "latency":
        raise ValueError(f"latency_table={cost!r} is a {cost.name} cost, not a latency table")
    return cost


def _fmt(what: str, value: float) -> str:
    """A limit or cost for messages: ms for latency (ns inside), 25.0M for FLOPs and params."""
    return f"{value / 1e6:.3f} ms" if what == "latency" else format_budget(value)


class EvolutionSearch:
    """AutoFormer's genetic search over `space` maximising `fitness` inside a cost box.

    Upper limits `flops_limit` / `params_limit` / `latency_limit` (at least one), optional lower
    limits `flops_min` / `params_min` / `latency_min`. Latency is in whole ns, predicted by
    `latency_table` (a `shiftnas latency build` file, a LatencyTable or a latency `Cost` of the
    space): a latency limit needs one; a table alone is only reported. FLOPs and params use
    `num_classes` (default: the space's). The other keywords are `SearchSettings`' (population,
    ..., seed). Depth decisions (kind "depth", or gating other decisions) mutate with
    `depth_prob`, the others with `mutate_prob`; a layer a deeper mutation switches on gets
    random choices. All randomness comes from `random.Random(seed)`; no arch is evaluated twice.
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
        latency_limit: float | None = None,
        latency_min: float | None = None,
        latency_table: Any = None,
        num_classes: int | None = None,
        log: Callable[[str], Any] | None = None,
        **settings: Any,
    ):
        self.space = get_space(space)
        self.settings = SearchSettings.of(type(self).__name__, settings)
        self.fitness_fn, self.num_classes, self.log = fitness, num_classes, log
        self.limits = {
            "flops": (_check_limit("flops_min", flops_min), _check_limit("flops_limit", flops_limit)),
            "params": (_check_limit("params_min", params_min), _check_limit("params_limit", params_limit)),
        }
        self.cost = {w: as_cost(self.space, w, num_classes) for w in ("flops", "params")}
        latency = (_check_limit("latency_min", latency_min), _check_limit("latency_limit", latency_limit))
        if latency != (None, None) or latency_table is not None:
            self.cost["latency"] = _latency_of(self.space, latency_table)
            self.limits["latency"] = latency
        if all(hi is None for _, hi in self.limits.values()):
            raise ValueError("give a flops_limit, params_limit and/or latency_limit: the search needs an upper limit")
        gates = {d.gate[0] for d in self.space.decisions if d.gate is not None}
        self.depth_like = {d.name for d in self.space.decisions if d.kind == "depth" or d.name in gates}
        self._check_range()
        self._costs: dict[ArchConfig, dict[str, int]] = {}
        self.evaluated: dict[ArchConfig, float] = {}

    # -- the constraint --------------------------------------------------------------------------
    def _range(self, what: str) -> tuple[int, int]:
        return cost_range(self.space, self.cost[what])

    def describe_limits(self) -> str:
        """E.g. "flops <= 25.0M (space 'vit-fmnist': 7.9M .. 62.9M)"."""
        parts = []
        for what, (lo, hi) in self.limits.items():
            if lo is None and hi is None:
                continue
            a, b = self._range(what)
            box = (f"{_fmt(what, lo)} <= " if lo is not None else "") + what
            box += f" <= {_fmt(what, hi)}" if hi is not None else ""
            parts.append(f"{box} (space {self.space.name!r}: {_fmt(what, a)} .. {_fmt(what, b)})")
        return "; ".join(parts)

    def _check_range(self) -> None:
        for what, (lo, hi) in self.limits.items():
            a, b = self._range(what)
            rng = f"{self.space.name!r} spans {_fmt(what, a)} .. {_fmt(what, b)} {what}"
            if what == "latency":
                rng += f" (predicted by {self.cost[what].source or 'the latency table'})"
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"{what} lower limit {_fmt(what, lo)} is above its upper limit {_fmt(what, hi)}")
            if hi is not None and hi < a:
                raise ValueError(f"{what} limit {_fmt(what, hi)} is below the smallest subnet: {rng}; raise the limit")
            if lo is not None and lo > b:
                raise ValueError(f"{what} lower limit {_fmt(what, lo)} is above the largest subnet: {rng}; lower it")

    def values(self, arch: ArchConfig) -> dict[str, int]:
        """{cost name: value} of `arch` (flops, params and, with a latency limit, latency in ns), cached."""
        if arch not in self._costs:
            self._costs[arch] = {w: count_cost(self.space, arch, c) for w, c in self.cost.items()}
        return self._costs[arch]

    def costs(self, arch: ArchConfig) -> tuple[int, int]:
        """(FLOPs, params) of `arch`, cached."""
        v = self.values(arch)
        return v["flops"], v["params"]

    def _inside(self, values: dict[str, float]) -> bool:
        for what, (lo, hi) in self.limits.items():
            v = values[what]
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                return False
        return True

    def feasible(self, arch: ArchConfig) -> bool:
        return self._inside(self.values(arch))

    # -- random subnets inside the limit ---------------------------------------------------------
    def _walk(self, rng: random.Random) -> ArchConfig | None:
        """A uniform draw walked into the box one candidate step at a time (as `sample_in_bin`
        does for a FLOPs bin): for budgets where plain rejection sampling almost never hits."""
        decs = self.space.decisions
        limits = {w: lim for w, lim in self.limits.items() if lim != (None, None)}  # costs to compute
        fast = {w: fast_cost(self.space, self.cost[w]) for w in limits}
        t = next(iter(fast.values()))  # for `active`: the same for every cost
        idx = {d.name: rng.randrange(len(d.choices)) for d in decs}
        for _ in range(4 * sum(len(d.choices) for d in decs)):
            raw = {w: f.total(idx) for w, f in fast.items()}
            cur = {w: round(v) for w, v in raw.items()}
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
                nxt = {w: round(raw[w] + f.delta(idx, d.name, new)) for w, f in fast.items()}
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
            p = self.settings.depth_prob if d.name in self.depth_like else self.settings.mutate_prob
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
        return sorted(self.evaluated.items(), key=lambda kv: -kv[1])[: self.settings.parents]

    def _record(self, history: list[dict[str, Any]], g: int) -> list[ArchConfig]:
        top = self._top()
        best, fit = top[0]
        v = self.values(best)
        row = {
            "generation": g,
            "evaluations": len(self.evaluated),
            "best": fit,
            "mean_topk": sum(f for _, f in top) / len(top),
            "best_short": best.short(),
            "best_mflops": v["flops"] / 1e6,
            "best_params": v["params"],
        }
        ms = f"  {v['latency'] / 1e6:7.3f} ms" if "latency" in v else ""
        if ms:
            row["best_latency_ms"] = v["latency"] / 1e6
        history.append(row)
        if self.log is not None:
            self.log(
                f"gen {g:>3}/{self.settings.generations}  evals {row['evaluations']:>5}  best {fit:8.3f}  "
                f"top-{len(top)} mean {row['mean_topk']:8.3f}  {v['flops'] / 1e6:7.2f} MFLOPs{ms}  {best.short()}"
            )
        return [a for a, _ in top]

    def run(self) -> EvolutionResult:
        t0, s = time.perf_counter(), self.settings
        rng = random.Random(s.seed)
        self.evaluated = {}
        taken: set[ArchConfig] = set()
        first: list[ArchConfig] = []
        while len(first) < s.population:
            arch = self._random(rng, taken)
            if arch is None:
                raise ValueError(
                    f"found only {len(first)} of population={s.population} distinct subnets inside "
                    f"the limit ({self.describe_limits()}) after {2 * _TRIES_PER_ARCH} tries for the next "
                    "one; loosen the limit or lower the population"
                )
            taken.add(arch)
            first.append(arch)
        self._evaluate(first)
        history: list[dict[str, Any]] = []
        top = self._record(history, 0)
        for g in range(1, s.generations + 1):
            kids = self._children(s.mutations, lambda top=top: self.mutate(rng.choice(top), rng), taken)
            kids += self._children(
                s.crossovers, lambda top=top: self.crossover(rng.choice(top), rng.choice(top), rng), taken
            )
            while len(kids) < s.population:  # AutoFormer tops the population up at random
                arch = self._random(rng, taken)
                if arch is None:
                    break
                taken.add(arch)
                kids.append(arch)
            self._evaluate(kids)
            top = self._record(history, g)
        best, fit = self._top()[0]
        v = self.values(best)
        return EvolutionResult(
            best=best, fitness=fit, flops=v["flops"], params=v["params"], evaluations=len(self.evaluated),
            wall_s=time.perf_counter() - t0, history=history, evaluated=dict(self.evaluated), top=self._top(),
            latency_ns=v.get("latency"),
        )


def latency_cost(run, table: Any = None, flag: str = "latency_table=") -> Cost:
    """The latency cost a search of `run` is limited by: `table` (a path, or a latency `Cost`),
    else the table the run was trained with (`sampler.cost=latency`); for another run, no table
    is a ValueError naming `flag` (what the caller calls the table)."""
    if table is not None:
        return _latency_of(run.space, table)
    if run.cost_name == "latency":
        return run.trainer.cost
    sp = run.space.name
    raise ValueError(f"a latency limit needs a latency table, and run {str(run.run_dir)!r} was trained with "
                     f"sampler.cost={run.cost_name} (no table): give {flag} (a table of space {sp!r}, e.g. "
                     f"bench/results/latency/{sp}-b1.json, or build one with `shiftnas latency build --space {sp}`)")


def evolution_search(
    run,
    flops_limit: float | None = None,
    params_limit: float | None = None,
    *,
    latency_table: Any = None,
    images: int = 1000,
    split: str = "minival",
    log: Callable[[str], Any] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Evolutionary search on a loaded run (`load_run`): the fitness of a subnet is its inherited
    top-1 (%) on the first `images` of `split` (BN recalibrated for CNNs, inside `run.evaluate`).

    `options`: `EvolutionSearch`'s other keywords (flops_min, params_min, latency_limit and
    latency_min in ns, and the `SearchSettings`: population, ..., seed); all are checked before
    any subnet is evaluated. A latency limit reads `latency_table`, by default the table of a run
    trained with sampler.cost=latency (`latency_cost`).

    Keys: method, space, run, cost (`Cost.describe()` of the limit that counts: latency, with its
    table, else flops, else params), limit and min {flops, params, + latency_ms}, best {arch, short,
    flops, mflops, params, + latency_ms, fitness}, constraint_error ((best - limit) / limit of that
    cost; None for params), evaluations, wall_s, history (per generation: best and mean top-k
    fitness, evaluations so far), top (the final parents), settings.
    """
    _check_int("images", images, 1)
    if options.get("latency_limit") is not None or options.get("latency_min") is not None:
        latency_table = latency_cost(run, latency_table)

    def fitness(arch: ArchConfig) -> float:
        return float(run.evaluate(arch, split, max_images=images)["top1"])

    search = EvolutionSearch(run.space, fitness, flops_limit=flops_limit, params_limit=params_limit,
                             latency_table=latency_table, num_classes=run.num_classes, log=log, **options)
    run.loader(split)  # a missing split fails before the initial population is drawn
    res = search.run()

    def row(arch: ArchConfig, fit: float) -> dict[str, Any]:
        v = search.values(arch)
        ms = {"latency_ms": v["latency"] / 1e6} if "latency" in v else {}
        return {"arch": arch.to_dict(), "short": arch.short(), "flops": v["flops"], "mflops": v["flops"] / 1e6,
                "params": v["params"], **ms, "fitness": fit}

    def box(side: int) -> dict[str, float | None]:
        out = {w: search.limits[w][side] for w in ("flops", "params")}
        if "latency" in search.limits:
            lim = search.limits["latency"][side]
            out["latency_ms"] = None if lim is None else lim / 1e6
        return out

    what = next(w for w in ("latency", "flops", "params") if search.limits.get(w, (None, None))[1] is not None)
    limit, best = search.limits[what][1], search.values(res.best)[what]
    return {
        "method": "evolution",
        "space": run.space.name,
        "run": str(run.run_dir),
        "cost": search.cost[what].describe(),
        "limit": box(1),
        "min": box(0),
        "best": row(res.best, res.fitness),
        "constraint_error": None if what == "params" else (best - limit) / limit,
        "evaluations": res.evaluations,
        "wall_s": res.wall_s,
        "history": res.history,
        "top": [row(a, f) for a, f in res.top],
        "settings": {**asdict(search.settings), "images": images, "split": split, "fitness": f"top1 on {split}"},
    }


# -- the command ------------------------------------------------------------------------------------
def _cli_limits(args, run) -> dict[str, Any]:
    """The limits of `shiftnas search` as `evolution_search` keywords, checked against the run's
    space (and for --latency, its table's range)."""
    out: dict[str, Any] = {}
    for what in ("flops", "params"):
        lo, hi = (float(v) for v in cost_range(run.space, as_cost(run.space, what, run.num_classes)))
        for opt, key in ((what, f"{what}_limit"), (f"min_{what}", f"{what}_min")):
            text = getattr(args, opt)
            if text is not None:
                out[key] = parse_budget(text, lo, hi, "--" + opt.replace("_", "-"))
    if args.latency is not None:
        cost = latency_cost(run, args.latency_table, "--latency-table T.json")
        lo, hi = cost_range(run.space, cost)
        out["latency_limit"] = parse_latency(args.latency, lo, hi, table=cost.source)
        out["latency_table"] = cost
    return out


def _print_result(r: dict[str, Any], args) -> None:
    b, ms = r["best"], r["limit"].get("latency_ms")
    lim = [f"latency <= {ms:.3f} ms"] if ms is not None else []
    lim += [f"{k} <= {format_budget(v)}" for k, v in r["limit"].items() if v is not None and k != "latency_ms"]
    ms = f"  {b['latency_ms']:.3f} ms predicted" if "latency_ms" in b else ""
    print(f"best ({', '.join(lim)}): {b['short']}")
    print(f"  {b['mflops']:.2f} MFLOPs  {b['params'] / 1e6:.3f}M params{ms}  top-1 {b['fitness']:.2f}% "
          f"on {args.images} {args.split} images (inherited)")
    if r["constraint_error"] is not None:
        print(f"  constraint error {100 * r['constraint_error']:+.2f}% of the "
              f"{'latency' if r['cost']['name'] == 'latency' else 'FLOPs'} limit")
    if r["cost"].get("table"):
        print(f"  latency table: {r['cost']['table']}")
    print(f"  {r['evaluations']} subnets evaluated in {r['wall_s']:.1f} s")
    print(f"  arch: {json.dumps(b['arch'])}")
    if args.out is not None:
        print(f"  written to {args.out}")


def _cmd_search(args) -> int:
    import sys

    from .run import load_run

    if args.flops is None and args.params is None and args.latency is None:
        raise ValueError("give --flops, --params and/or --latency: the search needs an upper limit")
    if args.latency_table is not None and args.latency is None:
        raise ValueError(f"--latency-table {args.latency_table!r} is only read with --latency: give --latency TIME")
    settings = SearchSettings(**{f.name: getattr(args, f.name) for f in fields(SearchSettings)})
    _check_int("--images", args.images, 1)
    for what in ("flops", "params", "min_flops", "min_params"):  # malformed budgets fail before loading
        if getattr(args, what) is not None:
            parse_budget(getattr(args, what), what="--" + what.replace("_", "-"))
    if args.latency is not None:
        parse_latency(args.latency)
    if args.out is not None and Path(args.out).is_dir():
        raise ValueError(f"--out {args.out!r} is a folder; give a JSON file path")
    run = load_run(args.run, checkpoint=args.checkpoint, device=args.device)
    limits = _cli_limits(args, run)
    stream = sys.stderr if args.json else sys.stdout  # --json keeps stdout one JSON document

    def log(line: str) -> None:
        print(line, file=stream, flush=True)

    r = evolution_search(run, **limits, images=args.images, split=args.split, log=log, **asdict(settings))
    if args.out is not None:
        write_json_atomic(Path(args.out).expanduser(), r)
    if args.json:
        print(json.dumps(r))
    else:
        _print_result(r, args)
    return 0


def add_search_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``search`` to a ``shiftnas`` sub-parser set."""
    p = subparsers.add_parser(
        "search",
        help="evolutionary search for the best subnet under a FLOPs/params limit (baseline)",
        description=(
            "Search a trained run's supernet for the subnet with the best inherited top-1 under a\n"
            "FLOPs, params and/or latency limit: AutoFormer's evolutionary search (a random initial\n"
            "population inside the limit; each generation the top --parents breed --mutations mutations\n"
            "and --crossovers crossovers; no subnet is evaluated twice). The fitness is top-1 on the\n"
            "first --images of --split. A latency limit is on a measured table's prediction: the run's\n"
            "own for a run trained with sampler.cost=latency, else --latency-table. Prints one line per\n"
            "generation, then the best subnet, its MFLOPs, params (and predicted ms), fitness,\n"
            "constraint error, evaluations and wall time.\n\n"
            "examples:\n"
            "  shiftnas search --run runs/fmnist-vit-shift --flops 25M\n"
            "  shiftnas search --run runs/fmnist-vit-shift --params 0.5M --generations 10 --json\n"
            "  shiftnas search --run runs/fmnist-vit-shift --latency 1.1ms \\\n"
            "      --latency-table bench/results/latency/vit-fmnist-b1.json\n"
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
    p.add_argument("--latency", metavar="TIME", default=None,
                   help="upper latency limit on the table's prediction: 4ms, 4000us, 0.004s or a number of ms")
    p.add_argument("--latency-table", metavar="T.json", default=None,
                   help="latency table of the run's space (`shiftnas latency build`); default: the run's own, "
                        "for a run trained with sampler.cost=latency")
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
