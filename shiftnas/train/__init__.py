"""The training engine: typed config (`config`), atomic checkpoints + auto-resume (`checkpoint`),
torchrun/DDP plumbing (`distributed`), the loop (`engine.Trainer`), per-bin evaluation
(`evaluate`), run logs (`runlog`) and plots (`plots`, imported on use: matplotlib)."""
from .checkpoint import (
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    safe_path,
    save_checkpoint,
)
from .config import TrainConfig, load_config
from .engine import MAX_BAD_STEPS, Trainer, TrainingDiverged

__all__ = [
    "MAX_BAD_STEPS",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "capture_rng_state",
    "latest_checkpoint",
    "load_checkpoint",
    "load_config",
    "restore_rng_state",
    "safe_path",
    "save_checkpoint",
]
