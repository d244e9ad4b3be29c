"""ProbabilityShift: uniform start, draw statistics, the B-only hypergradient update, schedule, state."""

import copy
import json

import pytest
import torch

from shiftnas.generator import ArchGenerator
from shiftnas.models.registry import build_supernet
from shiftnas.sampling.shift import ProbabilityShift

SPACE = "vit-fmnist"


@pytest.fixture
def parts():
    torch.manual_seed(0)
    gen = ArchGenerator(SPACE, n_bins=6)
    net = build_supernet(SPACE)
    shift = ProbabilityShift(gen.bins, warmup_steps=0, update_every=1, lr=0.1)
    return gen, net, shift


def _batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def _perturb(net):
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))


def test_uniform_at_start(parts):
    _, _, shift = parts
    assert torch.allclose(shift.probs(), torch.full((6,), 1 / 6))


def test_draw_matches_probs():
    shift = ProbabilityShift(torch.arange(5.0) * 10)
    with torch.no_grad():
        shift.B.copy_(torch.tensor([0.0, 1.0, -1.0, 0.5, 2.0]))
    rng = torch.Generator().manual_seed(0)
    n = 4000
    counts = torch.zeros(5)
    for _ in range(n):
        bin_vec, k, target = shift.draw(tau=1.0, generator=rng)
        assert bin_vec[k] == 1 and bin_vec.sum() == 1
        assert float(target.detach()) == 10.0 * k
        counts[k] += 1
    expect = shift.probs() * n
    chi2 = float(((counts - expect) ** 2 / expect).sum())
    assert chi2 < 18.5, (counts, expect)  # chi-square, 4 dof, p = 0.001


def test_draw_gradient_reaches_B():
    shift = ProbabilityShift(torch.arange(4.0))
    _, _, target = shift.draw()
    target.backward()
    assert shift.B.grad is not None and shift.B.grad.abs().sum() > 0


def test_update_changes_only_B(parts):
    gen, net, shift = parts
    prev = shift.snapshot(net)
    _perturb(net)  # w_t != w_{t-1}: non-zero finite difference
    gen_before = {n: p.clone() for n, p in gen.state_dict().items()}
    net_before = {n: p.clone() for n, p in net.state_dict().items()}
    B_before = shift.B.detach().clone()
    x, y = _batch()
    # gen_tau 5: the generator's softmax far from saturation (at the default tau_end the
    # hypergradient of this draw is ~1e-11, below what the mask taps' exact sums keep)
    rec = shift.update(net, gen, prev, x, y, step=1, gen_tau=5.0)
    assert rec["grad_norm"] > 0
    assert not torch.equal(shift.B.detach(), B_before)
    assert rec["loss_t"] != rec["loss_prev"]
    assert rec["probs"] == pytest.approx(shift.probs().tolist())
    for n, t in gen.state_dict().items():
        assert torch.equal(t, gen_before[n]), n
    for n, t in net.state_dict().items():
        assert torch.equal(t, net_before[n]), n
    assert all(p.grad is None for p in gen.parameters())
    assert all(p.grad is None for p in net.parameters())
    assert len(shift.history) == 1 and shift.history[0]["step"] == 1


def test_update_from_prev_module_equals_snapshot(parts):
    gen, net, shift = parts
    prev_net = copy.deepcopy(net)
    prev = shift.snapshot(net)
    _perturb(net)
    x, y = _batch()
    twin = copy.deepcopy(shift)
    torch.manual_seed(5)
    a = shift.update(net, gen, prev_net, x, y, step=1, rng=torch.Generator().manual_seed(1))
    torch.manual_seed(5)
    b = twin.update(net, gen, prev, x, y, step=1, rng=torch.Generator().manual_seed(1))
    assert a == b and a["loss_t"] != a["loss_prev"]
    with pytest.raises(ValueError, match="previous weights lack"):
        shift.update(net, gen, {}, x, y, step=2)


def test_schedule():
    shift = ProbabilityShift(torch.arange(3.0), warmup_steps=250, update_every=100)
    assert shift.in_warmup(0) and shift.in_warmup(249) and not shift.in_warmup(250)
    updates = [s for s in range(1000) if shift.should_update(s)]
    assert updates == [300, 400, 500, 600, 700, 800, 900]
    snaps = [s for s in range(1000) if shift.needs_snapshot(s)]
    assert snaps == [u - 1 for u in updates] + [999]
    s0 = ProbabilityShift(torch.arange(3.0), update_every=50)
    assert not s0.should_update(0) and s0.should_update(50) and s0.needs_snapshot(49)
    with pytest.raises(ValueError, match="update_every"):
        ProbabilityShift(torch.arange(3.0), update_every=0)


def test_state_dict_round_trip(parts):
    gen, net, shift = parts
    prev = shift.snapshot(net)
    _perturb(net)
    x, y = _batch()
    shift.update(net, gen, prev, x, y, step=1)
    shift.update(net, gen, prev, x, y, step=2)
    sd = shift.state_dict()
    hist = json.loads(json.dumps(shift.history_state()))

    other = ProbabilityShift(gen.bins, warmup_steps=0, update_every=1, lr=0.1)
    other.load_state_dict(sd)
    other.load_history(hist)
    assert torch.equal(other.B, shift.B)
    assert other.history == shift.history
    st_a, st_b = shift.optimizer.state_dict()["state"][0], other.optimizer.state_dict()["state"][0]
    for key in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(torch.as_tensor(st_a[key]), torch.as_tensor(st_b[key])), key
    # Same next step on both: resumed Adam continues identically.
    for s in (shift, other):
        s.B.grad = torch.ones(6)
        s.optimizer.step()
    assert torch.equal(other.B, shift.B)


def test_expected_improvement_step_favours_fast_dropping_bins():
    shift = ProbabilityShift(torch.arange(4.0), lr=0.1)
    deltas = torch.tensor([-0.01, -0.02, -0.20, -0.05])  # bin 2's loss dropped the most
    for step in range(5):
        rec = shift.step_expected(deltas, step)
    p = shift.probs()  # Adam: every coordinate moves by ~lr per step, the sign from Delta_i - mean
    assert int(p.argmax()) == 2 and p[2] > 0.4 and bool((p[[0, 1, 3]] < 0.2).all())
    assert rec["deltas"] == pytest.approx(deltas.tolist()) and len(shift.history) == 5
    # the exact gradient of sum_k p_k Delta_k
    B = torch.zeros(4, requires_grad=True)
    (torch.softmax(B, 0) * deltas).sum().backward()
    fresh = ProbabilityShift(torch.arange(4.0))
    q = fresh.probs()
    assert torch.allclose(B.grad, q * (deltas - (q * deltas).sum()))
    with pytest.raises(ValueError, match="finite"):
        shift.step_expected(torch.tensor([0.0, float("nan"), 0.0, 0.0]), 6)
    with pytest.raises(ValueError, match="estimator"):
        ProbabilityShift(torch.arange(4.0), estimator="oracle")


def test_rate_estimator_follows_the_improvement_per_draw():
    """"rate" divides each bin's loss change by its sampling share: its gradient is that of
    (1/K) sum_k Delta_k log p_k, equal to "delta"'s under a uniform B."""
    deltas = torch.tensor([-0.01, -0.02, -0.20, -0.05])
    B = torch.tensor([0.5, -1.0, 0.2, 0.0], requires_grad=True)
    (torch.log_softmax(B, 0) * deltas).sum().div(4).backward()
    rate = ProbabilityShift(torch.arange(4.0), estimator="rate", lr=0.1)
    with torch.no_grad():
        rate.B.copy_(B)
    grads = []
    rate.optimizer.step = lambda: grads.append(rate.B.grad.clone())  # read the gradient, skip the step
    rate.step_expected(deltas, 0)
    p = torch.softmax(B.detach(), 0)
    g = deltas / (4 * p)
    assert torch.allclose(grads[0], B.grad) and torch.allclose(grads[0], p * (g - (p * g).sum()))
    # uniform B: the same step as "delta"
    a, b = ProbabilityShift(torch.arange(4.0), estimator="rate"), ProbabilityShift(torch.arange(4.0))
    a.step_expected(deltas, 0), b.step_expected(deltas, 0)
    assert torch.equal(a.B, b.B)


@pytest.mark.parametrize("estimator, moves", [("rate", False), ("delta", True)])
def test_a_bin_that_improves_only_because_it_is_drawn_more_gains_nothing_under_rate(estimator, moves):
    """Every bin improves by the same amount per draw, so each Delta_k is proportional to the
    bin's share p_k. "rate" leaves B where it is (no bin is under-trained); "delta" pushes the
    favoured bin further up: the rich-get-richer loop "rate" removes."""
    shift = ProbabilityShift(torch.arange(4.0), estimator=estimator, lr=0.1)
    with torch.no_grad():
        shift.B.copy_(torch.tensor([1.0, 0.0, 0.0, -0.5]))
    p0 = shift.probs()
    for step in range(5):
        shift.step_expected(-0.3 * shift.probs(), step)
    p = shift.probs()
    if moves:
        assert float(p[0]) > float(p0[0]) + 0.1, (p0.tolist(), p.tolist())
    else:
        assert torch.allclose(p, p0, atol=1e-5), (p0.tolist(), p.tolist())


def test_shift_lr_spreads_the_movement_over_the_updates():
    from shiftnas.sampling.shift import shift_lr

    assert shift_lr(0.01, 5.6, 250, 10, 1000) == 0.01  # given: kept
    # updates at 250, 260, ..., 990: 75 of them
    assert shift_lr(None, 5.6, 250, 10, 1000) == pytest.approx(5.6 / 75)
    shift = ProbabilityShift(torch.arange(3.0), warmup_steps=250, update_every=10)
    assert sum(shift.should_update(s) for s in range(1000)) == 75
    assert shift_lr(None, 5.6, 0, 100, 50, max_lr=10.0) == 5.6  # no update at all: any value


def test_shift_lr_caps_the_step_of_a_short_run():
    """A 200-step run with 15 updates: the paper's movement would be 0.37 per update (measured to
    collapse softmax(B)); the derived lr stops at max_lr, an explicit lr is never capped."""
    from shiftnas.sampling.shift import MAX_DERIVED_LR, shift_lr

    assert shift_lr(None, 5.6, 50, 10, 200) == MAX_DERIVED_LR == 0.075
    assert shift_lr(None, 5.6, 50, 10, 200, max_lr=1.0) == pytest.approx(5.6 / 15)
    assert shift_lr(None, 1.1, 50, 10, 200) == pytest.approx(1.1 / 15)  # under the cap: kept
    assert shift_lr(0.5, 5.6, 50, 10, 200) == 0.5
    # probe stride 2: the first update after the reference only measures, 14 steps of B
    assert shift_lr(None, 5.6, 50, 10, 200, max_lr=1.0, probe_stride=2) == pytest.approx(5.6 / 14)
    # 5,600 updates (the paper's run): 1e-3, the cap does not bind
    assert shift_lr(None, 5.6, 0, 100, 560_001) == pytest.approx(1e-3)


def test_delta_estimator_uses_the_same_archs_and_batch_across_the_interval():
    from shiftnas.sampling import ShiftSampler, StepContext
    from shiftnas.sampling.shift import val_losses

    torch.manual_seed(0)
    net = build_supernet(SPACE)
    s = ShiftSampler(SPACE, n_bins=4, total_steps=100, warmup_steps=0, update_every=10, shift_lr=0.5,
                     probe_stride=1)
    x, y = _batch(8)
    ctx = StepContext(net, minival=lambda i: (x, y))
    assert s.before_step(0, ctx) is None  # step 0 = 10 - 10: the first reference, no step of B
    refs, ref_losses = list(s.ref_archs), s.ref_losses.clone()
    assert [a for a in refs] == [s.generator.generate(bin=k) for k in range(4)]
    assert s.before_step(5, ctx) is None and s.ref_archs == refs  # between updates: nothing
    _perturb(net)
    rec = s.before_step(10, ctx)
    want = val_losses(net, refs, x, y) - ref_losses
    assert rec["deltas"] == pytest.approx(want.tolist(), rel=1e-5)
    assert rec["probs"] == pytest.approx(s.shift.probs().tolist()) and s.shift.probs().std() > 0
    # resume: the reference survives a state round trip
    t = ShiftSampler(SPACE, n_bins=4, total_steps=100, warmup_steps=0, update_every=10, shift_lr=0.5,
                     probe_stride=1)
    t.load_state_dict(s.state_dict())
    assert t.ref_archs == s.ref_archs and torch.equal(t.ref_losses, s.ref_losses)
    assert torch.equal(t.shift.B, s.shift.B)


def test_probe_stride_measures_every_mth_bin_per_update_and_scales_to_one_interval():
    """probe_stride=2: the first call measures all 4 bins; then each update measures the bins of
    its parity (2 forwards, plus one per bin whose generated arch changed, to re-baseline it);
    B's first step waits until every bin has a change, which is per interval; a state round trip
    in the middle of the rotation continues identically; a stride below 1 is refused."""
    from shiftnas.sampling import ShiftSampler, StepContext
    from shiftnas.sampling.shift import val_losses
    from shiftnas.spaces import get_space

    torch.manual_seed(0)
    net = build_supernet(SPACE)
    calls = []
    net.register_forward_hook(lambda m, inp, out: calls.append(1))
    s = ShiftSampler(SPACE, n_bins=4, total_steps=100, warmup_steps=0, update_every=10, shift_lr=0.5,
                     probe_stride=2)
    x, y = _batch(8)
    ctx = StepContext(net, minival=lambda i: (x, y))
    assert s.before_step(0, ctx) is None and len(calls) == 4
    a0, l0 = list(s.ref_archs), s.ref_losses.clone()
    _perturb(net)
    calls.clear()
    assert s.before_step(10, ctx) is None and len(calls) == 2  # bins 1, 3; bins 0, 2 have no change yet
    l10 = val_losses(net, a0, x, y)
    _perturb(net)
    other = get_space(SPACE).max()  # bin 2's generated arch changes: one more forward
    gen = s.generator.generate
    s.generator.generate = lambda bin: other if bin == 2 else gen(bin=bin)
    calls.clear()
    rec = s.before_step(20, ctx)
    assert len(calls) == 3 and rec["probed"] == [0, 2] and rec["archs_changed"] == 1
    l20 = val_losses(net, a0, x, y)
    want = torch.stack([(l20[0] - l0[0]) / 2, l10[1] - l0[1], (l20[2] - l0[2]) / 2, l10[3] - l0[3]])
    assert rec["deltas"] == pytest.approx(want.tolist(), rel=1e-5)
    assert s.ref_archs[2] == other and float(s.ref_losses[2]) == pytest.approx(float(val_losses(net, [other], x, y)[0]))
    assert s.ref_steps.tolist() == [20, 10, 20, 10]
    t = ShiftSampler(SPACE, n_bins=4, total_steps=100, warmup_steps=0, update_every=10, shift_lr=0.5,
                     probe_stride=2)
    t.load_state_dict(s.state_dict())
    t.generator.generate = s.generator.generate
    _perturb(net)
    r_s, r_t = s.before_step(30, ctx), t.before_step(30, ctx)
    assert r_s["probed"] == [1, 3] and r_s["deltas"] == r_t["deltas"] and torch.equal(s.shift.B, t.shift.B)
    with pytest.raises(ValueError, match="probe_stride=0"):
        ShiftSampler(SPACE, n_bins=4, probe_stride=0)


@pytest.mark.parametrize("space", ["vit-fmnist", "cnn-fmnist"])
def test_explore_trains_random_in_bin_archs_for_its_share_of_the_steps(space):
    """explore=0.4: about 40% of the steps train an ArchConfig drawn inside the drawn bin (no
    resource loss), the rest the generator's ArchSample; 0 never explores; the count resumes."""
    from shiftnas.cost import count_flops
    from shiftnas.sampling import ShiftSampler
    from shiftnas.spaces.arch_sample import ArchSample

    s = ShiftSampler(space, n_bins=5, total_steps=200, explore=0.4, seed=3)
    kinds, seen = [], set()
    for step in range(200):
        (arch, role), = s.next(step)
        assert role == "target"
        explored = not isinstance(arch, ArchSample)
        kinds.append(explored)
        if explored:
            assert s.extra_loss(arch) is None
            lo, hi = s.bins.edges[s.last["bin"]], s.bins.edges[s.last["bin"] + 1]
            assert lo <= count_flops(space, arch) <= hi  # inside the drawn bin
            seen.add(str(arch.to_dict()))
    assert 60 <= sum(kinds) <= 100 and s.explored == sum(kinds)  # Binomial(200, 0.4): mean 80, sd 7
    assert len(seen) > 0.9 * sum(kinds)  # random archs: almost never the same one twice
    t = ShiftSampler(space, n_bins=5, total_steps=200, explore=0.4, seed=3)
    t.load_state_dict(s.state_dict())
    assert t.explored == s.explored
    assert [type(t.next(200 + i)[0][0]) for i in range(20)] == [type(s.next(200 + i)[0][0]) for i in range(20)]
    never = ShiftSampler(space, n_bins=5, total_steps=50)
    assert all(isinstance(never.next(i)[0][0], ArchSample) for i in range(50))
    with pytest.raises(ValueError, match=r"explore=1.5 must be in \[0, 1\]"):
        ShiftSampler(space, explore=1.5)
