"""ArchGenerator: valid samples, deterministic deployment, gradients, and learning to hit bins."""

import os
import random
import subprocess
import sys

import pytest
import torch

from shiftnas.cost import count_flops, expected_cost
from shiftnas.generator import ArchGenerator
from shiftnas.models.registry import build_supernet
from shiftnas.spaces import ArchConfig, get_space
from shiftnas.spaces.arch_sample import ArchSample

SPACE = "vit-fmnist"


@pytest.fixture
def gen():
    torch.manual_seed(0)
    return ArchGenerator(SPACE, n_bins=8)


def test_structure(gen):
    sp = get_space(SPACE)
    assert set(gen.heads) == set(sp.kinds)  # one head per decision kind
    assert isinstance(gen.cell, torch.nn.LSTMCell) and gen.cell.hidden_size == 64
    assert gen.targets.shape == (8,) and torch.equal(gen.targets, gen.bins.centers)


def test_cnn_kinds_with_mixed_choice_counts():
    torch.manual_seed(0)
    g = ArchGenerator("cnn-fmnist", n_bins=4)
    s = g(g.bin_vector(2), tau=1.0)
    s.hard()  # valid config
    assert len(g.heads) == len(get_space("cnn-fmnist").kinds)


def test_every_bin_gives_valid_sample(gen):
    sp = get_space(SPACE)
    for k in range(len(gen.bins)):
        s = gen(gen.bin_vector(k), tau=gen.tau_at(0.3))
        assert isinstance(s, ArchSample) and s.space == SPACE
        for d in sp.decisions:
            p = s.onehots[d.name]
            assert p.shape == (len(d.choices),)
            assert torch.allclose(p.detach().sum(), torch.tensor(1.0)) and set(
                p.detach().tolist()
            ) <= {0.0, 1.0}
        arch = s.hard()
        assert isinstance(arch, ArchConfig)
        assert float(expected_cost(sp, s).detach()) == pytest.approx(count_flops(sp, arch))


def test_generate_deterministic_and_range_error(gen):
    a, b = gen.generate(bin=3), gen.generate(bin=3)
    assert isinstance(a, ArchConfig) and a == b
    torch.manual_seed(123)  # Gumbel RNG state must not matter
    assert gen.generate(bin=3) == a
    with pytest.raises(ValueError, match="outside"):
        gen.generate(gen.bins.hi * 2)
    with pytest.raises(ValueError, match="outside"):
        gen.generate(gen.bins.lo - 1)
    with pytest.raises(ValueError, match="exactly one"):
        gen.generate(30e6, bin=2)
    with pytest.raises(ValueError, match="out of range"):
        gen.generate(bin=8)


def test_tau_anneal(gen):
    assert gen.tau_at(0.0) == pytest.approx(5.0)
    assert gen.tau_at(1.0) == pytest.approx(0.5)
    assert gen.tau_at(0.5) == pytest.approx((5.0 * 0.5) ** 0.5)  # exponential: geometric mean
    assert gen.tau_at(2.0) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="bin_vec"):
        gen(torch.zeros(3))


def test_task_loss_reaches_generator(gen):
    torch.manual_seed(0)
    net = build_supernet(SPACE)
    x, y = torch.randn(2, 1, 28, 28), torch.tensor([1, 7])
    s = gen(gen.bin_vector(4), tau=1.0)
    torch.nn.functional.cross_entropy(net(x, s), y).backward()
    for name in (
        "cell.weight_hh",
        "bin_embed.weight",
        "heads.depth.weight",
        "heads.num_heads.weight",
    ):
        p = dict(gen.named_parameters())[name]
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_resource_loss_reaches_generator_and_bin_vec(gen):
    bin_vec = gen.bin_vector(2).requires_grad_(True)
    s = gen(bin_vec, tau=1.0)
    loss = gen.resource_loss(s, bin_vec.double() @ gen.targets, lam=2.0)
    assert loss.dim() == 0 and loss.dtype == torch.float64
    want = 2.0 * ((expected_cost(SPACE, s) - gen.targets[2]) / gen.bins.hi) ** 2
    assert float(loss.detach()) == pytest.approx(float(want.detach()))
    loss.backward()
    assert bin_vec.grad is not None and bin_vec.grad.abs().sum() > 0
    assert (
        gen.cell.weight_ih.grad.abs().sum() > 0
        and gen.heads["embed_dim"].weight.grad.abs().sum() > 0
    )


@pytest.mark.parametrize("space", ["vit-fmnist", "cnn-fmnist", "autoformer-t", "cnn-bignas"])
def test_untrained_generator_hits_every_bin(space):
    # Nothing learned: the feasibility masks alone put every arch in its bin (arg-max and
    # Gumbel samples at a high temperature, where the choices are nearly uniform).
    torch.manual_seed(0)
    g = ArchGenerator(space, n_bins=10)
    rng = torch.Generator().manual_seed(0)
    for k in range(10):
        assert g.bins.bin_of(count_flops(space, g.generate(bin=k))) == k
        for _ in range(2):
            s = g(g.bin_vector(k), tau=5.0, rng=rng)
            assert g.bins.bin_of(count_flops(space, s.hard())) == k


@pytest.mark.parametrize("space", ["vit-fmnist", "cnn-fmnist"])
def test_budget_is_a_ceiling(space):
    torch.manual_seed(1)
    g = ArchGenerator(space, n_bins=10)
    r, width = random.Random(0), g.bins.width()
    for _ in range(100):
        budget = r.uniform(g.bins.lo, g.bins.hi + width)
        f = count_flops(space, g.generate(budget))
        assert budget - width <= f <= budget, (budget, f)
    f = count_flops(space, g.generate(g.bins.lo))  # the smallest budget: the min subnet
    assert f == g.bins.lo


def test_interval(gen):
    lo, hi = gen.bins.lo + 0.30 * (gen.bins.hi - gen.bins.lo), gen.bins.lo + 0.31 * (gen.bins.hi - gen.bins.lo)
    f = count_flops(SPACE, gen.generate(interval=(lo, hi)))
    assert lo <= f <= hi
    with pytest.raises(ValueError, match="space spans"):
        gen.generate(interval=(gen.bins.hi + 1, gen.bins.hi + 2))
    with pytest.raises(ValueError, match="lo <= hi"):
        gen.generate(interval=(hi, lo))


def test_pretrain_moves_samples_towards_the_bin_centre():
    # Inside the bin the resource loss decides where: after pre-training the arg-max archs sit
    # nearer their bin centres than before (measured on vit-fmnist, 8 bins, lr 2e-2, seeds
    # 0-2: mean |error| / bin width 0.33/0.38/0.33 before, 0.19/0.18/0.12 after 100 steps with
    # one thread). A single seed's path depends on float rounding (the thread count changes it:
    # seed 0 ends at 0.19 or 0.27), so the test holds the mean over the three seeds.
    befores, afters = [], []
    for seed in range(3):
        torch.manual_seed(seed)
        g = ArchGenerator(SPACE, n_bins=8, tau_start=1.0, tau_end=0.5)

        def err():
            return sum(abs(count_flops(SPACE, g.generate(bin=k)) - float(c)) for k, c in enumerate(g.targets)) / (
                8 * g.bins.width())

        befores.append(err())
        rec = g.pretrain(100, lr=2e-2, rng=torch.Generator().manual_seed(0))
        afters.append(err())
        assert rec["steps"] == 100 and rec["seconds"] > 0
    assert sum(afters) < 0.75 * sum(befores), (befores, afters)


_SPIN_CHECK = """
import os, sys, time, torch
torch.set_num_threads(1)  # torch starts no worker threads: any busy thread is another library's
from shiftnas.generator import ArchGenerator

def others():  # CPU ticks of every thread but the main one
    me, total = str(os.getpid()), 0
    for t in os.listdir("/proc/self/task"):
        if t != me:
            f = open(f"/proc/self/task/{t}/stat").read().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
    return total

g = ArchGenerator("cnn-fmnist", 10)
rng = torch.Generator().manual_seed(0)
t0 = others()
for k in range(10):
    s = g(g.bin_vector(k), tau=1.0, rng=rng)
    g.resource_loss(s, g.targets[k]).backward()
    g.generate(bin=k)
time.sleep(0.5)
print(others() - t0)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads Linux /proc (the threads' CPU ticks)")
def test_decode_leaves_no_thread_spinning():
    """The host decode and backward call no numpy BLAS product: OpenBLAS's own threads would
    spin ~0.1 s after each and slow the supernet's next step (16 ticks of other threads' CPU
    for these 10 steps when they did)."""
    out = subprocess.run([sys.executable, "-c", _SPIN_CHECK], capture_output=True, text=True, timeout=120, check=True)
    assert int(out.stdout.split()[-1]) <= 2, out.stdout
