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


def decode_random(feas, lo, hi, rng):
    """Random feasible choices all the way through `feas`'s masks: the cost they lead to."""
    st = feas.start()
    for _ in feas.decs:
        allowed = [c for c, ok in enumerate(feas.mask(st, lo, hi)) if ok]
        assert allowed, f"no feasible candidate at {feas.decs[st.pos].name} for [{lo}, {hi}]"
        feas.commit(st, rng.choice(allowed))
    assert st.cmin == st.cmax
    return st.cmin


def check_masks_against_brute_force(feas, archs, rng, n_random, no_window_match):
    """`archs`: (indices, cost) of every arch of the space. The first decision's mask equals the
    brute-force answer for single costs, the gaps between reachable costs (the windows an
    interval test alone gets wrong) and `n_random` random windows; a feasible window decodes
    into itself; an infeasible one is a ValueError matching `no_window_match`."""
    import itertools

    import pytest

    costs = sorted({f for _, f in archs})
    assert (feas.lo, feas.hi) == (costs[0], costs[-1])
    windows = [(c, c) for c in rng.sample(costs, 20)]
    windows += [(a + 1, b - 1) for a, b in itertools.pairwise(costs) if b - a > 2][:20]
    for _ in range(n_random):
        a = rng.uniform(costs[0], costs[-1])
        windows.append((int(a), int(a + rng.choice([0.01, 0.05, 0.2]) * (costs[-1] - costs[0]))))
    first = feas.decs[0]
    for lo, hi in windows:
        truth = [any(lo <= f <= hi for idx, f in archs if idx[first.name] == c) for c in range(len(first.choices))]
        assert feas.mask(feas.start(), lo, hi) == truth, (lo, hi)
        if any(truth):
            for _ in range(3):
                assert lo <= decode_random(feas, lo, hi, rng) <= hi
        else:
            with pytest.raises(ValueError, match=no_window_match):
                feas.check_window(lo, hi)
