"""The one reader of the TRITON_INTERPRET switch (standard library only, so the dispatcher asks it
without importing torch or triton; tests/test_layers.py checks that nothing else parses it)."""
from __future__ import annotations

import os

__all__ = ["interpret_mode"]


def interpret_mode() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1; also true/on/yes)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")
