"""Triton elastic depthwise conv (kernels/dwconv.py) against PyTorch, forward and backward: the
reference is `shiftnas.ops.ref.dwconv_masked` (`ref.dwconv` with padding k // 2; without `active`
and `mask`, the plain `elastic_dwconv`'s).

Tolerance rule (docs/design.md, "Kernel tests"): |kernel - ref| <= 2 * |torch same dtype - ref|
+ small atol, max over elements, where ref is F.conv2d in float64 on the same (rounded) inputs.
Without a GPU the kernels run in the Triton interpreter on CPU tensors (tests/conftest.py), so
shapes stay small and odd.
"""
import pytest
import torch
from tolerance import assert_within_2x_torch, ref_scale

from shiftnas.ops import ref as R
from shiftnas.ops.conv import ElasticDWConv2d

pytest.importorskip("triton")
from shiftnas.kernels import dwconv

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
# bf16 only on CUDA: the interpreter computes with numpy, which has no bfloat16.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])
# atol relative to the reference's largest magnitude: a few fp32 ulp, a quarter fp16 ulp.
# Measured on the cases below: the kernel's error is at most 0.38 of the bound (2x torch + atol).
ATOL = {torch.float32: 2e-7, torch.float16: 2.5e-4, torch.bfloat16: 2e-3}

# (B, C, H=W, k, stride): every (k, stride) pair; C, H and B cycle through odd sizes.
CASES = [
    (1, 5, 7, 3, 1),
    (2, 24, 15, 3, 2),
    (2, 40, 14, 3, 1),
    (2, 5, 14, 5, 2),
    (1, 24, 15, 5, 1),
    (2, 40, 7, 5, 2),
    (2, 5, 15, 7, 1),
    (1, 24, 14, 7, 2),
    (2, 40, 7, 7, 1),
    (1, 40, 7, 7, 2),
]
_IDS = [f"B{b}-C{c}-H{h}-k{k}-s{s}" for b, c, h, k, s in CASES]


def _inputs(B, C, H, k, dtype, extra=3, seed=0):
    """x [B, C, H, H]; weight, bias and mask sized for Cmax = C + extra channels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, H, H, generator=g)
    w = torch.randn(C + extra, 1, k, k, generator=g) / k
    b = torch.randn(C + extra, generator=g)
    m = torch.rand(C + extra, generator=g) + 0.5
    return [t.to(DEVICE, dtype) for t in (x, w, b, m)]


def _run(fn, tensors, grad_y, stride):
    """fn(x, weight, bias, stride[, mask]): output and the gradients w.r.t. every tensor."""
    leaves = [t.detach().requires_grad_() for t in tensors]
    y = fn(*leaves[:3], stride, *leaves[3:])
    return y.detach(), torch.autograd.grad(y, leaves, grad_y)


def _check_rule(name, got, same, ref, dtype):
    assert got.dtype == same.dtype, name
    assert_within_2x_torch(name, got, same, ref, ATOL[dtype] * (1.0 + ref_scale(ref)))


def _compare(B, C, H, k, stride, dtype, active=None, masked=False):
    x, w, b, m = _inputs(B, C, H, k, dtype)
    OH = (H + 2 * (k // 2) - k) // stride + 1
    gy = torch.randn(B, C, OH, OH, generator=torch.Generator().manual_seed(1)).to(DEVICE, dtype)
    if masked:
        kernel = lambda x, w, b, s, m: dwconv.elastic_dwconv_masked(x, w, b, s, active, m)
        ref = lambda x, w, b, s, m: R.dwconv_masked(x, w, b, s, active, m)
        tensors = [x, w, b, m]
    else:
        kernel, ref, tensors = dwconv.elastic_dwconv, R.dwconv_masked, [x, w, b]
    y, gk = _run(kernel, tensors, gy, stride)
    y_same, gs = _run(ref, tensors, gy, stride)
    y_ref, gr = _run(ref, [t.double() for t in tensors], gy.double(), stride)
    _check_rule("y", y, y_same, y_ref, dtype)
    for name, a, s, r in zip(["grad_x", "grad_weight", "grad_bias", "grad_mask"], gk, gs, gr):
        _check_rule(name, a, s, r, dtype)
    # Full-size parameter gradients, zero past the computed channels.
    n = C if active is None else max(0, min(C, int(active)))
    assert gk[1].shape == w.shape and gk[2].shape == b.shape
    for g in gk[1:]:
        assert not g[n:].any()
    if active is not None:
        assert not y[:, n:].any() and not gk[0][:, n:].any()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,C,H,k,stride", CASES, ids=_IDS)
def test_dwconv_matches_torch(B, C, H, k, stride, dtype):
    _compare(B, C, H, k, stride, dtype)


# Active counts inside the range, at zero, at C and past C (for counts that end inside a channel
# tile or skip whole tiles, see test_multi_tile_grids).
MASKED = [
    (CASES[1], 21),
    (CASES[3], 2),
    (CASES[5], 0),
    (CASES[7], 24),
    (CASES[8], 33),
    (CASES[0], 9),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "case,active", MASKED, ids=[f"{_IDS[CASES.index(c)]}-a{a}" for c, a in MASKED]
)
def test_dwconv_masked_matches_torch(case, active, dtype):
    B, C, H, k, stride = case
    _compare(B, C, H, k, stride, dtype, active=torch.tensor(active, device=DEVICE), masked=True)


# Small tile budgets give the grids the GPU budgets give larger layers: several channel tiles
# (one partly active, the rest skipped), several pixel tiles and a looping split reduction.
# (case, active, _TILE, _WGRAD_TILE, _WGRAD_PROGRAMS)
TILINGS = [
    ((2, 24, 7, 3, 1), 13, 128, 2048, 1024),  # BLOCK_C = 2: 12 channel tiles in every kernel
    ((2, 5, 15, 3, 2), 3, 32, 256, 8),  # BLOCK_C = 1; 2-8 pixel tiles; 2 splits of 4 items
]


@pytest.mark.parametrize("case,active,tile,wgrad_tile,wgrad_programs", TILINGS)
def test_multi_tile_grids(monkeypatch, case, active, tile, wgrad_tile, wgrad_programs):
    monkeypatch.setattr(dwconv, "_TILE", tile)
    monkeypatch.setattr(dwconv, "_WGRAD_TILE", wgrad_tile)
    monkeypatch.setattr(dwconv, "_WGRAD_PROGRAMS", wgrad_programs)
    _compare(*case, torch.float32, active=torch.tensor(active, device=DEVICE), masked=True)


def test_masked_without_mask_and_int32_active():
    x, w, _, _ = _inputs(2, 24, 14, 5, torch.float32)
    active = torch.tensor([10], dtype=torch.int32, device=DEVICE)
    y = dwconv.elastic_dwconv_masked(x, w, None, 1, active)
    torch.testing.assert_close(y, R.dwconv_masked(x, w, None, 1, active), atol=1e-5, rtol=1e-5)
    assert not y[:, 10:].any()


def test_mixed_dtypes_follow_each_tensor():
    """fp16 x with fp32 parameters (as autocast leaves them): y in x's dtype, grads in each's."""
    x, w, b, _ = _inputs(2, 24, 14, 3, torch.float32)
    x16 = x.half().requires_grad_()
    w.requires_grad_()
    y = dwconv.elastic_dwconv(x16, w, b, 1)
    assert y.dtype == torch.float16
    yr = R.dwconv_masked(x16.detach().float().requires_grad_(), w, b, 1)
    torch.testing.assert_close(y.float(), yr, atol=2e-3, rtol=1e-3)
    gx, gw = torch.autograd.grad(y, (x16, w), torch.ones_like(y))
    assert gx.dtype == torch.float16 and gw.dtype == torch.float32
    (gw_r,) = torch.autograd.grad(yr, w, torch.ones_like(yr))
    torch.testing.assert_close(gw, gw_r, atol=1e-3, rtol=1e-4)


def test_weight_view_and_partial_grads():
    """A centre-crop view of a wider weight is read in place; only x or only params need grad."""
    x, w7, b, _ = _inputs(2, 24, 15, 7, torch.float32, extra=0)
    w5 = w7[:, :, 1:6, 1:6]
    assert not w5.is_contiguous()
    w_k = w5.detach().requires_grad_()
    y = dwconv.elastic_dwconv(x, w_k, None, 2)
    torch.testing.assert_close(y, R.dwconv_masked(x, w5, None, 2), atol=1e-5, rtol=1e-5)
    gy = torch.randn_like(y)
    (gw,) = torch.autograd.grad(y, w_k, gy)  # weight only: grad_x is skipped
    w_r = w5.detach().requires_grad_()
    (gw_ref,) = torch.autograd.grad(R.dwconv_masked(x, w_r, None, 2), w_r, gy)
    torch.testing.assert_close(gw, gw_ref, atol=1e-4, rtol=1e-5)
    x_k = x.detach().requires_grad_()
    (gx,) = torch.autograd.grad(dwconv.elastic_dwconv(x_k, w5, b, 2), x_k, gy)  # x only
    x_r = x.detach().requires_grad_()
    (gx_ref,) = torch.autograd.grad(R.dwconv_masked(x_r, w5, b, 2), x_r, gy)
    torch.testing.assert_close(gx, gx_ref, atol=1e-5, rtol=1e-5)


def test_elastic_dwconv2d_module_weights():
    """Gradients reach the OFA transform matrices through the module's active weight."""
    torch.manual_seed(0)
    mod = ElasticDWConv2d(16, (3, 5, 7), stride=1).to(DEVICE)
    x = torch.randn(2, 11, 9, 9, device=DEVICE)
    grads = []
    for fn in (dwconv.elastic_dwconv, R.dwconv_masked):
        mod.zero_grad()
        fn(x, mod.active_weight(3, 11), None, 1).square().sum().backward()
        grads.append([p.grad.clone() for p in (mod.weight, mod.transform_7to5, mod.transform_5to3)])
    for a, r in zip(*grads):
        torch.testing.assert_close(a, r, atol=1e-4, rtol=1e-4)


BAD = [
    ("x must be", lambda x, w, b, m, a: {"x": x[0]}),
    ("x.dtype", lambda x, w, b, m, a: {"x": x.double(), "weight": w.double()}),
    ("stride=3", lambda x, w, b, m, a: {"stride": 3}),
    ("weight kernel", lambda x, w, b, m, a: {"weight": torch.zeros(8, 1, 4, 4)}),
    ("weight kernel", lambda x, w, b, m, a: {"weight": torch.zeros(8, 1, 9, 9)}),
    ("weight must be", lambda x, w, b, m, a: {"weight": torch.zeros(8, 2, 3, 3)}),
    ("weight has 4 channels", lambda x, w, b, m, a: {"weight": w[:4]}),
    ("bias must be", lambda x, w, b, m, a: {"bias": b[:3]}),
    ("mask must be", lambda x, w, b, m, a: {"mask": m[:, None]}),
    ("active must be", lambda x, w, b, m, a: {"active": a.float()}),
    ("active must be", lambda x, w, b, m, a: {"active": torch.tensor([1, 2])}),
]


@pytest.mark.parametrize("what,change", BAD, ids=[f"{i}-{w}" for i, (w, _) in enumerate(BAD)])
def test_launcher_rejects_bad_arguments(what, change):
    x, w, b, m = _inputs(1, 5, 7, 3, torch.float32)
    kw = {"x": x, "weight": w, "bias": b, "stride": 1, "active": torch.tensor(3), "mask": m}
    kw.update(change(x, w, b, m, kw["active"]))
    with pytest.raises(ValueError, match=what):
        dwconv.elastic_dwconv_masked(**kw)


def test_custom_op_registration():
    """Schema, fake (meta) shapes and register_autograd of shiftnas::elastic_dwconv."""
    x, w, b, m = _inputs(2, 5, 7, 5, torch.float32)
    active = torch.tensor(4, device=DEVICE)
    args = (x.requires_grad_(), w.requires_grad_(), b, 2, active, m.requires_grad_())
    torch.library.opcheck(
        torch.ops.shiftnas.elastic_dwconv.default,
        args,
        test_utils=(
            "test_schema",
            "test_autograd_registration",
            "test_faketensor",
            "test_aot_dispatch_dynamic",
        ),
    )
    y = torch.ops.shiftnas.elastic_dwconv(*args)  # differentiable when called directly
    gx, gm = torch.autograd.grad(y.sum(), (x, m))
    yr = R.dwconv_masked(*args)
    gx_r, gm_r = torch.autograd.grad(yr.sum(), (x, m))
    torch.testing.assert_close((gx, gm), (gx_r, gm_r), atol=1e-4, rtol=1e-5)
    with torch._subclasses.fake_tensor.FakeTensorMode():
        fx = torch.empty(3, 40, 15, 15, device=DEVICE)
        fy = dwconv.elastic_dwconv(fx, torch.empty(48, 1, 7, 7, device=DEVICE), None, 2)
    assert fy.shape == (3, 40, 8, 8)


@pytest.mark.skipif(not CUDA, reason="host syncs only exist with a GPU")
def test_masked_does_not_sync():
    x, w, b, m = _inputs(2, 24, 14, 5, torch.float16)
    for t in (x, w, m):
        t.requires_grad_()
    active = torch.tensor(10, device=DEVICE)
    dwconv.elastic_dwconv_masked(x, w, b, 2, active, m).sum().backward()  # compile first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        dwconv.elastic_dwconv_masked(x, w, b, 2, active, m).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
