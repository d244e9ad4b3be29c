"""bench/generator_latency.py on a tiny latency-binned run (vit-fmnist, 4 bins, the committed b1
table): one row per bin whose budget is the bin's upper edge, the generated arch's predicted
latency at most that budget and inside its window, a measured time per pass, and a summary that
counts the rows; a FLOPs run and a malformed budget are refused with the reason."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
import generator_latency as gl
from fmnist_tiny import make_tiny_root, tiny_overrides

TABLE = ROOT / "bench" / "results" / "latency" / "vit-fmnist-b1.json"
FAST = ["--passes", "2", "--warmup", "0", "--repeats", "3"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    from shiftnas.train import Trainer, load_config

    root = make_tiny_root(tmp_path_factory.mktemp("fmnist-tiny-lat"))
    out = tmp_path_factory.mktemp("runs")
    lat = ["sampler.cost=latency", f"sampler.latency_table={TABLE}", "optim.steps=6", "run.ckpt_every=0"]
    Trainer(load_config(ROOT / "configs" / "fmnist-vit-shift.yaml", [*tiny_overrides(root, out, "lat"), *lat])).fit()
    Trainer(load_config(ROOT / "configs" / "fmnist-vit-shift.yaml",
                        [*tiny_overrides(root, out, "flops"), "optim.steps=2", "run.ckpt_every=0"])).fit()
    return out


def test_every_bin_edge_is_asked_for_and_timed(runs, tmp_path, capsys):
    from shiftnas.search import load_run

    out = tmp_path / "gl.json"
    assert gl.main(["--runs", str(runs / "lat"), *FAST, "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    (r,) = doc["runs"]
    edges_ms = load_run(runs / "lat").bins.edges.tolist()[1:]
    assert [row["bin"] for row in r["rows"]] == [0, 1, 2, 3]
    for row, edge in zip(r["rows"], edges_ms):
        assert edge / 1e6 - 1e-3 < row["budget_ms"] <= edge / 1e6  # the edge, floored to the microsecond
        assert row["predicted_ms"] <= row["budget_ms"] and row["predicted_within_window"]
        assert len(row["pass_ms"]) == 2 and row["measured_ms"] == min(row["pass_ms"]) > 0
        assert row["under_budget"] == (row["measured_ms"] <= row["budget_ms"])
        assert row["measured_over_budget"] == pytest.approx(row["measured_ms"] / row["budget_ms"])
        assert len(row["pass_ratio"]) == 2 and row["measured_at_table_pace_ms"] > 0
        assert row["under_budget_at_table_pace"] == (row["measured_at_table_pace_ms"] <= row["budget_ms"])
    s = doc["summary"]
    assert s["n"] == 4 and s["under_budget"] == sum(row["under_budget"] for row in r["rows"])
    assert s["under_budget_at_table_pace"] == sum(row["under_budget_at_table_pace"] for row in r["rows"])
    assert s["measured_at_table_pace_over_budget_max"] == max(
        row["measured_at_table_pace_ms"] / row["budget_ms"] for row in r["rows"])
    assert s["measured_over_budget_max"] == max(row["measured_over_budget"] for row in r["rows"])
    assert r["batch"] == 1 and r["dtype"] == "float32" and doc["machine"]["cpu_capability"]
    assert "generated subnets measured within their budget" in capsys.readouterr().out


def test_given_budgets_and_refusals(runs, tmp_path):
    from shiftnas.search import load_run

    out = tmp_path / "gl.json"
    edges = [e / 1e6 for e in load_run(runs / "lat").bins.edges.tolist()]
    mid = (edges[1] + edges[2]) / 2
    assert gl.main(["--runs", str(runs / "lat"), "--budgets", f"{mid * 1000:.1f}us", *FAST, "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["runs"][0]["rows"]
    assert row["predicted_ms"] <= row["budget_ms"] == pytest.approx(mid, abs=1e-4)
    with pytest.raises(SystemExit, match="sampler.cost=flops; this benchmark needs a latency run"):
        gl.main(["--runs", str(runs / "flops"), *FAST, "--out", str(out)])
    with pytest.raises(SystemExit):
        gl.main(["--runs", str(runs / "lat"), "--budgets", "fast"])
