"""The probability shift moves softmax(B) towards the bins training left out (docs/method.md
section 3).

A controlled supernet stand-in whose validation loss for an arch depends only on how often its
FLOPs bin has been trained (decreasing, saturating: the "training sufficiency" of the paper).
The shift sampler runs as in training (`before_step` with its update schedule, `next` for the
trained arch); training bin k just counts. Half the bins start trained; a working estimator
must put most of B's mass on the other half, in both directions. The same run with the
per-bin changes shuffled before B's step (the same magnitudes, no information about which bin
they belong to) must not pass: that is what makes this a test of the signal. The real-data
version with a real supernet, and the literal Eq. 7-8 estimator, are in bench/shift_mechanism.py.
"""
import pytest
import torch
from torch import nn

from shiftnas.cost import count_flops
from shiftnas.sampling import ShiftSampler, StepContext
from shiftnas.spaces import ArchConfig

SPACE, K = "vit-fmnist", 10


class CountingNet(nn.Module):
    """logits with a margin of counts[bin] / 10 on the true class (the label is x[:, 0])."""

    def __init__(self, bins):
        super().__init__()
        self.bins = bins
        self.register_buffer("counts", torch.zeros(K))

    def forward(self, x, arch):
        arch = arch if isinstance(arch, ArchConfig) else arch.hard()
        k = self.bins.bin_of(count_flops(SPACE, arch))
        logits = torch.zeros(len(x), 10)
        logits[torch.arange(len(x)), x[:, 0].long()] = self.counts[k] / 10
        return logits


def run(trained: list[int], steps: int = 150, seed: int = 0, shuffle: bool = False,
        estimator: str = "delta", probe_stride: int = 1) -> torch.Tensor:
    s = ShiftSampler(SPACE, seed=seed, n_bins=K, total_steps=steps, warmup_steps=0, update_every=10,
                     estimator=estimator, probe_stride=probe_stride,
                     shift_lr=5.6 / (steps // 10 - probe_stride))
    if shuffle:
        step_expected, g = s.shift.step_expected, torch.Generator().manual_seed(seed)
        s.shift.step_expected = lambda d, step, **kw: step_expected(d[torch.randperm(K, generator=g)], step, **kw)
    net = CountingNet(s.bins)
    net.counts[trained] = 40.0
    y = torch.arange(32) % 10
    x = y.float()[:, None].repeat(1, 4)
    ctx = StepContext(net, minival=lambda i: (x, y))
    for step in range(steps):
        s.before_step(step, ctx)
        (sample, _), = s.next(step)
        net.counts[s.bins.bin_of(count_flops(SPACE, sample.hard()))] += 1
    return s.shift.probs()


@pytest.mark.parametrize("estimator,probe_stride", [("delta", 1), ("rate", 1), ("delta", 2)])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("trained", ["lower", "upper"])
def test_estimator_moves_mass_to_the_untrained_half(trained, seed, estimator, probe_stride):
    """Also with half the bins probed per update (each bin every 2nd update, over 2 intervals)."""
    half = list(range(K // 2))
    other = [k for k in range(K) if k not in half]
    done, left = (half, other) if trained == "lower" else (other, half)
    p = run(done, seed=seed, estimator=estimator, probe_stride=probe_stride)
    assert float(p[left].sum()) > 0.75, p.tolist()


@pytest.mark.parametrize("estimator,probe_stride", [("delta", 1), ("rate", 1), ("delta", 2)])
def test_shuffled_changes_fail_the_same_check(estimator, probe_stride):
    # measured, seeds 0/1/2 at 150 steps: mass on the untrained half 0.998/0.998/0.999 (lower
    # trained), 0.999/0.999/0.999 (upper trained); shuffled 0.21/0.23/0.07 (delta)
    p = run(list(range(K // 2)), seed=0, shuffle=True, estimator=estimator, probe_stride=probe_stride)
    assert float(p[K // 2:].sum()) < 0.75, p.tolist()
