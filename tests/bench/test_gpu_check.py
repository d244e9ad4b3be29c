"""bench/gpu_check.py (`make gpu-check`): its plan, argument checks, JUnit parsing and JSON, on CPU.

The phases themselves need a CUDA device; here they are replaced by short Python commands so the
driver's bookkeeping (time limits, timeouts, the JSON it writes) is checked without one.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import gpu_check  # noqa: E402

# Test files that mention CUDA but run no CUDA code on a GPU machine, and why.
NOT_GPU_TESTS = {
    "tests/conftest.py": "sets TRITON_INTERPRET when there is no GPU",
    "tests/kernel_env.py": "a helper module (where the kernel tests run); the kernel tests that use it are listed",
    "tests/reliability/test_bad_input_config.py": "checks the refusal of run.device=cuda where no GPU is; skips on a GPU",
    "tests/data/test_data_bad_input.py": "checks the refusal of device=cuda where no GPU is",
    "tests/latency/test_latency_table.py": "checks the refusal of device=cuda where no GPU is; CPU tables",
    "tests/bench/test_gpu_check.py": "this file",
    "tests/test_wheel.py": "builds a wheel with the CUDA sources off (SHIFTNAS_BUILD_CUDA=0), CPU training",
}


def test_every_test_file_that_mentions_cuda_is_run_by_the_gpu_check_or_explained():
    covered = [ROOT / p for p in gpu_check.GPU_TESTS]
    assert all(p.exists() for p in covered), [str(p) for p in covered if not p.exists()]
    missing = []
    for f in sorted((ROOT / "tests").rglob("*.py")):
        rel = f.relative_to(ROOT).as_posix()
        if "cuda" not in f.read_text().lower() or rel in NOT_GPU_TESTS:
            continue
        if not any(f == p or p in f.parents for p in covered):
            missing.append(rel)
    assert not missing, f"add to gpu_check.GPU_TESTS or NOT_GPU_TESTS: {missing}"


def test_plan_splits_the_budget_in_order_and_builds_with_cuda():
    steps = gpu_check.plan(["build", "tests", "bench"], 480.0, python="py")
    assert [s["name"] for s in steps] == ["build", "tests", "bench"]
    assert sum(s["limit_s"] for s in steps) == pytest.approx(480.0, abs=0.2)
    assert steps[0]["env"]["SHIFTNAS_BUILD_CUDA"] == "1" and "--no-index" in steps[0]["cmd"]
    assert all(p in steps[1]["cmd"] for p in gpu_check.GPU_TESTS)
    bench = steps[2]["cmd"]
    assert bench[bench.index("--device") + 1] == "cuda"
    assert float(bench[bench.index("--budget-s") + 1]) < steps[2]["limit_s"]  # stops before it is killed
    only = gpu_check.plan(["tests"], 200.0)
    assert len(only) == 1 and only[0]["limit_s"] == pytest.approx(200.0)


@pytest.mark.parametrize("argv, named", [(["--phases", "build,cook"], "'build,cook'"), (["--phases", ""], "''"),
                                         (["--budget-s", "10"], "--budget-s 10")])
def test_bad_arguments_name_the_value_and_what_is_allowed(argv, named, capsys):
    with pytest.raises(SystemExit) as e:
        gpu_check.parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert named in err and ("allowed" in err or "at least" in err)


def test_phases_run_in_their_fixed_order_whatever_the_order_given():
    assert gpu_check.parse_args(["--phases", "bench,build"]).phases == ["build", "bench"]


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "g.json"
    assert gpu_check.main(["--dry-run", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == ["build", "tests", "bench"]
    assert not out.exists()


def test_without_cuda_it_refuses_in_one_line_naming_the_torch_build(monkeypatch, tmp_path):
    monkeypatch.setattr(gpu_check, "device_info", lambda: {"cuda_available": False, "torch": "9.9", "cuda": None})
    with pytest.raises(SystemExit, match="needs a CUDA device.*torch 9.9"):
        gpu_check.main(["--out", str(tmp_path / "g.json")])


JUNIT = """<?xml version="1.0"?><testsuites><testsuite name="pytest">
<testcase classname="tests.kernels.test_a" name="test_ok"/>
<testcase classname="tests.kernels.test_a" name="test_bad"><failure message="x"/></testcase>
<testcase classname="tests.test_b" name="test_err"><error message="y"/></testcase>
<testcase classname="tests.test_b" name="test_skip"><skipped message="z"/></testcase>
<testcase classname="tests.test_b" name="test_ok2"><system-out>log</system-out></testcase>
</testsuite></testsuites>"""


def test_junit_counts_and_failed_names(tmp_path):
    p = tmp_path / "j.xml"
    p.write_text(JUNIT)
    r = gpu_check.parse_junit(p)
    assert (r["passed"], r["failed"], r["errors"], r["skipped"]) == (2, 1, 1, 1)
    assert r["failed_tests"] == ["tests.kernels.test_a::test_bad", "tests.test_b::test_err"]


def test_check_writes_each_phase_a_timeout_and_the_test_counts(monkeypatch, tmp_path):
    """The phases replaced by short commands: build passes, tests writes a JUnit file with one
    failure, bench outlives its limit. The JSON says so, phase by phase, and ok is False."""
    monkeypatch.setattr(gpu_check, "RESULTS", tmp_path)
    junit = tmp_path / "gpu_check_tests.xml"
    py = sys.executable
    steps = [{"name": "build", "cmd": [py, "-c", "pass"], "env": {}, "limit_s": 30.0},
             {"name": "tests", "cmd": [py, "-c", f"open({str(junit)!r}, 'w').write({JUNIT!r})"], "env": {},
              "limit_s": 30.0},
             {"name": "bench", "cmd": [py, "-c", "import time; time.sleep(30)"], "env": {}, "limit_s": 1.0}]
    monkeypatch.setattr(gpu_check, "plan", lambda phases, budget: steps)
    monkeypatch.setattr(gpu_check, "device_info", lambda: {"cuda_available": True, "name": "fake"})
    monkeypatch.setattr(gpu_check, "cuda_ops_built", lambda: True)
    out = tmp_path / "g.json"
    assert gpu_check.main(["--out", str(out)]) == 1
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "gpu_check" and doc["device"]["name"] == "fake"
    assert {"commit", "dirty"} <= set(doc["git"]) and "cpu_capability" in doc["machine"]
    ph = {p["name"]: p for p in doc["phases"]}
    assert ph["build"]["ok"] and ph["build"]["cuda_ops"] is True
    assert ph["tests"]["ok"] and doc["tests"]["failed"] == 1  # pytest's own rc is 0 here: the fake wrote the file
    assert ph["bench"]["timed_out"] and ph["bench"]["rc"] is None and not ph["bench"]["ok"]
    assert ph["bench"]["wall_s"] < 10
    assert doc["ok"] is False
