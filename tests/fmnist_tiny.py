"""A small ImageFolder tree cut from the real Fashion-MNIST (64 train / 16 minival / 20 val
images per class) and the overrides of a tiny training run: shared by tests/train, tests/search
and tests/reliability (the conftests of tests/train and tests/search wrap `make_tiny_root` in a
session fixture)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

PER_CLASS = {"train": 64, "minival": 16, "val": 20}


def make_tiny_root(out: Path) -> Path:
    from shiftnas.data.prepare import (
        DEFAULT_SOURCE,
        SOURCE_FILES,
        default_data_root,
        prepare_fashion_mnist,
    )

    src = Path(os.environ.get("SHIFTNAS_FMNIST_SOURCE", DEFAULT_SOURCE))
    if not all((src / f).is_file() for f in SOURCE_FILES.values()):
        pytest.skip(f"Fashion-MNIST IDX files not in {src}: `make data` (apt-get install dataset-fashion-mnist)")
    full = default_data_root() / "fashion-mnist"
    prepare_fashion_mnist(full, src, log=lambda *_: None)  # a no-op when already prepared
    for split, n in PER_CLASS.items():
        for c in sorted(os.listdir(full / split)):
            (out / split / c).mkdir(parents=True)
            for f in sorted(os.listdir(full / split / c))[:n]:
                shutil.copyfile(full / split / c / f, out / split / c / f)
    return out


def tiny_overrides(root: Path, out: Path, name: str) -> list[str]:
    return [
        f"data.root={root}", f"run.out_dir={out}", f"run.name={name}",
        "data.batch_size=16", "data.backend=torch", "data.num_threads=1",
        "optim.amp=off", "optim.steps=8", "optim.warmup_steps=2",
        "run.progress=false", "run.tensorboard=false", "run.log_every=2", "run.ckpt_every=4",
        "sampler.n_bins=4", "shift.warmup_frac=0.25", "shift.update_every=2",
        "eval.max_images=20", "eval.random_archs=false",
    ]
