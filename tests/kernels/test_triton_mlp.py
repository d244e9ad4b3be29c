"""Triton elastic MLP (`shiftnas.kernels.mlp`) against `shiftnas.ops.ref.mlp` and `ref.mlp_masked`:
fc2(GELU(fc1(x)) * mask) on `ref.linear`.

On CUDA, or in Triton's interpreter on CPU tensors (tests/kernel_env.py). Tolerance: the 2x rule
with a slack relative to the output scale (tests/tolerance.py, `assert_within_2x_torch_scaled`).
"""
from __future__ import annotations

import pytest
import torch
from kernel_env import DEV, DTYPES, require_triton, run_with_grads
from tolerance import KERNEL_REL_ATOL, assert_within_2x_torch_scaled

require_triton()

from shiftnas.kernels import mlp as K

from shiftnas.ops import ref as R

ATOL = KERNEL_REL_ATOL  # x output scale
NAMES = ("dx", "dfc1_weight", "dfc1_bias", "dfc2_weight", "dfc2_bias", "dhidden_mask")

# (rows, embed, max embed, hidden, max hidden): ViT-ish odd widths; one 3000-wide hidden, few rows.
# ref.mlp is ElasticMLP.forward on the ref ops: fc1(x, hidden, "gelu") * mask -> fc2(h, E).
SHAPES = [
    (50, 192, 216, 240, 256),
    (197, 216, 240, 192, 216),
    (4, 72, 80, 3000, 3000),
]


def _params(rows, e, emax, h, hmax, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, e, generator=g).to(dtype)
    w1 = (torch.randn(hmax, emax, generator=g) / emax**0.5).to(dtype)
    b1 = (torch.randn(hmax, generator=g) * 0.1).to(dtype)
    w2 = (torch.randn(emax, hmax, generator=g) / hmax**0.5).to(dtype)
    b2 = (torch.randn(emax, generator=g) * 0.1).to(dtype)
    mask = torch.rand(h, generator=g) + 0.5  # fp32, as the architecture generator emits it
    gy = torch.randn(rows, e, generator=g).to(dtype)
    return (x, w1, b1, w2, b2, mask), gy


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_mlp_matches_ref(shape, dtype):
    rows, e, emax, h, hmax = shape
    tensors, gy = _params(rows, e, emax, h, hmax, dtype)

    def op(fn):
        return lambda x, w1, b1, w2, b2, m: fn(x, w1, b1, w2, b2, h, hidden_mask=m)

    kernel = run_with_grads(op(K.mlp), tensors, gy)
    same = run_with_grads(op(R.mlp), tensors, gy, dtype, "cpu")
    ref = run_with_grads(op(R.mlp), tensors, gy, torch.float64, "cpu")
    assert_within_2x_torch_scaled("y", kernel[0], same[0], ref[0], ATOL[dtype])
    for name, a, s, r in zip(NAMES, kernel[1], same[1], ref[1]):
        assert_within_2x_torch_scaled(name, a, s, r, ATOL[dtype])
    _, dw1, db1, dw2, db2, _ = kernel[1]
    assert not dw1[h:].any() and not dw1[:, e:].any() and not db1[h:].any()
    assert not dw2[e:].any() and not dw2[:, h:].any() and not db2[e:].any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", [100, 7, 240, 0])
def test_mlp_masked_matches_ref(width, dtype):
    """Hidden width as a device tensor: channels past it are neither computed nor updated."""
    rows, e, emax, h, hmax = 50, 192, 216, 240, 256
    tensors, gy = _params(rows, e, emax, h, hmax, dtype)

    def op(fn, device):
        hw = torch.tensor(width, device=device)
        return lambda x, w1, b1, w2, b2, m: fn(x, w1, b1, w2, b2, h, hidden_width=hw, hidden_mask=m)

    kernel = run_with_grads(op(K.mlp_masked, DEV), tensors, gy)
    same = run_with_grads(op(R.mlp_masked, "cpu"), tensors, gy, dtype, "cpu")
    ref = run_with_grads(op(R.mlp_masked, "cpu"), tensors, gy, torch.float64, "cpu")
    assert_within_2x_torch_scaled("y", kernel[0], same[0], ref[0], ATOL[dtype])
    for name, a, s, r in zip(NAMES, kernel[1], same[1], ref[1]):
        assert_within_2x_torch_scaled(name, a, s, r, ATOL[dtype])
    _, dw1, db1, dw2, _, dmask = kernel[1]
    assert not dw1[width:].any() and not db1[width:].any() and not dw2[:, width:].any()
    assert not dmask[width:].any()


def test_mlp_masked_equals_sliced_op():
    (x, w1, b1, w2, b2, mask), _ = _params(197, 216, 240, 240, 256, torch.float32)
    x, w1, b1, w2, b2, mask = (t.to(DEV) for t in (x, w1, b1, w2, b2, mask))
    y = K.mlp_masked(x, w1, b1, w2, b2, 240, hidden_width=torch.tensor(150, device=DEV), hidden_mask=mask)
    sliced = K.mlp(x, w1, b1, w2, b2, 150, hidden_mask=mask[:150])
    torch.testing.assert_close(y, sliced, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "change,name",
    [
        ({"x": torch.randn(4, 8, dtype=torch.float64)}, "x.dtype"),
        ({"fc1_weight": torch.randn(32)}, "fc1_weight"),
        ({"fc2_weight": torch.randn(6, 32)}, "fc2_weight"),
        ({"hidden": 33}, "hidden"),
        ({"fc1_bias": torch.randn(31)}, "fc1_bias"),
        ({"hidden_mask": torch.ones(3)}, "hidden_mask"),
        ({"hidden_width": torch.tensor(1.5)}, "hidden_width"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(change, name):
    args = {"x": torch.randn(4, 8), "fc1_weight": torch.randn(32, 10), "fc1_bias": torch.randn(32),
                "fc2_weight": torch.randn(10, 32), "fc2_bias": torch.randn(10), "hidden": 20,
                "hidden_width": torch.tensor(12), "hidden_mask": torch.ones(20)}
    args.update(change)
    args = {k: v.to(DEV) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    pos = [args.pop(k) for k in ("x", "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias", "hidden")]
    with pytest.raises(ValueError, match=name):
        K.mlp_masked(*pos, **args)


def test_opcheck():
    (x, w1, b1, w2, b2, mask), _ = _params(6, 24, 32, 40, 48, torch.float32)
    x, w1, b1, w2, b2, mask = (t.to(DEV).requires_grad_(True) for t in (x, w1, b1, w2, b2, mask))
    torch.library.opcheck(torch.ops.shiftnas.elastic_mlp.default,
                          (x, w1, b1, w2, b2, 40, torch.tensor(30, device=DEV), mask, True))
