"""Training with another cost than FLOPs: sampler.cost / sampler.latency_table (config errors, a
tiny run whose bins, counts and evaluation table are in the latency table's ms)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from fmnist_tiny import tiny_overrides

from shiftnas.cost import count_cost, get_cost
from shiftnas.spaces import ArchConfig
from shiftnas.train.cli import main
from shiftnas.train.config import load_config
from shiftnas.train.evaluate import format_bin_table

TABLES = Path(__file__).resolve().parents[2] / "bench" / "results" / "latency"
VIT_TABLE = TABLES / "vit-fmnist-b1.json"

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cost_config_errors(tmp_path):
    assert load_config(None, []).sampler.cost == "flops"
    with pytest.raises(ValueError, match=r"config key 'sampler.cost': value 'energy' is not allowed; must be one of "
                                         r"\['flops', 'params', 'latency'\]"):
        load_config(None, ["sampler.cost=energy"])
    with pytest.raises(ValueError, match="latency needs sampler.latency_table=PATH.*--space vit-fmnist"):
        load_config(None, ["sampler.cost=latency"])
    with pytest.raises(ValueError, match=r"'sampler.latency_table': value '.*nope.json': latency table .* does not exist"):
        load_config(None, ["sampler.cost=latency", f"sampler.latency_table={tmp_path / 'nope.json'}"])
    with pytest.raises(ValueError, match="is for space 'cnn-fmnist', not 'vit-fmnist'"):
        load_config(None, ["sampler.cost=latency", f"sampler.latency_table={TABLES / 'cnn-fmnist-b1.json'}"])
    with pytest.raises(ValueError, match="only read with sampler.cost=latency"):
        load_config(None, [f"sampler.latency_table={VIT_TABLE}"])
    cfg = load_config(None, ["sampler.cost=latency", f"sampler.latency_table={VIT_TABLE}"])
    assert (cfg.sampler.cost, cfg.sampler.latency_table) == ("latency", str(VIT_TABLE))
    assert load_config(None, ["model.space=cnn-fmnist", "sampler.cost=params"]).sampler.cost == "params"


def test_tiny_run_binned_by_latency(tiny_root, tmp_path, capsys):
    ov = [*tiny_overrides(tiny_root, tmp_path / "runs", "lat"), "sampler.cost=latency",
          f"sampler.latency_table={VIT_TABLE}", "optim.steps=6", "run.ckpt_every=0", "eval.random_archs=true"]
    assert main(ov, prog="train.py") == 0, capsys.readouterr().err
    run = tmp_path / "runs" / "lat"
    summary = json.loads((run / "summary.json").read_text())
    cost = get_cost("vit-fmnist", "latency", table=VIT_TABLE)
    bins = summary["bins"]
    assert bins["unit"] == "ms" and bins["cost"]["table"] == str(VIT_TABLE) and "edges_mflops" not in bins
    assert bins["edges"][0] == pytest.approx(cost_lo(cost) / 1e6)
    sampling = json.loads((run / "sampling.json").read_text())
    assert sum(sampling["counts"]) == 6  # one subnet per step, counted in its latency bin
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    shown = [r for r in steps if "latency_ms" in r]
    assert shown and all(bins["edges"][r["bin"]] <= r["latency_ms"] <= bins["edges"][r["bin"] + 1] for r in shown)
    gen = [r for r in summary["rows"] if r["source"] == "generator"]
    assert len(gen) == 4 and summary["generator_in_bin"] == 4
    for r in summary["rows"]:
        ms = count_cost("vit-fmnist", ArchConfig.from_dict("vit-fmnist", r["arch_values"]), cost) / 1e6
        assert r["cost_unit"] == "ms" and r["cost"] == pytest.approx(ms)
        assert r["lo_cost"] <= r["cost"] <= r["hi_cost"] and r["lo_mflops"] is None
    table = format_bin_table(summary["rows"])
    assert table.splitlines()[0].startswith("bin  range (ms)") and " ms " in table.splitlines()[0]
    assert (run / "plots" / "sampling.png").is_file()
    _generate_by_latency(run, bins["edges"], capsys)


def _generate_by_latency(run: Path, edges_ms: list[float], capsys) -> None:
    """`shiftnas generate --latency` on the latency run: a ceiling on the table's prediction,
    no more than one bin below it; --flops and an out-of-range latency are refused, naming why."""
    from shiftnas.cli import main as cli

    capsys.readouterr()
    for budget_ms in (edges_ms[1], (edges_ms[2] + edges_ms[3]) / 2, edges_ms[-1]):
        assert cli(["generate", "--run", str(run), "--latency", f"{budget_ms * 1000:.3f}us", "--json"]) == 0
        r = json.loads(capsys.readouterr().out)
        width = edges_ms[1] - edges_ms[0]
        assert r["within"] and budget_ms - width - 1e-6 <= r["latency_ms"] <= budget_ms + 1e-6
    assert cli(["generate", "--run", str(run), "--sweep"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(" ms)" in line and "in-bin" in line for line in lines)
    assert cli(["generate", "--run", str(run), "--flops", "20M"]) == 2
    assert "in latency (sampler.cost=latency), not flops; give --latency" in capsys.readouterr().err
    assert cli(["generate", "--run", str(run), "--latency", "1s"]) == 2
    err = capsys.readouterr().err
    assert f"outside this run's latency range {edges_ms[0]:.3f} .. {edges_ms[-1]:.3f} ms" in err


def cost_lo(cost) -> float:
    from shiftnas.cost import cost_range

    return cost_range(cost.space, cost)[0]
