"""Kernel benchmark: every elastic op against slicing, full-width masking and the dense static op.

Per op and shape, the elastic implementations under test (the Triton kernels of
`shiftnas.kernels` and the `cuda` backend ops on GPU; the `cpu` backend ops of `shiftnas._C` on
CPU) are timed next to three baselines:

  ref_slice  AutoFormer-style slicing in PyTorch (the `ref` backend): slice the max-size weights
             (views), call F.linear / F.layer_norm / SDPA / F.conv2d
  full_mask  DNAS-style full-width masking: run the op at the full max width and multiply the
             output by a 0/1 prefix mask
  dense      the dense static op of the active shape: contiguous weights of exactly the active
             shape (F.linear = cuBLAS, F.layer_norm, SDPA on contiguous q/k/v, F.conv2d)

Suites (`--device`, default cuda when available, else cpu):

  cuda   bf16 (`--dtype`), `triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])`, forward and
         forward+backward. ViT ops (layer_norm, linear qkv / proj, mlp, attention) at
         AutoFormer-T/S/B shapes (the space's max arch and a mid arch, weights allocated at the
         supernet size, batch 128 x 197 tokens, heads x 64); dwconv at cnn-bignas layers (batch
         128 at 224 px). Then the masked-op sweep (linear_masked / mlp_masked /
         elastic_attention_masked / elastic_dwconv_masked with the active width a device tensor,
         f in {0.25, 0.5, 0.75, 1.0}: cost(f) / cost(1)), then the whole-step check (autoformer-t
         supernet training step at a sampled arch, SHIFTNAS_BACKEND unset, vs the exported model
         `net.export(arch)`; batch 64, bf16 autocast, no optimizer step). The suite prints an
         estimate and caps itself at `--budget-s` (default 270 s from process start, so
         `make bench-gpu` ends within 5 minutes); what does not fit is listed as skipped, and a
         watchdog ends the process `--grace-s` after the budget whatever hangs.
  cpu    the `cpu` backend ops (layer_norm_cpu, dwconv_cpu) vs ref_slice and dense,
         float32 and bfloat16, `--threads` 2; per case all implementations run interleaved (one
         call of each per repeat, the starting one rotating), median and p20/p80 of
         `--repeats` (>= 10 asked) after `--warmup`, time.perf_counter; each case records the
         CPU load of other processes meanwhile.
  --smoke  tiny shapes and 1-2 repeats through the cuda suite's code paths on CPU, with
         TRITON_INTERPRET=1 set before triton is imported; float32 (the interpreter rejects bf16
         attention), the step on vit-fmnist with SHIFTNAS_BACKEND=triton. Proves the script runs;
         results go to /tmp/shiftnas_bench_kernels_smoke/, never to bench/results/.

Code: bench_kernels.py (this CLI, the result document) and kernel_cases.py (the op cases),
kernel_run.py (running a case, the document's state, the budget), kernel_gpu.py / kernel_cpu.py
(the suites), kernel_sweep.py, kernel_step.py, kernel_report.py; provenance and timing are
bench/harness.py's.

Output: `<out-dir>/kernels_<suite>.json` (rewritten after every case, so a timeout still leaves
JSON; "status" says how far it got) and `kernels_<suite>.png` (speed vs the dense static op per
case). Targets are reported, never asserted:
  GPU: every op >= 0.9x the dense static op's throughput (dense_ms / op_ms >= 0.9); a masked op
       at active fraction f costs <= f + 0.1 of full width; supernet step <= 1.1x exported step.
  CPU: the cpu backend >= 1.0x ref_slice for each op it provides.

    python bench/bench_kernels.py --device cuda            # -> bench/results/kernels_cuda.json
    python bench/bench_kernels.py --device cpu --repeats 20 # -> bench/results/kernels_cpu.json
    python bench/bench_kernels.py --smoke                   # -> /tmp/shiftnas_bench_kernels_smoke/
"""

from __future__ import annotations

import time

T_START = time.perf_counter()  # the budget counts from here (before torch is imported)

import argparse
import importlib.metadata
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import RESULTS_DIR, dtype_name, new_doc
from kernel_cases import CPU_REF_TARGET, GPU_DENSE_TARGET, MASK_SLACK, STEP_TARGET, Impls
from kernel_cpu import run_cpu_suite
from kernel_gpu import install_autotune_listener, lighten_autotune, run_gpu_suite
from kernel_report import device_name, plot, print_end, summarize
from kernel_run import Budget, Ctx, Report, Timer, start_watchdog

SMOKE_DIR = Path("/tmp/shiftnas_bench_kernels_smoke")
VIT_SPACES = ("autoformer-t", "autoformer-s", "autoformer-b")
DEFINITIONS = {
    "triton": "shiftnas.kernels.* (layer_norm, linear, mlp, elastic_attention, elastic_dwconv) on the max-size weights",
    "cuda / cpu": "the shiftnas._C backend ops (layer_norm_cuda/dwconv_cuda; layer_norm_cpu/dwconv_cpu)",
    "ref_slice": "AutoFormer-style slicing, the ref backend: views of the max-size weights into F.linear / "
    "F.layer_norm / SDPA / F.conv2d (attention: SDPA on the model's q/k/v views of the [B, N, H, 3, d] qkv output)",
    "full_mask": "DNAS-style: the op at the full max width (input at max width too) times a 0/1 prefix mask",
    "dense": "the dense static op of the active shape: contiguous weights of exactly the active shape "
    "(F.linear = cuBLAS, F.layer_norm, F.conv2d; attention: SDPA on contiguous [B, H, N, d] q, k, v)",
    "fwd": "forward under torch.no_grad()",
    "fwd+bwd": "forward + backward(grad) with the input and all weights requiring grad; .grad reset to None "
    "outside the timed region",
    "speed_vs_X": "X_ms / impl_ms (throughput ratio; > 1 = faster than X)",
    "max widths": "ViT: the space's max arch (embed, heads, mlp ratio) on weights of the supernet size; "
    "mid: middle embed, lower-middle heads and ratio. dwconv: cnn-bignas layers, max = widest hidden and k 5, "
    "mid = middle width x middle expand and k 3",
    "masked sweep": "the *_masked kernels with the active width a device tensor and a mask of ones (with grad); "
    "cost_ratio = ms(f) / ms(f=1)",
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default=None,
        help="default: cuda if available, else cpu",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny shapes on CPU via TRITON_INTERPRET=1; results to /tmp",
    )
    p.add_argument(
        "--out-dir", default=None, help=f"default {RESULTS_DIR} ({SMOKE_DIR} with --smoke)"
    )
    p.add_argument(
        "--dtype",
        default="bfloat16",
        choices=("bfloat16", "float16", "float32"),
        help="GPU suite dtype",
    )
    p.add_argument("--passes", default="fwd,fwd+bwd")
    p.add_argument(
        "--sections", default="ops,sweep,step", help="GPU suite: comma list of ops,sweep,step"
    )
    p.add_argument("--spaces", default=",".join(VIT_SPACES), help="ViT spaces of the GPU suite")
    p.add_argument(
        "--ops", default="layer_norm,linear_qkv,linear_proj,mlp,attention,dwconv"
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="stop starting work this many seconds after start (GPU default 270, smoke 600, cpu none)",
    )
    p.add_argument(
        "--grace-s", type=float, default=15.0, help="watchdog: hard exit this long after the budget"
    )
    p.add_argument(
        "--step-reserve-s",
        type=float,
        default=45.0,
        help="GPU: seconds kept for the whole-step check",
    )
    p.add_argument("--step-batch", type=int, default=64)
    p.add_argument("--warmup-ms", type=float, default=10.0, help="do_bench warmup (GPU)")
    p.add_argument("--rep-ms", type=float, default=50.0, help="do_bench rep (GPU)")
    p.add_argument(
        "--autotune-rep-ms",
        type=float,
        default=20.0,
        help="GPU: ms each Triton autotune candidate is timed (Triton's default: 100); 0 = Triton's default",
    )
    p.add_argument("--threads", type=int, default=2, help="torch threads (CPU suite)")
    p.add_argument(
        "--repeats",
        type=int,
        default=20,
        help="CPU suite: interleaved timed repeats (>= 10 advised)",
    )
    p.add_argument(
        "--warmup", type=int, default=3, help="CPU suite: untimed calls of each impl first"
    )
    p.add_argument("--cpu-dtypes", default="float32,bfloat16")
    p.add_argument(
        "--cpu-batch", type=int, default=8, help="CPU suite: images per batch (x 197 tokens)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled arch of the step check")
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    return check_args(p, args)


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Device, suite, output folder, budget and passes; sets TRITON_INTERPRET for --smoke."""
    if args.smoke:
        # Before triton is imported anywhere: the kernels decide interpreter vs GPU at decoration.
        os.environ["TRITON_INTERPRET"] = "1"
        args.device = "cpu"
    import torch

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    args.suite = "smoke" if args.smoke else ("gpu" if args.device == "cuda" else "cpu")
    args.out_dir = (
        Path(args.out_dir) if args.out_dir else (SMOKE_DIR if args.smoke else RESULTS_DIR)
    )
    if args.smoke and RESULTS_DIR.resolve() in [
        args.out_dir.resolve(),
        *args.out_dir.resolve().parents,
    ]:
        p.error(f"--smoke never writes to {RESULTS_DIR}; pick another --out-dir")
    if args.suite == "cpu" and args.repeats < 10:
        print(
            f"note: --repeats {args.repeats} < 10: a quick look, not a careful measurement",
            file=sys.stderr,
        )
    if args.budget_s is None:
        args.budget_s = {"gpu": 270.0, "smoke": 600.0, "cpu": 0.0}[args.suite]
    args.passes = tuple(x for x in args.passes.split(",") if x)
    for x in args.passes:
        if x not in ("fwd", "fwd+bwd"):
            p.error(f"--passes: unknown pass {x!r}; allowed: fwd, fwd+bwd")
    args.sections = [s for s in args.sections.split(",") if s]
    return args


def _timing_words(args) -> str:
    if args.suite == "gpu":
        return (
            f"harness.time_cuda: triton.testing.do_bench(fn, warmup={args.warmup_ms}, rep={args.rep_ms}, "
            "grad_to_none=leaves, quantiles=[0.5, 0.2, 0.8, 0]) per implementation (CUDA events, L2 flushed "
            "before each call)"
        )
    if args.suite == "cpu":
        return (
            f"harness.time_cpu: time.perf_counter, {args.repeats} interleaved repeats (order rotating) after "
            f"{args.warmup} warm-up calls of each implementation; median, p20, p80"
        )
    return "time.perf_counter, 1 warm-up + 2 repeats (smoke: proves the code runs, numbers meaningless)"


def make_doc(args, dtype) -> dict:
    import torch

    try:
        triton_version = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton_version = None
    settings = {
        "dtype": dtype_name(dtype) if args.suite != "cpu" else args.cpu_dtypes.split(","),
        "passes": list(args.passes),
        "threads": torch.get_num_threads(),
        "timing": _timing_words(args),
        "budget_s": args.budget_s,
    }
    if args.suite == "cpu":
        targets = {"cpu": f"cpu backend >= {CPU_REF_TARGET}x ref_slice for each op it provides"}
    else:
        targets = {
            "ops": f"every op >= {GPU_DENSE_TARGET}x the dense static op's throughput",
            "masked": f"masked op at active fraction f costs <= f + {MASK_SLACK} of full width",
            "step": f"supernet training step at a sampled arch <= {STEP_TARGET}x the exported model's step",
        }
    doc = new_doc(
        "bench/bench_kernels.py",
        gpu=args.device == "cuda",
        suite=args.suite,
        status="running",
        triton=triton_version,
        argv=args.argv,
        settings=settings,
        definitions=DEFINITIONS,
        targets=targets,
        cases=[],
    )
    if args.suite == "smoke":
        doc["note"] = "SMOKE RUN: TRITON_INTERPRET=1 on CPU, tiny shapes; the timings mean nothing"
    return doc


def make_timer(args, doc: dict) -> Timer | None:
    """The GPU / smoke suites' timer; on GPU also the lighter Triton autotuning and its stats."""
    if args.suite == "cpu":
        return None
    at_stats: dict = {}
    if args.suite == "gpu":
        install_autotune_listener(at_stats)
        if args.autotune_rep_ms > 0:
            doc["settings"]["autotune"] = {
                "rep_ms": args.autotune_rep_ms,
                "warmup_ms": 5,
                "autotuners": lighten_autotune(args.autotune_rep_ms, 5),
            }
    doc["autotune_stats"] = at_stats
    return Timer(args.device, args.warmup_ms, args.rep_ms, 1, 2)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.suite == "cpu":
        torch.set_num_threads(args.threads)
    dtype = torch.float32 if args.suite == "smoke" else getattr(torch, args.dtype)
    name = {"gpu": "cuda", "cpu": "cpu", "smoke": "smoke"}[args.suite]
    json_path, png_path = (
        args.out_dir / f"kernels_{name}.json",
        args.out_dir / f"kernels_{name}.png",
    )
    doc = make_doc(args, dtype)
    report = Report(json_path, doc, T_START)
    report.write()
    budget = Budget(args.budget_s, T_START)
    start_watchdog(report, budget, args.grace_s)
    impls = Impls(args.device)
    ctx = Ctx(
        args, args.suite, args.device, dtype, args.passes, make_timer(args, doc), impls, budget
    )
    git = doc["git"]
    print(
        f"bench_kernels [{args.suite}] on {device_name(doc)}, torch {torch.__version__}, triton {doc['triton']}, "
        f"commit {str(git['commit'])[:10]}{' (dirty)' if git['dirty'] else ''} -> {json_path}",
        flush=True,
    )
    try:
        (run_cpu_suite if args.suite == "cpu" else run_gpu_suite)(ctx, report)
        status = "complete" if not doc.get("skipped_for_budget") else "budget_exhausted"
    except KeyboardInterrupt:
        status = "interrupted"
    doc.update(
        unavailable=dict(impls.missing), summary=summarize(doc), status=status, plot=str(png_path)
    )
    doc["plot_error"] = plot(doc, png_path)
    report.write()
    print_end(doc)
    if args.suite == "smoke":
        print(
            "\nSMOKE RUN (TRITON_INTERPRET=1 on CPU, tiny shapes): the code paths ran; the numbers mean nothing"
        )
    print(
        f"\n{status} in {time.perf_counter() - T_START:.0f}s -> {json_path}"
        + (f", {png_path}" if not doc["plot_error"] else f" (no plot: {doc['plot_error']})")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
