"""What every `shiftnas` command shares: the root parser and the one error path.

`shiftnas.cli` builds the whole command line on these. A command module that also runs on its
own (`python -m shiftnas.data.prepare`) builds the same root parser holding just its command and
runs it the same way, so it never imports `shiftnas.cli` (which imports the command modules:
tests/test_layers.py). Nothing here imports torch.
"""
from __future__ import annotations

import argparse
import sys

__all__ = ["COMMAND_ERRORS", "root_parser", "run_command"]

# What a command raises on bad input (OSError: e.g. an unwritable --out): a message and exit 2.
COMMAND_ERRORS = (ValueError, RuntimeError, OSError)


def root_parser(**kwargs) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """The `shiftnas` parser (`kwargs` for argparse.ArgumentParser) and its set of commands,
    each of which sets `fn` (its function) through `set_defaults`."""
    ap = argparse.ArgumentParser(prog="shiftnas", **kwargs)
    return ap, ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")


def run_command(args: argparse.Namespace) -> int:
    """`args.fn(args)`; a `COMMAND_ERRORS` error is printed as `shiftnas CMD: error: ...` (exit 2)."""
    try:
        return args.fn(args)
    except COMMAND_ERRORS as e:
        print(f"shiftnas {args.cmd}: error: {e}", file=sys.stderr)
        return 2
