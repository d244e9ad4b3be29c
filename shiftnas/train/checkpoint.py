"""Atomic, verified, weights-only checkpoints, auto-resume, run-directory path safety, RNG state.

    path = save_checkpoint(run_dir, {"model": net.state_dict(), "step": step, "rng": capture_rng_state()}, step)
    ckpt = latest_checkpoint(run_dir)        # newest checkpoint-XXXXXXXX.pt that loads and verifies, or None
    state = load_checkpoint(ckpt)            # torch.load(..., weights_only=True) + digest check
    restore_rng_state(state["rng"])
    ckpt = resume_checkpoint(run_dir)        # what --resume auto takes: moves bad files aside

A checkpoint is ``run_dir/checkpoint-{step:08d}.pt``. It is written to a temporary file in the
same directory (``*.tmp``), flushed and fsynced, moved into place with ``os.replace`` and the
directory is fsynced, so a crash leaves either the old set of checkpoints or the new one, plus
at most a ``*.tmp`` leftover that is ignored (and removed by the next save). Only the newest
``keep`` checkpoints are kept. SHIFTNAS_FAULT_CKPT_DELAY_S (faults.py, for the crash tests)
pauses inside a save so that a kill can land mid-write.

Integrity. ``torch.load`` does not check the CRC32s of its zip records: a flipped byte in tensor
data loads as a different weight without an error. So every checkpoint carries
``shiftnas.integrity.content_digest`` of its state (sha256 over every key, value, tensor dtype,
shape and byte) under the reserved key ``"__shiftnas_digest__"``, and ``load_checkpoint``
recomputes it over what it loaded; a mismatch is a ``ValueError`` naming the file. The digest
lives *inside* the file, not in a sidecar: the one atomic rename publishes data and digest
together, so no crash, pruning, copy or ``--resume PATH`` of a copied file can separate them,
and there is no second file to keep in step. It is taken over the loaded contents rather than
the file's bytes, so it checks exactly what the trainer gets (and is independent of torch's
serialization layout); the cost is one sha256 pass over the tensor bytes on save and on load.
A file without a digest (written by hand, or before checkpoints carried one) is refused: its
contents cannot be verified. ``load_checkpoint(path, verify=False)`` loads it (and any file)
unverified, for a caller who vouches for it; saving that state again gives it a digest.

Resuming. ``resume_checkpoint`` (``--resume auto``) takes the newest checkpoint that verifies.
Newer ones that do not are renamed to ``checkpoint-XXXXXXXX.pt.corrupt`` (``.corrupt.1``, ... if
taken): kept as evidence, out of the resume and pruning namespace. A run directory with
checkpoints (or files moved aside earlier) none of which verifies is a ``ValueError`` naming
them: it is never restarted from scratch on its own. ``latest_checkpoint`` only reads (the
search commands use it): it skips bad files with a warning and moves nothing.

State may hold only what ``torch.load(weights_only=True)`` accepts: tensors, dicts, lists,
tuples, ints, floats, str, bool, None (plus torch dtypes/devices/sizes); ``save_checkpoint``
checks this up front so a run never writes a checkpoint it cannot resume from. A file crafted
to run code when unpickled is refused by ``load_checkpoint`` with a ``ValueError``.
"""
from __future__ import annotations

import os
import pickle
import random
import re
import sys
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write, fsync_dir
from ..integrity import ALGO, content_digest
from .faults import SlowWriter, ckpt_delay_s

CKPT_RE = re.compile(r"^checkpoint-(\d{8,})\.pt$")
CORRUPT_RE = re.compile(r"^checkpoint-(\d{8,})\.pt\.corrupt(\.\d+)?$")
DIGEST_KEY = "__shiftnas_digest__"
_SAFE_LEAVES = (torch.Tensor, int, float, str, bool, bytes, type(None), torch.dtype,
                torch.device, torch.Size)


def safe_path(run_dir: str | os.PathLike, relative: str | os.PathLike) -> Path:
    """``run_dir / relative``, resolved; ``ValueError`` if it is absolute or escapes ``run_dir``
    (through ``..`` or through a symlink that points outside)."""
    rel = os.fspath(relative)
    if "\x00" in rel:
        raise ValueError(f"output path {rel!r} contains a NUL byte")
    if os.path.isabs(rel) or Path(rel).is_absolute() or Path(rel).drive:
        raise ValueError(f"output path {rel!r} must be relative to the run directory {os.fspath(run_dir)!r}")
    base = Path(run_dir).resolve()
    target = (base / rel).resolve()
    if target != base and base not in target.parents:
        raise ValueError(
            f"output path {rel!r} escapes the run directory {str(base)!r} (resolves to {str(target)!r})"
        )
    return target


def _check_safe(obj: Any, where: str) -> None:
    if isinstance(obj, _SAFE_LEAVES):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise ValueError(f"checkpoint state {where}: key {k!r} is not a str or int")  # noqa: TRY004 - the API promises ValueError
            _check_safe(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_safe(v, f"{where}[{i}]")
        return
    raise ValueError(
        f"checkpoint state {where}: {type(obj).__module__}.{type(obj).__qualname__} cannot be "
        "loaded with weights_only=True; store tensors, dicts, lists, numbers, str, bool or None"
    )


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Numbered checkpoints in ``run_dir`` as ``(step, path)``, oldest first (``*.tmp`` and
    ``*.corrupt`` ignored)."""
    return _numbered(run_dir, CKPT_RE)


def list_moved_aside(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Checkpoints that did not verify and were moved aside (``checkpoint-*.pt.corrupt*``)."""
    return _numbered(run_dir, CORRUPT_RE)


def _numbered(run_dir: str | os.PathLike, pattern: re.Pattern) -> list[tuple[int, Path]]:
    d = Path(run_dir)
    if not d.is_dir():
        return []
    return sorted((int(m.group(1)), d / p.name) for p in d.iterdir() if (m := pattern.match(p.name)))


def save_checkpoint(run_dir: str | os.PathLike, state: dict, step: int, keep: int = 2) -> Path:
    """Write ``state`` and its digest atomically as ``run_dir/checkpoint-{step:08d}.pt``; keep
    the newest ``keep``."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be an int >= 1, got {keep!r}")
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint state must be a dict, got {type(state).__name__}")  # noqa: TRY004 - the API promises ValueError
    if DIGEST_KEY in state:
        raise ValueError(f"checkpoint state key {DIGEST_KEY!r} is reserved for the integrity digest")
    _check_safe(state, "state")
    payload = {**state, DIGEST_KEY: {"algo": ALGO, "hex": content_digest(state)}}
    d = Path(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    final = safe_path(d, f"checkpoint-{step:08d}.pt")
    tmp = safe_path(d, f"{final.name}.{os.getpid()}.tmp")
    delay = ckpt_delay_s()  # fault-injection hook, None unless SHIFTNAS_FAULT_CKPT_DELAY_S is set
    atomic_write(final, lambda f: torch.save(payload, f if delay is None else SlowWriter(f, delay)), tmp=tmp,
                 before_replace=None if delay is None else (lambda: time.sleep(delay)))
    if delay is not None:
        time.sleep(delay)
    for _, old in list_checkpoints(d)[:-keep]:
        old.unlink(missing_ok=True)
    for p in final.parent.glob("checkpoint-*.pt.*.tmp"):  # leftovers of crashed saves
        p.unlink(missing_ok=True)
    return final


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: ``str()`` is ``"<path> <reason>[; <hint>]"``, one line."""

    def __init__(self, path: Path, reason: str, hint: str = ""):
        super().__init__(f"{path} {reason}" + (f"; {hint}" if hint else ""))
        self.path, self.reason = path, reason


def _short(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if "Unsupported" in ln or "GLOBAL" in ln:
            return ln[:300]
    return (lines[0] if lines else type(e).__name__)[:300]


def _load(path: Path, mmap: bool) -> Any:
    try:
        mmap = mmap and zipfile.is_zipfile(path)  # mmap needs torch's zip format
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            path, f"is not a safe shiftnas checkpoint (refusing to unpickle code): {_short(e)}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise CheckpointError(
            path, f"is not a complete shiftnas checkpoint (truncated or corrupt): {_short(e)}"
        ) from None


def _read(path: Path, mmap: bool, verify: bool) -> dict:
    """Load ``path``, take its digest out and (``verify``) check it; ``CheckpointError`` if bad."""
    state = _load(path, mmap)
    if not isinstance(state, dict):
        raise CheckpointError(path, f"is not a shiftnas checkpoint: holds {type(state).__name__}, not a dict")
    record = state.pop(DIGEST_KEY, None)
    if not verify:
        return state
    if record is None:
        raise CheckpointError(
            path, "has no integrity digest (written before checkpoints carried one, or not by save_checkpoint)",
            "its contents cannot be verified; to trust it anyway: load_checkpoint(path, verify=False), "
            "then save_checkpoint that state",
        )
    if not (isinstance(record, dict) and record.get("algo") == ALGO and isinstance(record.get("hex"), str)):
        raise CheckpointError(path, f"is corrupt: its integrity record is malformed (expected {ALGO})")
    try:
        actual = content_digest(state)
    except ValueError as e:
        raise CheckpointError(path, f"is corrupt: {e}") from None
    if actual != record["hex"]:
        raise CheckpointError(
            path, f"is corrupt: its contents do not match the {ALGO} digest saved with it "
            f"(saved {record['hex'][:12]}, now {actual[:12]})",
            "resume from an older checkpoint or restore the file from a copy",
        )
    return state


def load_checkpoint(path: str | os.PathLike, verify: bool = True) -> dict:
    """``torch.load(path, map_location="cpu", weights_only=True)``, digest checked; ``ValueError``
    for a file that would run code when unpickled, is truncated, has no digest or does not match
    it. ``verify=False`` skips the digest check (and accepts a file without a digest)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no checkpoint at {p}")
    return _read(p, mmap=False, verify=verify)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest numbered checkpoint in ``run_dir`` that loads and verifies; ones that don't (a
    crash mid-write, a corrupt or unsafe file) are skipped with a warning and left in place.
    None when there is none."""
    for step, p in reversed(list_checkpoints(run_dir)):
        try:
            _read(p, mmap=True, verify=True)  # mmap: tensors are read for the digest, not copied
        except (ValueError, FileNotFoundError) as e:
            warnings.warn(f"skipping checkpoint {p.name} (step {step}): {e}", stacklevel=2)
            continue
        return p
    return None


def find_resume(run_dir: str | os.PathLike, resume: str | None, move_aside: bool = True) -> Path | None:
    """The checkpoint a run starts from. `resume`: None (a fresh run: a ValueError when `run_dir`
    has checkpoints, or ones moved aside as corrupt), "auto" (`resume_checkpoint`) or a path."""
    run_dir = Path(run_dir)
    if resume is None:
        existing = list_checkpoints(run_dir) if run_dir.exists() else []
        if existing:
            raise ValueError(
                f"run directory {str(run_dir)!r} already has checkpoints (newest: "
                f"{existing[-1][1].name}); pass --resume auto to continue it, or set run.name / "
                "run.out_dir to start a new run (nothing was overwritten)"
            )
        if aside := list_moved_aside(run_dir):
            raise ValueError(
                f"run directory {str(run_dir)!r} holds checkpoints moved aside as corrupt "
                f"({', '.join(p.name for _, p in aside)}); to start over here, delete them (or the "
                "run directory), or set run.name / run.out_dir for a new run (nothing was overwritten)"
            )
        return None
    if resume == "auto":  # every rank verifies; only rank 0 moves corrupt files aside
        return resume_checkpoint(run_dir, move_aside=move_aside)
    p = Path(resume).expanduser()
    if not p.is_file():
        raise ValueError(f"--resume {resume!r}: no such checkpoint file (use 'auto' or a checkpoint-*.pt path)")
    return p


def resume_checkpoint(run_dir: str | os.PathLike, move_aside: bool = True) -> Path | None:
    """What ``--resume auto`` continues from: the newest checkpoint in ``run_dir`` that loads and
    verifies. Newer ones that fail are (``move_aside``) renamed to ``*.corrupt`` and named in a
    warning. None when ``run_dir`` holds neither checkpoints nor moved-aside files; when it holds
    some and none verifies, a one-line ``ValueError`` naming them (and no warnings)."""
    failed: list[str] = []
    moved: set[str] = set()
    for step, p in reversed(list_checkpoints(run_dir)):
        try:
            _read(p, mmap=True, verify=True)
        except FileNotFoundError:  # moved aside meanwhile (by rank 0 of this job)
            failed.append(f"{p.name} (gone while being read)")
            continue
        except CheckpointError as e:
            where = ""
            if move_aside:
                moved.add(dst := _move_aside(p).name)
                where = f"; moved aside to {dst}"
            failed.append(f"{p.name} ({e.reason[:160]}){where}")
            continue
        for f in failed:
            warnings.warn(f"skipping checkpoint {f}", stacklevel=2)
        return p
    failed += [f"{p.name} (moved aside earlier)" for _, p in reversed(list_moved_aside(run_dir))
               if p.name not in moved]
    if not failed:
        return None
    raise ValueError(
        f"run directory {str(run_dir)!r} has no checkpoint that loads and verifies: {'; '.join(failed)}. "
        "Not starting over on its own: to start over, delete these files (or the run directory), "
        "or set run.name / run.out_dir for a new run"
    )


def _move_aside(p: Path) -> Path:
    """Rename ``p`` to ``p.corrupt`` (or ``p.corrupt.N``, never over an existing file)."""
    for i in range(1000):
        dst = p.with_name(f"{p.name}.corrupt" + (f".{i}" if i else ""))
        if not (dst.exists() or dst.is_symlink()):
            break
    else:
        raise ValueError(f"cannot move {p} aside: {p.name}.corrupt .. .corrupt.999 all exist")
    os.replace(p, dst)
    fsync_dir(p.parent)
    return dst


def capture_rng_state() -> dict:
    """Python, NumPy (if imported), torch CPU and CUDA (if available) RNG states, weights_only-safe."""
    version, internal, gauss = random.getstate()
    out: dict[str, Any] = {"python": [version, list(internal), gauss], "torch": torch.get_rng_state()}
    np = sys.modules.get("numpy")
    if np is not None:
        name, keys, pos, has_gauss, cached = np.random.get_state()
        out["numpy"] = [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]
    if torch.cuda.is_available():
        out["cuda"] = list(torch.cuda.get_rng_state_all())
    return out


def restore_rng_state(state: dict) -> None:
    """Inverse of ``capture_rng_state``; parts missing from ``state`` are left alone."""
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    if "numpy" in state:
        import numpy as np

        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        saved = state["cuda"]
        n = torch.cuda.device_count()
        if len(saved) != n:
            warnings.warn(f"checkpoint has CUDA RNG states for {len(saved)} devices, this machine "
                          f"has {n}; restoring the first {min(n, len(saved))}", stacklevel=2)
        for i, s in enumerate(saved[:n]):
            torch.cuda.set_rng_state(s.cpu().to(torch.uint8), i)
