#!/usr/bin/env python
"""Train a ShiftNAS supernet (or a baseline sampler's) from a run config: `shiftnas train` for a
source checkout (the arguments, the help and the code are those of shiftnas/train/cli.py).

    python train.py                                        # one process, the fmnist-vit-shift config
    python train.py --config fmnist-vit-uniform optim.steps=200 run.name=quick
    python train.py --print-config                         # every config key, its value and meaning
    torchrun --standalone --nproc_per_node=8 train.py --config imagenet-autoformer-t-shift
    python train.py --resume auto                          # continue runs/<run.name>/ from its newest checkpoint
"""
from __future__ import annotations

import sys

from shiftnas.train.cli import main as _main


def main(argv: list[str] | None = None) -> int:
    return _main(argv, prog="train.py")


if __name__ == "__main__":
    sys.exit(main())
