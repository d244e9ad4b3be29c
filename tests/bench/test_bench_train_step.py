"""bench/bench_train_step.py --quick into tmp_path: the JSON schema (the split step, the uniform
baseline, the default explore mix), never the timing numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from test_harness import check_provenance  # noqa: E402


@pytest.fixture(scope="module")
def quick_doc(tmp_path_factory):
    out = tmp_path_factory.mktemp("train_step") / "quick.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "bench_train_step.py"), "--quick", "--threads", "1",
                    "--spaces", "vit-fmnist", "--out", str(out)], check=True, cwd=ROOT, timeout=600)
    return json.loads(out.read_text())


def test_quick_reports_the_generator_step_and_the_default_mix(quick_doc):
    check_provenance(quick_doc)
    assert quick_doc["benchmark"] == "bench/bench_train_step.py" and quick_doc["quick"] is True
    assert quick_doc["settings"]["generator_explore"] == 0.0  # every timed shift step uses the generator
    (r,) = quick_doc["results"]
    assert r["space"] == "vit-fmnist" and r["same_arch_as_uniform"]["shift"] == f"{quick_doc['repeats']}/{quick_doc['repeats']}"
    assert set(r["times"]) == {"shift", "shift_full", "uniform", "trainer", "update", "explore"}
    assert {"gen_fwd", "gen_bwd", "supernet_fwd_bwd", "optim", "step"} <= set(r["times"]["shift"])
    d = r["derived"]["every_100"]
    assert isinstance(d["vs_uniform_pct_paired_median"], float) and isinstance(d["vs_uniform_target_met"], bool)
    m = r["default_mix"]
    assert m["explore"] == 0.5 and m["step_ms"] > 0 and m["explore_next_ms"] > 0
    assert isinstance(m["target_10_met"], bool) and isinstance(m["target_5_met"], bool)
