"""Triton elastic linear (`shiftnas.kernels.linear`) against `shiftnas.ops.ref.linear` and
`ref.linear_masked`, forward and backward.

On CUDA, or in Triton's interpreter on CPU tensors (tests/kernel_env.py). Tolerance: the 2x rule
with a slack relative to the output scale (tests/tolerance.py, `assert_within_2x_torch_scaled`).
"""
from __future__ import annotations

import pytest
import torch
from kernel_env import DEV, DTYPES, require_triton, run_with_grads
from tolerance import KERNEL_REL_ATOL, assert_within_2x_torch_scaled

require_triton()

from shiftnas.kernels import linear as K

from shiftnas.ops import ref as R

ATOL = KERNEL_REL_ATOL  # x output scale

# (rows, in, max in, out, max out): odd widths, ViT token counts, one 3000-wide row kept cheap.
SHAPES = [
    (50, 192, 216, 240, 256),
    (197, 216, 240, 192, 200),
    (4, 3000, 3000, 216, 240),
]


def _params(rows, k, kmax, n, nmax, dtype, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=g).to(dtype)
    w = (torch.randn(nmax, kmax, generator=g) / kmax**0.5).to(dtype)
    b = (torch.randn(nmax, generator=g) * 0.1).to(dtype) if bias else None
    gy = torch.randn(rows, n, generator=g).to(dtype)
    return x, w, b, gy


@pytest.mark.parametrize("activation", [None, "gelu"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_linear_matches_ref(shape, dtype, activation):
    rows, k, kmax, n, nmax = shape
    x, w, b, gy = _params(rows, k, kmax, n, nmax, dtype)
    kernel = run_with_grads(lambda x, w, b: K.linear(x, w, b, n, activation), (x, w, b), gy)
    same = run_with_grads(lambda x, w, b: R.linear(x, w, b, n, activation), (x, w, b), gy, device="cpu")
    ref = run_with_grads(lambda x, w, b: R.linear(x, w, b, n, activation), (x, w, b), gy, torch.float64, "cpu")
    assert_within_2x_torch_scaled("y", kernel[0], same[0], ref[0], ATOL[dtype])
    for name, a, s, r in zip(("dx", "dweight", "dbias"), kernel[1], same[1], ref[1]):
        assert_within_2x_torch_scaled(name, a, s, r, ATOL[dtype])
    dw, db = kernel[1][1], kernel[1][2]
    assert dw.shape == w.shape and db.shape == b.shape
    assert not dw[n:].any() and not dw[:, k:].any() and not db[n:].any(), "grads past the active block"


def test_linear_no_bias_3d_input():
    x, w, _, _ = _params(2 * 25, 192, 216, 240, 256, torch.float32)
    x = x.reshape(2, 25, 192)
    gy = torch.randn(2, 25, 240)
    kernel = run_with_grads(lambda x, w: K.linear(x, w, None, 240, "gelu"), (x, w), gy)
    ref = run_with_grads(lambda x, w: R.linear(x, w, None, 240, "gelu"), (x, w), gy, torch.float64, "cpu")
    assert kernel[0].shape == (2, 25, 240)
    torch.testing.assert_close(kernel[0].cpu().double(), ref[0], rtol=1e-4, atol=1e-5)
    for a, r in zip(kernel[1], ref[1]):
        torch.testing.assert_close(a.cpu().double(), r, rtol=1e-4, atol=1e-5)


def test_linear_mixed_precision_fp32_weights():
    """fp16 activations with fp32 master weights: tiles are cast in the kernel, grads stay fp32."""
    x, w, b, gy = _params(50, 216, 240, 192, 200, torch.float16)
    w, b = w.float(), b.float()
    kernel = run_with_grads(lambda x, w, b: K.linear(x, w, b, 192, "gelu"), (x, w, b), gy)
    assert kernel[0].dtype == torch.float16 and kernel[1][1].dtype == torch.float32
    same = run_with_grads(lambda x, w, b: R.linear(x, w, b, 192, "gelu"), (x, w, b), gy, torch.float16, "cpu")
    ref = run_with_grads(lambda x, w, b: R.linear(x, w, b, 192, "gelu"), (x, w, b), gy, torch.float64, "cpu")
    for name, a, s, r in zip(("y", "dx", "dweight", "dbias"), [kernel[0], *kernel[1]], [same[0], *same[1]], [ref[0], *ref[1]]):
        assert_within_2x_torch_scaled(name, a, s, r, ATOL[torch.float16])


# ------------------------------------------------------------------------------- masked variant
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", [None, "gelu"])
@pytest.mark.parametrize("width", [150, 10, 240, 1000, 0])
def test_masked_matches_ref(width, activation, dtype):
    """width as a device tensor (incl. tiles wholly skipped, width past the tensor, width 0)."""
    rows, k, kmax, n, nmax = 50, 216, 240, 240, 256
    x, w, b, gy = _params(rows, k, kmax, n, nmax, dtype)
    mask = torch.rand(n, generator=torch.Generator().manual_seed(1)) + 0.5  # fp32: the AG's dtype
    ow = torch.tensor(width)

    def run(fn, dt, device):
        return run_with_grads(lambda x, w, b, m: fn(x, w, b, n, activation, out_width=ow.to(device), mask=m),
                    (x, w, b, mask), gy, dt, device)

    kernel = run(K.linear_masked, None, DEV)
    same = run(R.linear_masked, dtype, "cpu")
    ref = run(R.linear_masked, torch.float64, "cpu")
    y = kernel[0]
    assert y.shape == (rows, n)
    assert not y[:, width:].any(), "output past out_width must be zero"
    assert_within_2x_torch_scaled("y", y, same[0], ref[0], ATOL[dtype])
    for name, a, s, r in zip(("dx", "dweight", "dbias", "dmask"), kernel[1], same[1], ref[1]):
        assert_within_2x_torch_scaled(name, a, s, r, ATOL[dtype])
    dmask = kernel[1][3]
    assert dmask.dtype == torch.float32 and not dmask[width:].any(), "dmask only for computed channels"


def test_masked_equals_sliced_op_inside():
    x, w, b, _ = _params(197, 192, 216, 240, 256, torch.float32)
    mask = torch.rand(240) + 0.5
    y = K.linear_masked(x.to(DEV), w.to(DEV), b.to(DEV), 240, "gelu", out_width=torch.tensor(130, device=DEV),
                        mask=mask.to(DEV))
    inner = K.linear(x.to(DEV), w.to(DEV), b.to(DEV), 130, "gelu") * mask[:130].to(DEV)
    torch.testing.assert_close(y[:, :130], inner, rtol=1e-6, atol=1e-6)
    assert not y[:, 130:].any()


def test_masked_in_width_reads_only_the_prefix():
    """in_width (fc2 of an MLP): columns of x past it are ignored, their dx is zero."""
    x, w, b, gy = _params(50, 240, 240, 192, 200, torch.float32)
    iw = torch.tensor(100, device=DEV)
    kernel = run_with_grads(lambda x, w, b: K.linear_masked(x, w, b, 192, in_width=iw), (x, w, b), gy)
    ref = run_with_grads(lambda x, w, b: R.linear(x[:, :100], w, b, 192), (x, w, b), gy, torch.float64, "cpu")
    torch.testing.assert_close(kernel[0].cpu().double(), ref[0], rtol=1e-4, atol=1e-5)
    for a, r in zip(kernel[1], ref[1]):
        torch.testing.assert_close(a.cpu().double(), r, rtol=1e-4, atol=1e-5)
    assert not kernel[1][0][:, 100:].any()


# --------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "change,name",
    [
        ({"x": torch.randn(4, 8, dtype=torch.float64)}, "x.dtype"),
        ({"weight": torch.randn(16)}, "weight"),
        ({"x": torch.randn(4, 12)}, r"x.shape\[-1\]"),
        ({"out_features": 17}, "out_features"),
        ({"bias": torch.randn(15)}, "bias"),
        ({"activation": "relu"}, "activation"),
        ({"mask": torch.ones(5)}, "mask"),
        ({"out_width": torch.tensor(2.0)}, "out_width"),
        ({"in_width": torch.tensor([1, 2])}, "in_width"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(change, name):
    args = {"x": torch.randn(4, 8), "weight": torch.randn(16, 10), "bias": torch.randn(16), "out_features": 12,
                "activation": None, "out_width": torch.tensor(6), "in_width": None, "mask": torch.ones(12)}
    args.update(change)
    args = {k: v.to(DEV) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    x, w, b, n = args.pop("x"), args.pop("weight"), args.pop("bias"), args.pop("out_features")
    with pytest.raises(ValueError, match=name):
        K.linear_masked(x, w, b, n, args.pop("activation"), **args)


# ------------------------------------------------------------------------- torch.library / compile
def test_opcheck():
    x = torch.randn(6, 24, device=DEV, requires_grad=True)
    w = torch.randn(40, 32, device=DEV, requires_grad=True)
    b = torch.randn(40, device=DEV, requires_grad=True)
    m = torch.rand(36, device=DEV, requires_grad=True)
    torch.library.opcheck(torch.ops.shiftnas.elastic_linear.default,
                          (x, w, b, 36, "gelu", torch.tensor(20, device=DEV), None, m, True))
    torch.library.opcheck(torch.ops.shiftnas.elastic_linear.default, (x, w, None, 40, None, None, None, None, True))


def test_torch_compile_fullgraph():
    x = torch.randn(2, 5, 24, device=DEV, requires_grad=True)
    w = torch.randn(40, 32, device=DEV, requires_grad=True)
    m = torch.rand(36, device=DEV, requires_grad=True)
    ow = torch.tensor(20, device=DEV)

    def f(x, w, m, ow):
        return K.linear_masked(x, w, None, 36, "gelu", out_width=ow, mask=m).square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(x, w, m, ow), (x, w, m))
    want = torch.autograd.grad(f(x, w, m, ow), (x, w, m))
    for a, r in zip(got, want):
        torch.testing.assert_close(a, r)
