"""bench/harness.py: the one provenance key set of every benchmark's JSON, the timing and statistics
helpers, and the bench_kernels op cases on CPU (no timing numbers are checked, only behaviour)."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))
import harness  # noqa: E402

# The scripts that write a result document (the others in bench/ are their modules).
SCRIPTS = sorted(
    p.name for p in BENCH.glob("*.py") if p.name.startswith("bench_") or "__main__" in p.read_text()
)
# What building a machine block of one's own looks like; only the harness may do it.
MACHINE_CALLS = {
    "platform.node",
    "platform.platform",
    "os.getloadavg",
    "os.cpu_count",
    "torch.backends.cpu.get_cpu_capability",
    "time.strftime",
}
# Keys the scripts' own machine blocks used before the harness had one key set.
OLD_KEYS = {"loadavg_1_5_15", "loadavg_at_end", "load_avg_at_start", "logical_cpus", "torch_cpu_capability",
            "git_commit", "git_dirty", "timestamp", "device_name"}


def check_provenance(doc: dict) -> None:
    """`doc` carries the harness's provenance with exactly its key sets."""
    assert {"benchmark", "date", "git", "machine"} <= set(doc)
    assert tuple(doc["git"]) == harness.GIT_KEYS
    assert tuple(doc["machine"]) == harness.MACHINE_KEYS
    m = doc["machine"]
    assert set(m["env"]) == set(harness.TIMING_ENV_VARS)
    assert m["threads"] >= 1 and len(m["loadavg_before"]) == 3
    assert m["gpu"] is None or tuple(m["gpu"]) == harness.GPU_KEYS
    if m["cpu_flags"] is not None:
        assert {"avx2", "avx512f", "avx512_bf16", "amx_bf16"} <= set(m["cpu_flags"])
    assert isinstance(m["native_bf16"], bool) and m["cpu_capability"]


def _imported_names(path: Path) -> set[str]:
    names = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.Import):
            names |= {a.name.split(".")[0] for a in n.names}
        elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
            names.add(n.module.split(".")[0])
    return names


def test_script_list_is_the_entry_points():
    assert "bench_kernels.py" in SCRIPTS and "gpu_check.py" in SCRIPTS and "harness.py" not in SCRIPTS
    assert "kernel_cases.py" not in SCRIPTS
    assert all('if __name__ == "__main__":' in (BENCH / s).read_text() for s in SCRIPTS)
    # Every other file in bench/ is a module that some file there imports.
    modules = {p.stem for p in BENCH.glob("*.py")} - {Path(s).stem for s in SCRIPTS}
    imported = set().union(*(_imported_names(p) for p in BENCH.glob("*.py")))
    assert "harness" in modules and modules <= imported, modules - imported


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_writes_the_harness_provenance_and_builds_no_machine_block(script):
    tree = ast.parse((BENCH / script).read_text())
    calls = {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert "new_doc" in calls, f"{script} builds its document without harness.new_doc"
    # bench_kernels writes through kernel_run.Report, which calls write_result after every case
    assert calls & {"write_result", "Report"}, f"{script} writes its document without harness.write_result"
    assert not calls & MACHINE_CALLS, f"{script} builds machine facts itself: {calls & MACHINE_CALLS}"
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert not strings & OLD_KEYS, f"{script} still writes {strings & OLD_KEYS}"


def test_new_doc_and_write_result(tmp_path):
    doc = harness.new_doc("probe", extra=1)
    check_provenance(doc)
    assert doc["extra"] == 1 and doc["machine"]["loadavg_after"] is None
    assert doc["date"].endswith("+00:00")
    out = tmp_path / "sub" / "probe.json"
    harness.write_result(out, doc)
    back = json.loads(out.read_text())
    check_provenance(back)
    assert len(back["machine"]["loadavg_after"]) == 3 and not (tmp_path / "sub" / "probe.json.tmp").exists()


def test_write_figure_writes_a_png_atomically(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(1, 1))
    out = tmp_path / "fig.png"
    harness.write_figure(fig, out, dpi=20)
    plt.close(fig)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and [p.name for p in tmp_path.iterdir()] == ["fig.png"]


def test_kernels_document_has_the_key_set():
    import bench_kernels
    import torch

    args = bench_kernels.parse_args(["--device", "cpu", "--repeats", "10"])
    doc = bench_kernels.make_doc(args, torch.float32)
    check_provenance(doc)
    assert doc["suite"] == "cpu" and doc["benchmark"] == "bench/bench_kernels.py"


def test_schedule_rotates_the_order_of_timed_rounds():
    rounds = list(harness.schedule("abc", warmup=2, repeats=4))
    assert [t for _, _, t in rounds] == [False, False, True, True, True, True]
    assert [o for _, o, t in rounds if not t] == [list("abc")] * 2
    assert ["".join(o) for _, o, t in rounds if t] == ["abc", "bca", "cab", "abc"]


def test_time_cpu_calls_each_function_per_repeat():
    calls = []
    t = harness.time_cpu({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 1, 3,
                         before=lambda: calls.append("-"))
    assert calls.count("a") == calls.count("b") == 4 and calls.count("-") == 8
    assert {n: len(v) for n, v in t.ms.items()} == {"a": 3, "b": 3}
    s = t.stats()
    assert set(s["a"]) == {"median_ms", "p20_ms", "p80_ms", "min_ms", "n"} and s["a"]["n"] == 3
    assert t.foreign_cpu_load is None or t.foreign_cpu_load >= 0


def test_stats_and_paired_ratio():
    s = harness.stats([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (s["median_ms"], s["min_ms"], s["p20_ms"], s["p80_ms"]) == (3.0, 1.0, 1.8, 4.2)
    r = harness.paired_ratio([2.0, 4.0, 6.0], [1.0, 2.0, 2.0])
    assert r["of_medians"] == 2.0 and r["paired_median"] == 2.0 and r["paired_p80"] == pytest.approx(2.6)


def test_linear_fit():
    f = harness.linear_fit([1.0, 2.0, 3.0, 4.0], [3.0, 5.0, 7.0, 9.0])
    assert f["slope"] == pytest.approx(2.0) and f["intercept"] == pytest.approx(1.0)
    assert f["r2"] == pytest.approx(1.0) and f["n"] == 4
    noisy = harness.linear_fit([1.0, 2.0, 3.0], [1.0, 3.0, 2.0])
    assert 0.0 <= noisy["r2"] < 1.0
    assert harness.linear_fit([1.0, 2.0], [5.0, 5.0])["r2"] is None
    with pytest.raises(ValueError, match="distinct"):
        harness.linear_fit([2.0, 2.0], [1.0, 3.0])


def test_matmul_peak_reports_flops():
    import torch

    p = harness.matmul_peak(torch.float32, n=64, repeats=2)
    assert p["n"] == 64 and p["dtype"] == "float32" and p["flop_per_s"] > 0
    assert p["flop_per_s"] == pytest.approx(2 * 64**3 / (p["best_ms"] / 1e3), rel=0.01)


@pytest.mark.parametrize("op", ["layer_norm", "linear_qkv", "linear_proj", "mlp"])
def test_kernel_cases_slice_and_dense_compute_the_same(op):
    """ref_slice (views of the max-size weights) and dense (contiguous copies) agree: the cases
    compare like with like."""
    import torch
    from kernel_cases import Impls, build_vit_case, vit_dims

    case = build_vit_case(op, "smoke", "max", vit_dims("smoke", "max"), torch.float32, "cpu", Impls("cpu"), ())
    with torch.no_grad():
        torch.testing.assert_close(case.impls["ref_slice"](), case.impls["dense"](), rtol=1e-4, atol=1e-5)
    assert set(case.impls) == {"ref_slice", "full_mask", "dense"}


def test_kernel_cpu_case_runs_and_writes_a_row(tmp_path):
    """One depthwise-conv case through the CPU suite's path: every implementation timed, a row
    with its ratios and foreign load written to the report."""
    import argparse

    import torch
    from kernel_cases import Impls, build_dw_case, dw_layers
    from kernel_cpu import no_mask
    from kernel_run import Budget, Ctx, Report, run_op_case

    impls = Impls("cpu")
    case = no_mask(build_dw_case(dw_layers(2, True)[0], "mid", torch.float32, "cpu", impls, ("cpu",)))
    args = argparse.Namespace(warmup=1, repeats=2)
    ctx = Ctx(args, "cpu", "cpu", torch.float32, ("fwd", "fwd+bwd"), None, impls, Budget(0, 0.0))
    doc = harness.new_doc("probe")
    rows = run_op_case(case, ctx, Report(tmp_path / "k.json", doc, 0.0))
    assert [r["pass"] for r in rows] == ["fwd", "fwd+bwd"]
    for r in rows:
        assert {"ref_slice", "dense"} <= set(r["ms"]) and r["ms"]["dense"]["n"] == 2
        assert "foreign_cpu_load" in r and set(r["targets"]) <= {"cpu >= 1.0x ref_slice"}
        if "cpu" in r["ms"]:
            assert r["ratios"]["cpu"]["speed_vs_ref_slice"] > 0 and r["max_abs_err_vs_ref"]["cpu"] < 1e-4
    saved = json.loads((tmp_path / "k.json").read_text())
    assert len(saved["cases"]) == 2
    check_provenance(saved)


def test_profile_ops_names_the_operator_that_takes_the_time():
    """A step of one large matmul and one tiny add: aten::mm is the top operator with most of
    the self CPU time, once per call, with its input shapes."""
    import torch

    a, b = torch.randn(256, 256), torch.ones(3)
    p = harness.profile_ops(lambda: (a @ a, b + 1), steps=2, top=3)
    top = p["top"][0]
    assert top["op"] == "aten::mm" and top["calls"] == 1 and top["share"] > 0.5, p
    assert "256, 256" in top["shapes"] and p["self_cpu_ms_per_call"] >= top["self_ms"] > 0
    assert len(p["top"]) <= 3
