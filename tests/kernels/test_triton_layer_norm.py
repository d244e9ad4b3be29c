"""Triton elastic LayerNorm (`shiftnas.kernels.layer_norm`) against `shiftnas.ops.ref.layer_norm`.

On CUDA, or in Triton's interpreter on CPU tensors (tests/kernel_env.py). Tolerance: the 2x rule
with a slack relative to the output scale (tests/tolerance.py, `assert_within_2x_torch_scaled`).
"""
from __future__ import annotations

import pytest
import torch
from kernel_env import DEV, DTYPES, require_triton, run_with_grads
from tolerance import KERNEL_REL_ATOL, assert_within_2x_torch_scaled

require_triton()

from shiftnas.kernels import layer_norm as K

from shiftnas.ops import ref as R

ATOL = KERNEL_REL_ATOL  # x output scale
EPS = 1e-5

# (rows, x width, active, max channels): x wider than active, odd widths, one 3000-wide row.
SHAPES = [
    (50, 192, 192, 216),
    (197, 240, 216, 240),
    (50, 240, 193, 256),
    (3, 3000, 3000, 3000),
]


def _inputs(rows, c, cmax, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, c, generator=g) * 2.0 + 0.5).to(dtype)  # an offset mean, as in ViTs
    w = (torch.randn(cmax, generator=g) * 0.5 + 1.0).to(dtype)
    b = (torch.randn(cmax, generator=g) * 0.1).to(dtype)
    return x, w, b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_layer_norm_matches_ref(shape, dtype):
    rows, c, active, cmax = shape
    x, w, b = _inputs(rows, c, cmax, dtype)
    gy = torch.randn(rows, active, generator=torch.Generator().manual_seed(1)).to(dtype)

    def op(fn):
        return lambda x, w, b: fn(x, w, b, active, EPS)

    kernel = run_with_grads(op(K.layer_norm), (x, w, b), gy)
    same = run_with_grads(op(R.layer_norm), (x, w, b), gy, device="cpu")
    ref = run_with_grads(op(R.layer_norm), (x, w, b), gy, torch.float64, "cpu")
    assert_within_2x_torch_scaled("y", kernel[0], same[0], ref[0], ATOL[dtype])
    for name, a, s, r in zip(("dx", "dweight", "dbias"), kernel[1], same[1], ref[1]):
        assert_within_2x_torch_scaled(name, a, s, r, ATOL[dtype])
    dx, dw, db = kernel[1]
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == b.shape
    assert dw.dtype == w.dtype
    assert not dx[:, active:].any() and not dw[active:].any() and not db[active:].any()


def test_layer_norm_fp32_params_under_fp16_activations():
    """AMP keeps LayerNorm parameters fp32: the kernel reads them as they are (no cast copy)."""
    rows, c, active, cmax = 197, 240, 216, 240
    x, w, b = _inputs(rows, c, cmax, torch.float16)
    w, b = w.float(), b.float()
    gy = torch.randn(rows, active).to(torch.float16)
    kernel = run_with_grads(lambda x, w, b: K.layer_norm(x, w, b, active, EPS), (x, w, b), gy)
    assert kernel[0].dtype == torch.float16 and kernel[1][1].dtype == torch.float32
    same = run_with_grads(lambda x, w, b: R.layer_norm(x, w, b, active, EPS), (x, w, b), gy, torch.float16, "cpu")
    ref = run_with_grads(lambda x, w, b: R.layer_norm(x, w, b, active, EPS), (x, w, b), gy, torch.float64, "cpu")
    for name, a, s, r in zip(("y", "dx", "dweight", "dbias"), [kernel[0], *kernel[1]], [same[0], *same[1]], [ref[0], *ref[1]]):
        assert_within_2x_torch_scaled(name, a, s, r, ATOL[torch.float16])


def test_layer_norm_3d_input_and_no_weight_grad():
    x, w, b = _inputs(2 * 25, 216, 240, torch.float32)
    x = x.reshape(2, 25, 216).to(DEV).requires_grad_(True)
    w, b = w.to(DEV), b.to(DEV)
    y = K.layer_norm(x, w, b, 200, EPS)
    assert y.shape == (2, 25, 200)
    (dx,) = torch.autograd.grad(y.square().sum(), x)
    xr = x.detach().double().requires_grad_(True)
    yr = R.layer_norm(xr, w.double(), b.double(), 200, EPS)
    (dxr,) = torch.autograd.grad(yr.square().sum(), xr)
    torch.testing.assert_close(y.double(), yr, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dx.double(), dxr, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "change,name",
    [
        ({"x": torch.randn(4, 24, dtype=torch.float64)}, "x.dtype"),
        ({"weight": torch.randn(4, 8)}, "weight"),
        ({"bias": torch.randn(31)}, "bias"),
        ({"active": 25}, "active"),
        ({"active": 0}, "active"),
        ({"eps": -1.0}, "eps"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(change, name):
    args = {"x": torch.randn(4, 24), "weight": torch.randn(32), "bias": torch.randn(32), "active": 20, "eps": EPS}
    args.update(change)
    args = {k: v.to(DEV) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    with pytest.raises(ValueError, match=name):
        K.layer_norm(**args)


def test_opcheck():
    x = torch.randn(3, 5, 40, device=DEV, requires_grad=True)
    w = torch.randn(48, device=DEV, requires_grad=True)
    b = torch.randn(48, device=DEV, requires_grad=True)
    torch.library.opcheck(torch.ops.shiftnas.elastic_layer_norm.default, (x, w, b, 36, EPS))
