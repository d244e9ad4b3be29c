"""Measured latency tables: build (resumable), save/load with provenance checks, predict.

`build_table(space, device=..., batch=..., threads=...)` times every distinct probe of
`probes.term_probes` (warm-up, then repeats; each sample runs the module enough times to last
>= 1 ms; samples further than 5 median absolute deviations from the median are rejected).

**Timing against a reference.** This machine's pace wanders by +-10% from one second to the
next (a fixed 1024^3 GEMM: 145-190 ms per 20 calls within 12 s, nothing else running), so a
module's time alone depends on when it was taken. Every sample of a timed module is therefore
followed by one sample of a fixed *reference* workload, and what is kept is the median of the
per-sample ratios (`time_call(fn, ref=...)`); a value in ms is that ratio times the reference's
median over the whole build (or check): the module's time at the session's typical pace. Measured
on cnn-fmnist at batch 128, 16 exported subnets timed in 4 rounds: the per-subnet spread across
rounds (sd of log time) was 0.094 for the plain median, 0.033 paired with the middle subnet,
0.057 paired with one MBConv block, 0.109 paired with the middle subnet at batch 1 (the
reference must do the same kind of work at the same batch). Entries are paired with the
*reference block* (the middle arch's first block: cheap enough to follow every sample of 960
entries), whole subnets with the *reference subnet* (the space's middle arch, exported).

The process is warmed up on the largest probe first, and every entry is timed in three passes,
the second in reverse order; the entry is the median of the passes' ratios times the block
reference's median over all passes (a slowdown shorter than a pass but longer than a sample,
2-3x for a few seconds, happens here: with two passes and their mean it bent entries by up to
2.5x in one vit-fmnist batch-1 build). Measured latency is not always monotone in a choice the
way FLOPs are (e.g. fewer heads can be slower): the table keeps what was measured, and
`notes["monotone_violation_max_ms"]` says by how much it falls where FLOPs rise.

**Calibration.** Isolated modules do not add up to the network: a block timed alone reads an
input that stays in cache, and the model's own Python is not in any entry. `calibrate` random
exported subnets (seed 0) are timed end to end against the reference subnet, and
measured = overhead + sum over groups of scale x (the group's entries) is fitted on relative
error, one scale per group of terms (`probes.term_groups`: a cnn stage's blocks, the stem, the
head; a vit's blocks, its ends), shrunk toward one common scale (`_fit_scales`; on cnn-fmnist
at batch 128, refitting on 16 or 32 of 50 checked subnets and predicting the rest, 30 splits:
tau 0.888 / 0.898 with group scales, 0.873 / 0.878 with one). The table's
terms are stored already scaled (`notes["scale"]`; the raw timings stay in `entries`), so
`predict(arch)` = overhead + the sum of the entries at the arch's indices, and the cost model
(shiftnas/cost/measured.py) reads the same numbers.
"""
from __future__ import annotations

import functools
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..cost import CostTerm, cost_terms
from ..cost.measured import FORMAT, read_table
from ..spaces import ArchConfig, SearchSpace, get_space
from .probes import Probe, build_probe, reference_arch, reference_block, term_groups, term_probes

__all__ = ["DTYPES", "FORMAT", "LatencyTable", "build_table", "exported_call", "measure_arch", "time_archs", "time_call"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # the tables' dtypes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _inner(fn: Callable[[], object], device: torch.device, min_sample_s: float) -> int:
    """Calls per sample so that a sample lasts >= `min_sample_s` (one timed call decides)."""
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return max(1, math.ceil(min_sample_s / max(time.perf_counter() - t0, 1e-7)))


def _sample(fn: Callable[[], object], device: torch.device, inner: int) -> float:
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) * 1e3 / inner


def _robust_median(samples: list[float]) -> tuple[float, list[float]]:
    """The median of the samples within 5 median absolute deviations of the median, and those."""
    med = statistics.median(samples)
    mad = statistics.median(abs(s - med) for s in samples) or 1e-12
    kept = sorted(s for s in samples if abs(s - med) <= 5 * mad)
    return statistics.median(kept), kept


def time_call(fn: Callable[[], object], device: torch.device | str = "cpu", warmup: int = 3,
              repeats: int = 15, min_sample_s: float = 1e-3, ref: Callable[[], object] | None = None) -> dict:
    """Milliseconds per call of `fn`: {"ms": median after outlier rejection, "spread": p80/p20,
    "kept": samples kept, "inner": calls per sample}. With `ref` (the reference workload, see the
    module doc) every sample of `fn` is followed by one of `ref`, and the result adds "ratio"
    (the median of the per-sample ratios fn/ref, outliers rejected) and "ref_ms" (the median ref
    sample) and "ref_samples"."""
    device = torch.device(device)
    if warmup < 0 or repeats < 3:
        raise ValueError(f"time_call: warmup={warmup} (>= 0), repeats={repeats} (>= 3)")
    for _ in range(warmup):
        fn()
        if ref is not None:
            ref()
    _sync(device)
    inner = _inner(fn, device, min_sample_s)
    ref_inner = _inner(ref, device, min_sample_s) if ref is not None else 0
    samples, ref_samples = [], []
    for _ in range(repeats):
        samples.append(_sample(fn, device, inner))
        if ref is not None:
            ref_samples.append(_sample(ref, device, ref_inner))
    ms, kept = _robust_median(samples)
    q = statistics.quantiles(kept, n=5) if len(kept) >= 2 else [kept[0]] * 4
    out = {"ms": ms, "spread": q[3] / q[0] if q[0] > 0 else 1.0, "kept": len(kept), "inner": inner}
    if ref is not None:
        out["ratio"] = _robust_median([a / b for a, b in zip(samples, ref_samples)])[0]
        out["ref_ms"] = statistics.median(ref_samples)
        out["ref_samples"] = ref_samples
    return out


def _machine(device: torch.device, threads: int) -> dict:
    name = platform.processor() or platform.machine()
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    from .. import __version__

    return {"device": device.type, "device_name": name, "threads": threads,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "versions": {"torch": torch.__version__, "shiftnas": __version__, "python": platform.python_version()}}


@dataclass
class LatencyTable:
    """Milliseconds per FLOPs-term entry of `space` at `batch` on one device (see module doc)."""

    space: str
    batch: int
    dtype: str
    machine: dict
    terms: list[CostTerm]
    overhead_ms: float
    entries: dict = field(default_factory=dict)  # probe key -> timing record
    notes: dict = field(default_factory=dict)  # monotone violation, calibration archs

    def predict(self, arch: ArchConfig) -> float:
        """Predicted milliseconds of one forward pass of the exported subnet at the table's batch."""
        space = get_space(self.space)
        if arch.space != space.name:
            raise ValueError(f"arch is from space {arch.space!r}; this latency table is for {self.space!r}")
        space.check(arch)
        idx = space.indices(arch)
        return self.overhead_ms + sum(t.at(idx) for t in self.terms)

    def to_json(self) -> dict:
        return {"format": FORMAT, "space": self.space, "batch": self.batch, "dtype": self.dtype,
                "machine": self.machine, "overhead_ms": self.overhead_ms, "notes": self.notes,
                "terms": [{"names": list(t.names), "shape": list(t.shape), "values_ms": list(t.values)} for t in self.terms],
                "entries": self.entries}

    def save(self, path: str | os.PathLike) -> Path:
        from ..atomic import atomic_write

        path = Path(path)
        atomic_write(path, lambda f: f.write((json.dumps(self.to_json(), indent=1) + "\n").encode()))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatencyTable:
        """Read a table; refuse one of another format or whose terms no longer match the space's
        cost model (the space changed since it was built)."""
        doc = read_table(path, lambda space: cost_terms(space, "flops"))
        return cls(doc["space"], doc["batch"], doc["dtype"], doc["machine"], doc["terms"], doc["overhead_ms"],
                   doc["entries"], doc["notes"])

    def cost(self):
        """This table as a `shiftnas.cost.Cost` (whole ns, made monotone): what the samplers, the
        generator and the decoding's feasibility masks take."""
        from ..cost import get_cost

        return get_cost(self.space, "latency", table=self)

    def differences(self, device: str, threads: int) -> list[str]:
        """How this machine differs from the one the table was built on (empty: the same)."""
        here = _machine(torch.device(device), threads)
        out = [f"{k}: table {self.machine.get(k)!r}, here {here[k]!r}"
               for k in ("device", "device_name", "threads", "cpu_capability") if self.machine.get(k) != here[k]]
        out += [f"{k}: table {self.machine['versions'].get(k)!r}, here {v!r}"
                for k, v in here["versions"].items() if self.machine.get("versions", {}).get(k) != v]
        return out


def _key(probe: Probe) -> str:
    return json.dumps(list(probe))


PASSES = 3  # every entry is timed this many times, in alternating order; its value is the median


def _entry_ratio(rec: dict) -> float:
    """An entry in reference units: the median of its passes' ratios."""
    return statistics.median(p["ratio"] for p in rec["passes"])


def _pace_ms(entries: dict) -> float:
    """The block reference's typical time over the build: the median of every pass's ref median."""
    return statistics.median(p["ref_ms"] for r in entries.values() for p in r["passes"])


def exported_call(space: SearchSpace, arch: ArchConfig, batch: int, device: torch.device | str,
                  dtype: torch.dtype) -> Callable[[], torch.Tensor]:
    """One forward pass of the exported subnet `arch` (random weights) on a random batch; call it
    under `torch.inference_mode()`."""
    from ..models.export import build_static

    hp = space.hparams
    size = arch["resolution"] if space.family == "cnn" else hp["img_size"]
    m = build_static(arch).to(device=device, dtype=dtype).eval()
    return functools.partial(m, torch.randn(batch, hp["in_chans"], size, size, device=device, dtype=dtype))


def measure_arch(space: SearchSpace, arch: ArchConfig, batch: int, device: torch.device, dtype: torch.dtype,
                 warmup: int = 3, repeats: int = 15, ref: Callable[[], object] | None = None) -> dict:
    """`time_call` of one forward pass of the exported subnet `arch` at `batch` (against `ref`,
    e.g. `exported_call` of `probes.reference_arch`, when given)."""
    with torch.inference_mode():
        return time_call(exported_call(space, arch, batch, device, dtype), device, warmup, repeats, ref=ref)


def time_archs(space: SearchSpace, archs: list[ArchConfig], batch: int, device: torch.device, dtype: torch.dtype,
               warmup: int = 3, repeats: int = 15, rounds: int = 1,
               progress: Callable[[int, int, dict], None] | None = None) -> dict:
    """Time every exported subnet of `archs` against the reference subnet (`probes.reference_arch`),
    once per round, the order reversed every other round (module doc). Returns {"ratios": per
    arch, its ratio per round; "ms": per arch, its raw median ms per round; "pace_ms": the
    reference's median over every sample of the session}: arch i's time at this pace is
    median(ratios[i]) * pace_ms. `progress(round, i, record)` after each timing."""
    if not (isinstance(rounds, int) and rounds >= 1):
        raise ValueError(f"rounds={rounds!r}: must be an integer >= 1")
    ref = exported_call(space, reference_arch(space), batch, device, dtype)
    ratios: list[list[float]] = [[] for _ in archs]
    ms: list[list[float]] = [[] for _ in archs]
    ref_ms: list[float] = []
    for r in range(rounds):
        for i in (range(len(archs)) if r % 2 == 0 else reversed(range(len(archs)))):
            rec = measure_arch(space, archs[i], batch, device, dtype, warmup, repeats, ref=ref)
            ratios[i].append(rec["ratio"])
            ms[i].append(rec["ms"])
            ref_ms += rec["ref_samples"]
            if progress is not None:
                progress(r, i, rec)
    return {"ratios": ratios, "ms": ms, "pace_ms": statistics.median(ref_ms) if ref_ms else 0.0}


def _monotone_violation(term: CostTerm, flops: CostTerm) -> float:
    """The largest drop of the latency term along an axis on which the FLOPs term never decreases."""
    worst, v, fv = 0.0, term.values, flops.values
    for size, stride in zip(term.shape, term.strides):
        steps = [(i, i + stride) for i in range(len(v)) if (i // stride) % size < size - 1]
        if all(fv[j] >= fv[i] for i, j in steps):
            worst = max([worst] + [v[i] - v[j] for i, j in steps])
    return worst


def _check_settings(device: str, batch: int, dtype: str, threads: int | None):
    if batch < 1:
        raise ValueError(f"batch={batch!r}: must be >= 1")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: no CUDA device is visible here; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r}: allowed cpu, cuda, cuda:N")
    tdtype = DTYPES.get(dtype)
    if tdtype is None:
        raise ValueError(f"dtype={dtype!r}: allowed {', '.join(DTYPES)}")
    threads = threads or torch.get_num_threads()
    if threads < 1:
        raise ValueError(f"threads={threads!r}: must be >= 1")
    return dev, tdtype, threads


def build_table(space: SearchSpace | str, device: str = "cpu", batch: int = 1, threads: int | None = None,
                dtype: str = "float32", warmup: int = 3, repeats: int = 15, calibrate: int = 32,
                resume: str | os.PathLike | None = None, progress: Callable[[str], None] | None = None,
                seed: int = 0) -> LatencyTable:
    """Time every distinct entry of `space`'s cost tables on `device`, then calibrate on
    `calibrate` random subnets (see the module doc).

    `resume`: a partial file; entries already in it (measured on this machine with the same
    settings) are kept, and every new entry is added to it as soon as it is measured.
    """
    space = get_space(space)
    dev, tdtype, threads = _check_settings(device, batch, dtype, threads)
    if not (isinstance(calibrate, int) and calibrate >= 0):
        raise ValueError(f"calibrate={calibrate!r}: must be an integer >= 0 (random subnets timed end to end)")
    torch.set_num_threads(threads)
    machine = _machine(dev, threads)
    settings = {"space": space.name, "batch": batch, "dtype": dtype, "machine": machine}
    entries = _read_partial(resume, settings)
    layout = term_probes(space)
    keys = sorted({_key(p) for _, _, ps in layout for p in ps if p is not None})
    say = progress or (lambda s: None)
    todo = [(p, k) for p in range(PASSES) for k in (keys if p % 2 == 0 else reversed(keys))
            if len(entries.get(k, {}).get("passes", [])) <= p]
    ref_block = reference_block(space)
    rm, rx = build_probe(space, ref_block, batch, dev, tdtype)
    ref = functools.partial(rm, rx)
    if todo:  # warm the process (thread pool, allocator, kernel caches) on the largest probe
        m, x = build_probe(space, tuple(json.loads(keys[-1])), batch, dev, tdtype)
        with torch.inference_mode():
            time_call(functools.partial(m, x), dev, warmup, repeats, ref=ref)
    done = PASSES * len(keys) - len(todo)
    for n, (pass_, key) in enumerate(todo, start=done + 1):
        m, x = build_probe(space, tuple(json.loads(key)), batch, dev, tdtype)
        with torch.inference_mode():
            rec = time_call(functools.partial(m, x), dev, warmup, repeats, ref=ref)
        entries.setdefault(key, {"passes": []})["passes"].append({k: rec[k] for k in ("ms", "ratio", "ref_ms", "inner")})
        say(f"[{n}/{PASSES * len(keys)}] pass {pass_ + 1} {key} {rec['ms']:.4f} ms ({rec['ratio']:.3f} x reference)")
        if resume is not None:
            _write_partial(resume, settings, entries)
    pace = _pace_ms(entries)
    raw = [CostTerm(names, shape, tuple(0.0 if p is None else _entry_ratio(entries[_key(p)]) * pace for p in probes))
           for names, shape, probes in layout]
    table = LatencyTable(space.name, batch, dtype, machine, raw, 0.0, entries,
                         {"reference_block": list(ref_block), "reference_block_ms": pace})
    _calibrate(table, space, calibrate, seed, dev, tdtype, warmup, repeats, say)
    table.notes["monotone_violation_max_ms"] = max(
        _monotone_violation(t, f) for t, f in zip(table.terms, cost_terms(space, "flops")))
    return table


def _calibrate(table: LatencyTable, space: SearchSpace, n: int, seed: int, dev: torch.device, dtype: torch.dtype,
               warmup: int, repeats: int, say: Callable[[str], None]) -> None:
    """Time `n` random subnets against the reference subnet, fit the overhead and one scale per
    term group (`probes.term_groups`) on relative error, and scale the table's terms (module doc)."""
    rng = random.Random(seed)
    archs = [space.sample(rng) for _ in range(n)]
    groups = term_groups(space)
    names = sorted(set(groups))
    calib = []
    for arch in archs:
        idx = space.indices(arch)
        sums = dict.fromkeys(names, 0.0)
        for g, t in zip(groups, table.terms):
            sums[g] += t.at(idx)
        calib.append({"arch": arch.to_dict(), "group_ms": sums})
    timed = time_archs(space, archs, table.batch, dev, dtype, warmup, repeats, progress=lambda r, i, rec: say(
        f"[calibration {i + 1}/{n}] {rec['ms']:.3f} ms measured, {sum(calib[i]['group_ms'].values()):.3f} ms summed"))
    pace = timed["pace_ms"]
    for c, (ratio,) in zip(calib, timed["ratios"]):
        c.update(ratio=ratio, measured_ms=ratio * pace)
    overhead, scales = (_fit_scales([[c["group_ms"][g] for g in names] for c in calib], [c["measured_ms"] for c in calib])
                        if calib else (0.0, [1.0] * len(names)))
    scale = dict(zip(names, scales))
    low = space.indices(space.min())
    if overhead + sum(t.at(low) * scale[g] for g, t in zip(groups, table.terms)) <= 0:
        # a fit on few or noisy subnets can tip the smallest subnet below zero: the overhead alone
        overhead = statistics.median(c["measured_ms"] - sum(c["group_ms"].values()) for c in calib)
        scale = dict.fromkeys(names, 1.0)
    table.terms = [CostTerm(t.names, t.shape, tuple(v * scale[g] for v in t.values)) for g, t in zip(groups, table.terms)]
    table.overhead_ms = overhead
    table.notes.update(calibration=calib, scale=scale, reference_arch=reference_arch(space).to_dict(),
                       reference_arch_ms=pace)


def _fit_scales(x: list[list[float]], y: list[float], ridge: float = 0.1) -> tuple[float, list[float]]:
    """(a, s) minimising sum_i ((a + sum_g s_g x_ig - y_i) / y_i)^2 + ridge sum_g (s_g - b)^2,
    b the common scale of the same fit with one s for all groups (which shrinks the group scales
    toward it: 16-32 subnets do not pin 7 free scales down). With fewer than 3 subnets, or no
    positive common scale (no signal in the spread): s = 1 and a = the median of y - sum_g x_g
    (no subnets: (0, 1s)). A group scale fitted <= 0 gives the common fit."""
    g = len(x[0]) if x else 0
    sums = [sum(r) for r in x]
    if len(x) < 3:
        return (statistics.median(yi - si for si, yi in zip(sums, y)) if x else 0.0), [1.0] * g
    X = torch.tensor(x, dtype=torch.float64)
    Y = torch.tensor(y, dtype=torch.float64)
    w = 1 / Y
    one = torch.ones(len(y), 1, dtype=torch.float64)
    a, b = torch.linalg.lstsq(torch.cat([one, X.sum(1, keepdim=True)], 1) * w[:, None], (Y * w)[:, None]).solution[:, 0]
    if b <= 0:
        return statistics.median(yi - si for si, yi in zip(sums, y)), [1.0] * g
    reg = ridge ** 0.5 * torch.cat([torch.zeros(g, 1, dtype=torch.float64), torch.eye(g, dtype=torch.float64)], 1)
    A = torch.cat([torch.cat([one, X], 1) * w[:, None], reg])
    B = torch.cat([Y * w, ridge ** 0.5 * b * torch.ones(g, dtype=torch.float64)])
    p = torch.linalg.lstsq(A, B[:, None]).solution[:, 0]
    if (p[1:] <= 0).any():
        return float(a), [float(b)] * g
    return float(p[0]), [float(v) for v in p[1:]]


def _read_partial(path, settings: dict) -> dict:
    if path is None or not Path(path).exists():
        return {}
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable partial table ({e}); delete it to start over") from None
    differ = [k for k in settings if doc.get(k) != settings[k]]
    if differ:
        raise ValueError(f"{path}: a partial table built with other settings ({', '.join(differ)} differ); "
                         f"delete it or give another --out")
    return doc.get("entries", {})


def _write_partial(path, settings: dict, entries: dict) -> None:
    from ..atomic import atomic_write

    doc = {**settings, "entries": entries}
    atomic_write(Path(path), lambda f: f.write(json.dumps(doc).encode()), fsync=False)


def progress_printer(stream=sys.stderr) -> Callable[[str], None]:
    """One status line, rewritten in place on a terminal, one line per entry otherwise."""
    tty = stream.isatty()

    def say(msg: str) -> None:
        stream.write(("\r\x1b[K" + msg) if tty else msg + "\n")
        stream.flush()

    return say
