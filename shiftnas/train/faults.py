"""Opt-in fault injection for the reliability tests and `bench/fault_injection.py`.

Every hook is off unless its environment variable is set; unset, the engine holds `None` and
tests it twice per step, and a checkpoint save reads one variable: nothing else runs, and no
result changes.

  SHIFTNAS_FAULT_CKPT_DELAY_S=0.3    checkpoint.save_checkpoint pauses 0.3 s three times: after
                                     the first chunk of the temp file (a half-written
                                     checkpoint-*.pt.<pid>.tmp on disk), before the rename
                                     (complete temp file, not yet in place) and after it (old
                                     checkpoints not yet pruned), so a SIGKILL from outside can
                                     land inside a checkpoint write on purpose.
  SHIFTNAS_FAULT_RAISE_AT_STEP=14    the training loop raises RuntimeError before step 14 (a crash
                                     mid-epoch) on rank SHIFTNAS_FAULT_RANK (default 0).
  SHIFTNAS_FAULT_ONCE=PATH           with the above: fire only while PATH does not exist, and
                                     create it when firing, so a restarted job does not crash again.
  SHIFTNAS_FAULT_HOW=raise|sigkill   with the above: raise (default), or SIGKILL the rank's own
                                     process (no Python cleanup, as when the OOM killer strikes).
  SHIFTNAS_FAULT_GRAD=KIND:STEPS[:WHERE]
                                     after the backward (and the gradient all-reduce) of the
                                     listed steps, set one gradient element to KIND (nan, inf or
                                     -inf) on every rank; STEPS like 3,5,9-12; WHERE is supernet
                                     (default) or generator (the shift sampler's trainable parts).
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

import torch

__all__ = ["EngineFaults", "InjectedFault", "SlowWriter", "ckpt_delay_s", "engine_faults"]

_KINDS = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


class InjectedFault(RuntimeError):
    """The crash asked for by SHIFTNAS_FAULT_RAISE_AT_STEP."""


def _env_error(name: str, raw: str, why: str) -> ValueError:
    return ValueError(f"environment variable {name}={raw!r}: {why}")


def ckpt_delay_s() -> float | None:
    """SHIFTNAS_FAULT_CKPT_DELAY_S as seconds, or None when unset or empty."""
    raw = os.environ.get("SHIFTNAS_FAULT_CKPT_DELAY_S")
    if not raw:
        return None
    try:
        s = float(raw)
    except ValueError:
        raise _env_error("SHIFTNAS_FAULT_CKPT_DELAY_S", raw, "not a number of seconds") from None
    if not s >= 0:
        raise _env_error("SHIFTNAS_FAULT_CKPT_DELAY_S", raw, "must be >= 0")
    return s


class SlowWriter:
    """A file wrapper that flushes and sleeps once after the first write (CKPT_DELAY hook)."""

    def __init__(self, f, delay_s: float):
        self._f, self._delay, self._paused = f, delay_s, False

    def write(self, b) -> int:
        n = self._f.write(b)
        if not self._paused:
            self._paused = True
            self._f.flush()
            os.fsync(self._f.fileno())
            time.sleep(self._delay)
        return n

    def flush(self) -> None:
        self._f.flush()


def _parse_steps(name: str, raw: str, text: str) -> frozenset[int]:
    steps: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            a, b = int(lo), int(hi or lo)
            if a < 0 or b < a:
                raise ValueError
            steps.update(range(a, b + 1))
    except ValueError:
        raise _env_error(name, raw, "steps must look like 3 or 3,5,9-12") from None
    return frozenset(steps)


@dataclass(frozen=True)
class EngineFaults:
    raise_at: int | None = None
    once: str | None = None
    grad_value: float | None = None
    grad_steps: frozenset[int] = frozenset()
    grad_where: str = "supernet"
    how: str = "raise"

    def before_step(self, step: int) -> None:
        """Raise InjectedFault at the chosen step (once, with SHIFTNAS_FAULT_ONCE)."""
        if self.raise_at is None or step != self.raise_at:
            return
        if self.once is not None:
            try:
                os.close(os.open(self.once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
        if self.how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise InjectedFault(f"SHIFTNAS_FAULT_RAISE_AT_STEP: injected crash before step {step}")

    def corrupt_grads(self, step: int, net_params, generator_params) -> None:
        """Set one element of the first existing gradient to the chosen nan/inf."""
        if self.grad_value is None or step not in self.grad_steps:
            return
        params = generator_params if self.grad_where == "generator" else net_params
        for p in params:
            if p.grad is not None:
                with torch.no_grad():
                    p.grad.view(-1)[0] = self.grad_value
                return


def engine_faults(rank: int) -> EngineFaults | None:
    """The engine hooks from the environment for this rank; None when none is set."""
    env = os.environ
    raw_at, raw_grad = env.get("SHIFTNAS_FAULT_RAISE_AT_STEP"), env.get("SHIFTNAS_FAULT_GRAD")
    if not raw_at and not raw_grad:
        return None
    kw: dict = {}
    if raw_at:
        try:
            at = int(raw_at)
            fault_rank = int(env.get("SHIFTNAS_FAULT_RANK") or 0)
        except ValueError:
            raise _env_error("SHIFTNAS_FAULT_RAISE_AT_STEP/RANK", raw_at, "need integers") from None
        how = env.get("SHIFTNAS_FAULT_HOW") or "raise"
        if how not in ("raise", "sigkill"):
            raise _env_error("SHIFTNAS_FAULT_HOW", how, "allowed: raise, sigkill")
        if fault_rank == rank:
            kw.update(raise_at=at, once=env.get("SHIFTNAS_FAULT_ONCE") or None, how=how)
    if raw_grad:
        parts = raw_grad.split(":")
        if len(parts) not in (2, 3) or parts[0] not in _KINDS:
            raise _env_error("SHIFTNAS_FAULT_GRAD", raw_grad, f"use KIND:STEPS[:WHERE], KIND one of {sorted(_KINDS)}")
        where = parts[2] if len(parts) == 3 else "supernet"
        if where not in ("supernet", "generator"):
            raise _env_error("SHIFTNAS_FAULT_GRAD", raw_grad, "WHERE must be supernet or generator")
        kw.update(grad_value=_KINDS[parts[0]], grad_steps=_parse_steps("SHIFTNAS_FAULT_GRAD", raw_grad, parts[1]),
                  grad_where=where)
    return EngineFaults(**kw)
