#!/usr/bin/env python
"""Train a ShiftNAS supernet (or a baseline sampler's) from a YAML config.

    python train.py                                        # one process, configs/fmnist-vit-shift.yaml
    torchrun --standalone --nproc_per_node=8 train.py --config configs/imagenet-autoformer-t-shift.yaml
    torchrun --nnodes=2 --node_rank=R --master_addr=HOST --master_port=29500 --nproc_per_node=8 \\
        train.py --config configs/imagenet-autoformer-t-shift.yaml data.root=/data/imagenet
    python train.py --config configs/fmnist-vit-uniform.yaml optim.steps=200 run.name=quick
    python train.py --resume auto                          # continue runs/<run.name>/ from its newest checkpoint
    torchrun --standalone --nproc_per_node=8 --max-restarts=3 train.py ...   # a crashed rank restarts the job

Under torchrun a restarted job (TORCHELASTIC_RESTART_COUNT > 0) continues from the run's newest
checkpoint as `--resume auto` does, when that checkpoint was written with the same config;
re-submitting a job that died as a whole takes `--resume auto`.

Trailing `section.key=value` arguments override the config (see shiftnas/train/config.py).
Writes runs/<run.name>/: config.yaml, checkpoint-*.pt, metrics.jsonl, tb/, sampling.json,
summary.json, plots/sampling.png, plots/pareto.png.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "fmnist-vit-shift.yaml"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="train.py", description=__doc__.splitlines()[0],
        epilog="Overrides: section.key=value, e.g. optim.lr=5e-4 optim.steps=2000 sampler.name=uniform",
    )
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML run config (default: %(default)s)")
    ap.add_argument("--resume", default=None, metavar="auto|PATH",
                    help="'auto': continue from the run directory's newest checkpoint that verifies (fresh if it has "
                         "none; corrupt ones are moved aside as *.corrupt; exit 2 if none verifies); or a checkpoint file")
    ap.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = ap.parse_args(argv)

    from shiftnas.train.config import load_config
    from shiftnas.train.distributed import init_distributed, shutdown
    from shiftnas.train.engine import Trainer, TrainingDiverged
    from shiftnas.train.evaluate import format_bin_table

    try:
        if not Path(args.config).is_file():
            raise ValueError(f"--config {args.config!r}: no such file")
        cfg = load_config(args.config, args.overrides)
    except ValueError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    info = None
    try:
        resume = args.resume if args.resume is not None else _restart_resume(cfg)
        info = init_distributed(cfg.run.device)
        trainer = Trainer(cfg, resume=resume, info=info)
        summary = trainer.fit()
    except (ValueError, OSError, TrainingDiverged) as e:  # OSError: e.g. run.out_dir is a file
        rank = info.rank if info is not None else 0
        print(f"train.py [rank {rank}]: error: {e}", file=sys.stderr)
        return 3 if isinstance(e, TrainingDiverged) else 2
    finally:
        if info is not None:
            shutdown(info)
    if info.is_main:
        print(format_bin_table(summary["rows"]))
        print(f"run directory: {trainer.run_dir}")
    return 0


def _restart_resume(cfg) -> str | None:
    """'auto' on a torchrun restart, else None (a fresh run). A restart continues only a checkpoint
    written with this very config: when the first attempt was refused because the run directory
    held another run's checkpoints, the restart must not take that run over."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "")
    if restart in ("", "0"):
        return None
    from shiftnas.train.checkpoint import latest_checkpoint, load_checkpoint

    ckpt = latest_checkpoint(Path(cfg.run.out_dir).expanduser() / cfg.run.name)
    if ckpt is not None and load_checkpoint(ckpt).get("config") != cfg.to_dict():
        raise ValueError(
            f"torchrun restart {restart}: {str(ckpt)!r} was written with another config, not "
            "continuing it; pass --resume auto to continue it anyway, or set run.name for a new run"
        )
    return "auto"


if __name__ == "__main__":
    sys.exit(main())
