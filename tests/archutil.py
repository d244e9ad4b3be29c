"""Shared helpers for the model tests (a plain module: `conftest` names clash across folders)."""
import random

import torch


def random_archs(space, n, seed=0):
    rng = random.Random(seed)
    return [space.min(), space.max()] + [space.sample(rng) for _ in range(n)]


def dummy_input(space, batch=2, arch=None):
    hp = space.hparams
    size = arch["resolution"] if arch is not None and space.family == "cnn" else hp.get("img_size")
    return torch.randn(batch, hp["in_chans"], size, size)
