"""A finished (or checkpointed) training run, loaded for search and evaluation.

    run = load_run("runs/demo-shift")           # newest checkpoint, CPU
    arch = run.generator.generate(25e6)           # shift runs only
    run.evaluate(arch, split="val", max_images=2000)

The run directory is what `train.py` writes: `config.yaml` + `checkpoint-*.pt`. The supernet
is the EMA copy when the run kept one (what `Trainer.evaluate` reports), in eval mode.
"""
from __future__ import annotations

import argparse
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..spaces import ArchConfig

__all__ = ["LoadedRun", "add_run_arguments", "load_run"]


@dataclass
class LoadedRun:
    """The pieces of a run that search and evaluation read. Build it with `load_run`."""

    run_dir: Path
    checkpoint: Path
    trainer: Any  # shiftnas.train.Trainer, restored (no training step taken)
    _loaders: dict[str, Any] = field(default_factory=dict)
    _calib: list | None = None

    @property
    def cfg(self):
        return self.trainer.cfg

    @property
    def space(self):
        return self.trainer.space

    @property
    def bins(self):
        return self.trainer.bins

    @property
    def sampler_name(self) -> str:
        return self.cfg.sampler.name

    @property
    def net(self) -> nn.Module:
        """The supernet evaluated by `Trainer.evaluate`: the EMA copy when there is one."""
        t = self.trainer
        return t.ema.module if t.ema is not None else t.net

    @property
    def generator(self):
        """The trained ArchGenerator, or None for a run of a baseline sampler."""
        return getattr(self.trainer.sampler, "generator", None)

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return self.trainer.amp_dtype

    @property
    def device(self) -> torch.device:
        return self.trainer.device

    @property
    def num_classes(self) -> int:
        return self.cfg.model.num_classes

    @property
    def cost_name(self) -> str:
        """What the run's bins and generator measure: flops, params or latency (`sampler.cost`)."""
        return self.trainer.cost.name

    def flops_range(self) -> tuple[float, float]:
        """(smallest, largest) subnet FLOPs (multiply-adds) of the space: the budgets allowed."""
        return self.cost_range("flops")

    def cost_range(self, cost: str) -> tuple[float, float]:
        """(smallest, largest) subnet cost of the run's bins (ns for latency), which must be in `cost`."""
        if self.cost_name != cost:
            flag = {"flops": "--flops", "latency": "--latency", "params": "a params budget"}[self.cost_name]
            raise ValueError(f"this run's generator and bins are in {self.cost_name} (sampler.cost="
                             f"{self.cost_name}), not {cost}; give {flag}")
        return self.bins.lo, self.bins.hi

    def require_generator(self, what: str):
        if self.generator is None:
            raise ValueError(
                f"{what}: run {str(self.run_dir)!r} was trained with the {self.sampler_name!r} sampler, which "
                "has no architecture generator; use a run of the 'shift' sampler (or `shiftnas search`)"
            )
        return self.generator

    def loader(self, split: str = "val"):
        """A loader of `split` ('train', 'minival', 'val' or another folder of the data root) in
        a fixed shuffled order without augmentation: with `set_epoch(0)` before every pass, the
        first N images are the same for every arch (and not the first classes of a sorted split)."""
        if split not in self._loaders:
            from ..data import build_loader
            from ..train.build import data_root

            c = self.cfg
            root = data_root(c)
            if not (root / split).is_dir():
                raise ValueError(
                    f"split {split!r} not found: {str(root / split)!r} is not a directory "
                    f"(data root of run {str(self.run_dir)!r})"
                )
            self._loaders[split] = build_loader(
                root, split, c.eval.batch_size, c.data.image_size, train=True, augment=False,
                seed=c.run.seed + 2, backend=c.data.backend, num_threads=c.data.num_threads,
                device=self.device, channels=self.space.hparams["in_chans"],
                **c.data.corrupt_checks(),
            )
        return self._loaders[split]

    def calib_batches(self) -> list | None:
        """Training batches for BatchNorm recalibration (CNN supernets), else None."""
        from ..train.evaluate import has_batch_norm

        if not has_batch_norm(self.net):
            return None
        if self._calib is None:
            n = self.cfg.eval.bn_calib_batches
            batches = []
            loader = self.trainer.train_loader
            loader.set_epoch(0)
            for x, y in loader:
                batches.append((x, y))
                if len(batches) >= n:
                    break
            self._calib = batches
        return self._calib

    def evaluate(self, arch: ArchConfig, split: str = "val", max_images: int | None = None) -> dict[str, Any]:
        """Inherited top-1 (%) and loss of `arch` on the first `max_images` of `split` (all when
        None), BN recalibrated first for CNNs. {"top1", "loss", "images"}."""
        from ..train.evaluate import evaluate_arch

        loader = self.loader(split)
        loader.set_epoch(0)
        return evaluate_arch(
            self.net, arch, loader, amp_dtype=self.amp_dtype, max_images=max_images,
            calib_batches=self.calib_batches(), calib_n=self.cfg.eval.bn_calib_batches,
        )


def load_run(run_dir: str | Path, *, checkpoint: str | Path | None = None, device: str = "cpu",
             overrides: list[str] | tuple[str, ...] = ()) -> LoadedRun:
    """Load `run_dir` (config.yaml + the newest checkpoint, or `checkpoint`) onto `device`.

    `overrides` are `section.key=value` strings applied to the run's config (e.g.
    `eval.max_images=1000`, `data.root=/data/fmnist`); model/sampler/generator/shift sections
    must match the checkpoint's.
    """
    from ..train import Trainer, latest_checkpoint, load_config
    from ..train.distributed import DistInfo

    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise ValueError(f"--run {str(run_dir)!r}: no such run directory (train one with train.py first)")
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise ValueError(f"--run {str(run_dir)!r} has no config.yaml: not a run directory written by train.py")
    if checkpoint is None:
        with warnings.catch_warnings(record=True) as skipped:  # corrupt or unsafe files are passed over
            warnings.simplefilter("always")
            checkpoint = latest_checkpoint(run_dir)
        if checkpoint is None and skipped:
            raise ValueError(f"--run {str(run_dir)!r}: no checkpoint can be loaded; {skipped[0].message}")
        if checkpoint is None:
            raise ValueError(f"--run {str(run_dir)!r} has no checkpoint-*.pt yet: train it first")
        for w in skipped:  # an older checkpoint is used: say which newer ones were not
            warnings.warn(str(w.message), stacklevel=2)
    checkpoint = Path(checkpoint).expanduser()
    if not checkpoint.is_file():
        raise ValueError(f"checkpoint {str(checkpoint)!r}: no such file")
    if device not in ("cpu", "cuda", "auto"):
        raise ValueError(f"device={device!r}; allowed: 'cpu', 'cuda', 'auto'")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but torch sees no GPU; use device='cpu'")
    ov = [f"run.out_dir={run_dir.parent}", f"run.name={run_dir.name}", f"run.device={device}",
          "run.progress=false", "run.tensorboard=false", *overrides]
    cfg = load_config(cfg_path, ov)
    dev = torch.device(device) if device == "cpu" else torch.device("cuda", torch.cuda.current_device())
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=dev, backend=None)  # never joins torchrun
    trainer = Trainer(cfg, resume=str(checkpoint), info=info)
    trainer.restore()
    trainer.net.eval()
    if trainer.ema is not None:
        trainer.ema.module.eval()
    return LoadedRun(run_dir=run_dir, checkpoint=checkpoint, trainer=trainer)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """--run, --device, --checkpoint: how a command loads a trained run."""
    p.add_argument("--run", required=True, metavar="DIR",
                   help="run directory written by train.py (config.yaml + checkpoint-*.pt)")
    p.add_argument("--device", default="auto", choices=["cpu", "cuda", "auto"],
                   help="where to load the run (default: auto, the GPU when there is one)")
    p.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="checkpoint to load (default: the run's newest checkpoint-*.pt)")
