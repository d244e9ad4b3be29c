"""Training-step time of the elastic supernet vs. its exported static subnet vs. timm's ViT (CPU).

For each space and arch (min / middle / max) one training step (zero grads with
set_to_none, forward, cross-entropy, backward; no optimizer step) is timed for

  supernet   `net(x, arch)`: the weight-sharing supernet run at the arch
  exported   `shiftnas.export_subnet(net, arch)`: the dense static model of the same arch
  timm       `timm.models.vision_transformer.VisionTransformer` of the same shape: only for
             ViT archs where every layer has heads * head_dim == embed_dim and one mlp ratio

side by side in one process, interleaved (one step of each per repeat, the starting model
rotating, so machine drift hits all of them alike). Reported: median and p20/p80 over the
repeats after warm-up, and the ratios supernet/exported and exported/timm (docs/design.md,
"Measuring": the dense static model is the floor every elastic path is held to).

Peak memory is measured separately, one fresh subprocess per (model, arch) (this script with
the hidden `--_mem-child` flag), so allocator state never leaks between models.

Targets (reported, not asserted): supernet/exported <= 1.05 at every arch; exported ViT no
slower than timm.

    python bench/bench_supernet.py       # full run -> bench/results/supernet_cpu.json
    python bench/bench_supernet.py --spaces vit-fmnist --repeats 10 --no-memory
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import gc
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "supernet_cpu.json"
DEFAULT_SPACES = ("vit-fmnist", "cnn-fmnist", "autoformer-t")
# Batch per space: the fmnist spaces at their training batch, autoformer-t small (224 px).
BATCH = {
    "vit-fmnist": 64,
    "cnn-fmnist": 64,
    "autoformer-t": 8,
    "autoformer-s": 8,
    "autoformer-b": 8,
    "cnn-bignas": 8,
}
ARCH_LABELS = ("min", "middle", "max")
MODELS = ("supernet", "exported", "timm")
MEMORY_STEPS = 3

if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # for _common, also when not run as a script

from _common import (
    git_commit,
    loadavg,
    machine,
    quantile,
    summary,
    time_interleaved,
    timing_env,
    utc_date,
    write_json,
)


# -- building -------------------------------------------------------------------------------------
def make_arch(space, label: str):
    """min / max of the space; middle = the middle candidate (index len // 2) of every decision."""
    if label == "min":
        return space.min()
    if label == "max":
        return space.max()
    if label == "middle":
        return space.from_indices({d.name: len(d.choices) // 2 for d in space.decisions})
    raise ValueError(f"arch label {label!r}; allowed: {list(ARCH_LABELS)}")


def timm_shape(space, arch) -> dict | None:
    """timm VisionTransformer kwargs of `arch`; None when a uniform timm ViT cannot express it."""
    if space.family != "vit":
        return None
    hp = space.hparams
    E, d = arch["embed_dim"], hp["head_dim"]
    layers = [
        (arch[f"layers.{i}.num_heads"], arch[f"layers.{i}.mlp_ratio"]) for i in range(arch["depth"])
    ]
    if any(h * d != E for h, _ in layers) or len({r for _, r in layers}) != 1:
        return None
    return {
        "img_size": hp["img_size"],
        "patch_size": hp["patch_size"],
        "in_chans": hp["in_chans"],
        "num_classes": hp["num_classes"],
        "embed_dim": E,
        "depth": arch["depth"],
        "num_heads": layers[0][0],
        "mlp_ratio": layers[0][1],
        "qkv_bias": True,
        "class_token": True,
        "global_pool": "token",
    }


def make_inputs(space, arch, batch: int, seed: int = 0):
    import torch

    hp = space.hparams
    res = arch["resolution"] if space.family == "cnn" else hp["img_size"]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, hp["in_chans"], res, res, generator=g)
    y = torch.randint(0, hp["num_classes"], (batch,), generator=g)
    return x, y


def build_models(space_name: str, label: str, which=MODELS) -> tuple[object, dict]:
    """(arch, {model name: (module whose grads are zeroed, forward callable)}) for `which`."""
    import torch

    import shiftnas

    space = shiftnas.get_space(space_name)
    arch = make_arch(space, label)
    torch.manual_seed(0)
    out = {}
    net = shiftnas.build_supernet(space_name) if {"supernet", "exported"} & set(which) else None
    if net is not None:
        net.train()
    if "exported" in which:
        sub = shiftnas.export_subnet(net, arch)
        out["exported"] = (sub, sub)
    if "supernet" in which:
        out["supernet"] = (net, lambda x, net=net, arch=arch: net(x, arch))
    if "timm" in which:
        kw = timm_shape(space, arch)
        if kw is not None:
            from timm.models.vision_transformer import VisionTransformer

            vit = VisionTransformer(**kw).train()
            out["timm"] = (vit, vit)
    return arch, out


def train_step(module, fwd, x, y) -> None:
    import torch.nn.functional as F

    module.zero_grad(set_to_none=True)
    F.cross_entropy(fwd(x), y).backward()


# -- statistics -----------------------------------------------------------------------------------
def ratio(num: list[float], den: list[float]) -> dict:
    """Ratio of medians, and the median of per-repeat paired ratios (robust to slow drift)."""
    paired = [a / b for a, b in zip(num, den)]
    return {
        "of_medians": round(quantile(num, 0.5) / quantile(den, 0.5), 4),
        "paired_median": round(quantile(paired, 0.5), 4),
        "paired_p20": round(quantile(paired, 0.2), 4),
        "paired_p80": round(quantile(paired, 0.8), 4),
    }


# -- timing ---------------------------------------------------------------------------------------
def time_models(models: dict, x, y, warmup: int, repeats: int) -> dict[str, list[float]]:
    """Per model, `repeats` step times (ms); each repeat runs every model once, order rotating."""
    steps = {
        n: functools.partial(train_step, module, fwd, x, y) for n, (module, fwd) in models.items()
    }
    secs = time_interleaved(steps, warmup, repeats)
    return {n: [t * 1e3 for t in ts] for n, ts in secs.items()}


# -- memory (fresh subprocess per model and arch) -------------------------------------------------
def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _hwm_mb() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def memory_child(spec: str, threads: int) -> None:
    """Hidden `--_mem-child space:label:model`: print one JSON line of this model's RSS."""
    import torch

    torch.set_num_threads(threads)
    space_name, label, model = spec.split(":")
    import shiftnas

    space = shiftnas.get_space(space_name)
    gc.collect()
    _malloc_trim()
    rss_start = _rss_mb()
    arch, models = build_models(space_name, label, which=(model,))
    if model not in models:
        print(json.dumps({"skipped": True}))
        return
    module, fwd = models[model]
    # The exported model's build also built a supernet: drop everything but the model.
    del models
    gc.collect()
    _malloc_trim()
    x, y = make_inputs(space, arch, BATCH[space_name])
    rss_build = _rss_mb()
    hwm_reset = _reset_hwm()
    for _ in range(MEMORY_STEPS):
        train_step(module, fwd, x, y)
    hwm = _hwm_mb() if hwm_reset else None
    if hwm is None:
        # ru_maxrss is a fallback only: Linux carries it across exec, so in this child it starts at
        # the parent's peak (1.6 GB in the full run) and hides the step's own peak.
        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "rss_model_mb": round(rss_build - rss_start, 1),
                "peak_rss_mb_step": round(hwm - rss_build, 1),
                "peak_source": "VmHWM after clear_refs" if hwm_reset else "ru_maxrss (upper bound)",
            }
        )
    )


def measure_memory(space_name: str, label: str, model: str, threads: int) -> dict | None:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--_mem-child",
        f"{space_name}:{label}:{model}",
        "--threads",
        str(threads),
    ]
    try:
        p = subprocess.run(
            cmd, check=False, capture_output=True, text=True, timeout=900, cwd=str(ROOT)
        )
    except subprocess.TimeoutExpired:
        return {"error": "timeout"}
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or [f"rc {p.returncode}"])[-1]}
    out = json.loads(p.stdout.strip().splitlines()[-1])
    return None if out.get("skipped") else out


# -- provenance -----------------------------------------------------------------------------------
def environment() -> dict:
    """Settings that change CPU timings: threading env vars and the backend chosen per op."""
    from shiftnas.ops import dispatch

    return {
        "env": timing_env(),
        "backends_cpu_float32": {op: chosen for op, chosen, _ in dispatch.report("cpu")},
    }


# -- driver ---------------------------------------------------------------------------------------
def bench_space(space_name: str, args) -> list[dict]:
    import shiftnas

    space = shiftnas.get_space(space_name)
    batch = BATCH.get(space_name, 8)
    rows = []
    for label in args.archs:
        arch, models = build_models(space_name, label)
        x, y = make_inputs(space, arch, batch)
        t0 = time.perf_counter()
        times = time_models(models, x, y, args.warmup, args.repeats)
        row = {
            "space": space_name,
            "arch": label,
            "arch_short": arch.short(),
            "batch": batch,
            "input": list(x.shape),
            "mflops": round(shiftnas.count_flops(space, arch) / 1e6, 3),
            "params_m": round(shiftnas.count_params(space, arch) / 1e6, 4),
            "timm_comparable": "timm" in models,
            "times": {n: summary(t) for n, t in times.items()},
            "ratios": {"supernet/exported": ratio(times["supernet"], times["exported"])},
            "bench_seconds": round(time.perf_counter() - t0, 1),
        }
        if "timm" in times:
            row["ratios"]["exported/timm"] = ratio(times["exported"], times["timm"])
            row["ratios"]["supernet/timm"] = ratio(times["supernet"], times["timm"])
        rows.append(row)
        print(
            f"  {space_name:13s} {label:6s} done in {row['bench_seconds']:.0f}s",
            file=sys.stderr,
            flush=True,
        )
        del models
        gc.collect()
    return rows


def print_table(rows: list[dict]) -> None:
    hdr = (
        f"{'space':13s} {'arch':6s} {'MMACs':>8s} {'Mparam':>7s} | "
        f"{'supernet ms':>17s} {'exported ms':>17s} "
        f"{'timm ms':>17s} | {'sup/exp':>7s} {'exp/timm':>8s} | {'peak MB s/e/t':>17s}"
    )
    print(hdr)
    print("-" * len(hdr))

    def cell(t):
        return f"{t['median_ms']:7.1f} [{t['p20_ms']:.0f}-{t['p80_ms']:.0f}]" if t else "-"

    for r in rows:
        t = r["times"]
        se = r["ratios"]["supernet/exported"]["of_medians"]
        et = r["ratios"].get("exported/timm", {}).get("of_medians")
        mem = r.get("memory") or {}
        peaks = "/".join(
            f"{mem[m]['peak_rss_mb_step']:.0f}"
            if mem.get(m) and "peak_rss_mb_step" in mem[m]
            else "-"
            for m in MODELS
        )
        flag = " !" if se > 1.05 else ""
        print(
            f"{r['space']:13s} {r['arch']:6s} {r['mflops']:8.1f} {r['params_m']:7.3f} | "
            f"{cell(t.get('supernet')):>17s} "
            f"{cell(t.get('exported')):>17s} {cell(t.get('timm')):>17s} | {se:7.3f} "
            f"{(f'{et:8.3f}' if et else '       -')} | {peaks:>17s}{flag}"
        )
        print(f"{'':21s}{r['arch_short']}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--spaces", default=",".join(DEFAULT_SPACES), help="comma-separated space names")
    p.add_argument(
        "--archs", default=",".join(ARCH_LABELS), help="comma-separated subset of min,middle,max"
    )
    p.add_argument("--repeats", type=int, default=20, help="timed steps per model (>= 10)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per model first")
    # Fixed, and the same for every model. On a loaded machine (load average 5 on 2 cores) two
    # threads ran vit-fmnist min 3-10x slower than one (190-760 ms vs 62-70 ms per step): threads
    # wait at every parallel region for a descheduled peer. Compare runs at equal load only.
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON output path")
    p.add_argument(
        "--no-memory", action="store_true", help="skip the per-model memory subprocesses"
    )
    p.add_argument("--_mem-child", dest="mem_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.mem_child:
        memory_child(args.mem_child, args.threads)
        return
    if args.repeats < 10:
        p.error(f"--repeats {args.repeats}: need >= 10 for a median (docs/design.md, Measuring)")
    args.spaces = [s for s in args.spaces.split(",") if s]
    args.archs = [a for a in args.archs.split(",") if a]
    for a in args.archs:
        if a not in ARCH_LABELS:
            p.error(f"--archs: unknown arch {a!r}; allowed: {list(ARCH_LABELS)}")

    import timm
    import torch

    torch.set_num_threads(args.threads)
    random.seed(0)
    machine_start = machine()
    rows = []
    for s in args.spaces:
        rows += bench_space(s, args)
    if not args.no_memory:
        for r in rows:
            r["memory"] = {}
            for m in MODELS:
                if m in r["times"]:
                    r["memory"][m] = measure_memory(r["space"], r["arch"], m, args.threads)
            print(f"  memory {r['space']} {r['arch']} done", file=sys.stderr, flush=True)

    result = {
        "benchmark": "bench/bench_supernet.py",
        "what": (
            "one training step: zero_grad(set_to_none=True) + forward + cross_entropy + backward "
            "(no optimizer step), fp32"
        ),
        "date": utc_date(),
        "git_commit": git_commit(),
        "machine": machine_start,
        "loadavg_at_end": loadavg(),
        "environment": environment(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "method": (
            "models of one arch timed side by side in one process, interleaved: each repeat runs "
            "one step of every model, the starting model rotating; median and p20/p80 over the "
            "repeats (time.perf_counter). Ratio 'of_medians' = median(a)/median(b); 'paired_*' = "
            "quantiles of the per-repeat ratio a_i/b_i."
        ),
        "definitions": {
            "middle": "space.from_indices({d: len(d.choices) // 2}) for every decision",
            "mflops": (
                "shiftnas.count_flops / 1e6: multiply-accumulates (the AutoFormer/ShiftNAS "
                "convention)"
            ),
            "params_m": "shiftnas.count_params / 1e6",
            "timm": (
                "timm VisionTransformer(qkv_bias=True, class_token=True, global_pool='token'), "
                "fused SDPA; only where every layer has heads*head_dim == embed_dim and one mlp "
                "ratio"
            ),
            "rss_model_mb": (
                "RSS after building the model (plus the input batch) minus RSS after imports, in "
                "a fresh process per (model, arch); the exported model's supernet is freed "
                "(gc + malloc_trim) first"
            ),
            "peak_rss_mb_step": (
                f"peak RSS during {MEMORY_STEPS} training steps (VmHWM, reset via "
                "/proc/self/clear_refs just before the steps; ru_maxrss if that fails) minus RSS "
                "right before the steps (model built, input created)"
            ),
        },
        "targets": {
            "supernet/exported": "<= 1.05 at every arch",
            "exported/timm": "<= 1.0 (exported ViT no slower)",
        },
        "results": rows,
    }
    write_json(args.out, result, indent=1)
    print_table(rows)
    print(f"\nwrote {Path(args.out)}")


if __name__ == "__main__":
    main()
