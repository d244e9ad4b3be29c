"""The generator's training decode is one autograd node with a hand-written backward, both on
the host (`shiftnas.generator._Decode`); its resource loss reads the cost tables at the sample.
Both give what autograd through the same decode written with torch ops, and `expected_cost`,
give."""

import pytest
import torch
import torch.nn.functional as F

from shiftnas.cost import expected_cost
from shiftnas.generator import ArchGenerator


def _grads(g, bin_vec):
    out = {n: p.grad.clone() for n, p in g.named_parameters() if p.grad is not None}
    out["bin_vec"] = bin_vec.grad.clone()
    g.zero_grad(set_to_none=True)
    bin_vec.grad = None
    return out


def _autograd_decode(g, bin_vec, target, window, tau, rng):
    """The decode with torch ops, differentiable by autograd: the reference for the node. The
    same steps as `ArchGenerator._decode` (budget input, LSTM cell, feasibility mask, hard
    Gumbel-softmax from one draw of `rng`, choice embedding)."""
    feas, (lo, hi) = g.feasibility, window
    st = feas.start()
    u = torch.rand(g._flat_size, generator=rng)
    gumbel = -torch.log((-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20))
    x = g.bin_embed(bin_vec)[None]
    h = c = torch.zeros(1, g.hidden)
    onehots = {}
    for d, key, n, start in zip(g.space.decisions, g._keys, g._sizes, g._flat_start):
        left = (torch.stack([target - st.cmin, st.cmax - target]) / g.bins.hi).float()
        x = x + g.budget_embed(left)[None]
        h, c = g.cell(x, (h, c))
        allowed = torch.tensor(feas.mask(st, lo, hi))
        z = ((g.heads[key](h)[0, :n] + gumbel[start:start + n]) / tau).masked_fill(~allowed, float("-inf"))
        soft = F.softmax(z, -1)
        index = int(soft.detach().argmax())
        p = F.one_hot(torch.tensor(index), n).float() - soft.detach() + soft
        feas.commit(st, index)
        onehots[d.name] = p
        x = F.linear(p, g.choice_embed[key].weight[:, :n], g.choice_embed[key].bias)[None]
    return onehots, dict(zip(onehots, st.chosen))


def _loss(g, sample, bin_vec, weights):
    # a task-like gradient into every one-hot (as the supernet's masks give) + the resource loss
    task = sum((p * w).sum() for p, w in zip(sample.onehots.values(), weights))
    return task + g.resource_loss(sample, bin_vec.double() @ g.targets, lam=3.0).float()


@pytest.mark.parametrize("space", ["vit-fmnist", "cnn-fmnist", "autoformer-t"])
def test_decode_backward_matches_autograd(space):
    torch.manual_seed(0)
    g = ArchGenerator(space, n_bins=6)
    for k, seed in ((0, 1), (3, 2), (5, 3)):
        weights = [torch.randn(len(d.choices)) for d in g.space.decisions]
        bin_vec = g.bin_vector(k).requires_grad_(True)
        s = g(bin_vec, tau=1.3, rng=torch.Generator().manual_seed(seed))  # the hand-written node
        assert s.onehots[g.space.decisions[0].name].grad_fn is not None
        _loss(g, s, bin_vec, weights).backward()
        got = _grads(g, bin_vec)

        # autograd through the same decode (same noise): the same one-hots, the same gradients
        target = bin_vec.double() @ g.targets
        ref, idx = _autograd_decode(g, bin_vec, target, g.bins.window(k), 1.3, torch.Generator().manual_seed(seed))
        assert s.indices() == idx
        for n, p in ref.items():
            assert torch.equal(p.detach(), s.onehots[n].detach()), n
        loss = sum((p * w).sum() for p, w in zip(ref.values(), weights))
        cost = expected_cost(g.space, type(s)(s.space, ref))
        (loss + (3.0 * ((cost - target) / g.bins.hi) ** 2).float()).backward()
        want = _grads(g, bin_vec)
        assert got.keys() == want.keys()  # the same parameters reached (None where autograd's is)
        for n in want:
            torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-6 * float(want[n].abs().max()) + 1e-12,
                                       msg=lambda m: f"{space} {n}: {m}")


def test_resource_loss_is_expected_cost_at_the_sample():
    torch.manual_seed(0)
    g = ArchGenerator("cnn-fmnist", n_bins=5)
    s = g(g.bin_vector(2), tau=2.0, rng=torch.Generator().manual_seed(0))
    leaf = {n: p.detach().double().requires_grad_(True) for n, p in s.onehots.items()}
    cost = expected_cost(g.space, type(s)(s.space, leaf))
    cost.backward()
    sample = type(s)(s.space, {n: p.detach().clone().requires_grad_(True) for n, p in s.onehots.items()})
    c = float(g.targets[2])
    loss = g.resource_loss(sample, c)
    assert float(loss.detach()) == pytest.approx(((float(cost.detach()) - c) / g.bins.hi) ** 2, rel=1e-12)
    loss.backward()
    scale = 2 * (float(cost.detach()) - c) / g.bins.hi ** 2  # d loss / d cost
    for n, p in sample.onehots.items():  # a decision no cost term reads: no gradient (zeros here)
        want = torch.zeros_like(leaf[n]) if leaf[n].grad is None else scale * leaf[n].grad
        torch.testing.assert_close(p.grad.double(), want, rtol=1e-6, atol=0.0)


def test_a_decode_under_autocast_backpropagates_in_the_weights_dtype():
    # The literal estimator of B decodes and differentiates under the trainer's autocast.
    torch.manual_seed(0)
    g = ArchGenerator("vit-fmnist", n_bins=4)
    bin_vec = g.bin_vector(1).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = g(bin_vec, tau=1.0, rng=torch.Generator().manual_seed(0))
        loss = sum((i + 1) * p.float().sum() for i, p in enumerate(s.onehots.values()))
        (loss + g.resource_loss(s, bin_vec.double() @ g.targets).float()).backward()
    assert bin_vec.grad is not None and torch.isfinite(bin_vec.grad).all()
    for n, p in g.named_parameters():
        assert p.grad is not None and p.grad.dtype == p.dtype and torch.isfinite(p.grad).all(), n
