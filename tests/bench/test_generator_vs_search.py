"""bench/generator_vs_search.py on two tiny trained runs (uniform and shift, vit-fmnist, 4 bins):
every searched arch lies in its bin, every score is the arch's own val top-1 on its own run, and
the summary's differences are generator minus search, bin by bin."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
import generator_vs_search as gvs
from fmnist_tiny import make_tiny_root, tiny_overrides


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    from shiftnas.train import Trainer, load_config

    root = make_tiny_root(tmp_path_factory.mktemp("fmnist-tiny-gvs"))
    out = tmp_path_factory.mktemp("runs")
    for name, config in (("uniform-s0", "fmnist-vit-uniform"), ("shift-s0", "fmnist-vit-shift")):
        Trainer(load_config(ROOT / "configs" / f"{config}.yaml", tiny_overrides(root, out, name))).fit()
    return out


def test_scores_the_generator_and_an_in_bin_search_on_each_run(runs, tmp_path, capsys):
    from shiftnas.cost import FlopsBins, count_flops
    from shiftnas.search import load_run
    from shiftnas.spaces import ArchConfig

    out = tmp_path / "gvs.json"
    assert gvs.main(["--runs", str(runs), "--space", "vit-fmnist", "--seeds", "0", "--search-on", "uniform,shift",
                     "--fitness-images", "32", "--eval-images", "40", "--population", "4", "--generations", "1",
                     "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["machine"]["cpu_capability"] and doc["settings"]["evolution"]["population"] == 4
    rows = doc["seeds"]["0"]
    bins = FlopsBins("vit-fmnist", n_bins=4)
    assert len(rows["generator"]) == 4
    loaded = {name: load_run(runs / f"{name}-s0", device="cpu") for name in ("uniform", "shift")}
    for name in ("uniform", "shift"):
        for k, r in enumerate(rows["search"][name]):
            arch = ArchConfig.from_dict("vit-fmnist", r["arch"])
            lo, hi = bins.window(k)
            assert lo <= count_flops("vit-fmnist", arch) <= hi  # searched inside bin k
            assert 4 <= r["evaluations"] <= 4 + 4  # the population, then one generation of 2 + 2 children
            assert r["top1"] == loaded[name].evaluate(arch, "val", 40)["top1"]  # on its own run
        diffs = [g["top1"] - s["top1"] for g, s in zip(rows["generator"], rows["search"][name])]
        summ = doc["summary"][f"generator_minus_search_on_{name}"]
        assert [b["mean"] for b in summ["per_bin"]] == pytest.approx(diffs)
        assert summ["all_bins"]["mean"] == pytest.approx(statistics.fmean(diffs))
        assert summ["bins_generator_ahead"] == [sum(d > 0 for d in diffs)]
    gen = loaded["shift"].trainer.sampler.generator
    for k, g in enumerate(rows["generator"]):
        assert g["arch"] == gen.generate(bin=k).to_dict()
    assert "generator_minus_search_on_uniform: all bins" in capsys.readouterr().out


def test_a_run_without_a_generator_is_refused(runs, tmp_path):
    with pytest.raises(SystemExit, match="uniform-s0 has no generator"):
        gvs.main(["--runs", str(runs), "--space", "vit-fmnist", "--seeds", "0", "--generator", "uniform",
                  "--out", str(tmp_path / "x.json")])
