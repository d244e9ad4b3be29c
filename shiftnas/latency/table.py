"""Measured latency tables: build (resumable), save/load with provenance checks, predict.

`build_table(space, device=..., batch=..., threads=...)` times every distinct probe of
`probes.term_probes` (warm-up, then repeats; each sample runs the module enough times to last
>= 1 ms; samples further than 5 median absolute deviations from the median are rejected; the
sample median is the pass's value). The process is warmed up on the largest probe first, and
every entry is timed in two passes, the second in reverse order; the entry is the smaller of
the two values (the first entries timed in a cold process came out 1.5x slow otherwise, and a
transient slowdown hits one pass, not both). Measured latency is not always monotone in a
choice the way FLOPs are (e.g. fewer heads can be slower): the table keeps what was measured,
and `notes["monotone_violation_max_ms"]` says by how much it falls where FLOPs rise. A fixed
overhead completes the model: the median over a few random exported subnets of (measured end
to end - sum of their entries): what the modules' isolated timings miss (the model's own
Python, the residual stream's first touch of memory).

`predict(arch)` = overhead + the sum of the entries at the arch's indices.
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
from .probes import Probe, build_probe, term_probes

__all__ = ["DTYPES", "FORMAT", "LatencyTable", "build_table", "measure_arch", "time_call"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # the tables' dtypes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device | str = "cpu", warmup: int = 3,
              repeats: int = 15, min_sample_s: float = 1e-3) -> dict:
    """Milliseconds per call of `fn`: {"ms": median after outlier rejection, "spread": p80/p20,
    "kept": samples kept, "inner": calls per sample}."""
    device = torch.device(device)
    if warmup < 0 or repeats < 3:
        raise ValueError(f"time_call: warmup={warmup} (>= 0), repeats={repeats} (>= 3)")
    for _ in range(warmup):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    one = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, math.ceil(min_sample_s / one))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        _sync(device)
        samples.append((time.perf_counter() - t0) * 1e3 / inner)
    med = statistics.median(samples)
    mad = statistics.median(abs(s - med) for s in samples) or 1e-12
    kept = sorted(s for s in samples if abs(s - med) <= 5 * mad)
    q = statistics.quantiles(kept, n=5) if len(kept) >= 2 else [kept[0]] * 4
    return {"ms": statistics.median(kept), "spread": q[3] / q[0] if q[0] > 0 else 1.0, "kept": len(kept),
            "inner": inner}


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


def _entry_ms(rec: dict) -> float:
    """An entry's value: the smaller of its two passes' medians."""
    return min(rec["ms"], rec.get("ms2", rec["ms"]))


def measure_arch(space: SearchSpace, arch: ArchConfig, batch: int, device: torch.device, dtype: torch.dtype,
                 warmup: int = 3, repeats: int = 15) -> float:
    """Milliseconds of one forward pass of the exported subnet `arch` (random weights) at `batch`."""
    from ..models.export import build_static

    hp = space.hparams
    size = arch["resolution"] if space.family == "cnn" else hp["img_size"]
    m = build_static(arch).to(device=device, dtype=dtype).eval()
    x = torch.randn(batch, hp["in_chans"], size, size, device=device, dtype=dtype)
    with torch.inference_mode():
        return time_call(lambda: m(x), device, warmup, repeats)["ms"]


def _monotone_violation(term: CostTerm, flops: CostTerm) -> float:
    """The largest drop of the latency term along an axis on which the FLOPs term never decreases."""
    worst, v, fv = 0.0, term.values, flops.values
    for size, stride in zip(term.shape, term.strides):
        steps = [(i, i + stride) for i in range(len(v)) if (i // stride) % size < size - 1]
        if all(fv[j] >= fv[i] for i, j in steps):
            worst = max([worst] + [v[i] - v[j] for i, j in steps])
    return worst


def build_table(space: SearchSpace | str, device: str = "cpu", batch: int = 1, threads: int | None = None,
                dtype: str = "float32", warmup: int = 3, repeats: int = 15, calibrate: int = 8,
                resume: str | os.PathLike | None = None, progress: Callable[[str], None] | None = None,
                seed: int = 0) -> LatencyTable:
    """Time every distinct entry of `space`'s cost tables on `device` (see the module doc).

    `resume`: a partial file; entries already in it (measured on this machine with the same
    settings) are kept, and every new entry is added to it as soon as it is measured.
    """
    space = get_space(space)
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
    torch.set_num_threads(threads)
    machine = _machine(dev, threads)
    settings = {"space": space.name, "batch": batch, "dtype": dtype, "machine": machine}
    entries = _read_partial(resume, settings)
    layout = term_probes(space)
    keys = sorted({_key(p) for _, _, ps in layout for p in ps if p is not None})
    say = progress or (lambda s: None)
    todo = [(1, k) for k in keys if "ms" not in entries.get(k, {})]
    todo += [(2, k) for k in reversed(keys) if "ms2" not in entries.get(k, {})]
    if todo:  # warm the process (thread pool, allocator, kernel caches) on the largest probe
        m, x = build_probe(space, tuple(json.loads(keys[-1])), batch, dev, tdtype)
        with torch.inference_mode():
            time_call(functools.partial(m, x), dev, warmup, repeats)
    done = 2 * len(keys) - len(todo)
    for n, (pass_, key) in enumerate(todo, start=done + 1):
        m, x = build_probe(space, tuple(json.loads(key)), batch, dev, tdtype)
        with torch.inference_mode():
            rec = time_call(functools.partial(m, x), dev, warmup, repeats)
        if pass_ == 1:
            entries[key] = rec
        else:
            entries[key]["ms2"] = rec["ms"]
        say(f"[{n}/{2 * len(keys)}] pass {pass_} {key} {rec['ms']:.4f} ms")
        if resume is not None:
            _write_partial(resume, settings, entries)
    flops = cost_terms(space, "flops")
    terms, worst = [], 0.0
    for (names, shape, probes), f in zip(layout, flops):
        t = CostTerm(names, shape, tuple(0.0 if p is None else _entry_ms(entries[_key(p)]) for p in probes))
        terms.append(t)
        worst = max(worst, _monotone_violation(t, f))
    table = LatencyTable(space.name, batch, dtype, machine, terms, 0.0, entries,
                         {"monotone_violation_max_ms": worst})
    rng, calib = random.Random(seed), []
    for _ in range(calibrate):
        arch = space.sample(rng)
        ms = measure_arch(space, arch, batch, dev, tdtype, warmup, repeats)
        calib.append({"arch": arch.to_dict(), "measured_ms": ms, "sum_ms": table.predict(arch)})
        say(f"[calibration {len(calib)}/{calibrate}] {ms:.3f} ms measured, {calib[-1]['sum_ms']:.3f} ms summed")
    if calib:
        table.overhead_ms = statistics.median(c["measured_ms"] - c["sum_ms"] for c in calib)
    table.notes["calibration"] = calib
    return table


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
