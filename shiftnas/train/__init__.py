"""The training engine: typed config (`config`), atomic checkpoints + auto-resume (`checkpoint`),
torchrun/DDP plumbing (`distributed`), the loop (`engine.Trainer`), per-bin evaluation
(`evaluate`), run logs (`runlog`), plots (`plots`) and the command line (`cli`: `shiftnas train`,
`python -m shiftnas.train`, `train.py`). Names are imported on first use (PEP 562), so the
command line starts without torch."""
from .._lazy import lazy_exports

_EXPORTS = {  # submodule -> the public names it defines
    ".checkpoint": ("capture_rng_state", "latest_checkpoint", "load_checkpoint",
                    "restore_rng_state", "safe_path", "save_checkpoint"),
    ".config": ("TrainConfig", "load_config"),
    ".engine": ("MAX_BAD_STEPS", "Trainer", "TrainingDiverged"),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
