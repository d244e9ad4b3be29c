"""`shiftnas search --latency` and `shiftnas evaluate` on a run binned by latency: a ceiling on a
measured table's predicted latency (the run's own table, or --latency-table for any run), what the
result records, the errors; and evaluation tables, JSON and Pareto axis in ms."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from shiftnas.cli import main
from shiftnas.cost import cost_range, count_cost, get_cost
from shiftnas.spaces import ArchConfig
from shiftnas.train import plots
from shiftnas.train.evaluate import format_bin_table

LATENCY_TABLES = Path(__file__).resolve().parents[2] / "bench" / "results" / "latency"
LATENCY_TABLE = LATENCY_TABLES / "vit-fmnist-b1.json"  # the table `latency_run` (conftest) was trained with
TINY = ["--population", "3", "--mutations", "1", "--crossovers", "1", "--parents", "1", "--generations", "1",
        "--images", "8", "--device", "cpu"]
COST = get_cost("vit-fmnist", "latency", table=LATENCY_TABLE)
LO, HI = cost_range("vit-fmnist", COST)  # ns


def _ms(frac: float) -> float:
    return (LO + frac * (HI - LO)) / 1e6


def test_search_by_the_latency_runs_own_table(latency_run, evaluate_calls, capsys):
    budget_ms = _ms(0.4)
    argv = ["search", "--run", str(latency_run), "--latency", f"{budget_ms * 1000:.1f}us", *TINY, "--json"]
    assert main(argv) == 0
    r = json.loads(capsys.readouterr().out)
    budget_ms = round(budget_ms * 1000, 1) / 1000
    assert r["cost"]["name"] == "latency" and r["cost"]["table"] == str(LATENCY_TABLE)
    assert r["limit"] == {"flops": None, "params": None, "latency_ms": pytest.approx(budget_ms)}
    best = ArchConfig.from_dict("vit-fmnist", r["best"]["arch"])
    assert r["best"]["latency_ms"] == count_cost("vit-fmnist", best, COST) / 1e6 <= budget_ms
    assert r["constraint_error"] == pytest.approx((r["best"]["latency_ms"] - budget_ms) / budget_ms)
    assert all(count_cost("vit-fmnist", a, COST) / 1e6 <= budget_ms for a, *_ in evaluate_calls)
    assert len(evaluate_calls) == r["evaluations"] >= 3
    assert [h["best_latency_ms"] <= budget_ms for h in r["history"]] == [True, True]


def test_search_a_flops_run_with_a_table_and_a_flops_limit(shift_run, capsys):
    """Any run can be searched by latency given a table of its space; --flops applies as well."""
    budget_ms = _ms(0.5)
    argv = ["search", "--run", str(shift_run), "--latency", f"{budget_ms:.4f}", "--latency-table",
            str(LATENCY_TABLE), "--flops", "40M", *TINY]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("gen   0/1") and " ms  " in out.splitlines()[0]
    assert f"best (latency <= {float(f'{budget_ms:.4f}'):.3f} ms, flops <= 40.0M): " in out
    assert " ms predicted  top-1 " in out and "% of the latency limit" in out
    assert f"latency table: {LATENCY_TABLE}" in out


@pytest.mark.parametrize("extra,msg", [
    (["--latency", "3ms"], ("a latency limit needs a latency table, and run {run!r} was trained with "
                           "sampler.cost=flops (no table): give --latency-table T.json (a table of space 'vit-fmnist'")),
    (["--latency", "3ms", "--latency-table", str(LATENCY_TABLES / "cnn-fmnist-b1.json")],
     "cnn-fmnist-b1.json is for space 'cnn-fmnist', not 'vit-fmnist'"),
    (["--latency", "3ms", "--latency-table", "nope.json"], "latency table 'nope.json' does not exist"),
    (["--latency", "1s", "--latency-table", str(LATENCY_TABLE)],
     (f"--latency '1s' = 1000.000 ms is outside this run's latency range {LO / 1e6:.3f} .. {HI / 1e6:.3f} ms "
     f"(smallest to largest subnet, predicted by latency table {str(LATENCY_TABLE)!r})")),
    (["--latency", "4 sec"], "--latency '4 sec': not a latency; write a time with an optional unit ms/us/s"),
    (["--flops", "30M", "--latency-table", str(LATENCY_TABLE)], "is only read with --latency: give --latency TIME"),
])
def test_search_latency_errors(shift_run, extra, msg, capsys):
    assert main(["search", "--run", str(shift_run), "--device", "cpu", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("shiftnas search: error: ") and msg.format(run=str(shift_run)) in err


def test_search_latency_out_of_the_runs_range(latency_run, capsys):
    assert main(["search", "--run", str(latency_run), "--device", "cpu", "--latency", "0.001us"]) == 2
    assert f"outside this run's latency range {LO / 1e6:.3f} .. {HI / 1e6:.3f} ms" in capsys.readouterr().err


def test_evaluate_a_latency_run_in_ms(latency_run, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(latency_run, run)
    figures = []
    save = plots._save

    def spy(fig, path):  # the Pareto figure's x axis: its label and the points of its series
        ax = fig.axes[0]
        series = [line for line in ax.get_lines() if not line.get_label().startswith("_")]  # not the bin edges
        figures.append((ax.get_xlabel(), sorted(x for line in series for x in line.get_xdata())))
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", spy)
    assert main(["evaluate", "--run", str(run), "--max-images", "4", "--device", "cpu", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    bins = r["bins"]
    assert "edges_mflops" not in bins and bins["unit"] == "ms" and bins["cost"]["table"] == str(LATENCY_TABLE)
    assert bins["edges"][0] == pytest.approx(LO / 1e6) and bins["edges"][-1] == pytest.approx(HI / 1e6)
    assert {row["source"] for row in r["rows"]} == {"generator", "random"}
    for row in r["rows"]:
        ms = count_cost("vit-fmnist", ArchConfig.from_dict("vit-fmnist", row["arch_values"]), COST) / 1e6
        assert row["cost_unit"] == "ms" and row["cost"] == pytest.approx(ms)
    ((xlabel, xs),) = figures
    assert xlabel == "predicted latency (ms)" and xs == pytest.approx(sorted(row["cost"] for row in r["rows"]))
    header = format_bin_table(r["rows"]).splitlines()[0]  # the table `evaluate` prints without --json
    assert header.startswith("bin  range (ms)") and " ms " in header
