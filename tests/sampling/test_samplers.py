"""Samplers: roles, validity, determinism, resume, and the FLOPs distributions they induce."""

import collections
import json
import random
import time

import pytest

from shiftnas.cost import FlopsBins, count_flops
from shiftnas.sampling import ROLES, build_sampler, list_samplers, sample_in_bin
from shiftnas.spaces import ArchConfig, get_space

SPACES = ["vit-fmnist", "cnn-fmnist"]


def _loss(arch):
    """A deterministic stand-in for a minibatch loss: smaller nets score lower."""
    return float(count_flops(arch.space, arch))


def _draw(sampler, steps):
    kw = {"score_fn": _loss} if sampler.needs_score_fn else {}
    return [sampler.next(step, **kw) for step in range(steps)]


@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("name", ["uniform", "sandwich", "attentive", "bin_uniform"])
def test_valid_archs_and_roles(name, space):
    s = build_sampler(name, space, seed=0)
    expected = {
        "uniform": ["random"],
        "sandwich": ["max", "random", "random", "min"],
        "attentive": ["max", "target", "target", "min"],
        "bin_uniform": ["target"],
    }[name]
    for out in _draw(s, 5):
        assert [r for _, r in out] == expected
        for arch, role in out:
            assert role in ROLES
            assert isinstance(arch, ArchConfig) and arch.space == space
            get_space(space).check(arch)
            assert ArchConfig.from_dict(space, arch.to_dict()) == arch  # re-validates
    assert s.distill == (name in ("sandwich", "attentive"))


@pytest.mark.parametrize("name", ["uniform", "sandwich", "attentive", "bin_uniform"])
def test_deterministic_given_seed(name):
    a, b, c = (build_sampler(name, "vit-fmnist", seed=sd) for sd in (7, 7, 8))
    da, db, dc = _draw(a, 6), _draw(b, 6), _draw(c, 6)
    assert da == db
    assert da != dc


@pytest.mark.parametrize("name", ["uniform", "sandwich", "attentive", "bin_uniform"])
def test_state_dict_resume_continues_sequence(name):
    ref = build_sampler(name, "cnn-fmnist", seed=3)
    _draw(ref, 4)
    state = json.loads(json.dumps(ref.state_dict()))  # must survive JSON (metrics / checkpoints)
    expected = _draw(ref, 5)

    resumed = build_sampler(name, "cnn-fmnist", seed=99)  # the seed is overridden by the state
    resumed.load_state_dict(state)
    assert _draw(resumed, 5) == expected


def test_state_dict_of_another_sampler_is_refused():
    with pytest.raises(ValueError, match="uniform"):
        build_sampler("sandwich", "vit-fmnist").load_state_dict(
            build_sampler("uniform", "vit-fmnist").state_dict()
        )


@pytest.mark.parametrize("space", SPACES)
def test_sandwich_ends_are_max_and_min(space):
    sp = get_space(space)
    s = build_sampler("sandwich", space, seed=0, n_random=3)
    out = s.next(0)
    assert out[0] == (sp.max(), "max") and out[-1] == (sp.min(), "min")
    assert len(out) == 5


@pytest.mark.parametrize("space", SPACES)
def test_sample_in_bin_reaches_every_bin_fast(space):
    sp = get_space(space)
    bins = FlopsBins(sp, n_bins=10)
    rng = random.Random(0)
    for k in range(len(bins)):
        for _ in range(5):
            t = time.perf_counter()
            draw = sample_in_bin(sp, bins, k, rng, max_tries=200)
            dt = time.perf_counter() - t
            assert draw.hit, f"bin {k} not reached"
            assert bins.bin_of(count_flops(sp, draw.arch)) == k
            assert draw.flops == count_flops(sp, draw.arch)
            assert dt < 0.05, f"bin {k}: {dt * 1e3:.1f} ms per draw"


def test_sample_in_bin_is_deterministic_and_diverse():
    sp = get_space("vit-fmnist")
    bins = FlopsBins(sp, n_bins=10)
    a = [sample_in_bin(sp, bins, 9, random.Random(s)).arch for s in range(20)]
    b = [sample_in_bin(sp, bins, 9, random.Random(s)).arch for s in range(20)]
    assert a == b
    assert len(set(a)) > 5  # not one canonical arch per bin


def test_sample_in_bin_rejects_bad_bin():
    sp = get_space("vit-fmnist")
    with pytest.raises(ValueError, match="out of range"):
        sample_in_bin(sp, FlopsBins(sp, n_bins=4), 4, random.Random(0))


@pytest.mark.parametrize("space", ["cnn-fmnist", "autoformer-t"])
def test_bin_uniform_is_flat_where_uniform_concentrates(space):
    """docs/method.md Remark 1: uniform choices give Irwin-Hall-like FLOPs, thin at both ends."""
    n, K = 400, 10
    bins = FlopsBins(space, n_bins=K)

    bu = build_sampler("bin_uniform", space, seed=0, n_bins=K)
    drawn = []
    for step in range(n):
        ((arch, _role),) = bu.next(step)
        k = bu.last_bins[0]
        assert bins.bin_of(count_flops(space, arch)) == k  # each arch lands in its drawn bin
        drawn.append(k)
    assert bu.fallbacks == 0
    hist = collections.Counter(drawn)
    assert all(n / K * 0.5 < hist[k] < n / K * 1.5 for k in range(K)), hist

    un = build_sampler("uniform", space, seed=0)
    uhist = collections.Counter(bins.bin_of(count_flops(space, un.next(s)[0][0])) for s in range(n))
    extremes = (uhist[0] + uhist[K - 1]) / n
    assert extremes < (2 / K) / 3, uhist  # the two end bins: < 1/3 of their uniform share
    ehist = (hist[0] + hist[K - 1]) / n
    assert ehist > 3 * extremes


def test_attentive_picks_best_or_worst_by_score():
    seen = []

    def score(arch):
        seen.append(arch)
        return _loss(arch)

    best = build_sampler("attentive", "vit-fmnist", seed=5, n_random=1, n_candidates=4, mode="best")
    worst = build_sampler(
        "attentive", "vit-fmnist", seed=5, n_random=1, n_candidates=4, mode="worst"
    )
    for step in range(10):
        seen.clear()
        (_, _), (b, role), (_, _) = best.next(step, score_fn=score)
        cands = list(seen)
        seen.clear()
        (_, _), (w, _), (_, _) = worst.next(step, score_fn=score)
        assert list(seen) == cands  # same RNG, same candidates whatever the mode
        assert len(cands) == 4 and role == "target"
        assert _loss(b) == min(map(_loss, cands)) and _loss(w) == max(map(_loss, cands))
        k = best.last_bins[0]
        assert all(FlopsBins("vit-fmnist", n_bins=10).bin_of(_loss(c)) == k for c in cands)


def test_attentive_without_score_fn_is_a_clear_error():
    s = build_sampler("attentive", "vit-fmnist")
    with pytest.raises(ValueError, match="score_fn"):
        s.next(0)
    with pytest.raises(ValueError, match="mode"):
        build_sampler("attentive", "vit-fmnist", mode="bestup")


def test_unknown_sampler_name_lists_known_and_close():
    with pytest.raises(ValueError) as e:
        build_sampler("sandwitch", "vit-fmnist")
    msg = str(e.value)
    assert "sandwitch" in msg and "close matches: ['sandwich']" in msg
    for name in list_samplers():
        assert name in msg
    assert set(list_samplers()) >= {"uniform", "sandwich", "attentive", "bin_uniform"}
