"""Backend dispatch for the elastic ops (xformers-style: each backend says why it can't run).

Priority per op: triton (CUDA tensors) -> cuda (`_C` CUDA) -> cpu (`_C` C++) -> ref (pure
PyTorch, always available and the definition of every op's semantics). The first backend that
implements the op and reports no reason runs it.

`SHIFTNAS_BACKEND=ref|cpu|cuda|triton` forces a backend for every op it implements; if it
cannot run such an op on the given inputs that is an error listing the reasons, never a
silent fallback. Ops a forced backend does not implement run on `ref` (`shiftnas backends`
shows the resulting table). The variable is read once, when the backends register; call
`refresh()` after changing it in a running process.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = ["BACKEND_ORDER", "Backend", "backends", "call", "refresh", "register", "report", "select"]

BACKEND_ORDER = ("triton", "cuda", "cpu", "ref")


@dataclass
class Backend:
    """A backend: which ops it implements and why it cannot run on given inputs."""

    name: str
    devices: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...]
    available: Callable[[], str | None]  # None when usable, else why not (e.g. "_C not built")
    ops: dict[str, Callable] = field(default_factory=dict)
    # Devices where the backend is chosen automatically; None = all of `devices`. (Triton runs
    # CPU tensors only in its interpreter: allowed when forced, never picked by itself.)
    auto_devices: tuple[str, ...] | None = None
    # Per-op dtype limits where an op is served for fewer dtypes than the backend's `dtypes`
    # (op -> (dtypes, why)), e.g. a CPU kernel that loses to ref in bf16.
    op_dtypes: dict[str, tuple[tuple[torch.dtype, ...], str]] = field(default_factory=dict)
    # Per-op limits on the arguments themselves (op -> check(x, *args, **kwargs) giving why not,
    # or None), e.g. a kernel built for some head dims only. Checked on every call of that op on
    # this backend; a refused call runs on the next backend that can take it (an error when the
    # backend is forced), so such inputs never reach the kernel.
    op_args: dict[str, Callable[..., str | None]] = field(default_factory=dict)

    def reasons(self, op: str, device: torch.device, dtype: torch.dtype, forced: bool = False) -> list[str]:
        out = []
        if op not in self.ops:
            out.append(f"{self.name} does not implement {op}")
            return out
        why = self.available()
        if why:
            out.append(why)
        if device.type not in self.devices:
            out.append(f"{self.name} runs on {list(self.devices)} tensors, got {device.type}")
        elif not forced and self.auto_devices is not None and device.type not in self.auto_devices:
            out.append(
                f"{self.name} is chosen automatically only for {list(self.auto_devices)} tensors "
                f"(SHIFTNAS_BACKEND={self.name} forces it on {device.type})"
            )
        if dtype not in self.dtypes:
            out.append(f"{self.name} supports {[str(d) for d in self.dtypes]}, got {dtype}")
        elif op in self.op_dtypes and dtype not in self.op_dtypes[op][0]:
            dts, why = self.op_dtypes[op]
            out.append(f"{self.name} serves {op} for {[str(d) for d in dts]} only ({why}), got {dtype}")
        return out


_BACKENDS: dict[str, Backend] = {}
# (op, device type, dtype) -> (backend name, fn). `call` is on every layer's hot path: one
# dict lookup, no environment read (os.environ per call was ~7% of a CNN forward's Python time).
_CACHE: dict[tuple, tuple[str, Callable]] = {}
_ARG_CHECKS: dict[tuple[str, str], Callable[..., str | None]] = {}  # (backend, op) -> check


def register(backend: Backend) -> Backend:
    if backend.name not in BACKEND_ORDER:
        raise ValueError(f"unknown backend {backend.name!r}; allowed: {list(BACKEND_ORDER)}")
    _BACKENDS[backend.name] = backend
    for key in [k for k in _ARG_CHECKS if k[0] == backend.name]:
        del _ARG_CHECKS[key]
    _ARG_CHECKS.update({(backend.name, op): check for op, check in backend.op_args.items()})
    _CACHE.clear()
    return backend


def refresh() -> None:
    """Forget every cached choice (and re-read SHIFTNAS_BACKEND on the next call)."""
    _CACHE.clear()


def backends() -> dict[str, Backend]:
    _ensure_registered()
    return dict(_BACKENDS)


def _forced() -> str | None:
    name = os.environ.get("SHIFTNAS_BACKEND", "").strip()
    if not name:
        return None
    if name not in BACKEND_ORDER:
        raise ValueError(f"SHIFTNAS_BACKEND={name!r}; allowed: {list(BACKEND_ORDER)}")
    return name


def select(op: str, device: torch.device, dtype: torch.dtype) -> tuple[str, Callable]:
    """(backend name, function) that runs `op` for tensors of this device and dtype."""
    key = (op, device.type, dtype)
    hit = _CACHE.get(key)
    if hit is not None:
        return hit
    _ensure_registered()
    forced = _forced()
    if forced is not None and forced in _BACKENDS and op in _BACKENDS[forced].ops:
        why = _BACKENDS[forced].reasons(op, device, dtype, forced=True)
        if why:
            raise RuntimeError(f"SHIFTNAS_BACKEND={forced} cannot run {op}: " + "; ".join(why))
        choice = (forced, _BACKENDS[forced].ops[op])
    elif forced is not None:
        choice = ("ref", _BACKENDS["ref"].ops[op])
    else:
        all_reasons = {}
        choice = None
        for name in BACKEND_ORDER:
            b = _BACKENDS.get(name)
            if b is None:
                all_reasons[name] = ["not registered"]
                continue
            why = b.reasons(op, device, dtype)
            if not why:
                choice = (name, b.ops[op])
                break
            all_reasons[name] = why
        if choice is None:
            raise RuntimeError(f"no backend can run {op} on {device.type}/{dtype}: {all_reasons}")
    _CACHE[key] = choice
    return choice


def call(op: str, x: torch.Tensor, *args, **kwargs):
    """Run `op` with the first backend able to take `x`'s device and dtype (and, where a
    backend limits them, these arguments)."""
    hit = _CACHE.get((op, x.device.type, x.dtype))
    if hit is None:
        hit = select(op, x.device, x.dtype)
    check = _ARG_CHECKS.get((hit[0], op))
    if check is not None:
        why = check(x, *args, **kwargs)
        if why is not None:
            return _fallback(op, hit[0], why, x, *args, **kwargs)
    return hit[1](x, *args, **kwargs)


def _fallback(op: str, refused_by: str, why: str, x: torch.Tensor, *args, **kwargs):
    """`op` on the first backend after `refused_by` whose limits admit these arguments."""
    if _forced() == refused_by:
        raise RuntimeError(f"SHIFTNAS_BACKEND={refused_by} cannot run {op} on these inputs: {why}")
    reasons = {refused_by: why}
    for name in BACKEND_ORDER[BACKEND_ORDER.index(refused_by) + 1:]:
        b = _BACKENDS.get(name)
        if b is None or b.reasons(op, x.device, x.dtype):
            continue
        check = _ARG_CHECKS.get((name, op))
        why_not = None if check is None else check(x, *args, **kwargs)
        if why_not is None:
            return b.ops[op](x, *args, **kwargs)
        reasons[name] = why_not
    raise RuntimeError(f"no backend can run {op} on these inputs: {reasons}")


def report(device: str = "cpu", dtype: torch.dtype = torch.float32) -> list[tuple[str, str, str]]:
    """(op, chosen backend, why the higher-priority backends were passed over) for each op."""
    _ensure_registered()
    rows = []
    ops = sorted({op for b in _BACKENDS.values() for op in b.ops})
    dev = torch.device(device)
    for op in ops:
        try:
            chosen, _ = select(op, dev, dtype)
        except RuntimeError as e:
            rows.append((op, "none", str(e)))
            continue
        skipped = []
        for name in BACKEND_ORDER:
            if name == chosen:
                break
            b = _BACKENDS.get(name)
            why = b.reasons(op, dev, dtype) if b else ["not registered"]
            skipped.append(f"{name}: {'; '.join(why)}")
        rows.append((op, chosen, " | ".join(skipped)))
    return rows


def _ensure_registered() -> None:
    if "ref" not in _BACKENDS:
        from . import backends as _b  # noqa: F401  (registers ref, cpu, cuda)
