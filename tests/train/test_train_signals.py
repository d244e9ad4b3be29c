"""Ctrl-C (SIGINT) and SIGTERM sent to a real `python train.py`: the checkpoint of the current step
is saved, the process exits 130 / 143 with one line naming the command to continue (no
traceback), and `--resume` continues it to the end. A second SIGINT during the save leaves every
checkpoint whole."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fmnist_tiny import tiny_overrides

from shiftnas.train.checkpoint import list_checkpoints, load_checkpoint

REPO = Path(__file__).resolve().parents[2]
STEPS = 12


@pytest.fixture(autouse=True)
def _sigint_not_ignored():
    # A test run from a background job inherits SIGINT ignored, and so would train.py (which
    # then keeps ignoring it, on purpose). With a handler here, the child starts with the default.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _start(args: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args], cwd=cwd, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1", **env},
    )


def _wait_for(pred, proc: subprocess.Popen, timeout: float = 180.0, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"train.py ended (rc {proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _steps_done(run: Path) -> int:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    return max((json.loads(x)["step"] for x in lines if x.endswith("}") and '"kind": "train"' in x), default=0)


@pytest.fixture
def args(tiny_root, tmp_path):
    return [*tiny_overrides(tiny_root, tmp_path / "runs", "x"), "sampler.name=uniform", f"optim.steps={STEPS}",
            "run.log_every=1", "run.ckpt_every=3", "eval.max_images=4"]


def _resume_to_the_end(run: Path, cwd: Path) -> None:
    p = _start(["--resume", str(run)], cwd)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    assert "resumed from" in err and json.loads((run / "summary.json").read_text())["steps"] == STEPS


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_the_step_and_prints_how_to_continue(args, tmp_path, sig, code):
    run = tmp_path / "runs" / "x"
    p = _start(args, tmp_path)
    _wait_for(lambda: _steps_done(run) >= 2, p, what="two steps")
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    assert p.returncode == code, err[-3000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    (step, ckpt), = list_checkpoints(run)[-1:]
    assert step < STEPS and _steps_done(run) == step  # the checkpoint is of the step it stopped at
    assert last == f"interrupted at step {step}; checkpoint {ckpt}; continue with: python train.py --resume {run}"
    assert load_checkpoint(ckpt)["step"] == step
    _resume_to_the_end(run, tmp_path)


def test_a_second_sigint_during_the_save_leaves_every_checkpoint_whole(args, tmp_path):
    run = tmp_path / "runs" / "x"
    p = _start(args, tmp_path, SHIFTNAS_FAULT_CKPT_DELAY_S="0.4")  # each save pauses inside its write
    _wait_for(lambda: _steps_done(run) >= 4 and list_checkpoints(run), p, what="a checkpoint")
    p.send_signal(signal.SIGINT)
    _wait_for(lambda: any(run.glob("checkpoint-*.pt.*.tmp")), p, what="a checkpoint write")
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("interrupted at step ")
    assert not list(run.glob("*.tmp"))  # the abandoned write removed
    for _, ckpt in list_checkpoints(run):
        load_checkpoint(ckpt)  # each one complete, its digest verified
    _resume_to_the_end(run, tmp_path)
