"""The evolutionary search baseline: the algorithm on synthetic fitness functions (no network),
then `shiftnas search` on the tiny trained runs."""
from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import pytest
import yaml

from shiftnas.cli import main
from shiftnas.cost import cost_range, count_cost, count_flops, count_params, get_cost
from shiftnas.search import load_run
from shiftnas.search.evolution import EvolutionSearch, SearchSettings, evolution_search
from shiftnas.spaces import ArchConfig, get_space

SPACES = ["vit-fmnist", "cnn-fmnist"]
SMALL = {"population": 20, "mutations": 10, "crossovers": 10, "parents": 5, "generations": 5}
TABLES = Path(__file__).resolve().parents[2] / "bench" / "results" / "latency"


def _distance_fitness(space, target):
    """Minus the index distance to `target`: 0 exactly at the target, easy to climb."""
    t = space.indices(target)
    return lambda a: -float(sum(abs(i - t[k]) for k, i in space.indices(a).items()))


def _recording(fn):
    calls = []

    def fitness(arch):
        calls.append(arch)
        return fn(arch)

    return fitness, calls


def _range(sp, count=count_flops):
    return count(sp, sp.min()), count(sp, sp.max())


@pytest.mark.parametrize("name", SPACES)
def test_cached_costs_match_the_cost_model(name):
    sp, rng = get_space(name), random.Random(0)
    cost = get_cost(sp, "latency", table=TABLES / f"{name}-b1.json")
    ev = EvolutionSearch(sp, lambda a: 0.0, flops_limit=1e9, latency_table=cost)
    for _ in range(20):
        arch = sp.sample(rng)
        assert ev.values(arch) == {"flops": count_flops(sp, arch), "params": count_params(sp, arch),
                                   "latency": count_cost(sp, arch, cost)}
        assert ev.costs(arch) == (count_flops(sp, arch), count_params(sp, arch))


@pytest.mark.parametrize("name", SPACES)
def test_a_latency_limit_holds_for_every_evaluated_arch(name):
    """A ceiling on the table's predicted latency (ns), tight enough that the walk is needed."""
    sp = get_space(name)
    cost = get_cost(sp, "latency", table=TABLES / f"{name}-b1.json")
    lo, hi = cost_range(sp, cost)
    limit = lo + 0.15 * (hi - lo)
    fitness, calls = _recording(lambda a: float(count_params(sp, a)))  # bigger is better: pushes on the limit
    res = EvolutionSearch(sp, fitness, latency_limit=limit, latency_table=cost, seed=0, **SMALL).run()
    assert res.evaluations == len(calls) >= SMALL["population"]
    assert all(count_cost(sp, a, cost) <= limit for a in calls)
    assert res.latency_ns == count_cost(sp, res.best, cost) <= limit
    assert all(h["best_latency_ms"] <= limit / 1e6 for h in res.history)


@pytest.mark.parametrize("name", SPACES)
def test_every_evaluated_arch_is_new_and_inside_the_box(name):
    sp = get_space(name)
    flo, fhi = _range(sp)
    plo, phi = _range(sp, count_params)
    box = {"flops_limit": flo + 0.4 * (fhi - flo), "flops_min": flo + 0.2 * (fhi - flo),
               "params_limit": plo + 0.6 * (phi - plo)}
    fitness, calls = _recording(lambda a: float(count_params(sp, a)))  # pushes against the limits
    res = EvolutionSearch(sp, fitness, seed=1, **box, **SMALL).run()
    assert len(calls) == len(set(calls)) == res.evaluations == len(res.evaluated) > SMALL["population"]
    for a in calls:
        f, p = count_flops(sp, a), count_params(sp, a)
        assert box["flops_min"] <= f <= box["flops_limit"] and p <= box["params_limit"], a.short()
    assert res.fitness == max(fitness(a) for a in set(calls)) and res.evaluated[res.best] == res.fitness
    assert (res.flops, res.params) == (count_flops(sp, res.best), count_params(sp, res.best))
    best = [h["best"] for h in res.history]
    assert len(res.history) == SMALL["generations"] + 1
    assert best == sorted(best) and best[-1] == res.fitness
    evals = [h["evaluations"] for h in res.history]
    assert evals == sorted(evals) and evals[0] == SMALL["population"] and evals[-1] == res.evaluations
    assert all(h["mean_topk"] <= h["best"] for h in res.history)
    assert [a for a, _ in res.top] == sorted(res.evaluated, key=lambda a: -res.evaluated[a])[: SMALL["parents"]]


@pytest.mark.parametrize("name", SPACES)
def test_finds_the_target_where_random_sampling_does_not(name):
    sp = get_space(name)
    target = sp.sample(random.Random(5))
    limit = count_flops(sp, target)
    fitness = _distance_fitness(sp, target)
    ga = EvolutionSearch(sp, fitness, flops_limit=limit, seed=0).run()  # AutoFormer's defaults
    rnd = EvolutionSearch(sp, fitness, flops_limit=limit, seed=0, population=ga.evaluations,
                          generations=0).run()
    assert rnd.evaluations == ga.evaluations
    assert ga.fitness == 0.0 and ga.best == target  # measured: random reaches -4 (vit), -9 (cnn)
    assert rnd.fitness <= -2.0


def test_deterministic_for_a_seed():
    sp = get_space("vit-fmnist")
    fitness = _distance_fitness(sp, sp.sample(random.Random(3)))
    runs = [EvolutionSearch(sp, fitness, flops_limit=30e6, seed=s, **SMALL).run() for s in (7, 7, 8)]
    assert list(runs[0].evaluated.items()) == list(runs[1].evaluated.items())
    assert runs[0].history == runs[1].history
    assert list(runs[0].evaluated) != list(runs[2].evaluated)


@pytest.mark.parametrize("name", SPACES)
def test_tight_budgets_walk_into_the_box(name):
    """At 1.3x the smallest subnet (or the top 10% of FLOPs) plain rejection hardly ever hits."""
    sp = get_space(name)
    flo, fhi = _range(sp)
    for box in ({"flops_limit": 1.3 * flo}, {"flops_min": 0.9 * fhi, "flops_limit": fhi}):
        fitness, calls = _recording(lambda a: float(count_params(sp, a)))
        res = EvolutionSearch(sp, fitness, seed=0, population=20, mutations=5, crossovers=5, parents=5,
                              generations=2, **box).run()
        assert res.evaluations >= 20
        assert all(box.get("flops_min", 0) <= count_flops(sp, a) <= box["flops_limit"] for a in calls)


def test_operators():
    sp = get_space("vit-fmnist")
    rng = random.Random(0)
    ev = EvolutionSearch(sp, lambda a: 0.0, flops_limit=60e6, mutate_prob=0.0, depth_prob=0.0)
    assert ev.depth_like == {"depth"}
    cnn = EvolutionSearch("cnn-fmnist", lambda a: 0.0, flops_limit=1e7)
    assert cnn.depth_like == {f"stage{s}.depth" for s in range(5)}
    for _ in range(20):
        a, b = sp.sample(rng), sp.sample(rng)
        assert ev.mutate(a, rng) == a  # nothing re-drawn at probability 0
        assert ev.crossover(a, a, rng) == a
        c = ev.crossover(a, b, rng)  # every value from a parent (layers only one has: from that one)
        da, db = a.to_dict(), b.to_dict()
        assert all(v in (da.get(k), db.get(k)) for k, v in c.to_dict().items())
    every = EvolutionSearch(sp, lambda a: 0.0, flops_limit=60e6, mutate_prob=1.0, depth_prob=1.0)
    assert len({every.mutate(sp.min(), rng) for _ in range(20)}) > 15  # everything re-drawn


@pytest.mark.parametrize("kwargs,msg", [
    ({"flops_limit": 5e6}, r"flops limit 5\.0M is below the smallest subnet: 'vit-fmnist' spans 7\.9M \.\. 62\.9M"),
    ({"params_limit": 1e5}, r"params limit 0\.1M is below the smallest subnet: 'vit-fmnist' spans 0\.1M \.\. 1\.2M"),
    ({"flops_limit": 60e6, "params_min": 2e6}, r"params lower limit 2\.0M is above the largest subnet: .* 1\.2M params"),
    ({"flops_limit": 20e6, "flops_min": 30e6}, "lower limit 30.0M is above its upper limit 20.0M"),
    ({"flops_limit": 8.0e6, "population": 5, "parents": 2},
     r"found only 1 of population=5 distinct subnets inside the limit \(flops <= 8\.0M \(space 'vit-fmnist': 7\.9M \.\. 62\.9M\)\)"),
    ({}, "give a flops_limit, params_limit and/or latency_limit"),
    ({"latency_limit": 4e6}, r"a latency limit needs latency_table= \(a table of space 'vit-fmnist'"),
    ({"latency_limit": 4e6, "latency_table": TABLES / "cnn-fmnist-b1.json"},
     "cnn-fmnist-b1.json is for space 'cnn-fmnist', not 'vit-fmnist'"),
    ({"latency_limit": 1.0, "latency_table": TABLES / "vit-fmnist-b1.json"},
     (r"latency limit 0\.000 ms is below the smallest subnet: 'vit-fmnist' spans \d+\.\d{3} ms \.\. \d+\.\d{3} ms "
     r"latency \(predicted by .*vit-fmnist-b1\.json\)")),
    ({"latency_limit": math.inf, "latency_table": TABLES / "vit-fmnist-b1.json"}, "latency_limit=inf must be"),
    ({"flops_limit": -1.0}, "flops_limit=-1.0 must be a positive finite number"),
    ({"flops_limit": math.nan}, "flops_limit=nan must be a positive finite number"),
    ({"flops_limit": 3e7, "population": 0}, "population=0 must be an integer >= 1"),
    ({"flops_limit": 3e7, "population": 4, "parents": 5}, r"parents=5 must be <= population=4"),
    ({"flops_limit": 3e7, "parents": 0}, "parents=0 must be an integer >= 1"),
    ({"flops_limit": 3e7, "mutations": 2.5}, r"mutations=2\.5 must be an integer >= 0"),
    ({"flops_limit": 3e7, "generations": -1}, "generations=-1 must be an integer >= 0"),
    ({"flops_limit": 3e7, "crossovers": True}, "crossovers=True must be an integer"),
    ({"flops_limit": 3e7, "mutate_prob": 1.5}, r"mutate_prob=1\.5 must be a probability in \[0, 1\]"),
    ({"flops_limit": 3e7, "depth_prob": -0.1}, "depth_prob=-0.1 must be a probability"),
])
def test_errors(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        EvolutionSearch("vit-fmnist", lambda a: 0.0, **kwargs).run()


def test_settings_are_one_set_of_keywords():
    """EvolutionSearch and evolution_search take SearchSettings' fields as keywords (checked,
    with its defaults); any other keyword is a TypeError naming the allowed ones."""
    ev = EvolutionSearch("vit-fmnist", lambda a: 0.0, flops_limit=3e7, population=12, seed=3)
    assert ev.settings == SearchSettings(population=12, seed=3) and ev.settings.generations == 20
    with pytest.raises(TypeError, match=r"EvolutionSearch\(\) got unexpected keyword argument\(s\) 'popsize'; "
                                        r"its search settings are population, mutations, .*, seed"):
        EvolutionSearch("vit-fmnist", lambda a: 0.0, flops_limit=3e7, popsize=7)

    class NoRun:  # evolution_search checks every keyword before it touches the run's data
        space, num_classes, cost_name = get_space("vit-fmnist"), 10, "flops"

    with pytest.raises(TypeError, match="unexpected keyword argument\\(s\\) 'gens'"):
        evolution_search(NoRun(), flops_limit=3e7, gens=2)
    with pytest.raises(ValueError, match="parents=9 must be <= population=4"):
        evolution_search(NoRun(), flops_limit=3e7, population=4, parents=9)


# -- the command on trained runs -----------------------------------------------------------------------
TINY = ["--population", "6", "--mutations", "3", "--crossovers", "3", "--parents", "2", "--generations", "2",
        "--images", "32", "--device", "cpu"]


def _check_result(r, calls, run_dir, space, flops_limit=None, params_limit=None, population=6, generations=2):
    assert r["method"] == "evolution" and r["space"] == space.name
    assert r["limit"] == {"flops": flops_limit, "params": params_limit}  # no latency keys without a latency limit
    assert r["cost"]["name"] == ("flops" if flops_limit is not None else "params") and "table" not in r["cost"]
    best = ArchConfig.from_dict(space.name, r["best"]["arch"])
    b = r["best"]
    assert b["short"] == best.short() and "latency_ms" not in b
    assert b["flops"] == count_flops(space, best) and b["mflops"] == pytest.approx(b["flops"] / 1e6)
    assert b["params"] == count_params(space, best)
    if flops_limit is not None:
        assert b["flops"] <= flops_limit
        assert r["constraint_error"] == pytest.approx((b["flops"] - flops_limit) / flops_limit)
    else:
        assert r["constraint_error"] is None
    if params_limit is not None:
        assert b["params"] <= params_limit
    archs = [c[0] for c in calls]
    assert r["evaluations"] == len(calls) == len(set(archs)) >= population
    assert all(c[1:3] == ("minival", 32) for c in calls)
    assert b["fitness"] == max(c[3] for c in calls) == {c[0]: c[3] for c in calls}[best]
    assert len(r["history"]) == generations + 1 and r["history"][-1]["evaluations"] == r["evaluations"]
    assert r["settings"]["population"] == population and r["settings"]["images"] == 32 and r["wall_s"] > 0
    # the fitness is the inherited top-1 of a freshly loaded run on the same images
    calls.clear()
    assert load_run(run_dir).evaluate(best, "minival", max_images=32)["top1"] == b["fitness"]


def test_search_command_json(shift_run, evaluate_calls, tmp_path, capsys):
    out = tmp_path / "res" / "search.json"
    assert main(["search", "--run", str(shift_run), "--flops", "30M", *TINY, "--json", "--out", str(out)]) == 0
    cap = capsys.readouterr()
    r = json.loads(cap.out)
    assert json.loads(out.read_text()) == r
    assert [line.split()[:2] for line in cap.err.strip().splitlines()] == [["gen", "0/2"], ["gen", "1/2"], ["gen", "2/2"]]
    _check_result(r, evaluate_calls, shift_run, get_space("vit-fmnist"), flops_limit=30e6)


def test_search_command_text(shift_run, capsys):
    argv = ["search", "--run", str(shift_run), "--flops", "20M", "--params", "0.5M", "--method", "evolution",
            "--population", "3", "--mutations", "1", "--crossovers", "1", "--parents", "1",
            "--generations", "1", "--images", "16", "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("gen   0/1") and "\ngen   1/1" in out
    assert "best (flops <= 20.0M, params <= 0.5M): d" in out
    assert "MFLOPs" in out and "constraint error" in out and "subnets evaluated in" in out


def test_search_command_cnn_params(cnn_run, evaluate_calls, tmp_path, capsys):
    # Each CNN evaluation recalibrates BN first (20 batches: ~5 s per subnet here): use 2.
    run_dir = tmp_path / "cnn"
    shutil.copytree(cnn_run, run_dir)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    cfg["eval"]["bn_calib_batches"] = 2
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    small = ["--population", "3", "--mutations", "1", "--crossovers", "1", "--parents", "1", "--generations", "1",
             "--images", "32", "--device", "cpu"]
    assert main(["search", "--run", str(run_dir), "--params", "0.5M", *small, "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    _check_result(r, evaluate_calls, run_dir, get_space("cnn-fmnist"), params_limit=0.5e6, population=3,
                  generations=1)


@pytest.mark.parametrize("extra,msg", [
    (["--flops", "1M"], "--flops '1M' = 1.0M is outside this space's range 7.9M .. 62.9M"),
    (["--params", "5M"], "--params '5M' = 5.0M is outside this space's range 0.1M .. 1.2M"),
    (["--flops", "30M", "--population", "4", "--parents", "5"], "parents=5 must be <= population=4"),
    (["--flops", "30M", "--mutate-prob", "2"], "mutate_prob=2.0 must be a probability in [0, 1]"),
    (["--flops", "30M", "--images", "0"], "--images=0 must be an integer >= 1"),
    (["--flops", "abc"], "--flops 'abc': not a budget"),
    ([], "give --flops, --params and/or --latency"),
    (["--flops", "30M", "--split", "nosuch"], "split 'nosuch' not found"),
])
def test_search_command_errors(shift_run, extra, msg, capsys):
    assert main(["search", "--run", str(shift_run), "--device", "cpu", *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("shiftnas search: error: ") and msg in err


def test_search_command_unknown_method(shift_run, capsys):
    with pytest.raises(SystemExit) as e:
        main(["search", "--run", str(shift_run), "--flops", "30M", "--method", "random"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --method: invalid choice: 'random' (choose from" in err and "evolution" in err
