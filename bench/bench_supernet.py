"""Training-step time of the elastic supernet vs its exported static subnet vs timm's ViT (CPU).

Per space, dtype and arch one training step (zero grads with set_to_none, forward, cross-entropy,
backward; no optimizer step; bf16 = autocast, as optim.amp=bf16 trains) is timed for the supernet
at the arch, the exported dense model and timm's VisionTransformer of the same shape (ViT archs
where timm can express it; bench/supernet_models.py), side by side in one process, interleaved
(`harness.time_cpu`: one step of each per repeat, the starting model rotating). Archs: min /
middle / max (`--archs`), and for the fit one generator-free arch per FLOPs bin (`--bins`,
`shiftnas.sampling.sample_in_bin`).

Reported per row: median and p20/p80 step time, supernet/exported and exported/timm ratios, the
achieved FLOP/s (3 x 2 x MACs x batch per step) as a fraction of a GEMM peak measured in the same
run for the same dtype (`harness.matmul_peak`, a `--gemm-n`^3 matmul, best of `--gemm-repeats`),
and peak memory (a fresh subprocess per model, arch and dtype). Per space, dtype and model: a
linear fit of step time against subnet MACs across the bin archs (slope, intercept, R^2).
bf16 runs only where the CPU has native bf16 (avx512_bf16 / amx_bf16); elsewhere it is recorded
as skipped with the reason (on AVX2-only CPUs bf16 is ~12x slower than fp32).

Targets (printed next to the numbers, never asserted): supernet/exported <= 1.03 at every arch;
fit R^2 >= 0.98; bf16 autoformer-t max at batch 32 >= 35% of the bf16 GEMM peak.

    python bench/bench_supernet.py            # full run -> bench/results/supernet_cpu.json
    python bench/bench_supernet.py --quick    # smoke run -> $TMPDIR/supernet_cpu_quick.json
    python bench/bench_supernet.py --spaces vit-fmnist --dtypes float32 --repeats 10 --no-memory
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    RESULTS_DIR,
    backends,
    dtype_name,
    linear_fit,
    matmul_peak,
    new_doc,
    paired_ratio,
    profile_ops,
    time_cpu,
    write_result,
)
from supernet_models import (
    ARCH_LABELS,
    MEMORY_STEPS,
    MODELS,
    bin_archs,
    build_models,
    build_supernet,
    make_arch,
    make_inputs,
    measure_memory,
    train_step,
)
from supernet_report import DEFINITIONS, print_fits, print_rows, target_summary

DEFAULT_OUT = RESULTS_DIR / "supernet_cpu.json"
QUICK_OUT = Path(tempfile.gettempdir()) / "supernet_cpu_quick.json"
DEFAULT_SPACES = ("vit-fmnist", "cnn-fmnist", "autoformer-t")
DTYPES = ("float32", "bfloat16")
# Batch per space: the fmnist spaces at their training batch, autoformer-t at 32 (224 px; the GEMM
# target's batch), the other ImageNet spaces small.
BATCH = {
    "vit-fmnist": 64,
    "cnn-fmnist": 64,
    "autoformer-t": 32,
    "autoformer-s": 8,
    "autoformer-b": 8,
    "cnn-bignas": 8,
}
QUICK = {
    "repeats": 2,
    "warmup": 1,
    "bins": 3,
    "batch": 4,
    "gemm_n": 256,
    "gemm_repeats": 2,
    "memory_archs": "max",
}
TARGETS = {"supernet/exported": 1.03, "fit_r2": 0.98, "bf16_gemm_fraction": 0.35}
FIT_MODELS = ("supernet", "exported")
SETTINGS = ("spaces", "archs", "bins", "dtypes", "repeats", "warmup", "batch", "seed", "threads", "profile")


def step_flop(mflops: float, batch: int) -> float:
    """FLOP of one training step: forward 2 x MACs per image, backward twice the forward."""
    return 3 * 2 * mflops * 1e6 * batch


def time_arch(net, space, item: dict, dtype, args) -> dict:
    """One result row: every model of `item`'s arch timed interleaved at `dtype`."""
    import shiftnas

    arch = item["arch"]
    models = build_models(net, space, arch)
    batch = args.batch or BATCH.get(space.name, 8)
    x, y = make_inputs(space, arch, batch)
    steps = {n: (lambda m=m, f=f: train_step(m, f, x, y, dtype)) for n, (m, f) in models.items()}
    t = time_cpu(steps, args.warmup, args.repeats)
    mflops = shiftnas.count_flops(space, arch) / 1e6
    peak = args.gemm_peak[dtype_name(dtype)]["flop_per_s"]
    achieved = {n: step_flop(mflops, batch) / (t.median(n) / 1e3) for n in t.ms}  # FLOP/s
    row = {
        "space": space.name,
        "arch": item["label"],
        **({"bin": item["bin"], "in_bin": item["in_bin"]} if "bin" in item else {}),
        "arch_short": arch.short(),
        "dtype": dtype_name(dtype),
        "batch": batch,
        "input": list(x.shape),
        "mflops": round(mflops, 3),
        "params_m": round(shiftnas.count_params(space, arch) / 1e6, 4),
        "timm_comparable": "timm" in models,
        "times": t.stats(),
        "ratios": {"supernet/exported": paired_ratio(t.ms["supernet"], t.ms["exported"])},
        "achieved_gflop_s": {n: round(v / 1e9, 2) for n, v in achieved.items()},
        "gemm_fraction": {n: round(v / peak, 4) for n, v in achieved.items()},
        "foreign_cpu_load": t.foreign_cpu_load,
        "bench_seconds": t.seconds,
    }
    if "timm" in t.ms:
        row["ratios"]["exported/timm"] = paired_ratio(t.ms["exported"], t.ms["timm"])
        row["ratios"]["supernet/timm"] = paired_ratio(t.ms["supernet"], t.ms["timm"])
    row["targets"] = {
        "supernet/exported": row["ratios"]["supernet/exported"]["of_medians"]
        <= TARGETS["supernet/exported"]
    }
    if args.profile:
        row["profile"] = {n: profile_ops(steps[n], top=args.profile) for n in ("supernet", "exported")}
    return row


def fit_rows(rows: list[dict]) -> list[dict]:
    """Per dtype and model of `FIT_MODELS`: median step ms against MACs over the bin rows."""
    fits = []
    for dtype in dict.fromkeys(r["dtype"] for r in rows):
        pts = [r for r in rows if r["dtype"] == dtype and "bin" in r]
        for model in FIT_MODELS:
            xs = [r["mflops"] for r in pts]
            ys = [r["times"][model]["median_ms"] for r in pts]
            fit = {
                "space": rows[0]["space"],
                "dtype": dtype,
                "model": model,
                "points": [list(p) for p in zip(xs, ys)],
            }
            try:
                f = linear_fit(xs, ys)
                fit.update(
                    slope_ms_per_mmac=f["slope"], intercept_ms=f["intercept"], r2=f["r2"], n=f["n"]
                )
                fit["target_met"] = f["r2"] is not None and f["r2"] >= TARGETS["fit_r2"]
            except ValueError as e:
                fit.update(error=str(e), n=len(xs))
            fits.append(fit)
    return fits


def bench_space(space_name: str, dtypes: list, args) -> tuple[list[dict], list[dict]]:
    """Rows of every dtype and arch of one space (one supernet for all), and the fits."""
    import shiftnas

    space = shiftnas.get_space(space_name)
    net = build_supernet(space_name)
    items = [{"label": a, "arch": make_arch(space, a)} for a in args.archs]
    items += bin_archs(space_name, args.bins, seed=args.seed) if args.bins else []
    rows = []
    for dtype in dtypes:
        for item in items:
            rows.append(time_arch(net, space, item, dtype, args))
            r = rows[-1]
            print(
                f"  {space_name:13s} {r['dtype']:8s} {r['arch']:6s} {r['bench_seconds']:.0f}s",
                file=sys.stderr,
                flush=True,
            )
            gc.collect()
    del net
    gc.collect()
    return rows, fit_rows(rows) if args.bins else []


def add_memory(rows: list[dict], args) -> None:
    """Peak memory of every model of the `--memory-archs` rows, a fresh process each,
    `--memory-jobs` at a time (after all timing, so they never overlap it)."""
    todo = [
        (r, m)
        for r in rows
        if r["arch"] in args.memory_archs and r["dtype"] in args.memory_dtypes
        for m in MODELS
        if m in r["times"]
    ]
    jobs = [
        (f"{r['space']}:{r['arch']}:{m}:{r['dtype']}", args.threads, r["batch"]) for r, m in todo
    ]
    for (r, m), res in zip(todo, measure_memory(jobs, args.memory_jobs)):
        r.setdefault("memory", {})[m] = res


def bf16_skip_reason(machine: dict) -> str | None:
    if machine["native_bf16"]:
        return None
    return (
        f"CPU (torch capability {machine['cpu_capability']}) has no native bf16 (no avx512_bf16 / "
        "amx_bf16): bf16 would run ~12x slower than fp32 here, so it is not timed"
    )


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--spaces", default=",".join(DEFAULT_SPACES), help="comma-separated space names")
    p.add_argument(
        "--archs", default=",".join(ARCH_LABELS), help="comma-separated subset of min,middle,max"
    )
    p.add_argument(
        "--bins",
        type=int,
        default=None,
        help="FLOPs bins, one arch each, for the fit (0: none; default 10)",
    )
    p.add_argument(
        "--dtypes",
        default=",".join(DTYPES),
        help="float32,bfloat16 (bf16 only with native support)",
    )
    p.add_argument(
        "--repeats", type=int, default=None, help="timed steps per model (>= 10; default 20)"
    )
    p.add_argument(
        "--warmup", type=int, default=None, help="untimed steps per model first (default 5)"
    )
    # Fixed, and the same for every model. On a loaded machine (load average 5 on 2 cores) two
    # threads ran vit-fmnist min 3-10x slower than one: threads wait at every parallel region for a
    # descheduled peer. Compare runs at equal load only (foreign_cpu_load is in every row).
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument(
        "--batch", type=int, default=None, help="batch of every space (default: per space)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the bin archs")
    p.add_argument(
        "--gemm-n", type=int, default=None, help="GEMM peak: n x n x n matmul (default 2048)"
    )
    p.add_argument(
        "--gemm-repeats", type=int, default=None, help="GEMM peak: best of this many (default 5)"
    )
    p.add_argument("--out", default=None, help=f"JSON output path (default {DEFAULT_OUT})")
    p.add_argument(
        "--no-memory", action="store_true", help="skip the per-model memory subprocesses"
    )
    p.add_argument(
        "--memory-archs",
        default=None,
        help="archs whose memory is measured (default min,middle,max)",
    )
    p.add_argument("--memory-jobs", type=int, default=2, help="memory subprocesses at a time")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also profile the supernet's and the exported model's step per row: the top N "
                   "operators by self CPU time (torch.profiler; 0: off)")
    p.add_argument(
        "--quick", action="store_true", help=f"smoke run: one space, {QUICK}, output {QUICK_OUT}"
    )
    return check_args(p, p.parse_args(argv))


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Defaults (`QUICK` with --quick), lists from the comma lists, and their checks."""
    defaults = {"repeats": 20, "warmup": 5, "bins": 10, "gemm_n": 2048, "gemm_repeats": 5}
    for k, v in {**defaults, "memory_archs": ",".join(ARCH_LABELS)}.items():
        if getattr(args, k) is None:
            setattr(args, k, QUICK[k] if args.quick else v)
    if args.quick and args.batch is None:
        args.batch = QUICK["batch"]
    if args.repeats < (1 if args.quick else 10):
        p.error(f"--repeats {args.repeats}: need >= 10 for a median (docs/design.md), or --quick")
    args.spaces = [s for s in args.spaces.split(",") if s][: 1 if args.quick else None]
    args.archs = [a for a in args.archs.split(",") if a]
    args.memory_archs = [] if args.no_memory else [a for a in args.memory_archs.split(",") if a]
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    for a in args.archs + args.memory_archs:
        if a not in ARCH_LABELS:
            p.error(f"--archs / --memory-archs: unknown arch {a!r}; allowed: {list(ARCH_LABELS)}")
    if any(d not in DTYPES for d in args.dtypes):
        p.error(f"--dtypes {','.join(args.dtypes)}: allowed {list(DTYPES)}")
    if args.bins == 1 or args.bins < 0:
        p.error(f"--bins {args.bins}: 0 (no fit) or >= 2")
    args.out = args.out or str(QUICK_OUT if args.quick else DEFAULT_OUT)
    return args


def make_doc(args) -> tuple[dict, list]:
    """The result document (provenance, GEMM peaks, definitions, targets) and the dtypes to time:
    bfloat16 only where the CPU has native bf16, else it is listed under ``skipped``."""
    import timm
    import torch

    doc = new_doc("bench/bench_supernet.py", quick=args.quick, timm=timm.__version__)
    reason = bf16_skip_reason(doc["machine"])
    dtypes = [getattr(torch, d) for d in args.dtypes if not (d == "bfloat16" and reason)]
    args.gemm_peak = {dtype_name(d): matmul_peak(d, args.gemm_n, args.gemm_repeats) for d in dtypes}
    t = TARGETS
    doc.update(
        what="one training step: zero_grad(set_to_none=True) + forward + cross_entropy + backward "
        "(no optimizer step)",
        settings={k: getattr(args, k) for k in SETTINGS},
        skipped={"bfloat16": reason} if reason and "bfloat16" in args.dtypes else {},
        backends=backends("cpu", dtypes),
        gemm_peak=args.gemm_peak,
        definitions={
            **DEFINITIONS,
            "peak_rss_mb_step": DEFINITIONS["peak_rss_mb_step"].format(steps=MEMORY_STEPS),
        },
        targets={
            "supernet/exported": f"<= {t['supernet/exported']} at every arch",
            "fit_r2": f">= {t['fit_r2']} (step time against MACs over the bin archs)",
            "bf16_gemm_fraction": f"bf16 autoformer-t max at batch 32 >= {t['bf16_gemm_fraction']} "
            "of the bf16 GEMM peak",
        },
        results=[],
        fits=[],
    )
    return doc, dtypes


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    import shiftnas

    for s in args.spaces:
        shiftnas.get_space(s)  # fail early on a typo
    torch.set_num_threads(args.threads)
    doc, dtypes = make_doc(args)
    args.memory_dtypes = [dtype_name(d) for d in dtypes][: 1 if args.quick else None]
    for s in args.spaces:
        rows, fits = bench_space(s, dtypes, args)
        doc["results"] += rows
        doc["fits"] += fits
        write_result(args.out, doc)  # a long run that is stopped keeps the spaces done
    add_memory(doc["results"], args)
    doc["target_summary"] = target_summary(doc, TARGETS)
    write_result(args.out, doc)
    print_rows(doc, TARGETS)
    print_fits(doc["fits"], TARGETS)
    print(f"\nwrote {Path(args.out)}")


if __name__ == "__main__":
    main()
