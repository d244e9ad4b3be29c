"""bench_kernels: running one op case (first calls, errors vs ref, timing, the result row) and the
run's shared state: the result document (`Report`), the time budget and its watchdog, `Ctx`."""

from __future__ import annotations

import argparse
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness import dtype_name, short_error, time_cpu, time_cuda, write_result
from kernel_cases import (
    BASELINES,
    CPU_REF_TARGET,
    GPU_DENSE_TARGET,
    IMPL_ORDER,
    UNDER_TEST,
    Impls,
    OpCase,
)
from kernel_report import print_case_line


# =============================================================================== run state
class Report:
    """The result document; rewritten (atomically) after every change, so a kill leaves JSON."""

    def __init__(self, path: Path, doc: dict, t_start: float):
        self.path, self.doc, self.t_start, self.lock = path, doc, t_start, threading.RLock()

    def add(self, key: str, item) -> None:
        with self.lock:
            self.doc.setdefault(key, []).append(item)
            self.write()

    def set(self, key: str, value) -> None:
        with self.lock:
            self.doc[key] = value
            self.write()

    def write(self, lock_timeout: float | None = None) -> None:
        if not self.lock.acquire(timeout=-1 if lock_timeout is None else lock_timeout):
            return
        try:
            self.doc["elapsed_s"] = round(time.perf_counter() - self.t_start, 1)
            write_result(self.path, self.doc)
        finally:
            self.lock.release()


class Budget:
    def __init__(self, seconds: float, t_start: float):
        self.seconds = seconds
        self.deadline = t_start + seconds if seconds > 0 else math.inf

    def left(self) -> float:
        return self.deadline - time.perf_counter()


def start_watchdog(report: Report, budget: Budget, grace_s: float) -> None:
    """End the process `grace_s` after the budget even if a compile or kernel hangs."""
    if not math.isfinite(budget.deadline):
        return

    def fire():
        report.doc["status"] = "hard_deadline"
        report.doc["hard_deadline_note"] = (
            f"watchdog ended the process {grace_s:.0f}s after the {budget.seconds:.0f}s budget; the "
            "case in flight is missing"
        )
        report.write(lock_timeout=5)
        print(f"\n!! hard deadline: exiting; partial results in {report.path}", flush=True)
        os._exit(3)

    delay = budget.deadline + grace_s - time.perf_counter()
    t = threading.Timer(max(1.0, delay), fire)
    t.daemon = True
    t.start()


def clear(tensors) -> None:
    for t in tensors or ():
        t.grad = None


class Timer:
    """GPU: `harness.time_cuda` (triton do_bench). Smoke on CPU: `harness.time_cpu`."""

    def __init__(self, device: str, warmup_ms: float, rep_ms: float, warmup_n: int, repeats: int):
        self.device, self.warmup_ms, self.rep_ms = device, warmup_ms, rep_ms
        self.warmup_n, self.repeats = warmup_n, repeats

    def __call__(self, fn: Callable, grad_to_none=None, rep_ms: float | None = None) -> dict:
        if self.device == "cuda":
            return time_cuda(fn, self.warmup_ms, rep_ms or self.rep_ms, grad_to_none)
        t = time_cpu({"fn": fn}, self.warmup_n, self.repeats, before=lambda: clear(grad_to_none))
        return t.stats(5)["fn"]


@dataclass
class Ctx:
    args: argparse.Namespace
    suite: str  # "gpu" | "cpu" | "smoke"
    device: str
    dtype: object
    passes: tuple
    timer: Timer | None
    impls: Impls
    budget: Budget


# =============================================================================== one op case
def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def fwd(fn: Callable) -> Callable:
    import torch

    def run():
        with torch.no_grad():
            return fn()

    return run


def fwd_bwd(fn: Callable, gy) -> Callable:
    def run():
        fn().backward(gy)

    return run


def _first_calls(case: OpCase, device: str, passes) -> tuple[dict, dict, dict, dict]:
    """Each implementation's first forward (and backward): compile/autotune, output gradients.

    Returns (errors, setup seconds, float outputs of the impls under test and ref_slice, grads).
    """
    import torch

    errors, setup_s, outs, gys = dict(case.unavailable), {}, {}, {}
    for name, fn in case.impls.items():
        t0 = time.perf_counter()
        try:
            y = fwd(fn)()
            sync(device)
            if name in UNDER_TEST or name == "ref_slice":
                outs[name] = y.detach().float()
            gys[name] = torch.randn(y.shape, device=y.device, dtype=torch.float32).to(y.dtype)
            del y
            if "fwd+bwd" in passes:
                clear(case.leaves)
                fwd_bwd(fn, gys[name])()
                sync(device)
        except Exception as e:  # a kernel that fails: record it and go on with the others
            errors[name] = short_error(e)
        setup_s[name] = round(time.perf_counter() - t0, 3)
    clear(case.leaves)
    return errors, setup_s, outs, gys


def prepare(case: OpCase, device: str, passes) -> tuple[dict, dict, dict, dict]:
    """First calls, forward errors vs ref_slice, and the runnable functions per pass.

    Returns (runnable fns per pass, errors per impl, setup seconds per impl, max abs err vs ref).
    """
    errors, setup_s, outs, gys = _first_calls(case, device, passes)
    err = {}
    if "ref_slice" in outs:
        r = outs["ref_slice"]
        for name in UNDER_TEST:
            if name in outs:
                a = outs[name]
                err[name] = (
                    round((a - r).abs().max().item(), 6)
                    if a.shape == r.shape
                    else f"shape {tuple(a.shape)}"
                )
    fns = {
        p: {
            name: fwd(fn) if p == "fwd" else fwd_bwd(fn, gys[name])
            for name, fn in case.impls.items()
            if name not in errors
        }
        for p in passes
    }
    return fns, errors, setup_s, err


def _targets(ratios: dict, suite: str) -> dict:
    base, target = ("ref_slice", CPU_REF_TARGET) if suite == "cpu" else ("dense", GPU_DENSE_TARGET)
    out = {}
    for name, rs in ratios.items():
        r = rs.get(f"speed_vs_{base}")
        out[f"{name} >= {target}x {base}"] = None if r is None else r >= target
    return out


def make_row(
    case: OpCase, section: str, dtype, pas: str, ms: dict, errors: dict, suite: str
) -> dict:
    ratios = {
        name: {
            f"speed_vs_{base}": round(ms[base]["median_ms"] / ms[name]["median_ms"], 4)
            for base in BASELINES
            if base in ms and ms[name]["median_ms"] > 0
        }
        for name in UNDER_TEST
        if name in ms
    }
    baseline_vs_dense = {
        base: round(ms["dense"]["median_ms"] / ms[base]["median_ms"], 4)
        for base in ("ref_slice", "full_mask")
        if base in ms and "dense" in ms
    }
    return {
        "section": section,
        "op": case.op,
        "space": case.space,
        "width": case.width,
        "shape": case.shape,
        "shape_str": case.shape_str,
        "dtype": dtype_name(dtype),
        "pass": pas,
        "ms": {n: ms[n] for n in IMPL_ORDER if n in ms},
        "ratios": ratios,
        "baseline_speed_vs_dense": baseline_vs_dense,
        "targets": _targets(ratios, suite),
        "errors": dict(errors),
    }


def try_case(label: str, build, ctx: Ctx, report: Report) -> None:
    """`run_op_case` of ``build()``; a case that fails to build or run is recorded and skipped."""
    try:
        run_op_case(build(), ctx, report)
    except Exception as e:
        report.add("cases_failed", {"case": label, "error": short_error(e)})
        print(f"  {label}: FAILED {short_error(e)}", flush=True)


def run_op_case(case: OpCase, ctx: Ctx, report: Report) -> list[dict]:
    """Time every implementation of `case` per pass and add a row each; returns the rows.

    GPU and smoke: one implementation after the other through `ctx.timer`. CPU: all of them
    interleaved by `harness.time_cpu`, with the foreign CPU load in the row.
    """
    fns, errors, setup_s, err = prepare(case, ctx.device, ctx.passes)
    suite = "cpu" if ctx.suite == "cpu" else "gpu"
    rows = []
    for p in ctx.passes:
        ms, extra = {}, {}
        if suite == "cpu":
            try:
                t = time_cpu(
                    fns[p], ctx.args.warmup, ctx.args.repeats, before=lambda: clear(case.leaves)
                )
                ms, extra["foreign_cpu_load"] = t.stats(5), t.foreign_cpu_load
            except Exception as e:
                errors["timing"] = short_error(e)
        else:
            for name, f in fns[p].items():
                try:
                    ms[name] = ctx.timer(f, grad_to_none=case.leaves)
                except Exception as e:
                    errors[name] = short_error(e)
            extra["setup_s"] = setup_s
        dtype = case.leaves[0].dtype if suite == "cpu" else ctx.dtype
        row = {
            **make_row(case, "ops", dtype, p, ms, errors, suite),
            **extra,
            "max_abs_err_vs_ref": err,
        }
        report.add("cases", row)
        print_case_line(row)
        rows.append(row)
    return rows
