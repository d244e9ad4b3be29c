"""Fixtures for the tests of `shiftnas.train`: the tiny real Fashion-MNIST tree (`fmnist_tiny`) and
a tiny-run config."""
from __future__ import annotations

from pathlib import Path

import pytest
from fmnist_tiny import make_tiny_root, tiny_overrides

from shiftnas.train.config import load_config


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    return make_tiny_root(tmp_path_factory.mktemp("fmnist-tiny"))


@pytest.fixture
def tiny_cfg(tiny_root, tmp_path):
    def make(name: str = "run", *extra: str, config: str | None = None):
        return load_config(config, [*tiny_overrides(tiny_root, tmp_path, name), *extra])

    return make
