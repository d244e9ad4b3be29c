"""The two gradient paths of an `ArchSample` through the supernets: prefix and full width.

Both give the hard subnet's forward value. Only the full-width path (Eq. 9 as written) gives a
candidate above the chosen one its own gradient, and that gradient is the true derivative of the
masked network in the one-hot (checked by finite differences).
"""
from __future__ import annotations

import dataclasses
import random

import pytest
import torch
import torch.nn.functional as F

from shiftnas.models.mbconv import MBConvSupernet
from shiftnas.models.vit import ViTSupernet
from shiftnas.sampling import build_sampler
from shiftnas.spaces import get_space
from shiftnas.spaces.arch_sample import ArchSample

from archutil import TOY_ATTENTIVENAS, register_toy_attentivenas


@pytest.fixture(autouse=True)
def _toy_space(monkeypatch):
    register_toy_attentivenas(monkeypatch)


def _net(space: str):
    torch.manual_seed(0)
    sp = get_space(space)
    if sp.family == "vit":
        return ViTSupernet(sp).double()
    return MBConvSupernet(sp, drop_rate=0.0, zero_init_last=False).double()


def _sample(arch, full: bool) -> ArchSample:
    s = ArchSample.from_arch(arch)
    return ArchSample(s.space, {k: v.double().requires_grad_() for k, v in s.onehots.items()}, full)


def _input(sp, arch, n=3):
    r = arch["resolution"] if "resolution" in arch.to_dict() else sp.hparams["img_size"]
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, sp.hparams["in_chans"], r, r, generator=g, dtype=torch.double), torch.tensor([1, 4, 7][:n])


@pytest.mark.parametrize("space", ["vit-fmnist", "cnn-fmnist", TOY_ATTENTIVENAS])
def test_both_paths_compute_the_hard_subnet(space):
    sp, net = get_space(space), _net(space)
    rng = random.Random(0)
    for arch in [sp.min(), sp.max()] + [sp.sample(rng) for _ in range(3)]:
        x, _ = _input(sp, arch)
        ref = net(x, arch)
        for full in (False, True):
            torch.testing.assert_close(net(x, _sample(arch, full)), ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("space,decision", [("vit-fmnist", "embed_dim"), ("vit-fmnist", "layers.0.mlp_ratio"),
                                            ("cnn-fmnist", "stage1.width"), ("cnn-fmnist", "head.width")])
def test_only_full_width_separates_the_larger_candidates(space, decision):
    sp, net = get_space(space), _net(space)
    arch = sp.min()
    x, y = _input(sp, arch)
    grads = {}
    for full in (False, True):
        s = _sample(arch, full)
        F.cross_entropy(net(x, s), y).backward()
        grads[full] = s.onehots[decision].grad
    n = len(sp.decision(decision).choices)
    assert n >= 2
    # prefix: every candidate sees the same channels (the chosen, smallest one's): one value
    torch.testing.assert_close(grads[False], grads[False][:1].expand(n), rtol=1e-9, atol=1e-12)
    assert (grads[True][1:] - grads[True][0]).abs().max() > 1e-6, grads[True]


@pytest.mark.parametrize("space", ["vit-fmnist", "cnn-fmnist", TOY_ATTENTIVENAS])
def test_full_width_gradient_is_the_derivative_of_the_masked_network(space):
    sp, net = get_space(space), _net(space)
    net.eval()  # BN from running statistics: a function of the input batch alone
    rng = random.Random(3)
    names = [d.name for d in sp.decisions if len(d.choices) > 1 and d.name != "resolution"][:4]
    _check_derivative(sp, net, sp.sample(rng), names)


def _check_derivative(sp, net, arch, names) -> None:
    """d(loss)/d(one-hot) of the full-width path equals central differences, for `names`."""
    x, y = _input(sp, arch)
    s = _sample(arch, True)
    loss = lambda smp: F.cross_entropy(net(x, smp), y)  # noqa: E731
    loss(s).backward()
    eps = 1e-6
    for name in names:
        for j in range(len(sp.decision(name).choices)):
            def at(delta):
                oh = {k: v.detach().clone() for k, v in s.onehots.items()}
                oh[name][j] += delta
                return loss(ArchSample(sp.name, oh, True)).item()
            with torch.no_grad():
                fd = (at(eps) - at(-eps)) / (2 * eps)
            assert fd == pytest.approx(s.onehots[name].grad[j].item(), rel=1e-4, abs=1e-7), (name, j)


def _with(sp, arch, **values):
    """`arch` with some decisions (dots spelled as double underscores) set to other values."""
    idx = sp.indices(arch)
    idx.update({k.replace("__", "."): sp.decision(k.replace("__", ".")).index(v) for k, v in values.items()})
    return sp.from_indices(idx)


def test_attentivenas_shortcuts_on_both_paths():
    """Every kind of AttentiveNAS shortcut (identity, pool only, conv, pool + conv), the full-width
    identity both zero-padded (x narrower than the stage's widest) and cut (wider): both paths
    give the hard subnet, and the full-width gradient w.r.t. the widths is the derivative."""
    sp, net = get_space(TOY_ATTENTIVENAS), _net(TOY_ATTENTIVENAS)
    net.eval()
    same = _with(sp, sp.min(), stem__width=16, stage0__width=16, stage1__width=16, stage2__width=16)
    names = ["stem.width", "stage0.width", "stage1.width", "stage2.width"]
    for arch in [sp.min(), sp.max(), same, _with(sp, same, resolution=16, stage1__width=24)]:
        x, _ = _input(sp, arch)
        ref = net(x, arch)
        for full in (False, True):
            torch.testing.assert_close(net(x, _sample(arch, full)), ref, rtol=1e-9, atol=1e-10)
        _check_derivative(sp, net, arch, names)
    # cnn-bignas at 192 px: identity into stage0 and stage6 (the full-width path pads 216 -> 224),
    # pool only into stage1 (pads 24 -> 32), pool + conv into stages 2, 3, 5, conv into stage4
    sp, net = get_space("cnn-bignas"), _net("cnn-bignas")
    arch = _with(sp, sp.min(), stem__width=24, stage0__width=24, stage1__width=24,
                 stage5__width=216, stage6__width=216)
    x, _ = _input(sp, arch, n=1)
    ref = net(x, arch)
    for full in (False, True):
        torch.testing.assert_close(net(x, _sample(arch, full)), ref, rtol=1e-9, atol=1e-10)


def test_shift_sampler_grad_path():
    full = build_sampler("shift", "vit-fmnist", grad_path="full")
    (sample, _), = full.next(0)
    assert sample.full_width
    (sample, _), = build_sampler("shift", "vit-fmnist").next(0)
    assert not sample.full_width
    with pytest.raises(ValueError, match="grad_path='exact'; allowed: prefix, full"):
        build_sampler("shift", "vit-fmnist", grad_path="exact")
