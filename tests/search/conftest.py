"""Fixtures for tests/search: tiny runs trained once per session on the real Fashion-MNIST
tree (`fmnist_tiny`), one per sampler family the search commands read:

- `shift_run`: vit-fmnist, shift sampler (generator + probability shift), 4 bins, 12 steps;
- `uniform_run`: vit-fmnist, uniform sampler (no generator), 8 steps;
- `cnn_run`: cnn-fmnist, shift sampler (BatchNorm: evaluation recalibrates on 2 batches), 8 steps.

Each is a run directory (config.yaml + checkpoint-*.pt + summary.json). Tests must not write
into them: copy first (`shutil.copytree`) when a test needs to change a run.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from fmnist_tiny import make_tiny_root, tiny_overrides

from shiftnas.train import Trainer, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="session")
def search_root(tmp_path_factory) -> Path:
    return make_tiny_root(tmp_path_factory.mktemp("fmnist-tiny-search"))


def _train(root: Path, out: Path, name: str, config: Path | None, *extra: str) -> Path:
    cfg = load_config(config, [*tiny_overrides(root, out, name), *extra])
    Trainer(cfg).fit()
    return out / name


@pytest.fixture(scope="session")
def shift_run(search_root, tmp_path_factory) -> Path:
    return _train(search_root, tmp_path_factory.mktemp("runs"), "shift", CONFIGS / "fmnist-vit-shift.yaml",
                  "optim.steps=12")


@pytest.fixture(scope="session")
def uniform_run(search_root, tmp_path_factory) -> Path:
    return _train(search_root, tmp_path_factory.mktemp("runs"), "uniform", CONFIGS / "fmnist-vit-uniform.yaml")


@pytest.fixture(scope="session")
def cnn_run(search_root, tmp_path_factory) -> Path:
    return _train(search_root, tmp_path_factory.mktemp("runs"), "cnn", CONFIGS / "fmnist-cnn-shift.yaml",
                  "eval.bn_calib_batches=2")
