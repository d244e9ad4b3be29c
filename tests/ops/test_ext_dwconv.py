"""Tests of the compiled elastic depthwise conv ops ``shiftnas::ext_dwconv`` and
``ext_dwconv_backward`` (registered by ``shiftnas._C``, called as ``torch.ops.shiftnas``) and the
autograd path a model takes (`dwconv_cpu`).

Reference: ``F.conv2d(x, weight[:C], bias[:C], stride, padding, 1, C)`` with autograd, in
float64 unless said otherwise. Skipped when the extension is not built, except under CI (env
CI set), where a missing extension must fail the run.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from tolerance import assert_within_2x_torch, max_err, ref_scale

from shiftnas import _ext

_C = _ext.load()
if _C is None:
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {_ext.unavailable_reason()}", pytrace=False)
    pytest.skip(str(_ext.unavailable_reason()), allow_module_level=True)
OPS = torch.ops.shiftnas

from shiftnas.ops.dwconv_ext import dwconv_cpu, dwconv_cuda

ALL = (True, True, True)

# (B, C, Cmax, H, W, k, stride, padding): the supernets' kernels 3/5/7 at both strides,
# odd and non-square planes, kernels wider than the plane, and generic sizes (1, 9) that
# take the non-unrolled path; padding is k // 2 except where a case says otherwise.
CASES = [
    (2, 16, 24, 28, 28, 3, 1, 1),
    (2, 24, 24, 28, 28, 3, 2, 1),
    (2, 8, 16, 14, 14, 5, 1, 2),
    (3, 5, 9, 14, 14, 5, 2, 2),
    (1, 12, 12, 7, 7, 7, 1, 3),
    (2, 6, 8, 7, 7, 7, 2, 3),
    (2, 3, 7, 13, 11, 3, 2, 1),
    (1, 4, 4, 9, 17, 7, 2, 3),
    (2, 5, 6, 5, 6, 5, 1, 2),
    (1, 3, 3, 3, 3, 7, 2, 3),
    (2, 4, 6, 8, 8, 1, 2, 0),
    (1, 3, 5, 10, 12, 9, 1, 4),
    (2, 4, 4, 12, 12, 3, 1, 0),
    (2, 4, 4, 12, 13, 5, 2, 1),
    (1, 2, 2, 33, 35, 3, 1, 1),
    (1, 3, 5, 34, 36, 5, 2, 2),
    (1, 2, 3, 161, 163, 3, 2, 1),  # above 160x160: the flat-grid fp32 backward
]


def _ids(case):
    b, c, cmax, h, w, k, s, p = case
    return f"B{b}-C{c}of{cmax}-{h}x{w}-k{k}-s{s}-p{p}"


def _inputs(b, c, cmax, h, w, k, s, p, dtype, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    wt = torch.randn(cmax, 1, k, k, generator=g, dtype=torch.float64) / k
    bs = torch.randn(cmax, generator=g, dtype=torch.float64) if bias else None
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    gy = torch.randn(b, c, ho, wo, generator=g, dtype=torch.float64)
    cast = lambda t: None if t is None else t.to(dtype)
    return cast(x), cast(wt), cast(bs), cast(gy)


def _reference(x, w, b, gy, s, p):
    """Forward and grads (x, full-size weight, full-size bias) via F.conv2d + autograd."""
    c = x.shape[1]
    x = x.detach().clone().requires_grad_(True)
    w = w.detach().clone().requires_grad_(True)
    b = None if b is None else b.detach().clone().requires_grad_(True)
    y = F.conv2d(x, w[:c], None if b is None else b[:c], s, p, 1, c)
    y.backward(gy)
    return y.detach(), x.grad, w.grad, None if b is None else b.grad


def _ours(x, w, b, gy, s, p, mask=ALL):
    y = OPS.ext_dwconv(x, w, b, s, p)
    bias_size = 0 if b is None else b.shape[0]
    mask = (mask[0], mask[1], mask[2] and b is not None)
    gx, gw, gb = OPS.ext_dwconv_backward(gy, x, w, s, p, bias_size, mask)
    return y, gx, gw, gb


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_matches_reference_full_precision(case, dtype):
    b, c, cmax, h, w, k, s, p = case
    x, wt, bs, gy = _inputs(*case, dtype, bias=(h + w) % 2 == 0 or k != 3)
    ours = _ours(x, wt, bs, gy, s, p)
    ref64 = _reference(*(None if t is None else t.double() for t in (x, wt, bs, gy)), s, p)
    torch_same = _reference(x, wt, bs, gy, s, p)
    names = ("y", "grad_x", "grad_weight", "grad_bias")
    for name, o, r, t in zip(names, ours, ref64, torch_same):
        if r is None:
            assert o is None, name
            continue
        assert o.shape == r.shape and o.dtype == dtype, name
        # Flash-attention rule: at most 2x PyTorch's own error in this dtype, plus a small
        # atol (reductions over more terms get a larger one).
        terms = {"grad_weight": b * h * w, "grad_bias": b * h * w}.get(name, k * k)
        atol = (1e-6 if dtype == torch.float32 else 1e-13) * max(1.0, terms**0.5)
        assert_within_2x_torch(name, o, t, r, atol)
    gw, gb = ours[2], ours[3]
    assert torch.count_nonzero(gw[c:]) == 0
    if gb is not None:
        assert gb.shape == (cmax,) and torch.count_nonzero(gb[c:]) == 0


@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[5], CASES[6]], ids=_ids)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_matches_reference_low_precision(case, dtype):
    """|ours - ref32| <= 2 * |torch_lowp - ref32| + atol; float16 falls back to a fixed
    tolerance where PyTorch has no CPU kernel for it."""
    c, s, p = case[1], case[6], case[7]
    x, wt, bs, gy = _inputs(*case, dtype, seed=1)
    ours = _ours(x, wt, bs, gy, s, p)
    ref32 = _reference(x.float(), wt.float(), bs.float(), gy.float(), s, p)
    try:
        lowp = _reference(x, wt, bs, gy, s, p)
    except RuntimeError:  # e.g. "not implemented for 'Half'"
        lowp = None
    for i, (name, o, r) in enumerate(zip(("y", "grad_x", "grad_weight", "grad_bias"), ours, ref32)):
        assert o.dtype == dtype, name
        scale = ref_scale(r)
        if lowp is not None:
            assert_within_2x_torch(name, o, lowp[i], r, 1e-3 * scale)
        else:
            err = max_err(o, r)
            assert err <= 1e-2 * scale, f"{name}: err {err:.3g} (scale {scale:.3g})"
    assert torch.count_nonzero(ours[2][c:]) == 0 and torch.count_nonzero(ours[3][c:]) == 0


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("k", [3, 5])
def test_gradcheck_float64(stride, k):
    """Autograd wrapper: analytic vs numerical gradients (weight / bias wider than C)."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 1, k, k, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    fn = lambda x, w, b: dwconv_cpu(x, w, b, stride, k // 2)
    assert torch.autograd.gradcheck(fn, (x, w, b))


def test_autograd_wrapper_matches_reference_and_skips_unneeded_grads():
    x, w, _, gy = _inputs(2, 6, 10, 9, 9, 5, 2, 2, torch.float32, seed=3)
    # x without grad (a network's first layer): only the weight gradient is computed.
    wr = w.clone().requires_grad_(True)
    dwconv_cpu(x, wr, None, 2, 2).backward(gy)
    wref = w.clone().requires_grad_(True)
    F.conv2d(x, wref[:6], None, 2, 2, 1, 6).backward(gy)
    torch.testing.assert_close(wr.grad, wref.grad, atol=1e-5, rtol=1e-5)
    # Everything with grad.
    xr, wr2 = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    dwconv_cpu(xr, wr2, None, 2, 2).backward(gy)
    xref, wref2 = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    F.conv2d(xref, wref2[:6], None, 2, 2, 1, 6).backward(gy)
    torch.testing.assert_close(xr.grad, xref.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(wr2.grad, wref2.grad, atol=1e-5, rtol=1e-5)


def test_output_mask_selects_gradients():
    x, w, _, gy = _inputs(2, 4, 6, 8, 8, 3, 1, 1, torch.float32, seed=4)
    full = OPS.ext_dwconv_backward(gy, x, w, 1, 1, 6, ALL)
    for mask in [(True, False, False), (False, True, False), (False, False, True), (False,) * 3]:
        got = OPS.ext_dwconv_backward(gy, x, w, 1, 1, 6, mask)
        for want, g, m in zip(full, got, mask):
            if m:
                assert torch.equal(g, want)
            else:
                assert g is None


def test_layouts_and_views_are_accepted():
    """channels_last x, a non-contiguous weight view and a strided bias give the same result."""
    x, w, b, gy = _inputs(2, 6, 8, 10, 10, 5, 1, 2, torch.float32, seed=5)
    want = _ours(x, w, b, gy, 1, 2)
    big = torch.randn(8, 1, 7, 7)
    big[:, :, 1:6, 1:6] = w
    w_view = big[:, :, 1:6, 1:6]  # a centre crop: not contiguous
    b2 = torch.stack([b, b], 1)[:, 0]
    got = _ours(x.to(memory_format=torch.channels_last), w_view, b2, gy, 1, 2)
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e, atol=0, rtol=0)


def test_deterministic_across_runs_and_thread_counts():
    x, w, b, gy = _inputs(8, 12, 16, 14, 14, 5, 2, 2, torch.float32, seed=6)
    first = _ours(x, w, b, gy, 2, 2)
    threads = torch.get_num_threads()
    try:
        for n in (1, threads, threads):
            torch.set_num_threads(n)
            again = _ours(x, w, b, gy, 2, 2)
            for g, e in zip(again, first):
                assert torch.equal(g, e)
    finally:
        torch.set_num_threads(threads)


def test_empty_batch():
    x, w, b, gy = _inputs(0, 4, 6, 8, 8, 3, 2, 1, torch.float32)
    y, gx, gw, gb = _ours(x, w, b, gy, 2, 1)
    assert y.shape == (0, 4, 4, 4) and gx.shape == x.shape
    assert gw.shape == w.shape and torch.count_nonzero(gw) == 0
    assert gb.shape == (6,) and torch.count_nonzero(gb) == 0


def test_matches_elastic_dwconv_module_semantics():
    """The module's cropped/transformed weight for every kernel size, read as [Cmax, ...]."""
    from shiftnas.ops.conv import ElasticDWConv2d

    torch.manual_seed(7)
    m = ElasticDWConv2d(12, (3, 5, 7), stride=2).double()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith("transform"):
                p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, 9, 15, 15, dtype=torch.float64)
    for k in (3, 5, 7):
        w = m.active_weight(k, 12)  # all 12 channels; x uses 9 of them
        want = F.conv2d(x, w[:9], None, 2, k // 2, 1, 9)
        torch.testing.assert_close(dwconv_cpu(x, w, None, 2, k // 2), want, atol=1e-12, rtol=1e-12)


# --- argument validation: RuntimeError whose message names the argument ----


@pytest.mark.parametrize(
    "mutate,pattern",
    [
        (lambda x, w, b, s, p: (x[0], w, b, s, p), r"x must be a 4-D tensor"),
        (lambda x, w, b, s, p: (x.int(), w, b, s, p), r"x must be float32, float64, bfloat16"),
        (lambda x, w, b, s, p: (x[:, :0], w, b, s, p), r"x must have at least one channel"),
        (lambda x, w, b, s, p: (x, w[:, :, 0], b, s, p), r"weight must be a depthwise weight"),
        (lambda x, w, b, s, p: (x, w.expand(6, 2, 3, 3), b, s, p), r"weight must be a depthwise"),
        (lambda x, w, b, s, p: (x, w[:, :, :2], b, s, p), r"weight must have a square"),
        (lambda x, w, b, s, p: (x, w[:3], b, s, p), r"weight must have at least C=4 channels"),
        (lambda x, w, b, s, p: (x, w.double(), b, s, p), r"weight must have the same dtype as x"),
        (lambda x, w, b, s, p: (x, w, b[None], s, p), r"bias must be None or a 1-D tensor"),
        (lambda x, w, b, s, p: (x, w, b[:3], s, p), r"bias must have at least C=4 elements"),
        (lambda x, w, b, s, p: (x, w, b.double(), s, p), r"bias must have the same dtype as x"),
        (lambda x, w, b, s, p: (x, w, b, 3, p), r"stride must be 1 or 2, got 3"),
        (lambda x, w, b, s, p: (x, w, b, 0, p), r"stride must be 1 or 2, got 0"),
        (lambda x, w, b, s, p: (x, w, b, s, -1), r"padding must be in \[0, 64\], got -1"),
        (lambda x, w, b, s, p: (x[..., :1, :1], w, b, s, 0), r"spatial size 1x1 .* smaller than"),
    ],
)
def test_forward_argument_errors(mutate, pattern):
    x, w, b, _ = _inputs(2, 4, 6, 8, 8, 3, 1, 1, torch.float32)
    args = mutate(x, w, b, 1, 1)
    with pytest.raises(RuntimeError, match=pattern):
        OPS.ext_dwconv(*args)


def test_backward_argument_errors():
    x, w, _, gy = _inputs(2, 4, 6, 8, 8, 3, 2, 1, torch.float32)
    bwd = OPS.ext_dwconv_backward
    with pytest.raises(
        RuntimeError,
        match=r"grad_y must have the forward output's shape \[B, C, Ho, Wo\] = \[2, 4, 4, 4\]",
    ):
        bwd(gy[..., :3], x, w, 2, 1, 6, ALL)
    with pytest.raises(RuntimeError, match=r"grad_y must have the forward output's shape"):
        bwd(gy, x, w, 1, 1, 6, ALL)  # stride 1 would give 8x8
    with pytest.raises(RuntimeError, match=r"grad_y must have the same dtype as x"):
        bwd(gy.double(), x, w, 2, 1, 6, ALL)
    with pytest.raises(RuntimeError, match=r"bias_size must be >= C=4 when grad_bias is requested"):
        bwd(gy, x, w, 2, 1, 2, ALL)
    assert bwd(gy, x, w, 2, 1, 0, (True, True, False))[2] is None  # no bias: bias_size unused
    with pytest.raises(RuntimeError, match=r"weight must have at least C=4 channels"):
        bwd(gy, x, w[:2], 2, 1, 6, ALL)
    with pytest.raises(RuntimeError, match="size 3"):
        bwd(gy, x, w, 2, 1, 6, (True, True))  # output_mask needs three flags


def test_cuda_tensors_reach_the_cuda_kernel_or_a_clear_error():
    """The dispatcher picks the kernel by device: a CPU-only build has none for CUDA tensors."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    x, w, b, _ = _inputs(1, 2, 2, 5, 5, 3, 1, 1, torch.float32)
    if _ext.has_cuda_ops():
        with pytest.raises(RuntimeError, match=r"weight must be a CUDA tensor, got device cpu"):
            OPS.ext_dwconv(x.cuda(), w, b.cuda(), 1, 1)
    else:
        with pytest.raises(NotImplementedError, match=r"shiftnas::ext_dwconv.*'CUDA' backend"):
            OPS.ext_dwconv(x.cuda(), w.cuda(), b.cuda(), 1, 1)


# --- property test over random shapes ---------------------------------------

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # dev extra not installed: skip just this test
    given = None

if given is not None:

    @settings(max_examples=40, deadline=None, derandomize=True)
    @given(
        b=st.integers(1, 3),
        c=st.integers(1, 9),
        extra=st.integers(0, 4),
        h=st.integers(1, 20),
        w=st.integers(1, 20),
        k=st.sampled_from([1, 3, 5, 7]),
        s=st.sampled_from([1, 2]),
        bias=st.booleans(),
    )
    def test_random_shapes_fp32(b, c, extra, h, w, k, s, bias):
        p = k // 2
        if h + 2 * p < k or w + 2 * p < k:
            return
        x, wt, bs, gy = _inputs(
            b, c, c + extra, h, w, k, s, p, torch.float32, seed=h * 31 + w, bias=bias
        )
        ours = _ours(x, wt, bs, gy, s, p)
        ref = _reference(*(None if t is None else t.double() for t in (x, wt, bs, gy)), s, p)
        for o, r in zip(ours, ref):
            if r is None:
                assert o is None
            else:
                torch.testing.assert_close(o.double(), r, atol=1e-4, rtol=1e-4)


# --- CUDA variants (only when built with CUDA and a GPU is present) ----------

needs_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and _ext.has_cuda_ops()),
    reason="needs a CUDA device and shiftnas._C built with CUDA",
)


@needs_cuda
@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str
)
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_cuda_matches_cpu(case, dtype):
    b, c, _, h, w, _, s, p = case
    x, wt, bs, gy = _inputs(*case, dtype, seed=8)
    cpu = _ours(x, wt, bs, gy, s, p)
    dev = _ours(*(t.cuda() for t in (x, wt, bs, gy)), s, p)
    tol = {torch.float32: 1e-4, torch.float64: 1e-10}.get(dtype, 3e-2)
    for name, g, e in zip(("y", "grad_x", "grad_weight", "grad_bias"), dev, cpu):
        assert g.shape == e.shape and g.dtype == e.dtype, name
        t = tol * (
            max(1.0, (b * h * w) ** 0.5)
            if name.startswith("grad_w") or name == "grad_bias"
            else 1.0
        )
        torch.testing.assert_close(g.cpu(), e, atol=t, rtol=t, msg=name)
    assert torch.count_nonzero(dev[2][c:]) == 0 and torch.count_nonzero(dev[3][c:]) == 0


@needs_cuda
def test_cuda_autograd_and_device_errors():
    x, w, b, gy = _inputs(4, 16, 24, 28, 28, 5, 2, 2, torch.float32, seed=9)
    xc, wc, bc = (t.cuda().requires_grad_(True) for t in (x, w, b))
    dwconv_cuda(xc, wc, bc, 2, 2).backward(gy.cuda())
    ref = _reference(x, w, b, gy, 2, 2)
    for g, e in zip((xc.grad, wc.grad, bc.grad), ref[1:]):
        torch.testing.assert_close(g.cpu(), e, atol=1e-4, rtol=1e-4)
    with pytest.raises(RuntimeError, match="x must be a CUDA tensor"):
        OPS.ext_dwconv(x, wc.detach(), bc.detach(), 2, 2)
    with pytest.raises(RuntimeError, match="weight must be a CUDA tensor"):
        OPS.ext_dwconv(xc.detach(), w, None, 2, 2)
