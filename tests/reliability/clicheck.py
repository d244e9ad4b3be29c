"""Shared by the bad-input and safe-loading tests: run `shiftnas` / `train.py` in-process or as a
subprocess, check that an error is one clear line, and a tiny self-made image tree to train on.

The rule for a failed command: exit code 2, no "Traceback" anywhere, and stderr is one line
`PROG...: error: ...` - or, for argparse's own usage errors, the usage block followed by that
one line.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

REPO = Path(__file__).resolve().parents[2]
TRAIN_PY = REPO / "train.py"

# Modest by default (the suite runs on 2 cores); SHIFTNAS_FUZZ_EXAMPLES=1000 for a deeper run.
# derandomize: the same examples on every run, so CI does not flake on a newly drawn case.
settings.register_profile(
    "shiftnas-bad-input",
    max_examples=int(os.environ.get("SHIFTNAS_FUZZ_EXAMPLES", "60")),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
FUZZ = settings(settings.get_profile("shiftnas-bad-input"))

MAX_ERROR_CHARS = 1500  # a clear message, not a dump of the input

# What str.splitlines() breaks at. argparse echoes an unrecognised argument verbatim, so an
# argument holding one of these makes argparse's own error span lines: generated argv leaves
# them out, and test_bad_input_cli checks our own messages with them separately (escaped).
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def no_line_breaks(s: str) -> bool:
    return not any(c in s for c in LINE_BREAKS) and "\x00" not in s


class Hung(BaseException):  # not Exception: code under test that catches Exception can't hide it
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise `Hung` in the main thread after `seconds` (SIGALRM): a hang fails the test."""
    def on_alarm(signum, frame):
        raise Hung(f"no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _train_main():
    spec = importlib.util.spec_from_file_location("shiftnas_train_script", TRAIN_PY)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def run_in_process(main, argv: list[str], seconds: float = 120) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `main(argv)`; an exception other than SystemExit escapes
    (that is the deep traceback the tests look for)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), time_limit(seconds):
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse: usage errors (2) and --help (0)
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return rc, out.getvalue(), err.getvalue()


def shiftnas_main(argv: list[str], seconds: float = 120) -> tuple[int, str, str]:
    from shiftnas.cli import main

    return run_in_process(main, argv, seconds)


_TRAIN_MAIN = None


def train_main(argv: list[str], seconds: float = 120) -> tuple[int, str, str]:
    global _TRAIN_MAIN
    if _TRAIN_MAIN is None:
        _TRAIN_MAIN = _train_main()
    return run_in_process(_TRAIN_MAIN, argv, seconds)


def run_subprocess(args: list[str], cwd: Path, timeout: float = 180) -> tuple[int, str, str]:
    """A real process (real argv, real stderr, interpreter start-up included); a hang is a
    `subprocess.TimeoutExpired`, i.e. a failure."""
    env = dict(os.environ, PYTHONPATH=str(REPO), TQDM_DISABLE="1")
    r = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env, check=False,
                       timeout=timeout)
    return r.returncode, r.stdout, r.stderr


def png_bytes(seed: int, size: int = 28) -> bytes:
    """A random grey PNG."""
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def make_mini_root(root: Path) -> Path:
    """train/minival/val, classes a and b, 8 random 28x28 PNGs each (one batch of 16): enough
    for `tiny_overrides` runs that must reach the data or a checkpoint, without Fashion-MNIST."""
    for s in ("train", "minival", "val"):
        for c, cls in enumerate("ab"):
            (root / s / cls).mkdir(parents=True)
            for i in range(8):
                (root / s / cls / f"{i}.png").write_bytes(png_bytes(100 * c + i))
    return root


def assert_one_line_error(rc: int, err: str, prog: str) -> str:
    """The checks of a failed command; returns the error line."""
    assert "Traceback" not in err, err[-3000:]
    assert rc == 2, (rc, err[-2000:])
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines, "exit 2 without a message"
    last = lines[-1]
    assert last.startswith(prog) and ": error: " in last, lines
    if not lines[0].startswith("usage:"):  # our own errors: nothing but the one line
        assert len(lines) == 1, lines
    else:  # argparse: usage (possibly wrapped) + one error line
        assert sum(": error: " in ln for ln in lines) == 1, lines
    assert len(last) <= MAX_ERROR_CHARS, last[:300] + "..."
    return last


def assert_ok_or_one_line_error(rc: int, err: str, prog: str) -> str | None:
    """A command that may be valid: success (0, quiet stderr) or the clean error."""
    if rc == 0:
        assert "Traceback" not in err and ": error: " not in err, err[-2000:]
        return None
    return assert_one_line_error(rc, err, prog)
