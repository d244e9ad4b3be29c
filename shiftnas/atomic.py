"""The one way this package writes a file: `atomic_write` (a temp file beside the target,
flushed, fsynced, `os.replace`d over it, then the directory fsynced).

A reader, a crash or a kill mid-write sees the old file or the new one, never half of one, and
after a power loss the new file is on disk once `atomic_write` has returned. Writers:
checkpoints (train/checkpoint.py), config.yaml, summary.json, sampling.json and metrics.jsonl
rewrites (train/engine.py, train/runlog.py), exported subnets (models/export.py, search/export.py),
converted supernets, search results and figures (train/plots.py). Whole directories built in a
temp directory and renamed (data/prepare.py, convert) use `fsync_dir` after the rename.

Standard library only: a leaf every layer may import.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "fsync_dir", "to_jsonable", "write_json_atomic", "write_text_atomic"]


def fsync_dir(d: str | os.PathLike) -> None:
    """Force a directory's entries (a rename, a new file) to disk; a no-op where directories
    cannot be opened (Windows)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike,
    write_fn: Callable[[IO[bytes]], Any],
    *,
    fsync: bool = True,
    tmp: str | os.PathLike | None = None,
    before_replace: Callable[[], Any] | None = None,
) -> Path:
    """Write `path` by calling `write_fn(f)` on a binary file object, atomically.

    The temp file is `tmp` (default ``.<name>.tmp-<pid>`` beside `path`, in the same directory
    so the rename is atomic), created exclusively with mode 0644 less the umask after removing
    any leftover (a planted symlink is removed, never followed). With `fsync` the data and then
    the directory entry are forced to disk. `before_replace` runs between the fsync and the
    rename (a fault-injection hook). On any error the temp file is removed and the target is
    left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}") if tmp is None else Path(tmp)
    tmp.unlink(missing_ok=True)
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "wb") as f:
            write_fn(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(path.parent)
    return path


def write_text_atomic(path: str | os.PathLike, text: str | bytes) -> Path:
    """`text` (str: UTF-8; or bytes) to `path` with `atomic_write`."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return atomic_write(path, lambda f: f.write(data))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """JSON (indent 1, a final newline) to `path` with `atomic_write`; nan/inf are refused
    (ValueError), tensors and numpy values are written as lists / numbers."""
    return write_text_atomic(path, json.dumps(obj, indent=1, allow_nan=False, default=to_jsonable) + "\n")


def to_jsonable(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")
