"""Benchmark: compiled elastic LayerNorm (shiftnas._C) vs the PyTorch reference on CPU.

Reference = ``F.layer_norm(x[:, :active], (active,), weight[:active], bias[:active], eps)``
(and autograd for the backward). Ours (the ops ``shiftnas::ext_layer_norm[_backward]`` that
``shiftnas._C`` registers) is timed three ways:
  * ``fwd``          forward only (no autograd on either side),
  * ``fwd_bwd_raw``  the forward op + the backward op called directly,
  * ``fwd_bwd_op``   `layer_norm_cpu` with autograd (the op's C++ autograd), which is what a
                     model pays (the reference always goes through autograd). Results before
                     the ops were registered have ``fwd_bwd_fn`` instead: a minimal
                     torch.autograd.Function around the kernels.
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
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    RESULTS_DIR,
    ForeignLoad,
    add_malloc_tuning_arg,
    dtype_name,
    new_doc,
    time_cpu,
    tune_malloc,
    write_result,
)

from shiftnas import _ext

EPS = 1e-5
# (rows, channels): ViT-Tiny-ish token counts (64 images x 50 tokens, 8 x 197).
SHAPES = [(64 * 50, 192), (64 * 50, 240), (64 * 50, 256), (8 * 197, 240)]


def _bench_case(n, c, active, dtype, repeats, warmup):
    from shiftnas.ops.layer_norm_ext import layer_norm_cpu

    ops = torch.ops.shiftnas
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, generator=g).to(dtype)
    w = (torch.randn(c, generator=g) * 0.5 + 1).to(dtype)
    b = (torch.randn(c, generator=g) * 0.1).to(dtype)
    gy = torch.randn(n, active, generator=g).to(dtype)

    def fwd_ref():
        with torch.no_grad():
            F.layer_norm(x[:, :active], (active,), w[:active], b[:active], EPS)

    def fwd_ours():
        ops.ext_layer_norm(x, w, b, active, EPS)

    xr, wr, br = (t.clone().requires_grad_(True) for t in (x, w, b))

    def fb_ref():
        xr.grad = wr.grad = br.grad = None
        F.layer_norm(xr[:, :active], (active,), wr[:active], br[:active], EPS).backward(gy)

    def fb_raw():
        _, mean, rstd = ops.ext_layer_norm(x, w, b, active, EPS)
        ops.ext_layer_norm_backward(gy, x, w, mean, rstd, active)

    def fb_op():
        xr.grad = wr.grad = br.grad = None
        layer_norm_cpu(xr, wr, br, active, EPS).backward(gy)

    row = {"N": n, "C": c, "active": active, "dtype": dtype_name(dtype)}
    with ForeignLoad() as meter:
        for name, ref, ours in (
            ("fwd", fwd_ref, fwd_ours),
            ("fwd_bwd_raw", fb_ref, fb_raw),
            ("fwd_bwd_op", fb_ref, fb_op),
        ):
            t = time_cpu({"ref": ref, "ours": ours}, warmup, repeats)
            t_ref, t_ours = t.median("ref") * 1e3, t.median("ours") * 1e3
            row[name] = {
                "ref_us": round(t_ref, 1),
                "ext_us": round(t_ours, 1),
                "ratio_ref_over_ext": round(t_ref / t_ours, 3),
            }
    # Background load from other processes skews (mostly inflates) both sides.
    row["foreign_cpu_load"] = meter.load
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"]
    )
    add_malloc_tuning_arg(ap)
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "layer_norm_cpu.json")
    args = ap.parse_args()
    if args.repeats < 20:
        ap.error("--repeats must be >= 20")

    if _ext.load() is None:
        print(_ext.unavailable_reason(), file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    malloc_tuned = tune_malloc() if args.malloc_tuning else False
    dtype = getattr(torch, args.dtype)

    cases = []
    for n, c in SHAPES:
        cases.append((n, c, c))  # whole width active
        cases.append((n, c, c - 48))  # elastic: a prefix of the stored width
    result = new_doc(
        "elastic_layer_norm_cpu",
        reference="F.layer_norm(x[:, :active], (active,), w[:active], b[:active]) + autograd",
        malloc_tuned=malloc_tuned,
        dtype=args.dtype,
        repeats=args.repeats,
        warmup=args.warmup,
        eps=EPS,
    )
    rows = []
    print(
        f"{'N':>5} {'C':>4} {'act':>4} | {'fwd ref':>8} {'ext':>7} {'x':>5} | "
        f"{'f+b ref':>8} {'raw':>7} {'x':>5} | {'op':>7} {'x':>5} | other-load  (us, median)"
    )
    for n, c, a in cases:
        r = _bench_case(n, c, a, dtype, args.repeats, args.warmup)
        rows.append(r)
        f, fb, op = r["fwd"], r["fwd_bwd_raw"], r["fwd_bwd_op"]
        print(
            f"{n:>5} {c:>4} {a:>4} | {f['ref_us']:>8.0f} {f['ext_us']:>7.0f} "
            f"{f['ratio_ref_over_ext']:>5.2f} | {fb['ref_us']:>8.0f} {fb['ext_us']:>7.0f} "
            f"{fb['ratio_ref_over_ext']:>5.2f} | {op['ext_us']:>7.0f} "
            f"{op['ratio_ref_over_ext']:>5.2f} | {r['foreign_cpu_load']}",
            flush=True,
        )

    result["results"] = rows
    write_result(args.out, result, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
