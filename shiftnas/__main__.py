"""`python -m shiftnas`: the `shiftnas` command line (shiftnas/cli.py)."""
from .cli import main

raise SystemExit(main())
