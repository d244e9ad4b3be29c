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


TOY_ATTENTIVENAS = "cnn-toy-attentivenas"


def register_toy_attentivenas(monkeypatch):
    """A tiny cnn space with AttentiveNAS shortcuts (for the test's duration only) covering what
    cnn-bignas never meets: odd grids into a shortcut pool (13 -> 7 -> 4 px: padding 1) and a
    stage narrower than its input's widest candidate (the full-width identity is cut, not padded).
    Every first block can keep or change its width."""
    from shiftnas.spaces import base
    from shiftnas.spaces.cnn import mbconv_space

    monkeypatch.setattr(base, "_SPACES", dict(base._SPACES))
    return mbconv_space(
        TOY_ATTENTIVENAS,
        resolutions=(13, 16),
        stem=dict(c=(8, 16), s=1),
        stages=[
            dict(c=(8, 16), d=(1, 2), k=(3,), t=(1,), s=1, se=False),
            dict(c=(16, 24), d=(1, 2), k=(3, 5), t=(3, 4), s=2, se=True),
            dict(c=(8, 16), d=(1, 2), k=(3,), t=(2,), s=2, se=False),
        ],
        head_width=(32, 48),
        in_chans=1,
        num_classes=10,
        shortcut="attentivenas",
        source="tests/archutil.py",
    )
