"""`python -m shiftnas.train` (and `torchrun ... -m shiftnas.train`): see shiftnas/train/cli.py."""
import sys

from .cli import main

sys.exit(main(prog="python -m shiftnas.train"))
