"""Tests of the compiled fused bias + GELU in ``shiftnas._C`` (and its autograd wrapper).

Reference: ``F.gelu(x + bias[:N])`` (exact erf GELU) with autograd, in float64 unless said
otherwise. Skipped when the extension is not built, except under CI (env CI set), where a
missing extension must fail the run.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from shiftnas import _ext

_C = _ext.load()
if _C is None:
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {_ext.unavailable_reason()}", pytrace=False)
    pytest.skip(str(_ext.unavailable_reason()), allow_module_level=True)

from shiftnas.ops.bias_gelu_ext import bias_gelu_cpu

# (M, N, Nmax): N below and at Nmax, widths that are and are not multiples of 16.
SHAPES = [
    (1, 1, 1),
    (7, 33, 40),
    (50, 192, 256),
    (64, 216, 216),
    (394, 240, 960),
    (13, 3000, 3000),
]


def _inputs(m, n, nmax, dtype, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, n, generator=g, dtype=torch.float64) * scale
    b = torch.randn(nmax, generator=g, dtype=torch.float64)
    gy = torch.randn(m, n, generator=g, dtype=torch.float64)
    return x.to(dtype), b.to(dtype), gy.to(dtype)


def _reference(x, b, gy):
    x = x.detach().clone().requires_grad_(True)
    b = b.detach().clone().requires_grad_(True)
    y = F.gelu(x + b[: x.shape[-1]])
    y.backward(gy)
    return y.detach(), x.grad, b.grad


def _ours(x, b, gy):
    y = _C.bias_gelu_forward(x, b)
    gx, gb = _C.bias_gelu_backward(gy, x, b)
    return y, gx, gb


def _max_err(a, ref):
    return (a.double() - ref.double()).abs().max().item() if a.numel() else 0.0


@pytest.mark.parametrize("m,n,nmax", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_matches_reference_full_precision(m, n, nmax, dtype):
    x, b, gy = _inputs(m, n, nmax, dtype)
    ours = _ours(x, b, gy)
    ref64 = _reference(x.double(), b.double(), gy.double())
    torch_same = _reference(x, b, gy)
    for name, o, r, t in zip(("y", "grad_x", "grad_bias"), ours, ref64, torch_same):
        assert o.shape == r.shape and o.dtype == dtype, name
        terms = m if name == "grad_bias" else 1
        atol = (
            (2e-7 if dtype == torch.float32 else 1e-14)
            * max(1.0, r.abs().max().item())
            * max(1.0, terms**0.5)
        )
        err, base = _max_err(o, r), _max_err(t, r)
        assert err <= 2 * base + atol, f"{name}: err {err:.3g} vs torch {dtype} err {base:.3g}"
    assert ours[2].shape == (nmax,) and torch.count_nonzero(ours[2][n:]) == 0


def test_fp32_gelu_is_accurate_over_the_whole_range():
    """Our vector erf/exp: a dense sweep of z (both erf regimes, tails, underflow) within a
    few ulp of float64 math, for the value and the derivative."""
    z = torch.cat(
        [
            torch.linspace(-12, 12, 200_001),
            torch.tensor(
                [0.0, -0.0, 1e-30, -1e-30, 0.927734375, -0.927734375, 30.0, -30.0, 1e4, -1e4]
            ),
        ]
    ).reshape(1, -1)
    zero = torch.zeros(z.shape[1])
    y = _C.bias_gelu_forward(z, zero)
    g, _ = _C.bias_gelu_backward(torch.ones_like(z), z, zero)
    zd = z.double().requires_grad_(True)
    y_ref = F.gelu(zd)
    (d_ref,) = torch.autograd.grad(y_ref.sum(), zd)
    y_ref, zd = y_ref.detach(), zd.detach()
    eps = torch.finfo(torch.float32).eps
    # z/2 * (1 + erf) cancels for z << 0 (PyTorch's formula too): allow eps * |z| absolute.
    assert ((y.double() - y_ref).abs() <= 4 * eps * y_ref.abs() + 2 * eps * zd.abs()).all()
    assert ((g.double() - d_ref).abs() <= 8 * eps * d_ref.abs() + 2 * eps).all()


@pytest.mark.parametrize("m,n,nmax", [(7, 33, 40), (50, 192, 256), (13, 3000, 3000)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_matches_reference_low_precision(m, n, nmax, dtype):
    """Flash-attention rule: |ours - ref32| <= 2 * |torch_lowp - ref32| + 1e-3 * scale."""
    x, b, gy = _inputs(m, n, nmax, dtype, seed=1)
    ours = _ours(x, b, gy)
    ref32 = _reference(x.float(), b.float(), gy.float())
    lowp = _reference(x, b, gy)
    for name, o, r, t in zip(("y", "grad_x", "grad_bias"), ours, ref32, lowp):
        assert o.dtype == dtype, name
        err, base = _max_err(o, r), _max_err(t, r)
        assert err <= 2 * base + 1e-3 * r.abs().max().item(), (
            f"{name}: {err:.3g} vs torch {base:.3g}"
        )
    assert torch.count_nonzero(ours[2][n:]) == 0


def test_bfloat16_rounds_like_torch():
    """The bf16 path is the fp32 math rounded once, to nearest-even, NaN kept: bit-equal to
    our fp32 result cast by PyTorch (ragged tail included)."""
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(9, 45, generator=g) * 4).to(torch.bfloat16)
    x[0, :4] = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0])
    b = torch.zeros(48, dtype=torch.bfloat16)
    got = _C.bias_gelu_forward(x, b)
    want = _C.bias_gelu_forward(x.float(), b.float()).to(torch.bfloat16)
    nan = want.isnan()
    assert torch.equal(got.isnan(), nan)  # (the NaN sign bit may differ)
    assert torch.equal(got[~nan].view(torch.int16), want[~nan].view(torch.int16))


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 2, 5, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(bias_gelu_cpu, (x, b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_autograd_wrapper_on_3d_input(dtype):
    x, b, gy = _inputs(2 * 37, 100, 128, dtype, seed=3)
    x3, gy3 = x.reshape(2, 37, 100), gy.reshape(2, 37, 100)
    xr, br = x3.clone().requires_grad_(True), b.clone().requires_grad_(True)
    bias_gelu_cpu(xr, br).backward(gy3)
    _, gx, gb = _ours(x, b, gy)
    assert xr.grad.shape == x3.shape and br.grad.shape == b.shape
    torch.testing.assert_close(xr.grad, gx.reshape(2, 37, 100), atol=0, rtol=0)
    torch.testing.assert_close(br.grad, gb, atol=0, rtol=0)


def test_padded_rows_are_read_in_place():
    wide, b, gy = _inputs(37, 200, 160, torch.float32, seed=4)
    x = wide[:, :160]
    assert not x.is_contiguous()
    got = _ours(x, b, gy[:, :160])
    want = _ours(x.contiguous(), b, gy[:, :160].contiguous())
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e, atol=0, rtol=0)
    xt = x.t().contiguous().t()  # column-major: copied once, same result
    for g, e in zip(_ours(xt, b, gy[:, :160]), want):
        torch.testing.assert_close(g, e, atol=0, rtol=0)


def test_deterministic_and_empty():
    x, b, gy = _inputs(394, 240, 256, torch.float32, seed=5)
    first = _ours(x, b, gy)
    for _ in range(3):
        for g, e in zip(_ours(x, b, gy), first):
            assert torch.equal(g, e)
    y, gx, gb = _ours(x[:0], b, gy[:0])
    assert y.shape == (0, 240) and gx.shape == (0, 240)
    assert gb.shape == (256,) and torch.count_nonzero(gb) == 0


@pytest.mark.parametrize(
    "mutate,pattern",
    [
        (lambda x, b: (x[0], b), r"x must be a 2-D tensor \[M, N\]"),
        (lambda x, b: (x[None], b), r"x must be a 2-D tensor \[M, N\]"),
        (lambda x, b: (x.int(), b), r"x must be float32, float64, bfloat16 or float16"),
        (lambda x, b: (x, b[None]), r"bias must be a 1-D tensor \[Nmax\]"),
        (lambda x, b: (x, b[:10]), r"bias must have at least N=12 elements"),
        (lambda x, b: (x, b.double()), r"bias must have the same dtype as x"),
    ],
)
def test_argument_errors(mutate, pattern):
    x, b, gy = _inputs(4, 12, 16, torch.float32)
    with pytest.raises(RuntimeError, match=pattern):
        _C.bias_gelu_forward(*mutate(x, b))
    with pytest.raises(RuntimeError, match=pattern):
        _C.bias_gelu_backward(gy, *mutate(x, b))  # x and bias are checked before grad_y


def test_backward_argument_errors():
    x, b, gy = _inputs(4, 12, 16, torch.float32)
    with pytest.raises(RuntimeError, match=r"grad_y must have x's shape \[4, 12\]"):
        _C.bias_gelu_backward(gy[:, :8], x, b)
    with pytest.raises(RuntimeError, match=r"grad_y must have the same dtype as x"):
        _C.bias_gelu_backward(gy.double(), x, b)


def test_rejects_cuda_tensors_by_name():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    x, b, _ = _inputs(4, 12, 16, torch.float32)
    with pytest.raises(RuntimeError, match=r"x must be a CPU tensor"):
        _C.bias_gelu_forward(x.cuda(), b.cuda())
