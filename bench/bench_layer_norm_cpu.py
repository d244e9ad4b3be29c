"""Benchmark: compiled elastic LayerNorm (shiftnas._C) vs the PyTorch reference on CPU.

Reference = ``F.layer_norm(x[:, :active], (active,), weight[:active], bias[:active], eps)``
(and autograd for the backward). Ours is timed three ways:
  * ``fwd``          forward only (no autograd on either side),
  * ``fwd_bwd_raw``  _C forward + _C backward called directly,
  * ``fwd_bwd_fn``   through a minimal torch.autograd.Function wrapper, which is
                     what a model pays (the reference always goes through autograd).
Both sides get fresh gradients each iteration (``.grad = None``, as with
``zero_grad(set_to_none=True)``).

Timings are medians over ``--repeats`` runs after ``--warmup`` runs; the reference
and ours alternate within each round so background load hits both alike. Each case
records ``foreign_cpu_load`` (CPUs used by other processes meanwhile): on a 2-core
machine anything above ~0.1 makes the 2-thread numbers meaningless.
Writes ``bench/results/layer_norm_cpu.json``.

Usage: python bench/bench_layer_norm_cpu.py [--threads 2] [--repeats 30] [--dtype float32]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shiftnas import _ext

EPS = 1e-5
# (rows, channels): ViT-Tiny-ish token counts (64 images x 50 tokens, 8 x 197).
SHAPES = [(64 * 50, 192), (64 * 50, 240), (64 * 50, 256), (8 * 197, 240)]


class _ElasticLN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, active, eps):
        y, mean, rstd = _C.elastic_layer_norm_forward(x, weight, bias, active, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.active = active
        return y

    @staticmethod
    def backward(ctx, gy):
        x, weight, mean, rstd = ctx.saved_tensors
        gx, gw, gb = _C.elastic_layer_norm_backward(
            gy.contiguous(), x, weight, mean, rstd, ctx.active
        )
        return gx, gw, gb, None, None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            check=False,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None  # not a git checkout, or no commit yet
    return out.stdout.strip() or None


def _tune_malloc() -> bool:
    """Stop glibc from returning freed heap to the OS between iterations.

    Each iteration allocates and frees several MB. With glibc's default dynamic
    trim/mmap thresholds, that memory is sometimes unmapped and re-faulted
    (~1500 page faults per iteration), which adds up to ~1 ms of noise to
    whichever side happens to trigger it. Applied to both sides alike.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_trim_threshold, 1 << 30)) and bool(
            libc.mallopt(m_mmap_threshold, 1 << 30)
        )
    except (OSError, AttributeError):
        return False


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy jiffies of the whole machine, jiffies used by this process), Linux only."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        vals = [int(v) for v in fields[:8]]
        busy = sum(vals) - vals[3] - vals[4]  # minus idle and iowait
        own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        return busy, int(own[11]) + int(own[12])  # utime + stime
    except (OSError, ValueError, IndexError):
        return None


def _foreign_load(before, after, seconds: float) -> float | None:
    """Average number of CPUs used by *other* processes between two _cpu_jiffies()."""
    if before is None or after is None or seconds <= 0:
        return None
    hz = os.sysconf("SC_CLK_TCK")
    other = (after[0] - before[0]) - (after[1] - before[1])
    return round(max(0, other) / hz / seconds, 2)


def _time_pair(ref, ours, repeats: int, warmup: int) -> tuple[float, float]:
    """Median microseconds of ref() and ours(), alternating which runs first."""
    for _ in range(warmup):
        ref()
        ours()
    t_ref, t_ours = [], []
    for i in range(repeats):
        order = ((ref, t_ref), (ours, t_ours)) if i % 2 == 0 else ((ours, t_ours), (ref, t_ref))
        for fn, acc in order:
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    return statistics.median(t_ref) * 1e6, statistics.median(t_ours) * 1e6


def _bench_case(n, c, active, dtype, repeats, warmup):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, generator=g).to(dtype)
    w = (torch.randn(c, generator=g) * 0.5 + 1).to(dtype)
    b = (torch.randn(c, generator=g) * 0.1).to(dtype)
    gy = torch.randn(n, active, generator=g).to(dtype)

    def fwd_ref():
        with torch.no_grad():
            F.layer_norm(x[:, :active], (active,), w[:active], b[:active], EPS)

    def fwd_ours():
        _C.elastic_layer_norm_forward(x, w, b, active, EPS)

    xr, wr, br = (t.clone().requires_grad_(True) for t in (x, w, b))

    def fb_ref():
        xr.grad = wr.grad = br.grad = None
        F.layer_norm(xr[:, :active], (active,), wr[:active], br[:active], EPS).backward(gy)

    def fb_raw():
        _, mean, rstd = _C.elastic_layer_norm_forward(x, w, b, active, EPS)
        _C.elastic_layer_norm_backward(gy, x, w, mean, rstd, active)

    def fb_fn():
        xr.grad = wr.grad = br.grad = None
        _ElasticLN.apply(xr, wr, br, active, EPS).backward(gy)

    row = {"N": n, "C": c, "active": active, "dtype": str(dtype).replace("torch.", "")}
    j0, t0 = _cpu_jiffies(), time.perf_counter()
    for name, ref, ours in (
        ("fwd", fwd_ref, fwd_ours),
        ("fwd_bwd_raw", fb_ref, fb_raw),
        ("fwd_bwd_fn", fb_ref, fb_fn),
    ):
        t_ref, t_ours = _time_pair(ref, ours, repeats, warmup)
        row[name] = {
            "ref_us": round(t_ref, 1),
            "ext_us": round(t_ours, 1),
            "ratio_ref_over_ext": round(t_ref / t_ours, 3),
        }
    # Background load from other processes skews (mostly inflates) both sides.
    row["foreign_cpu_load"] = _foreign_load(j0, _cpu_jiffies(), time.perf_counter() - t0)
    return row


def main() -> int:
    global _C
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"]
    )
    ap.add_argument(
        "--malloc-tuning",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="raise glibc's trim/mmap thresholds to remove page-fault noise (default: on)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "layer_norm_cpu.json")
    args = ap.parse_args()
    if args.repeats < 20:
        ap.error("--repeats must be >= 20")

    _C = _ext.load()
    if _C is None:
        print(_ext.unavailable_reason(), file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    malloc_tuned = _tune_malloc() if args.malloc_tuning else False
    dtype = getattr(torch, args.dtype)

    cases = []
    for n, c in SHAPES:
        cases.append((n, c, c))  # whole width active
        cases.append((n, c, c - 48))  # elastic: a prefix of the stored width
    load_before = os.getloadavg()
    rows = []
    print(
        f"{'N':>5} {'C':>4} {'act':>4} | {'fwd ref':>8} {'ext':>7} {'x':>5} | "
        f"{'f+b ref':>8} {'raw':>7} {'x':>5} | {'fn':>7} {'x':>5} | other-load  (us, median)"
    )
    for n, c, a in cases:
        r = _bench_case(n, c, a, dtype, args.repeats, args.warmup)
        rows.append(r)
        f, fb, fn = r["fwd"], r["fwd_bwd_raw"], r["fwd_bwd_fn"]
        print(
            f"{n:>5} {c:>4} {a:>4} | {f['ref_us']:>8.0f} {f['ext_us']:>7.0f} "
            f"{f['ratio_ref_over_ext']:>5.2f} | {fb['ref_us']:>8.0f} {fb['ext_us']:>7.0f} "
            f"{fb['ratio_ref_over_ext']:>5.2f} | {fn['ext_us']:>7.0f} "
            f"{fn['ratio_ref_over_ext']:>5.2f} | {r['foreign_cpu_load']}",
            flush=True,
        )

    result = {
        "benchmark": "elastic_layer_norm_cpu",
        "reference": "F.layer_norm(x[:, :active], (active,), w[:active], b[:active]) + autograd",
        "machine": {
            "cpu": _cpu_model(),
            "logical_cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(),
            "loadavg_before": [round(v, 2) for v in load_before],
            "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        },
        "git_commit": _git_commit(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "malloc_tuned": malloc_tuned,
        "dtype": args.dtype,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "eps": EPS,
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


_C = None

if __name__ == "__main__":
    sys.exit(main())
