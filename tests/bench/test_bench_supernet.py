"""bench/bench_supernet.py --quick into tmp_path: the JSON schema (rows per arch and dtype, GEMM
fractions, peak memory, the fit), never the timing numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import bench_supernet  # noqa: E402
from test_harness import check_provenance  # noqa: E402


@pytest.fixture(scope="module")
def quick_doc(tmp_path_factory):
    """A subprocess, as the script runs: its memory measurement starts a multiprocessing
    forkserver and resource tracker, which must not live on in the test worker (DataLoader
    workers forked later in a worker that had them hung twice in Trainer.evaluate)."""
    out = tmp_path_factory.mktemp("supernet") / "quick.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "bench_supernet.py"), "--quick", "--threads", "1",
                    "--out", str(out)], check=True, cwd=ROOT, timeout=600)
    return json.loads(out.read_text())


def test_quick_runs_one_space_with_every_arch_and_a_bin_each(quick_doc):
    check_provenance(quick_doc)
    assert quick_doc["benchmark"] == "bench/bench_supernet.py" and quick_doc["quick"] is True
    assert quick_doc["settings"]["spaces"] == ["vit-fmnist"]
    dtypes = ["float32"] + (["bfloat16"] if quick_doc["machine"]["native_bf16"] else [])
    labels = ["min", "middle", "max", "bin0", "bin1", "bin2"]
    rows = quick_doc["results"]
    assert [(r["dtype"], r["arch"]) for r in rows] == [(d, a) for d in dtypes for a in labels]
    if not quick_doc["machine"]["native_bf16"]:
        assert "native bf16" in quick_doc["skipped"]["bfloat16"]
    assert set(quick_doc["gemm_peak"]) == set(dtypes)
    assert all(p["flop_per_s"] > 0 for p in quick_doc["gemm_peak"].values())


def test_rows_compare_supernet_exported_timm_with_gemm_fractions(quick_doc):
    for r in quick_doc["results"]:
        assert {"supernet", "exported"} <= set(r["times"]) and r["mflops"] > 0
        assert ("timm" in r["times"]) == r["timm_comparable"]
        assert set(r["gemm_fraction"]) == set(r["achieved_gflop_s"]) == set(r["times"])
        assert all(v > 0 for v in r["gemm_fraction"].values())
        se = r["ratios"]["supernet/exported"]
        assert set(se) == {"of_medians", "paired_median", "paired_p20", "paired_p80"}
        assert isinstance(r["targets"]["supernet/exported"], bool)
        assert ("bin" in r) == r["arch"].startswith("bin")
    assert any(r["timm_comparable"] for r in quick_doc["results"])  # vit-fmnist max has timm's shape


def test_peak_memory_of_the_max_arch(quick_doc):
    for r in quick_doc["results"]:
        measured = r["arch"] == "max" and r["dtype"] == "float32"
        assert ("memory" in r) == measured
        if measured:
            assert set(r["memory"]) == set(r["times"])
            for m in r["memory"].values():
                assert "error" not in m and m["peak_rss_mb_step"] >= 0 and m["peak_source"]


def test_fit_of_step_time_against_macs(quick_doc):
    fits = quick_doc["fits"]
    assert {(f["dtype"], f["model"]) for f in fits} == {
        (r["dtype"], m) for r in quick_doc["results"] for m in ("supernet", "exported")
    }
    for f in fits:
        assert f["n"] == 3 and len(f["points"]) == 3
        assert 0.0 <= f["r2"] <= 1.0 and isinstance(f["target_met"], bool)
        assert {"slope_ms_per_mmac", "intercept_ms"} <= set(f)
    s = quick_doc["target_summary"]
    assert s["fit_r2"]["met"] + s["fit_r2"]["missed"] == len(fits)
    assert "not_judged" in s["bf16_gemm_fraction"]  # no autoformer-t row in a quick run


def test_full_runs_need_ten_repeats(capsys):
    with pytest.raises(SystemExit):
        bench_supernet.parse_args(["--repeats", "3"])
    assert "--repeats 3" in capsys.readouterr().err
