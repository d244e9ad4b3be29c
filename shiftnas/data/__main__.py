"""``python -m shiftnas.data prepare fashion-mnist --out DIR``: `shiftnas prepare` without the CLI."""

import sys

from .prepare import main

argv = sys.argv[1:]
raise SystemExit(main(argv[1:] if argv[:1] == ["prepare"] else argv))
