"""What rank 0 shows and writes while training: a progress bar, `metrics.jsonl`, TensorBoard.

`RunLog(run_dir, start_step, total_steps, enabled=rank == 0)`. On other ranks every method is a
no-op. Lines carry `step`: for kind "train", the number of steps done; for "shift" (a B update) and
"skipped" (a non-finite step), the index of their step. On resume (`start_step > 0`) lines
written after the checkpoint being resumed are dropped, and TensorBoard purges its events from
`start_step` on, so a resumed run's logs read as one run.

Durability: each line is flushed to the OS when written; `RunLog.fsync()` also forces
metrics.jsonl to disk. The engine calls it just before each checkpoint is written, so a power
loss cannot lose lines that a checkpoint already covers. metrics.jsonl and tb/ are placed with
`checkpoint.safe_path`: a symlink planted in the run directory cannot send them elsewhere.
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from ..atomic import fsync_dir, to_jsonable, write_text_atomic
from .checkpoint import safe_path

__all__ = ["RunLog"]


def _clean(v: Any) -> Any:
    """Floats that JSON cannot hold (nan/inf) become strings, so a bad step is still logged."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class RunLog:
    def __init__(
        self,
        run_dir: str | os.PathLike,
        start_step: int,
        total_steps: int,
        enabled: bool = True,
        progress: bool = True,
        tensorboard: bool = True,
    ):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self._bar = self._tb = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = safe_path(self.run_dir, "metrics.jsonl")
        tb_dir = safe_path(self.run_dir, "tb") if tensorboard else None  # checked before anything is written
        self._truncate(start_step)
        self._file = open(self.path, "a", encoding="utf-8")
        fsync_dir(self.path.parent)  # a new metrics.jsonl's directory entry
        if tb_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(tb_dir), purge_step=start_step if start_step > 0 else None)
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total_steps, initial=start_step, desc="train", unit="step",
                dynamic_ncols=True, file=sys.stderr, mininterval=1.0,
            )

    def _truncate(self, start_step: int) -> None:
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a crash
                continue
            if not (isinstance(rec, dict) and isinstance(rec.get("step"), int)):
                continue
            # "train" lines carry the number of steps done (the checkpoint at start_step follows
            # that line); other kinds carry the index of their step, which the resumed run redoes.
            if rec["step"] < start_step or (rec["step"] == start_step and rec.get("kind") == "train"):
                keep.append(line)
        write_text_atomic(self.path, "".join(x + "\n" for x in keep))

    def log(self, step: int, metrics: dict[str, Any], kind: str = "train") -> None:
        """One line of metrics.jsonl and TensorBoard scalars `kind/<key>` for numeric values."""
        if not self.enabled:
            return
        rec = {"step": int(step), "kind": kind, **{k: _clean(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(rec, default=to_jsonable) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self._tb.add_scalar(f"{kind}/{k}", v, step)

    def fsync(self) -> None:
        """Force metrics.jsonl to disk (`os.fsync`) and hand TensorBoard's buffer to the OS. Call it
        before writing a checkpoint: the lines up to that step then survive a power loss."""
        if not self.enabled or self._file.closed:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        if self._tb is not None:
            self._tb.flush()

    def progress(self, n: int = 1, **postfix: Any) -> None:
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(n)

    def status(self, step: int, total: int, loss: float, lr: float, img_per_s: float) -> None:
        """One line on stderr when there is no progress bar (`run.progress=false`), so that a batch
        job's log shows the run moving; the engine calls it every `run.log_every` steps."""
        if self.enabled and self._bar is None:
            print(f"step {step}/{total}  loss {loss:.4f}  lr {lr:.2e}  img/s {img_per_s:.0f}", file=sys.stderr, flush=True)

    def write(self, msg: str) -> None:
        """A message on rank 0 that does not break the progress bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None
        if not self._file.closed:
            self._file.close()
