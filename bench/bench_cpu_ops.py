"""Benchmark: compiled elastic depthwise conv (shiftnas._C) vs PyTorch, CPU.

Reference (what the `ref` backend runs): ``F.conv2d(x, w[:C], None, stride, k // 2, 1, C)``
(mkldnn on x86) + autograd; ``w`` is the [Cmax, 1, k, k] supernet buffer, so backward includes
slice_backward. Ours goes through the autograd wrapper a model uses (`dwconv_cpu`).
Two timings per case: ``fwd`` (no autograd on either side) and ``fwd_bwd`` (forward + backward
with x and the parameters requiring grad; ``.grad = None`` before each iteration, as with
``zero_grad(set_to_none=True)``).

Medians over ``--repeats`` runs after ``--warmup`` runs; ref and ours alternate within each round
so background load hits both alike; ``foreign_cpu_load`` records CPUs used by other processes
meanwhile (on a 2-core machine anything above ~0.1 makes 2-thread numbers suspect); a case run
under more than ``--max-foreign-load`` waits for a quiet machine and is retried, and the
least-disturbed try is kept. Writes ``bench/results/cpu_ops.json``.

Usage: python bench/bench_cpu_ops.py [--threads 2] [--repeats 20] [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    RESULTS_DIR,
    ForeignLoad,
    add_malloc_tuning_arg,
    new_doc,
    time_cpu,
    tune_malloc,
    write_result,
)

from shiftnas import _ext

# (B, C, H, k, stride): depthwise layers of the two CNN spaces. cnn-fmnist: B=64 at 28/14/7 px
# (expanded widths 16..192, k 3/5/7); cnn-bignas: B=8 at 112/56/28 px (k 3/5).
DWCONV_CASES = (
    [(64, c, 28, k, s) for c in (16, 24) for k in (3, 5, 7) for s in (1, 2)]
    + [(64, c, 14, k, s) for c in (40, 96) for k in (3, 5, 7) for s in (1, 2)]
    + [(64, c, 7, k, 1) for c in (96, 192) for k in (3, 5, 7)]
    + [(8, 24, 112, k, 1) for k in (3, 5)]
    + [(8, 96, 112, k, 2) for k in (3, 5)]
    + [(8, 144, 56, k, 1) for k in (3, 5)]
    + [(8, 192, 56, k, 2) for k in (3, 5)]
    + [(8, 240, 28, k, 1) for k in (3, 5)]
)
CMAX_EXTRA = 8  # the supernet buffer is wider than the active channels


def _dwconv_case(b, c, h, k, s, repeats, warmup, dtype):
    from shiftnas.ops.dwconv_ext import dwconv_cpu

    g = torch.Generator().manual_seed(0)
    p = k // 2
    x = torch.randn(b, c, h, h, generator=g).to(dtype)
    w = (torch.randn(c + CMAX_EXTRA, 1, k, k, generator=g) / k).to(dtype)
    ho = (h + 2 * p - k) // s + 1
    gy = torch.randn(b, c, ho, ho, generator=g).to(dtype)

    def fwd_ref():
        with torch.no_grad():
            F.conv2d(x, w[:c], None, s, p, 1, c)

    def fwd_ours():
        with torch.no_grad():
            dwconv_cpu(x, w, None, s, p)

    xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)

    def fb_ref():
        xr.grad = wr.grad = None
        F.conv2d(xr, wr[:c], None, s, p, 1, c).backward(gy)

    def fb_ours():
        xr.grad = wr.grad = None
        dwconv_cpu(xr, wr, None, s, p).backward(gy)

    row = {"op": "dwconv", "B": b, "C": c, "Cmax": c + CMAX_EXTRA, "H": h, "k": k, "stride": s}
    return _time_case(row, ((fwd_ref, fwd_ours), (fb_ref, fb_ours)), repeats, warmup)


def _time_case(row, pairs, repeats, warmup):
    with ForeignLoad() as meter:
        for name, (ref, ours) in zip(("fwd", "fwd_bwd"), pairs):
            t = time_cpu({"ref": ref, "ours": ours}, warmup, repeats)
            t_ref, t_ours = t.median("ref"), t.median("ours")
            row[name] = {
                "ref_ms": round(t_ref, 4),
                "ext_ms": round(t_ours, 4),
                "speedup": round(t_ref / t_ours, 3),
            }
    row["foreign_cpu_load"] = meter.load
    return row


def _wait_quiet(max_load: float, timeout_s: float) -> float | None:
    """Wait (up to timeout_s) for a 1-s window in which other processes use <= max_load CPUs."""
    deadline = time.monotonic() + timeout_s
    while True:
        with ForeignLoad() as meter:
            time.sleep(1.0)
        load = meter.load
        if load is None or load <= max_load or time.monotonic() > deadline:
            return load


def _measure(case_fn, args) -> dict:
    """Run a case; on a busy machine wait for quiet and retry, keeping the least-disturbed try.

    Other processes on a 2-core machine make the 2-thread medians meaningless (an OpenMP
    thread waiting a 4-ms scheduler slice dominates), so the lowest foreign load wins.
    """
    best = None
    for attempt in range(1, args.retries + 2):
        _wait_quiet(args.max_foreign_load, args.quiet_timeout)
        row = case_fn()
        row["attempt"] = attempt
        load = row["foreign_cpu_load"]
        if best is None or (load is not None and load < best["foreign_cpu_load"]):
            best = row
        if load is None or load <= args.max_foreign_load:
            break
    return best


def _print_row(r):
    shape = f"B{r['B']:<3} C{r['C']:<4} {r['H']:>3}px k{r['k']} s{r['stride']}"
    f, fb = r["fwd"], r["fwd_bwd"]
    print(
        f"{r['op']:<9} {shape:<28} | {f['ref_ms']:>8.3f} {f['ext_ms']:>8.3f} {f['speedup']:>5.2f}x"
        f" | {fb['ref_ms']:>8.3f} {fb['ext_ms']:>8.3f} {fb['speedup']:>5.2f}x | {r['foreign_cpu_load']}",
        flush=True,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument(
        "--max-foreign-load",
        type=float,
        default=0.1,
        help="CPUs other processes may use during a case before it is retried (default 0.1)",
    )
    ap.add_argument("--retries", type=int, default=3, help="retries of a disturbed case")
    ap.add_argument(
        "--quiet-timeout", type=float, default=60.0, help="seconds to wait for a quiet machine"
    )
    add_malloc_tuning_arg(ap)
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "cpu_ops.json")
    args = ap.parse_args()
    if args.repeats < 10:
        ap.error("--repeats must be >= 10")

    C = _ext.load()
    if C is None or not hasattr(C, "elastic_dwconv_forward"):
        print(
            _ext.unavailable_reason() or "shiftnas._C predates these ops: rebuild it",
            file=sys.stderr,
        )
        return 1
    torch.set_num_threads(args.threads)
    malloc_tuned = tune_malloc() if args.malloc_tuning else False
    dtype = getattr(torch, args.dtype)

    result = new_doc(
        "cpu_ops",
        reference={"dwconv": "F.conv2d(x, w[:C], None, stride, k // 2, 1, C) + autograd"},
        ours="shiftnas.ops.dwconv_ext.dwconv_cpu (autograd wrapper)",
        mkldnn=torch.backends.mkldnn.is_available(),
        malloc_tuned=malloc_tuned,
        dtype=args.dtype,
        repeats=args.repeats,
        warmup=args.warmup,
        max_foreign_load=args.max_foreign_load,
    )
    rows = []
    print(
        f"{'op':<9} {'shape':<28} | {'fwd ref':>8} {'ours':>8} {'':>6} | {'f+b ref':>8} {'ours':>8} {'':>6} | other-load  (ms, median)"
    )
    for case in DWCONV_CASES:
        rows.append(
            _measure(lambda c=case: _dwconv_case(*c, args.repeats, args.warmup, dtype), args)
        )
        _print_row(rows[-1])

    result["results"] = rows
    write_result(args.out, result, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
