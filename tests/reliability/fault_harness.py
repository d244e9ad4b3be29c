"""Fault-injection harness shared by tests/reliability and bench/fault_injection.py.

Runs `train.py` in subprocesses on the tiny Fashion-MNIST tree (fp32, CPU, torch loader, no
augmentation), kills or crashes them, and compares what they leave with an uninterrupted run.

    ref = reference_run(train_cmd(ov_ref), run_dir_ref, logs)       # times the uninterrupted run
    camp = crash_campaign(train_cmd(ov), run_dir, logs, n_kills=5, seed=0, ref=ref, total_steps=24)
    diff = compare_runs(run_dir_ref, run_dir)                       # {} when bit-identical

Kill moments (seeded, cycling through the modes):
  step   SIGKILL once the run has logged a random step beyond where any attempt got before
         (at most total - 3), plus a random part of one reference step's time: mid-step,
         between steps, or in a save; at once if two more steps are logged first (the machine
         got faster than when the reference was timed), so a kill never misses the run.
  ckpt   with SHIFTNAS_FAULT_CKPT_DELAY_S=0.25 (shiftnas/train/faults.py) each save pauses
         0.25 s after the first chunk of its temp file, before the rename and after it; the
         harness polls the run directory every 5 ms and, once this attempt's 1st or 2nd temp
         file appears, kills at a random moment of one pause (the three in turn): a half-written
         temp file, a complete one not yet renamed, or a renamed checkpoint before the
         directory fsync and the pruning of older ones. `Attempt.where` says what was hit,
         from the run directory: the temp file left (loads or not) or a third checkpoint; a
         ckpt kill that leaves neither landed in the third pause.
  time   a random moment of the start-up: imports, model building, reading the checkpoint,
         truncating metrics.jsonl (at the latest when the attempt starts training).
The whole process group is killed (the DataLoader worker too), as when a machine drops a job.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from fmnist_tiny import tiny_overrides

from shiftnas.train.checkpoint import list_checkpoints, load_checkpoint

REPO = Path(__file__).resolve().parents[2]
TIMING_KEYS = ("img_per_s", "eval_s")  # wall-clock measurements, not training results
MODES = ("step", "ckpt", "time")
RESUMED_RE = re.compile(r"resumed from (\S+) at step (\d+)")
CKPT_DELAY_S = 0.25


# ---------------------------------------------------------------------------------- commands
def run_overrides(root: Path, out: Path, name: str, steps: int, ckpt_every: int = 4,
                  batch_size: int = 16) -> list[str]:
    """A tiny fp32 CPU shift run that logs every step (so the steps done can be read back)."""
    return tiny_overrides(root, out, name) + [
        "data.augment=false", f"optim.steps={steps}", f"run.ckpt_every={ckpt_every}",
        "run.log_every=1", f"data.batch_size={batch_size}", "run.device=cpu",
    ]


def train_cmd(overrides: list[str], resume: str | None = "auto") -> list[str]:
    return [sys.executable, str(REPO / "train.py"), *(["--resume", resume] if resume else []), *overrides]


def torchrun_cmd(overrides: list[str], nproc: int = 2, max_restarts: int = 0, resume: str | None = None) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            f"--max-restarts={max_restarts}", str(REPO / "train.py"),
            *(["--resume", resume] if resume else []), *overrides]


def child_env(**faults: str | float) -> dict[str, str]:
    """This environment without SHIFTNAS_FAULT_*, one thread per process, plus `faults`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIFTNAS_FAULT_")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update({k: str(v) for k, v in faults.items()})
    return env


def run(cmd: list[str], env: dict[str, str], log: Path, timeout: float = 900) -> tuple[int, float, str]:
    """Run to the end: (exit code, wall seconds, output)."""
    t0 = time.monotonic()
    r = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=timeout, check=False)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(r.stdout)
    return r.returncode, time.monotonic() - t0, r.stdout


# ---------------------------------------------------------------------------------- run dirs
def metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl as records (a line cut by a kill is left out)."""
    p = run_dir / "metrics.jsonl"
    out = []
    if p.exists():
        for line in p.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def max_train_step(run_dir: Path) -> int:
    return max((r["step"] for r in metrics(run_dir) if r.get("kind") == "train"), default=0)


def temp_files(run_dir: Path, pid: int | None = None) -> list[Path]:
    pat = f"checkpoint-*.pt.{pid}.tmp" if pid is not None else "checkpoint-*.pt.*.tmp"
    return sorted(run_dir.glob(pat)) if run_dir.is_dir() else []


def check_checkpoints(run_dir: Path) -> tuple[list[int], list[str]]:
    """(steps of the checkpoints that load completely, names of those that don't)."""
    good, bad = [], []
    for step, p in list_checkpoints(run_dir):
        try:
            state = load_checkpoint(p)
            if int(state["step"]) != step:
                raise ValueError(f"holds step {state['step']}")
            good.append(step)
        except Exception as e:  # noqa: BLE001 - every failure is data loss, reported by name
            bad.append(f"{p.name}: {e}")
    return good, bad


def _loads(p: Path) -> bool:
    try:
        torch.load(p, map_location="cpu", weights_only=True)
        return True
    except Exception:  # noqa: BLE001
        return False


# ---------------------------------------------------------------------------------- comparison
def _diff(a: Any, b: Any, where: str, out: list[str]) -> None:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)):
            out.append(where)
    elif isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                out.append(f"{where}[{k!r}] missing")
            else:
                _diff(a[k], b[k], f"{where}[{k!r}]", out)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            out.append(f"{where} length {len(a)} != {len(b)}")
        else:
            for i, (x, y) in enumerate(zip(a, b)):
                _diff(x, y, f"{where}[{i}]", out)
    elif a != b and not (_isnan(a) and _isnan(b)):
        out.append(where)


def _isnan(x: Any) -> bool:
    return isinstance(x, float) and math.isnan(x)


def _strip(rec: Any) -> Any:
    if isinstance(rec, dict):
        return {k: _strip(v) for k, v in rec.items() if k not in TIMING_KEYS and k != "run"}
    return rec


def compare_runs(ref_dir: Path, run_dir: Path) -> dict[str, list[str]]:
    """What differs between two finished runs of the same config (run.name/out_dir aside):
    the final checkpoint entry by entry (bit-exact tensors), metrics.jsonl lines (timings
    aside), summary.json and sampling.json. Empty when identical."""
    diffs: dict[str, list[str]] = {}
    (sa, pa), (sb, pb) = list_checkpoints(ref_dir)[-1], list_checkpoints(run_dir)[-1]
    a, b = load_checkpoint(pa), load_checkpoint(pb)
    for s in (a, b):
        s["config"]["run"].pop("name"), s["config"]["run"].pop("out_dir")
    out: list[str] = [] if sa == sb else [f"newest checkpoint step {sa} != {sb}"]
    _diff(a, b, "checkpoint", out)
    if out:
        diffs["checkpoint"] = out
    ma, mb = [_strip(r) for r in metrics(ref_dir)], [_strip(r) for r in metrics(run_dir)]
    out = [f"lost: {r}" for r in ma if r not in mb] + [f"extra: {r}" for r in mb if r not in ma]
    if out or len(ma) != len(mb):
        diffs["metrics"] = out or [f"{len(ma)} lines vs {len(mb)} (repeated lines)"]
    for name in ("summary.json", "sampling.json"):
        out = []
        _diff(_strip(json.loads((ref_dir / name).read_text())), _strip(json.loads((run_dir / name).read_text())),
              name, out)
        if out:
            diffs[name] = out
    return diffs


# ---------------------------------------------------------------------------------- reference
@dataclass
class Reference:
    wall_s: float
    startup_s: float  # spawn -> first step logged
    step_s: float  # seconds per training step


def reference_run(cmd: list[str], run_dir: Path, log: Path, env: dict[str, str] | None = None,
                  timeout: float = 900) -> Reference:
    """Run `cmd` uninterrupted, timing its start-up and steps from metrics.jsonl."""
    env = env or child_env()
    t0 = time.monotonic()
    first = last = None
    n0 = 0
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as f:
        p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while p.poll() is None:
            now = time.monotonic() - t0
            if now > timeout:
                raise TimeoutError(f"reference run over {timeout} s: {log}")
            n = max_train_step(run_dir)
            if n > 0 and first is None:
                first, n0 = now, n
            if n > n0:
                last = (now, n)
            time.sleep(0.02)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    if p.returncode != 0:
        raise RuntimeError(f"reference run failed (exit {p.returncode}): {log.read_text()[-3000:]}")
    wall = time.monotonic() - t0
    first = first if first is not None else wall
    step_s = (last[0] - first) / (last[1] - n0) if last else 0.2
    return Reference(wall_s=wall, startup_s=first, step_s=step_s)


# ---------------------------------------------------------------------------------- kills
@dataclass
class Attempt:
    index: int
    mode: str  # step | ckpt | time | final
    killed: bool
    at_s: float
    exit_code: int | None = None
    start_step: int = 0  # the checkpoint it resumed from (0: fresh)
    resumed_from: str | None = None
    reached_training: bool = False
    max_step: int = 0  # the last step it completed (start_step when none)
    target: str = ""  # what the kill waited for
    temp_files: list[dict] = field(default_factory=list)  # this attempt's checkpoint temp files at the kill
    where: str = ""  # what the kill interrupted, as far as the run directory shows
    checkpoints_after: list[int] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    resume_ok: bool = True  # it resumed from the newest complete checkpoint (or had not got that far)
    steps_lost: int = 0  # steps it completed that the next attempt recomputes


def _inode(p: Path) -> int | None:
    try:
        return p.stat().st_ino
    except FileNotFoundError:
        return None


def _attempt(i: int, mode: str, cmd: list[str], env: dict[str, str], run_dir: Path, log: Path,
             trigger, timeout: float, total_steps: int) -> Attempt:
    """Spawn, poll every 5 ms until `trigger(now, pid)` gives a kill time and it passes, then
    SIGKILL the process group. `trigger` None: run to the end."""
    ino_before = _inode(run_dir / "metrics.jsonl")
    before = check_checkpoints(run_dir)[0]
    t0 = time.monotonic()
    with open(log, "wb") as f:
        p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    kill_at = None
    killed = False
    try:
        while p.poll() is None:
            now = time.monotonic() - t0
            if now > timeout:
                raise TimeoutError(f"attempt {i} ran over {timeout} s: {log}")
            if trigger is not None and kill_at is None:
                kill_at = trigger(now, p.pid)
            if kill_at is not None and now >= kill_at:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                killed = True
                break
            time.sleep(0.005)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    at = time.monotonic() - t0
    text = log.read_text(errors="replace")
    m = RESUMED_RE.search(text)
    att = Attempt(index=i, mode=mode, killed=killed, at_s=round(at, 3), exit_code=None if killed else p.returncode)
    if m:
        att.resumed_from, att.start_step = Path(m.group(1)).name, int(m.group(2))
    ino_after = _inode(run_dir / "metrics.jsonl")
    att.reached_training = ino_after is not None and ino_after != ino_before  # RunLog rewrote/created it
    att.max_step = max(att.start_step, max_train_step(run_dir)) if att.reached_training else att.start_step
    for t in temp_files(run_dir, p.pid):
        att.temp_files.append({"name": t.name, "bytes": t.stat().st_size, "complete": _loads(t)})
    good, bad = check_checkpoints(run_dir)
    att.checkpoints_after, att.unreadable = good, bad
    if not killed:
        att.where = "finished"
    elif att.temp_files:
        att.where = "checkpoint write: " + ("temp file complete, not renamed" if att.temp_files[-1]["complete"]
                                            else "temp file half-written")
    elif (len(good) > 2 and good != before) or mode == "ckpt":  # a ckpt kill lands in a save's pauses
        att.where = "checkpoint write: renamed, before the directory fsync and pruning"
    elif not att.reached_training:
        att.where = "start-up"
    elif att.max_step >= total_steps:
        att.where = "after the last step (final save / evaluation)"
    else:
        att.where = f"training (last step logged {att.max_step})"
    return att


def crash_campaign(cmd: list[str], run_dir: Path, logs: Path, n_kills: int, seed: int, ref: Reference,
                   total_steps: int, ckpt_every: int = 4, timeout: float = 600) -> dict[str, Any]:
    """SIGKILL `cmd` (a `train.py --resume auto` command) n_kills times, then let it finish.

    After every kill: each checkpoint-*.pt loads (else it is listed in `unreadable`), and the
    next attempt must resume from the newest of them (`resume_errors` otherwise). Returns the
    attempts and totals."""
    rng = random.Random(seed)
    logs.mkdir(parents=True, exist_ok=True)
    attempts: list[Attempt] = []
    resume_errors: list[str] = []
    furthest = 0  # the furthest step any attempt logged: a step trigger waits beyond it
    n_ckpt_kills = 0
    for i in range(n_kills + 1):
        mode = MODES[i % len(MODES)] if i < n_kills else "final"
        env = child_env()
        trigger, target = None, ""
        if mode == "step" and furthest >= total_steps - 3:
            mode = "time"  # too close to the end for a step kill: kill while it restarts instead
        if mode == "step":
            goal = min(total_steps - 3, furthest + rng.randint(1, 6))
            extra = rng.uniform(0, 1.5) * ref.step_s
            target = f"step {goal} logged + {extra:.3f} s"
            state = {"size": -1, "seen_at": None}

            def trigger(now, pid, goal=goal, extra=extra, state=state):
                # Kill `extra` seconds after step `goal` is logged, or at once when the run has
                # logged two steps more (its steps are faster than the reference's were): the
                # kill lands mid-run however the machine's speed changed since the reference.
                if state["seen_at"] is not None and now >= state["seen_at"] + extra:
                    return now
                try:
                    n = (run_dir / "metrics.jsonl").stat().st_size
                except FileNotFoundError:
                    return None
                if n == state["size"]:  # re-read only when the file grew
                    return None
                state["size"] = n
                done = max_train_step(run_dir)
                if done >= goal + 2:
                    return now
                if done >= goal and state["seen_at"] is None:
                    state["seen_at"] = now
                return None
        elif mode == "ckpt":
            env = child_env(SHIFTNAS_FAULT_CKPT_DELAY_S=CKPT_DELAY_S)
            nth = rng.randint(1, 2)
            start = max(check_checkpoints(run_dir)[0], default=0)
            saves_left = len(range(start + ckpt_every, total_steps, ckpt_every)) + 1  # + the final save
            nth = min(nth, saves_left)
            phase = n_ckpt_kills % 3  # which pause: half-written temp, before the rename, after it
            n_ckpt_kills += 1
            offset = rng.uniform(phase * CKPT_DELAY_S + (0.0 if phase == 0 else 0.05),
                                 (phase + 1) * CKPT_DELAY_S - 0.05)
            target = f"temp file #{nth} seen + {offset:.3f} s (pause {phase + 1} of 3)"
            seen: set[str] = set()

            def trigger(now, pid, nth=nth, offset=offset, seen=seen):
                seen.update(t.name for t in temp_files(run_dir, pid))
                return now + offset if len(seen) >= nth else None
        elif mode == "time":
            at = rng.uniform(0, ref.startup_s)
            target = f"{at:.3f} s after spawn (or when training starts)"
            ino = _inode(run_dir / "metrics.jsonl")

            def trigger(now, pid, at=at, ino=ino):
                # In the start-up: at `at`, or at once when this attempt has begun training
                # (rewrote metrics.jsonl) because its start-up was shorter than the reference's.
                return now if now >= at or _inode(run_dir / "metrics.jsonl") != ino else None
        expected = max(check_checkpoints(run_dir)[0], default=None)
        att = _attempt(i, mode, cmd, env, run_dir, logs / f"attempt-{i:02d}.log", trigger, timeout, total_steps)
        att.target = target
        want = f"checkpoint-{expected:08d}.pt" if expected is not None else None
        if att.resumed_from != want and (att.resumed_from is not None or att.reached_training):
            resume_errors.append(f"attempt {i}: resumed from {att.resumed_from}, newest complete checkpoint {want}")
            att.resume_ok = False
        if "skipping checkpoint" in (logs / f"attempt-{i:02d}.log").read_text(errors="replace"):
            resume_errors.append(f"attempt {i}: latest_checkpoint skipped an unreadable checkpoint")
            att.resume_ok = False
        if att.reached_training:
            furthest = max(furthest, att.max_step)
        attempts.append(att)
        if mode == "final" and att.exit_code != 0:
            raise RuntimeError(f"the final attempt failed (exit {att.exit_code}): "
                               f"{(logs / f'attempt-{i:02d}.log').read_text()[-3000:]}")
    trained = [a for a in attempts if a.reached_training]
    for a, b in itertools.pairwise(trained):  # steps a completed past the checkpoint b resumed from
        a.steps_lost = max(0, a.max_step - b.start_step)
    executed = sum(a.max_step - a.start_step for a in trained)
    kills = [a for a in attempts if a.killed]
    return {
        "attempts": [asdict(a) for a in attempts],
        "kills": len(kills),
        "kills_in_checkpoint_write": sum(a.where.startswith("checkpoint write") for a in kills),
        "kills_half_written_temp": sum("half-written" in a.where for a in kills),
        "kills_at_startup": sum(a.where == "start-up" for a in kills),
        "steps_lost": sum(a.steps_lost for a in attempts),
        "steps_executed": executed,
        "unreadable_checkpoints": sum(len(a.unreadable) for a in attempts),
        "resume_errors": resume_errors,
        "temp_files_left": [t.name for t in temp_files(run_dir)],
    }


# ---------------------------------------------------------------------------------- restarts
def restart_scenario(root: Path, out: Path, logs: Path, steps: int = 16, ckpt_every: int = 4,
                     raise_at: int = 14, rank: int = 1, batch_size: int = 32, timeout: float = 900,
                     how: str = "raise") -> dict[str, Any]:
    """`torchrun --nproc_per_node=2 --max-restarts=2 train.py` (gloo, CPU) whose rank `rank`
    raises (how="raise") or SIGKILLs itself (how="sigkill") before step `raise_at` once
    (SHIFTNAS_FAULT_RAISE_AT_STEP + SHIFTNAS_FAULT_ONCE + SHIFTNAS_FAULT_HOW),
    against the same job uninterrupted. With batch 32 per rank an epoch is 10 steps: the crash
    is in the middle of the second one."""
    logs.mkdir(parents=True, exist_ok=True)
    ref_ov = run_overrides(root, out, "ddp-ref", steps, ckpt_every, batch_size)
    rc_ref, wall_ref, text_ref = run(torchrun_cmd(ref_ov), child_env(), logs / "ddp-ref.log", timeout)
    if rc_ref != 0:
        raise RuntimeError(f"the uninterrupted 2-process run failed (exit {rc_ref}): {text_ref[-3000:]}")
    marker = out / "fault.fired"
    env = child_env(SHIFTNAS_FAULT_RAISE_AT_STEP=raise_at, SHIFTNAS_FAULT_RANK=rank, SHIFTNAS_FAULT_ONCE=marker,
                    SHIFTNAS_FAULT_HOW=how)
    ov = run_overrides(root, out, "ddp-restart", steps, ckpt_every, batch_size)
    rc, wall, text = run(torchrun_cmd(ov, max_restarts=2), env, logs / "ddp-restart.log", timeout)
    resumed = [int(s) for _, s in RESUMED_RE.findall(text)]
    _, bad = check_checkpoints(out / "ddp-restart")
    res: dict[str, Any] = {
        "exit_code": rc, "wall_s": round(wall, 1), "reference_wall_s": round(wall_ref, 1),
        "fault_fired": marker.exists(),
        "crash_logged": ("InjectedFault" in text) if how == "raise" else ("exitcode: -9" in text),  # torchrun: killed by signal 9
        "resumed_at": resumed, "restarts": len(resumed),
        "connect_failures": text.count("connectFullMesh failed"),  # a restart that could not rejoin
        "steps_lost": raise_at - resumed[0] if resumed else None,
        "unreadable_checkpoints": bad,
    }
    if rc == 0:
        summary = json.loads((out / "ddp-restart" / "summary.json").read_text())
        res.update(steps=summary["steps"], images_seen=summary["images_seen"],
                   expected_images=steps * batch_size * 2,
                   diff=compare_runs(out / "ddp-ref", out / "ddp-restart"))
    else:
        res["output_tail"] = text[-3000:]
    return res


# ---------------------------------------------------------------------------------- byte flip
def flip_tensor_byte(p: Path) -> None:
    """Flip one byte in the middle of the largest tensor record of torch's zip."""
    with zipfile.ZipFile(p) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(p.read_bytes())
    start = info.header_offset + 30 + sum(int.from_bytes(data[info.header_offset + o:][:2], "little") for o in (26, 28))
    data[start + info.file_size // 2] ^= 0x10
    p.write_bytes(bytes(data))


def byte_flip_scenario(root: Path, out: Path, logs: Path, steps: int = 16, ckpt_every: int = 4,
                       timeout: float = 900) -> dict[str, Any]:
    """A finished run whose newest checkpoint gets one flipped byte in its tensor data, then
    `--resume auto`: it must fall back to the previous checkpoint (the digest check), move the
    corrupt file aside (kept), retrain the steps after it and end bit-identical to the run."""
    import shutil

    logs.mkdir(parents=True, exist_ok=True)
    ov_ref = run_overrides(root, out, "flip-ref", steps, ckpt_every)
    rc_ref, _, text_ref = run(train_cmd(ov_ref), child_env(), logs / "flip-ref.log", timeout)
    if rc_ref != 0:
        raise RuntimeError(f"the reference run failed (exit {rc_ref}): {text_ref[-3000:]}")
    run_dir = out / "flip"
    shutil.copytree(out / "flip-ref", run_dir)
    newest = list_checkpoints(run_dir)[-1][1]
    flip_tensor_byte(newest)
    rc, wall, text = run(train_cmd(run_overrides(root, out, "flip", steps, ckpt_every)), child_env(),
                         logs / "flip.log", timeout)
    resumed = [int(s) for _, s in RESUMED_RE.findall(text)]
    res: dict[str, Any] = {
        "exit_code": rc, "wall_s": round(wall, 1), "flipped": newest.name, "resumed_at": resumed,
        "moved_aside": sorted(q.name for q in run_dir.glob("*.corrupt")),
        "steps_lost": steps - resumed[0] if resumed else None,
    }
    if rc == 0:
        res["diff"] = compare_runs(out / "flip-ref", run_dir)
    else:
        res["output_tail"] = text[-3000:]
    return res


# ---------------------------------------------------------------------------------- numerical faults
def _all_finite(state: Any) -> bool:
    if isinstance(state, torch.Tensor):
        return not state.is_floating_point() or bool(torch.isfinite(state).all())
    if isinstance(state, dict):
        return all(_all_finite(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return all(_all_finite(v) for v in state)
    return True


def checkpoints_finite(run_dir: Path) -> bool:
    """Every checkpoint of run_dir loads and holds only finite floats (model, optimizer, sampler)."""
    return all(_all_finite(load_checkpoint(p)) for _, p in list_checkpoints(run_dir))


def grad_fault_run(root: Path, out: Path, logs: Path, spec: str, steps: int = 16, timeout: float = 900) -> dict[str, Any]:
    """train.py with SHIFTNAS_FAULT_GRAD=spec (isolated bad steps): it must finish, skip and count
    exactly the injected steps, and keep every tensor finite."""
    name = "grad-" + re.sub(r"[^A-Za-z0-9]+", "_", spec)
    rc, wall, text = run(train_cmd(run_overrides(root, out, name, steps)), child_env(SHIFTNAS_FAULT_GRAD=spec),
                         logs / f"{name}.log", timeout)
    step_text = spec.split(":")[1]
    injected = sorted(s for s in _parse(step_text) if s < steps)
    res: dict[str, Any] = {"spec": spec, "exit_code": rc, "injected": len(injected), "wall_s": round(wall, 1)}
    if rc == 0:
        d = out / name
        skipped = [r["step"] for r in metrics(d) if r.get("kind") == "skipped"]
        summary = json.loads((d / "summary.json").read_text())
        res.update(skipped_logged=skipped, skipped_counted=summary["skipped_steps"],
                   finite=checkpoints_finite(d), steps=summary["steps"],
                   optimizer_steps=_optimizer_steps(d))
        res["ok"] = (skipped == injected and summary["skipped_steps"] == len(injected) and res["finite"]
                     and res["optimizer_steps"] == steps - len(injected))
    else:
        res.update(ok=False, output_tail=text[-3000:])
    return res


def _parse(step_text: str) -> set[int]:
    """3,5,9-12 -> {3, 5, 9, 10, 11, 12} (the STEPS of SHIFTNAS_FAULT_GRAD)."""
    out: set[int] = set()
    for part in step_text.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def _optimizer_steps(run_dir: Path) -> int:
    """AdamW's step count in the newest checkpoint (skipped steps do not count)."""
    state = load_checkpoint(list_checkpoints(run_dir)[-1][1])["optimizer"]["state"]
    return max(int(s["step"]) for s in state.values())


def divergence_scenario(root: Path, out: Path, logs: Path, steps: int = 16, ckpt_every: int = 4, bad_from: int = 5,
                        kind: str = "inf", timeout: float = 900) -> dict[str, Any]:
    """Non-finite gradients from step `bad_from` on: train.py stops with exit 3 and a one-line
    error after MAX_BAD_STEPS, its newest checkpoint loads and is finite, and `--resume auto`
    without the fault finishes bit-identical to a run that never had it."""
    from shiftnas.train.engine import MAX_BAD_STEPS

    ref_ov, ov = (run_overrides(root, out, n, steps, ckpt_every) for n in ("div-ref", "div"))
    rc_ref, _, text_ref = run(train_cmd(ref_ov), child_env(), logs / "div-ref.log", timeout)
    if rc_ref != 0:
        raise RuntimeError(f"the reference run failed (exit {rc_ref}): {text_ref[-3000:]}")
    spec = f"{kind}:{bad_from}-{steps + 100}"
    rc, _, text = run(train_cmd(ov), child_env(SHIFTNAS_FAULT_GRAD=spec), logs / "div.log", timeout)
    d = out / "div"
    errors = [ln for ln in text.splitlines() if "error:" in ln]
    good, bad = check_checkpoints(d)
    res: dict[str, Any] = {
        "spec": spec, "exit_code": rc, "injected": MAX_BAD_STEPS, "error_lines": errors,
        "traceback": "Traceback" in text, "checkpoints": good, "unreadable_checkpoints": bad,
        "finite": checkpoints_finite(d) if not bad else False,
        "last_step_done": bad_from + MAX_BAD_STEPS,
    }
    rc2, _, text2 = run(train_cmd(ov), child_env(), logs / "div-resume.log", timeout)
    resumed = [int(s) for _, s in RESUMED_RE.findall(text2)]
    res.update(resume_exit_code=rc2, resumed_at=resumed,
               steps_lost=res["last_step_done"] - resumed[0] if resumed else None,
               diff=compare_runs(out / "div-ref", d) if rc2 == 0 else {"resume": [text2[-3000:]]})
    return res
