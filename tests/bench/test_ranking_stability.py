"""bench/ranking_stability.py on synthetic compare_samplers results: the order of
the samplers per length and per seed, and the verdict of stability between lengths."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import ranking_stability as rs

PANEL = [{"name": "min", "bin": 0}, {"name": "max", "bin": 1}] + [
    {"name": f"bin{k}@{q}%", "bin": k} for k in range(2) for q in (25, 75)]


def fake_doc(steps: int, gains: dict[str, list[float]], seeds=(0, 1, 2)) -> dict:
    """Uniform at 50% on every arch; each sampler `s` gains gains[s][i] points on arch i, plus a
    seed-dependent wobble of +-0.1."""
    evals = {"uniform": {str(x): {"top1": [50.0] * len(PANEL)} for x in seeds}}
    for s, g in gains.items():
        evals[s] = {str(x): {"top1": [50.0 + gi + 0.1 * (x - 1) for gi in g]} for x in seeds}
    ver = {}
    for s, g in gains.items():
        per_seed = [statistics.fmean(evals[s][str(x)]["top1"][i] - 50.0 for i in range(2, 6)) for x in seeds]
        ver[s] = {"all_bins": {"mean": statistics.fmean(per_seed), "std": statistics.stdev(per_seed), "n": 3},
                  "per_arch": [{"mean": gi} for gi in g]}
    return {"settings": {"steps": steps},
            "spaces": {"vit-fmnist": {"seeds": list(seeds), "panel": PANEL, "evals": evals, "verdict": ver}}}


def test_a_verdict_that_flips_between_lengths_is_not_stable(tmp_path):
    short = fake_doc(200, {"a": [1, 1, 2, 2, 2, 2], "b": [0, 0, 1, 1, 1, 1]})
    long_same = fake_doc(600, {"a": [2, 2, 3, 3, 3, 4], "b": [1, 1, 1, 2, 2, 2]})
    long_flip = fake_doc(600, {"a": [0, 0, -1, -1, -1, -1], "b": [3, 3, 3, 3, 3, 3]})
    paths = []
    for name, doc in (("s", short), ("same", long_same), ("flip", long_flip)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(doc))
    out = tmp_path / "out.json"
    assert rs.main([str(paths[1]), str(paths[0]), "--out", str(out)]) == 0  # any order of files
    doc = json.loads(out.read_text())
    assert [x["steps"] for x in doc["lengths"]] == [200, 600] and doc["stable"] is True
    assert doc["lengths"][0]["order"] == ["a", "b", "uniform"]
    assert doc["lengths"][0]["order_holds_in_seeds"] == "3/3"
    assert doc["pairs"][0]["per_arch_kendall_tau"]["a"] > 0.5
    assert "machine" in doc and doc["benchmark"] == "bench/ranking_stability.py"

    rs.main([str(paths[0]), str(paths[2]), "--out", str(out)])
    doc = json.loads(out.read_text())
    assert doc["stable"] is False and doc["lengths"][1]["order"] == ["b", "uniform", "a"]


def test_same_pairs_a_variant_with_the_default_of_another_length(tmp_path):
    short = fake_doc(200, {"a_m1": [1, 1, 2, 2, 2, 2], "a": [-1, -1, -2, -2, -2, -2]})
    long = fake_doc(600, {"a": [1, 1, 2, 2, 3, 3]})
    for name, doc in (("s", short), ("l", long)):
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
    out = tmp_path / "out.json"
    rs.main([str(tmp_path / "s.json"), str(tmp_path / "l.json"), "--same", "a_m1=a", "--out", str(out)])
    pair = json.loads(out.read_text())["pairs"][0]
    assert pair["samplers"] == ["a_m1=a"] and pair["order_agrees"] is True
    with pytest.raises(SystemExit):
        rs.main([str(tmp_path / "s.json")])
