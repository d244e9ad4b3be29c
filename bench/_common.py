"""Helpers shared by the benchmark scripts in bench/: provenance, CPU-load sampling, timing, output.

The scripts run as ``python bench/<script>.py``, so this folder is on ``sys.path`` and they
import these as ``from _common import ...`` (each also puts the folder on ``sys.path`` itself,
for ``python -m bench.<script>`` and imports from elsewhere). Nothing here imports torch at
module level.

  provenance   cpu_model / cpu_name / cpu_affinity / cpu_features / loadavg, machine (bench_supernet,
               bench_train_step), cpu_op_machine (bench_layer_norm_cpu, bench_cpu_ops),
               timing_env, git / git_commit / git_dirty, utc_date
  CPU load     cpu_jiffies, foreign_load: CPUs used by *other* processes over an interval
  malloc       tune_malloc and its --malloc-tuning option
  timing       rotation, time_interleaved (one call of each function per repeat, the starting
               one rotating), time_pair (median microseconds of two functions, interleaved)
  statistics   quantile, summary
  output       write_json (atomic)
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Environment variables that change CPU timings (threading, the op backend chosen).
TIMING_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OMP_WAIT_POLICY",
    "GOMP_SPINCOUNT",
    "KMP_BLOCKTIME",
    "SHIFTNAS_BACKEND",
)


# -- provenance -----------------------------------------------------------------------------------
def cpu_model() -> str | None:
    """The first ``model name`` of /proc/cpuinfo; None where there is none (or no /proc)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name(unknown: str = "unknown") -> str:
    """`cpu_model()`, else ``platform.processor()``, else `unknown`."""
    model = cpu_model()
    return model if model is not None else platform.processor() or unknown


def cpu_affinity() -> int | None:
    """How many CPUs this process may run on (None where the OS does not say)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def loadavg() -> list[float]:
    """The 1/5/15-minute load averages, rounded to 2 decimals."""
    return [round(v, 2) for v in os.getloadavg()]


def cpu_features() -> dict:
    """``cpu_capability`` (torch's), ``cpu_flags`` (avx2, avx512f, avx512_bf16, amx_bf16,
    amx_tile; None off x86 Linux) and ``native_bf16``: `shiftnas.train.precision.cpu_features`,
    the rule optim.amp=auto follows (bf16 without native support is ~10x slower than fp32)."""
    from shiftnas.train.precision import cpu_features as features

    return features()


def machine() -> dict:
    """Host, OS, CPU (with `cpu_features`) and current load (the ``machine`` block of
    bench_supernet/bench_train_step)."""
    return {
        "node": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or None,
        "cpu_model": cpu_model(),
        **cpu_features(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": cpu_affinity(),
        "python": platform.python_version(),
        "loadavg_1_5_15": loadavg(),
    }


def cpu_op_machine(loadavg_before: list[float], **extra) -> dict:
    """The ``machine`` block of the compiled-op benchmarks (bench_layer_norm_cpu, bench_cpu_ops).

    `loadavg_before` is `loadavg()` taken before the cases; the load after is taken here. `extra`
    keys (e.g. ``mkldnn``) go right after ``torch_cpu_capability``.
    """
    import torch

    return {
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": cpu_features()["cpu_flags"],
        **extra,
        "threads": torch.get_num_threads(),
        "loadavg_before": loadavg_before,
        "loadavg_after": loadavg(),
    }


def timing_env() -> dict[str, str | None]:
    """The values of `TIMING_ENV_VARS` (None for an unset one)."""
    return {k: os.environ.get(k) for k in TIMING_ENV_VARS}


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


def git_commit() -> str | None:
    """HEAD's commit hash; None outside a git checkout or before the first commit."""
    return git("rev-parse", "HEAD") or None


def git_dirty() -> bool | None:
    """True when tracked files differ from HEAD (the numbers are for uncommitted code)."""
    status = git("status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)


def utc_date() -> str:
    """Now, UTC, ISO 8601 to the second (``2024-01-31T12:00:00+00:00``)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


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


def foreign_load(before, after, seconds: float) -> float | None:
    """Average number of CPUs used by *other* processes between two cpu_jiffies()."""
    if before is None or after is None or seconds <= 0:
        return None
    other = (after[0] - before[0]) - (after[1] - before[1])
    return round(max(0, other) / os.sysconf("SC_CLK_TCK") / seconds, 2)


# -- malloc ---------------------------------------------------------------------------------------
def tune_malloc() -> bool:
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


def add_malloc_tuning_arg(ap: argparse.ArgumentParser) -> None:
    """The ``--malloc-tuning / --no-malloc-tuning`` option (default on) for `tune_malloc`."""
    ap.add_argument(
        "--malloc-tuning",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="raise glibc's trim/mmap thresholds to remove page-fault noise (default: on)",
    )


# -- timing ---------------------------------------------------------------------------------------
def rotation(seq: list, r: int) -> list:
    """`seq` rotated left by ``r % len(seq)``: repeat `r`'s order, so each item leads in turn."""
    k = r % len(seq)
    return seq[k:] + seq[:k]


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    warmup: int,
    repeats: int,
    before: Callable[[], object] | None = None,
) -> dict[str, list[float]]:
    """Per name, the seconds of `repeats` calls of its function (time.perf_counter).

    First `warmup` untimed rounds of one call each. Then each repeat calls every function once,
    the order rotating (`rotation`), so drift and background load hit all of them alike.
    `before`, if given, runs untimed before every call (e.g. resetting gradients).
    """
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            if before is not None:
                before()
            fns[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    pc = time.perf_counter
    for r in range(repeats):
        for n in rotation(names, r):
            if before is not None:
                before()
            fn = fns[n]
            t0 = pc()
            fn()
            times[n].append(pc() - t0)
    return times


def time_pair(
    ref: Callable[[], object], ours: Callable[[], object], repeats: int, warmup: int
) -> tuple[float, float]:
    """Median microseconds of ref() and ours(), alternating which runs first."""
    t = time_interleaved({"ref": ref, "ours": ours}, warmup, repeats)
    return statistics.median(t["ref"]) * 1e6, statistics.median(t["ours"]) * 1e6


# -- statistics -----------------------------------------------------------------------------------
def quantile(xs: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default)."""
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summary(ms: list[float]) -> dict:
    """Median, p20, p80 and min of step times in ms, rounded to 3 decimals."""
    return {
        "median_ms": round(quantile(ms, 0.5), 3),
        "p20_ms": round(quantile(ms, 0.2), 3),
        "p80_ms": round(quantile(ms, 0.8), 3),
        "min_ms": round(min(ms), 3),
    }


# -- output ---------------------------------------------------------------------------------------
def write_json(path: str | os.PathLike, doc: dict, *, indent: int = 1, default=None) -> None:
    """Write `doc` as JSON plus a newline to `path`, creating its folder.

    Atomic: the text goes to ``<path>.tmp`` first and is renamed over `path`, so a reader or a
    kill mid-write sees the old file or the new one, never half of one. A symlink's target is
    replaced (not the link); a path that exists but is no regular file (/dev/stdout, a pipe) is
    written directly.
    """
    text = json.dumps(doc, indent=indent, default=default) + "\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not path.is_file():
        path.write_text(text)
        return
    path = path.resolve()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
