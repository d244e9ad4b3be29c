"""The training engine: typed config (`config`), atomic checkpoints + auto-resume (`checkpoint`),
torchrun/DDP plumbing (`distributed`), the loop (`engine.Trainer`), per-bin evaluation
(`evaluate`), run logs (`runlog`), plots (`plots`) and the command line (`cli`: `shiftnas train`,
`python -m shiftnas.train`, `train.py`). Names are imported on first use (PEP 562), so the
command line starts without torch."""
from .._lazy import lazy_exports

_EXPORTS = {
    "MAX_BAD_STEPS": ".engine",
    "TrainConfig": ".config",
    "Trainer": ".engine",
    "TrainingDiverged": ".engine",
    "capture_rng_state": ".checkpoint",
    "latest_checkpoint": ".checkpoint",
    "load_checkpoint": ".checkpoint",
    "load_config": ".config",
    "restore_rng_state": ".checkpoint",
    "safe_path": ".checkpoint",
    "save_checkpoint": ".checkpoint",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
