"""The training engine: typed config (`config`), atomic checkpoints + auto-resume (`checkpoint`)."""
from .checkpoint import (
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    safe_path,
    save_checkpoint,
)
from .config import TrainConfig, load_config

__all__ = [
    "TrainConfig",
    "capture_rng_state",
    "latest_checkpoint",
    "load_checkpoint",
    "load_config",
    "restore_rng_state",
    "safe_path",
    "save_checkpoint",
]
