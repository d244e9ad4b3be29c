"""Ctrl-C (SIGINT) and SIGTERM while training: finish the step, save a checkpoint, stop.

    signals = StopSignals(announce=info.is_main)
    with signals:                                         # the engine's fit()
        signals.deferring = True                          # the training loop
        ...  # each step all-reduces `signals.signum is not None`: every rank stops after the same step
        raise TrainingInterrupted(signals.signum)         # after the checkpoint of that step

Inside the training loop a first SIGINT or SIGTERM is only recorded (rank 0 says so on stderr):
the engine folds it into the step's all-reduce, so all ranks see it after the same step, save
the checkpoint of that step together (rank 0 writes) and raise `TrainingInterrupted`. Outside
the loop (loading, evaluating), or on a second signal, `TrainingInterrupted` is raised at once:
a checkpoint being written is then abandoned, which its atomic write leaves as it was (the temp
file removed, the older checkpoints untouched; checkpoint.py). The command line turns it into
one line and the exit code 128 + signal (130 for SIGINT, 143 for SIGTERM). A signal the process
was started ignoring (e.g. SIGINT of a background job) stays ignored; off the main thread (where
Python cannot install handlers) nothing is installed.
"""
from __future__ import annotations

import os
import signal
import threading

__all__ = ["StopSignals", "TrainingInterrupted"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by SIGINT/SIGTERM; `signum` the signal, `exit_code` 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignals:
    """SIGINT/SIGTERM handlers for a `with` block (the previous ones restored after it)."""

    def __init__(self, announce: bool = True):
        self.signum: int | None = None  # the first signal received while deferring
        self.deferring = False  # True: a first signal waits for the end of the step
        self.announce = announce
        self._previous: dict[int, object] = {}

    def __enter__(self) -> None:
        self.signum, self.deferring = None, False
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                if signal.getsignal(s) is not signal.SIG_IGN:
                    self._previous[s] = signal.signal(s, self._handle)

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if self.signum is None and self.deferring:
            self.signum = signum
            if self.announce:  # os.write: print() may be inside a write to stderr right now
                name = signal.Signals(signum).name
                os.write(2, f"\n{name}: finishing this step and saving a checkpoint "
                            f"({name} again stops at once, without it)\n".encode())
            return
        raise TrainingInterrupted(signum)
