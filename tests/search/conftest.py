"""Fixtures for tests/search: tiny runs trained once per session on the real Fashion-MNIST
tree (`fmnist_tiny`), one per sampler family the search commands read:

- `shift_run`: vit-fmnist, shift sampler (generator + probability shift), 4 bins, 12 steps;
- `uniform_run`: vit-fmnist, uniform sampler (no generator), 8 steps;
- `cnn_run`: cnn-fmnist, shift sampler (BatchNorm: evaluation recalibrates on 2 batches), 8 steps;
- `latency_run`: vit-fmnist, shift sampler binned by latency (sampler.cost=latency, the committed
  `LATENCY_TABLE`), 6 steps, with random archs in its evaluation.

Each is a run directory (config.yaml + checkpoint-*.pt + summary.json). Tests must not write
into them: copy first (`shutil.copytree`) when a test needs to change a run.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from fmnist_tiny import make_tiny_root, tiny_overrides

from shiftnas.search.run import LoadedRun
from shiftnas.train import Trainer, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
LATENCY_TABLES = Path(__file__).resolve().parents[2] / "bench" / "results" / "latency"
LATENCY_TABLE = LATENCY_TABLES / "vit-fmnist-b1.json"


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


@pytest.fixture(scope="session")
def latency_run(search_root, tmp_path_factory) -> Path:
    return _train(search_root, tmp_path_factory.mktemp("runs"), "latency", CONFIGS / "fmnist-vit-shift.yaml",
                  "sampler.cost=latency", f"sampler.latency_table={LATENCY_TABLE}", "optim.steps=6",
                  "run.ckpt_every=0", "eval.random_archs=true")


@pytest.fixture
def evaluate_calls(monkeypatch):
    """Every `LoadedRun.evaluate` call: (arch, split, max_images, top1)."""
    calls, orig = [], LoadedRun.evaluate

    def spy(self, arch, split="val", max_images=None):
        m = orig(self, arch, split, max_images)
        calls.append((arch, split, max_images, m["top1"]))
        return m

    monkeypatch.setattr(LoadedRun, "evaluate", spy)
    return calls
