"""Everything a CUDA machine can check, in one command: `make gpu-check` (< 8 min on one H200).

    python bench/gpu_check.py                      # build, tests, bench; writes bench/results/gpu_check.json
    python bench/gpu_check.py --dry-run            # the plan (commands and time limits), runs nothing
    python bench/gpu_check.py --phases tests --budget-s 200

Phases, each a subprocess with its own time limit carved from `--budget-s` (default 480 s):
  build   SHIFTNAS_BUILD_CUDA=1 pip install --no-build-isolation --no-deps --no-index -e . (no
          network needed: the machine's own torch, setuptools and ninja), then checks that
          shiftnas._C has its CUDA ops;
  tests   pytest on every test file that runs CUDA code when a GPU is present (`GPU_TESTS`;
          tests/bench/test_gpu_check.py checks that no such file is missing from the list);
  bench   bench/bench_kernels.py --device cuda (the GPU suite of `make bench-gpu`), which writes
          bench/results/kernels_cuda.json and stops starting work at its own budget.
A phase that fails does not stop the next (a failed build still lets the Triton tests run); the
exit status is 0 only when every phase passed. The JSON records the device, torch/CUDA/Triton
versions, each phase's status and time, the test counts and the names of failed tests.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS_DIR as RESULTS
from harness import ROOT, gpu_info, new_doc, write_result

PHASES = ("build", "tests", "bench")
# Every test file that runs CUDA code when torch.cuda.is_available() (Triton kernels on the
# device instead of the interpreter, the CUDA ops of shiftnas._C, GPU data decode, fp16 scaling).
GPU_TESTS = (
    "tests/kernels",
    "tests/ops/test_ext_dwconv.py",
    "tests/ops/test_ext_layer_norm.py",
    "tests/ops/test_ext_custom_ops.py",
    "tests/ops/test_dispatch.py",
    "tests/ops/test_backends_agree.py",
    "tests/ops/test_compile_supernet.py",
    "tests/train/test_precision.py",
    "tests/data/test_data_loader.py",
    "tests/reliability/test_numerical_faults.py",
)
# Share of the budget each phase may use at most (what a phase leaves goes to the next).
SHARES = {"build": 0.30, "tests": 0.30, "bench": 0.40}
MIN_BENCH_S = 60.0  # bench_kernels needs its step check's reserve (45 s) plus some cases


def plan(phases: list[str], budget_s: float, python: str = sys.executable) -> list[dict]:
    """The phases to run, each with its command, environment additions and time limit."""
    env_build = {"SHIFTNAS_BUILD_CUDA": "1"}
    if "CUDA_HOME" not in os.environ and Path("/usr/local/cuda").is_dir():
        env_build["CUDA_HOME"] = "/usr/local/cuda"
    junit = str(RESULTS / "gpu_check_tests.xml")
    cmds = {
        "build": ([python, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps", "--no-index",
                   "-e", str(ROOT)], env_build),
        "tests": ([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                   f"--junitxml={junit}", *GPU_TESTS], {}),
        "bench": ([python, str(ROOT / "bench" / "bench_kernels.py"), "--device", "cuda"], {}),
    }
    share = sum(SHARES[p] for p in phases)
    out = []
    for p in phases:
        limit = budget_s * SHARES[p] / share
        cmd, env = cmds[p]
        if p == "bench":
            cmd = [*cmd, "--budget-s", f"{max(MIN_BENCH_S, limit - 20):.0f}"]  # 20 s: import, JSON
        out.append({"name": p, "cmd": cmd, "env": env, "limit_s": round(limit, 1)})
    return out


def parse_junit(path: str | os.PathLike) -> dict:
    """passed / failed / errors / skipped counts and the failed tests' ids from a JUnit XML."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failed = []
    for case in ET.parse(path).getroot().iter("testcase"):
        kinds = {child.tag for child in case}
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if "failure" in kinds:
            counts["failed"] += 1
            failed.append(name)
        elif "error" in kinds:
            counts["errors"] += 1
            failed.append(name)
        elif "skipped" in kinds:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return {**counts, "failed_tests": failed}


def run_phase(step: dict, deadline: float) -> dict:
    """Run one phase under min(its limit, the time left); its output streams to this process's."""
    limit = max(1.0, min(step["limit_s"], deadline - time.monotonic()))
    t0 = time.monotonic()
    try:
        rc = subprocess.run(step["cmd"], cwd=ROOT, env={**os.environ, **step["env"]}, timeout=limit,
                            check=False).returncode
        timed_out = False
    except subprocess.TimeoutExpired:
        rc, timed_out = None, True
    return {"name": step["name"], "rc": rc, "timed_out": timed_out, "limit_s": round(limit, 1),
            "wall_s": round(time.monotonic() - t0, 1), "ok": rc == 0 and not timed_out}


def device_info() -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return {**info, **(gpu_info() or {})}


def cuda_ops_built(python: str = sys.executable) -> bool | None:
    """Whether shiftnas._C (as a fresh interpreter imports it) has its CUDA ops; None if it fails."""
    code = "from shiftnas import _ext; _ext.load(); print(int(_ext.has_cuda_ops()))"
    r = subprocess.run([python, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    return bool(int(r.stdout.strip())) if r.returncode == 0 and r.stdout.strip() in ("0", "1") else None


def check(args) -> dict:
    dev = device_info()
    if not dev["cuda_available"]:
        raise SystemExit(f"gpu-check needs a CUDA device: torch.cuda.is_available() is False "
                         f"(torch {dev['torch']}, built for CUDA {dev['cuda']}); --dry-run shows the plan")
    deadline = time.monotonic() + args.budget_s
    doc = new_doc("gpu_check", gpu=True, budget_s=args.budget_s, phases=[], tests=None, ok=False)
    doc["device"] = dev
    junit = RESULTS / "gpu_check_tests.xml"
    junit.unlink(missing_ok=True)
    for step in plan(args.phases, args.budget_s):
        print(f"[gpu-check] {step['name']}: {' '.join(step['cmd'])} (limit {step['limit_s']:.0f} s)", flush=True)
        res = run_phase(step, deadline)
        if step["name"] == "build":
            res["cuda_ops"] = cuda_ops_built()
            res["ok"] = res["ok"] and res["cuda_ops"] is True
        if step["name"] == "tests" and junit.is_file():
            doc["tests"] = parse_junit(junit)
        doc["phases"].append(res)
        write_result(args.out, doc)  # a killed check still leaves the phases done so far
        print(f"[gpu-check] {step['name']}: {'ok' if res['ok'] else 'FAILED'} in {res['wall_s']:.0f} s", flush=True)
    doc["ok"] = all(p["ok"] for p in doc["phases"])
    write_result(args.out, doc)
    return doc


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, from {PHASES}")
    ap.add_argument("--budget-s", type=float, default=480.0, help="wall-clock limit of all phases together")
    ap.add_argument("--out", default=str(RESULTS / "gpu_check.json"))
    ap.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    args = ap.parse_args(argv)
    phases = [p for p in args.phases.split(",") if p]
    bad = [p for p in phases if p not in PHASES]
    if bad or not phases:
        ap.error(f"--phases {args.phases!r}: allowed are comma-separated names from {PHASES}")
    if args.budget_s < MIN_BENCH_S:
        ap.error(f"--budget-s {args.budget_s:g}: must be at least {MIN_BENCH_S:g} seconds")
    args.phases = [p for p in PHASES if p in phases]  # always in build -> tests -> bench order
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        for step in plan(args.phases, args.budget_s):
            env = " ".join(f"{k}={v}" for k, v in step["env"].items())
            print(f"{step['name']:6s} limit {step['limit_s']:5.0f} s: {env + ' ' if env else ''}{' '.join(step['cmd'])}")
        return 0
    doc = check(args)
    t = doc["tests"]
    print(f"[gpu-check] {'PASSED' if doc['ok'] else 'FAILED'}; tests: "
          + (f"{t['passed']} passed, {t['failed']} failed, {t['errors']} errors, {t['skipped']} skipped" if t else "none")
          + f"; wrote {args.out}")
    return 0 if doc["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
