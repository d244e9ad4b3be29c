"""`ref.mask_tap`: the prefix path's masks (value 1) as taps, against `ref.mask_mul`, the explicit
multiply they replace: forward value, d(y) and d(mask) per op, and the supernets' gradients
w.r.t. the one-hots (ViT incl. relative positions and mean pooling, CNN incl. AttentiveNAS
shortcuts) on odd shapes."""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from shiftnas.models.mbconv import MBConvSupernet
from shiftnas.models.vit import ViTSupernet
from shiftnas.ops import ref
from shiftnas.ops.rel_pos import rel_pos_index
from shiftnas.spaces import base, get_space
from shiftnas.spaces import vit as vit_spaces
from shiftnas.spaces.arch_sample import ArchSample

from archutil import TOY_ATTENTIVENAS, register_toy_attentivenas
from tolerance import KERNEL_REL_ATOL, assert_within_2x_torch_scaled

# (y shape, mask dim): NCHW channels, [B, N, E] embed, [B, heads, N, d] heads, [B, C], a 0-d gate
CASES = [((3, 5, 7, 9), 1), ((2, 7, 13), -1), ((2, 3, 5, 7), 1), ((3, 11), 1), ((2, 5, 3), None)]


def _mask(shape, dim, dtype, requires_grad=True):
    """A straight-through one (1 - s.detach() + s): 1 up to an ulp, like the generator's masks."""
    n = () if dim is None else (shape[dim],)
    s = torch.rand(n, dtype=torch.float32, generator=torch.Generator().manual_seed(7))
    return (1.0 - s + s).to(dtype).detach().requires_grad_(requires_grad)


def _run(fn, y, mask, dim, dy):
    y = y.detach().clone().requires_grad_()
    m = mask.detach().clone().requires_grad_()
    out = fn(y, m, dim)
    out.backward(dy)
    return out.detach(), y.grad, m.grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,dim", CASES)
def test_tap_matches_the_explicit_multiply(shape, dim, dtype):
    g = torch.Generator().manual_seed(0)
    y, dy = (torch.randn(shape, generator=g).to(dtype) for _ in range(2))
    mask = _mask(shape, dim, torch.float32)
    got, want = _run(ref.mask_tap, y, mask, dim, dy), _run(ref.mask_mul, y, mask, dim, dy)
    tol = {"rtol": 1e-2, "atol": 1e-2} if dtype == torch.bfloat16 else {"rtol": 1e-6, "atol": 1e-6}
    for a, b in zip(got[:2], want[:2]):
        torch.testing.assert_close(a, b, **tol)
    # d mask: bf16 taps may take the cpu kernel (fp32 accumulation of the products, no bf16 product
    # tensor), more accurate than the multiply's bf16 autograd: both against float64 (2x rule)
    exact = _run(ref.mask_mul, y.double(), mask.double(), dim, dy.double())[2]
    slack = KERNEL_REL_ATOL[dtype] if dtype in KERNEL_REL_ATOL else 1e-12
    assert_within_2x_torch_scaled(f"d mask {shape} dim {dim}", got[2], want[2], exact, slack)
    assert got[0].dtype == dtype and got[2].dtype == mask.dtype and got[2].shape == mask.shape


def test_gate_tap_on_strided_tensors():
    """The gate's reduction takes a dot product on contiguous tensors; strided ones take mul + sum."""
    g = torch.Generator().manual_seed(2)
    y, dy = (torch.randn(4, 5, 6, generator=g).transpose(0, 2) for _ in range(2))
    mask = _mask(y.shape, None, torch.float32)
    for a, b in zip(_run(ref.mask_tap, y, mask, None, dy), _run(ref.mask_mul, y, mask, None, dy)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_tap_is_a_view_and_rejects_bad_masks():
    y = torch.randn(2, 3, 4)
    out = ref.mask_tap(y, _mask(y.shape, 1, torch.float32), 1)
    assert out.data_ptr() == y.data_ptr() and out.grad_fn is not None  # no multiply, no copy
    assert ref.mask_tap(y, torch.ones(3), 1) is y  # a mask without gradient: nothing to tap
    with pytest.raises(ValueError, match=r"mask shape \(4,\) does not match y.shape\[1\] = 3"):
        ref.mask_tap(y, torch.ones(4), 1)
    with pytest.raises(ValueError, match="a gate"):
        ref.mask_mul(y, torch.ones(3), None)


def test_ops_with_tap_match_the_multiply():
    """`mlp`, `attention_masked` and `attention_relpos` with tap=True against tap=False."""
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g)
    x, w1, b1, w2, b2 = r(2, 7, 13), r(19, 15), r(19), r(15, 19), r(15)
    q, k, v = r(2, 3, 5, 4), r(2, 3, 5, 4), r(2, 3, 5, 4)  # 2 x 2 patches + cls
    rel = ((r(4, 4), r(4, 4)), (r(4, 4), r(4, 4)), rel_pos_index(2, 1))  # max distance 1: 4 entries
    cases = [(ref.mlp, (x, w1, b1, w2, b2, 11), 11), (ref.attention_masked, (q, k, v), 3),
             (ref.attention_relpos, (q, k, v, *rel), 3)]
    for fn, args, n in cases:
        res = []
        for tap in (False, True):
            leaves = [a.detach().clone().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
            m = _mask((n,), 0, torch.float32)
            out = fn(*leaves, m, tap=tap)
            out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
            res.append([out] + [t.grad for t in leaves if isinstance(t, torch.Tensor)] + [m.grad])
        for a, b in zip(*res):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _onehots(space, arch, seed: int):
    """Straight-through one-hots of `arch` (hard - soft.detach() + soft), as fp32 leaves."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for d, i in space.indices(arch).items():
        n = len(space.decision(d).choices)
        soft = torch.softmax(torch.randn(n, generator=g), 0)
        out[d] = (F.one_hot(torch.tensor(i), n).float() - soft + soft).detach()
    return out


def _grads(net, space, arch, seed: int):
    """Logits and the gradients of every one-hot and every weight, prefix path, batch 3."""
    sample = ArchSample(space.name, {k: v.requires_grad_() for k, v in _onehots(space, arch, seed).items()})
    hp = space.hparams
    r = arch["resolution"] if space.family == "cnn" else hp["img_size"]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, hp["in_chans"], r, r, generator=g)
    net.zero_grad(set_to_none=True)
    out = net(x, sample)
    F.cross_entropy(out, torch.tensor([1, 4, 7]) % out.shape[-1]).backward()
    named = {f"onehot {k}": v.grad for k, v in sample.onehots.items()}
    named.update({n: p.grad for n, p in net.named_parameters()})
    return out.detach(), named


def _compare(net, space, archs, monkeypatch):
    for seed, arch in enumerate(archs):
        got = _grads(net, space, arch, seed)
        with monkeypatch.context() as m:
            m.setattr(ref, "mask_tap", ref.mask_mul)  # the explicit multiplies, as before the taps
            want = _grads(net, space, arch, seed)
        torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
        assert got[1].keys() == want[1].keys()
        for name, g in got[1].items():
            if want[1][name] is None:
                assert g is None, name
                continue
            torch.testing.assert_close(g, want[1][name], rtol=1e-4, atol=1e-6, msg=f"{name} differs")


def _archs(space, n: int = 2):
    rng = random.Random(5)
    return [space.min(), space.max()] + [space.sample(rng) for _ in range(n)]


@pytest.mark.parametrize("space", ["vit-fmnist", "vit-relpos-mean", "cnn-fmnist", TOY_ATTENTIVENAS])
def test_supernet_gradients_match_the_explicit_multiplies(space, monkeypatch):
    register_toy_attentivenas(monkeypatch)
    monkeypatch.setattr(vit_spaces, "_ARGS", dict(vit_spaces._ARGS))
    monkeypatch.setattr(base, "_SPACES", dict(base._SPACES))
    vit_spaces.vit_variant("vit-fmnist", "vit-relpos-mean", rel_pos=3, pool="mean", depth=(1, 2))
    sp = get_space(space)
    torch.manual_seed(0)
    if sp.family == "vit":
        net = ViTSupernet(sp)
    else:
        net = MBConvSupernet(sp, drop_rate=0.0, zero_init_last=False)
    _compare(net.train(), sp, _archs(sp), monkeypatch)
