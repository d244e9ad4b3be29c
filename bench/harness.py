"""The one harness of the benchmark scripts in bench/: provenance, timing, statistics, output.

The scripts run as ``python bench/<script>.py``, so this folder is on ``sys.path`` and they import
this as ``from harness import ...`` (each puts the folder on ``sys.path`` itself first, for runs
from elsewhere); importing it puts the repository root on ``sys.path`` too, so ``shiftnas``
imports from a checkout. Nothing here imports torch at module level.

  provenance  every result document starts with `new_doc` and is written with `write_result`:
              ``benchmark``, ``date`` (UTC), ``git`` (`GIT_KEYS`) and ``machine`` (`MACHINE_KEYS`:
              host, CPU model/capability/flags, native bf16, threads, load average before and
              after, the timing-relevant environment variables, torch, and the GPU where there is
              one). No script builds a machine block of its own.
  CPU load    `ForeignLoad`: CPUs used by *other* processes while a block runs (Linux)
  malloc      `tune_malloc` and its --malloc-tuning option
  timing      `schedule` (warm-up rounds, then repeats whose order rotates), `time_interleaved`
              (one call of each function per repeat), `time_cpu` (the same in ms with the foreign
              load), `time_cuda` (triton.testing.do_bench: CUDA events, L2 flushed), `matmul_peak`
              (a square matmul's FLOP/s, the peak achieved FLOP/s are compared with)
  statistics  `quantile`, `stats`, `paired_ratio`, `linear_fit`
  output      `write_json`, `write_figure` (atomic)
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
if str(ROOT) not in sys.path:  # `import shiftnas` from a checkout, whatever the working directory
    sys.path.insert(1, str(ROOT))

# Environment variables that change timings (threading, allocator, the op backend chosen, Triton).
TIMING_ENV_VARS = tuple(
    "OMP_NUM_THREADS MKL_NUM_THREADS OMP_WAIT_POLICY GOMP_SPINCOUNT KMP_BLOCKTIME KMP_AFFINITY "
    "ATEN_CPU_CAPABILITY MALLOC_ARENA_MAX SHIFTNAS_BACKEND TRITON_INTERPRET CUDA_VISIBLE_DEVICES".split()
)
# The keys of every result document's ``git`` and ``machine`` blocks (``machine.gpu``: GPU_KEYS or None).
GIT_KEYS = ("commit", "dirty", "changed")
MACHINE_KEYS = tuple(
    "host platform python torch cpu_model cpu_count cpu_affinity cpu_capability cpu_flags "
    "native_bf16 fast_bf16 threads loadavg_before loadavg_after env gpu".split()
)
GPU_KEYS = ("name", "capability", "cuda_version", "memory_gib")


# -- provenance -----------------------------------------------------------------------------------
def cpu_model() -> str | None:
    """The first ``model name`` of /proc/cpuinfo, else ``platform.processor()``, else None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def loadavg() -> list[float]:
    """The 1/5/15-minute load averages, rounded to 2 decimals."""
    return [round(v, 2) for v in os.getloadavg()]


def git(*args: str) -> str | None:
    """stdout of ``git *args`` run in the repository root; None when git fails or is missing.

    Only trailing white space is stripped: ``git status --porcelain`` lines start with a space.
    """
    try:
        p = subprocess.run(
            ["git", *args], check=False, capture_output=True, text=True, cwd=str(ROOT), timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout.rstrip() if p.returncode == 0 else None


def git_info() -> dict:
    """HEAD's commit, whether tracked files differ from it, and which (the first 40)."""
    status = git("status", "--porcelain", "--untracked-files=no")
    changed = [ln[3:] for ln in (status or "").splitlines() if ln.strip()]
    return {
        "commit": git("rev-parse", "HEAD") or None,
        "dirty": None if status is None else bool(changed),
        "changed": changed[:40],
    }


def utc_date() -> str:
    """Now, UTC, ISO 8601 to the second (``2024-01-31T12:00:00+00:00``)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def gpu_info() -> dict | None:
    """Name, compute capability, CUDA version and memory of GPU 0; None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {
        "name": torch.cuda.get_device_name(0),
        "capability": f"{props.major}.{props.minor}",
        "cuda_version": torch.version.cuda,
        "memory_gib": round(props.total_memory / 2**30, 1),
    }


def machine(gpu: bool = False) -> dict:
    """The ``machine`` block, keys `MACHINE_KEYS`; ``loadavg_after`` is set by `write_result`.

    CPU capability, flags, ``native_bf16`` (bf16 instructions) and ``fast_bf16`` (AMX: what
    optim.amp=auto needs for bf16) are `shiftnas.train.precision.cpu_features`. ``gpu`` is `gpu_info` for a run on the GPU (`gpu`), else None.
    """
    import torch

    from shiftnas.train.precision import cpu_features

    feats = cpu_features()
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_capability": feats["cpu_capability"],
        "cpu_flags": feats["cpu_flags"],
        "native_bf16": feats["native_bf16"],
        "fast_bf16": feats["fast_bf16"],
        "threads": torch.get_num_threads(),
        "loadavg_before": loadavg(),
        "loadavg_after": None,
        "env": {k: os.environ.get(k) for k in TIMING_ENV_VARS},  # None: unset
        "gpu": gpu_info() if gpu else None,
    }


def new_doc(benchmark: str, gpu: bool = False, **fields) -> dict:
    """A result document: ``benchmark``, ``date``, ``git``, ``machine``, then `fields`.

    Call it after ``torch.set_num_threads`` (the machine block records the thread count).
    """
    return {
        "benchmark": benchmark,
        "date": utc_date(),
        "git": git_info(),
        "machine": machine(gpu),
        **fields,
    }


def dtype_name(dtype) -> str:
    """``float32`` for torch.float32 (the name torch gives it, without ``torch.``)."""
    return str(dtype).replace("torch.", "")


def backends(device: str, dtypes) -> dict:
    """Per dtype, the backend `shiftnas.ops.dispatch` picks for each op (they change timings)."""
    from shiftnas.ops import dispatch

    return {dtype_name(d): {op: c for op, c, _ in dispatch.report(device, d)} for d in dtypes}


def write_result(path: str | os.PathLike, doc: dict, *, indent: int = 1) -> None:
    """`doc` with the load average now as ``machine.loadavg_after``, written by `write_json`."""
    doc["machine"]["loadavg_after"] = loadavg()
    write_json(path, doc, indent=indent, default=str)


# -- CPU load of other processes ------------------------------------------------------------------
def cpu_jiffies() -> tuple[int, int] | None:
    """(busy jiffies of the whole machine, jiffies used by this process), Linux only."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        vals = [int(v) for v in fields[:8]]
        busy = sum(vals) - vals[3] - vals[4]  # minus idle and iowait
        own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        return busy, int(own[11]) + int(own[12])  # utime + stime
    except (OSError, ValueError, IndexError):
        return None


class ForeignLoad:
    """``with ForeignLoad() as m: ...``; then ``m.load``: the average number of CPUs *other*
    processes used meanwhile (None off Linux), and ``m.seconds``: how long the block took."""

    load: float | None = None
    seconds: float = 0.0

    def __enter__(self) -> ForeignLoad:
        self._j0, self._t0 = cpu_jiffies(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        j1, self.seconds = cpu_jiffies(), time.perf_counter() - self._t0
        if self._j0 is None or j1 is None or self.seconds <= 0:
            return
        other = (j1[0] - self._j0[0]) - (j1[1] - self._j0[1])
        self.load = round(max(0, other) / os.sysconf("SC_CLK_TCK") / self.seconds, 2)


# -- malloc ---------------------------------------------------------------------------------------
def tune_malloc() -> bool:
    """Stop glibc from returning freed heap to the OS between iterations.

    Each iteration allocates and frees several MB. With glibc's default dynamic trim/mmap
    thresholds, that memory is sometimes unmapped and re-faulted (~1500 page faults per
    iteration), which adds up to ~1 ms of noise to whichever side happens to trigger it.
    Applied to both sides alike.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_trim_threshold, 1 << 30)) and bool(
            libc.mallopt(m_mmap_threshold, 1 << 30)
        )
    except (OSError, AttributeError):
        return False


def add_malloc_tuning_arg(ap: argparse.ArgumentParser) -> None:
    """The ``--malloc-tuning / --no-malloc-tuning`` option (default on) for `tune_malloc`."""
    ap.add_argument(
        "--malloc-tuning",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="raise glibc's trim/mmap thresholds to remove page-fault noise (default: on)",
    )


# -- timing ---------------------------------------------------------------------------------------
def schedule(names, warmup: int, repeats: int) -> Iterator[tuple[int, list, bool]]:
    """(round, order, timed) for `warmup` untimed rounds in the given order, then `repeats`
    timed rounds, round r's order rotated left by r, so each name leads in turn and drift and
    background load hit all alike."""
    names = list(names)
    for w in range(warmup):
        yield w, names, False
    for r in range(repeats):
        k = r % len(names)
        yield r, names[k:] + names[:k], True


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    warmup: int,
    repeats: int,
    before: Callable[[], object] | None = None,
) -> dict[str, list[float]]:
    """Per name, the seconds of `repeats` calls of its function (time.perf_counter), `schedule`d.

    `before`, if given, runs untimed before every call (e.g. resetting gradients).
    """
    times: dict[str, list[float]] = {n: [] for n in fns}
    pc = time.perf_counter
    for _, order, timed in schedule(fns, warmup, repeats):
        for n in order:
            if before is not None:
                before()
            fn = fns[n]
            t0 = pc()
            fn()
            if timed:
                times[n].append(pc() - t0)
    return times


@dataclasses.dataclass
class Timing:
    """What `time_cpu` measured: per name the call times in ms, and the foreign CPU load."""

    ms: dict[str, list[float]]
    foreign_cpu_load: float | None
    seconds: float

    def stats(self, digits: int = 3) -> dict[str, dict]:
        return {n: stats(v, digits) for n, v in self.ms.items()}

    def median(self, name: str) -> float:
        return quantile(self.ms[name], 0.5)


def time_cpu(
    fns: dict[str, Callable[[], object]],
    warmup: int,
    repeats: int,
    before: Callable[[], object] | None = None,
) -> Timing:
    """`time_interleaved` in milliseconds, with the CPU load of other processes meanwhile."""
    with ForeignLoad() as meter:
        secs = time_interleaved(fns, warmup, repeats, before)
    ms = {n: [t * 1e3 for t in ts] for n, ts in secs.items()}
    return Timing(ms, meter.load, round(meter.seconds, 2))


def time_cuda(fn: Callable[[], object], warmup_ms: float, rep_ms: float, grad_to_none=None) -> dict:
    """`stats` keys of `fn` on the GPU by ``triton.testing.do_bench`` (CUDA events, L2 flushed
    before each call, `grad_to_none` reset between calls); ``n`` is None (do_bench does not say)."""
    import triton.testing

    med, p20, p80, lo = triton.testing.do_bench(
        fn, warmup=warmup_ms, rep=rep_ms, grad_to_none=grad_to_none, quantiles=[0.5, 0.2, 0.8, 0.0]
    )
    return {
        "median_ms": round(med, 5),
        "p20_ms": round(p20, 5),
        "p80_ms": round(p80, 5),
        "min_ms": round(lo, 5),
        "n": None,
    }


def matmul_peak(dtype, n: int = 2048, repeats: int = 5, device: str = "cpu") -> dict:
    """FLOP/s of an n x n x n matmul in `dtype`: the best of `repeats` after one warm-up call.

    ``flop_per_s`` = 2 n^3 / best seconds: the peak that achieved FLOP/s are compared with, measured
    in the same process and thread count as they are.
    """
    import torch

    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(device=device, dtype=dtype) for _ in range(2))
    if device == "cuda":
        best_ms = time_cuda(lambda: a @ b, warmup_ms=25, rep_ms=100)["min_ms"]
    else:
        best_ms = min(time_cpu({"mm": lambda: a @ b}, 1, repeats).ms["mm"])
    return {
        "n": n,
        "dtype": dtype_name(dtype),
        "repeats": repeats,
        "best_ms": round(best_ms, 6),
        "flop_per_s": 2 * n**3 / (best_ms / 1e3),
    }


# -- statistics -----------------------------------------------------------------------------------
def quantile(xs: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default)."""
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def stats(ms: list[float], digits: int = 3) -> dict:
    """Median, p20, p80 and min of times in ms, rounded to `digits`, and their number."""
    return {
        "median_ms": round(quantile(ms, 0.5), digits),
        "p20_ms": round(quantile(ms, 0.2), digits),
        "p80_ms": round(quantile(ms, 0.8), digits),
        "min_ms": round(min(ms), digits),
        "n": len(ms),
    }


def paired_ratio(num: list[float], den: list[float]) -> dict:
    """Ratio of medians, and quantiles of the per-repeat paired ratios (robust to slow drift)."""
    paired = [a / b for a, b in zip(num, den)]
    return {
        "of_medians": round(quantile(num, 0.5) / quantile(den, 0.5), 4),
        "paired_median": round(quantile(paired, 0.5), 4),
        "paired_p20": round(quantile(paired, 0.2), 4),
        "paired_p80": round(quantile(paired, 0.8), 4),
    }


def profile_ops(fn: Callable[[], object], steps: int = 3, top: int = 12) -> dict:
    """Where the time of `fn` goes: torch.profiler over `steps` calls (after one untimed), the
    `top` operators by self CPU time (ms per call of `fn`, share of the total, calls per call
    of `fn`, the most common input shapes), and the total self CPU time per call."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            fn()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e3 / steps
    shapes: dict[str, tuple[int, str]] = {}
    for e in prof.key_averages(group_by_input_shape=True):
        if e.count > shapes.get(e.key, (0, ""))[0]:
            shapes[e.key] = (e.count, str(e.input_shapes)[:160])
    rows = sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]
    return {
        "self_cpu_ms_per_call": round(total, 3),
        "top": [{"op": e.key, "self_ms": round(e.self_cpu_time_total / 1e3 / steps, 3),
                 "share": round(e.self_cpu_time_total / 1e3 / steps / total, 4) if total else None,
                 "calls": e.count // steps, "shapes": shapes.get(e.key, (0, ""))[1]} for e in rows],
    }


def linear_fit(xs: list[float], ys: list[float]) -> dict:
    """Least squares y = slope * x + intercept; ``r2`` the coefficient of determination (in [0, 1]
    with an intercept; None when y does not vary), ``n`` the points. Needs >= 2 distinct x."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if n < 2 or sxx == 0:
        raise ValueError(f"linear_fit needs >= 2 distinct x values, got {xs}")
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - slope * x - intercept) ** 2 for x, y in zip(xs, ys))
    r2 = None if ss_tot == 0 else min(1.0, max(0.0, 1 - ss_res / ss_tot))
    return {"slope": slope, "intercept": intercept, "r2": r2, "n": n}


# -- output ---------------------------------------------------------------------------------------
def write_json(path: str | os.PathLike, doc: dict, *, indent: int = 1, default=None) -> None:
    """Write `doc` as JSON plus a newline to `path` with `shiftnas.atomic.atomic_write` (a reader
    or a kill mid-write sees the old file or the new one). A symlink's target is replaced (not
    the link); a path that exists but is no regular file (/dev/stdout, a pipe) is written directly.
    """
    from shiftnas.atomic import atomic_write

    text = json.dumps(doc, indent=indent, default=default) + "\n"
    path = Path(path)
    if path.exists() and not path.is_file():
        path.write_text(text)
        return
    atomic_write(path.resolve(), lambda f: f.write(text.encode("utf-8")))


def write_figure(fig, path: str | os.PathLike, *, dpi: int = 100) -> None:
    """Save a matplotlib figure as PNG to `path` with `shiftnas.atomic.atomic_write`."""
    from shiftnas.atomic import atomic_write

    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))


def short_error(e: BaseException) -> str:
    """``Type: first line of the message`` (400 characters at most), for a JSON field."""
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:400]}" if msg else type(e).__name__
