"""Tests of the compiled mask dot ``shiftnas::ext_mask_dot`` (the prefix-path mask tap's gradient,
registered by ``shiftnas._C``, called as ``torch.ops.shiftnas``) and its dispatch wrapper
(`shiftnas.ops.mask_dot_ext`).

Reference: `ref.mask_dot` (sum of y * dy over every dim but `dim`) in float64; the kernel is held
to the 2x rule against PyTorch in the tested dtype (tests/tolerance.py). Skipped when the
extension is not built, except under CI (env CI set), where a missing extension must fail the run.
"""

from __future__ import annotations

import os

import pytest
import torch
from tolerance import KERNEL_REL_ATOL, assert_within_2x_torch_scaled

from shiftnas import _ext

_C = _ext.load()
if _C is None:
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {_ext.unavailable_reason()}", pytrace=False)
    pytest.skip(str(_ext.unavailable_reason()), allow_module_level=True)
OPS = torch.ops.shiftnas

from shiftnas.ops import dispatch, ref
from shiftnas.ops.mask_dot_ext import mask_dot_cpu

DTYPES = [torch.float32, torch.bfloat16]

# (shape, dim): NCHW taps (H*W from 1 to above the long-row threshold, 256), [B, C] and
# [B, N, E] with the last dim, heads of [B, h, N, d], the first dim, a long outer (two-level sum)
# and channel counts that leave ragged vector tails and more than one channel block.
CASES = [
    ((3, 5, 7, 9), 1),
    ((2, 7, 1, 1), 1),
    ((3, 13, 3, 3), 1),
    ((2, 9, 17, 17), 1),  # inner 289: one dot per row
    ((5, 3, 16, 16), 1),  # inner 256: the threshold
    ((3, 11), 1),
    ((2, 7, 13), -1),
    ((3, 5, 33), 2),
    ((2, 3, 5, 7), 1),
    ((7, 4, 5), 0),
    ((1, 1, 300), 2),
    ((997, 37), 1),  # outer 997: partial sums of 32 slices
    ((2, 1100, 9), 1),  # 1100 x 9 > 8192: two channel blocks
]


def _ids(case):
    shape, dim = case
    return "x".join(map(str, shape)) + f"-d{dim}"


def _inputs(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    y, dy = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(2))
    return y.to(dtype), dy.to(dtype)


def _check(what, got, y, dy, dim):
    want = ref.mask_dot(y.double(), dy.double(), dim)
    same = ref.mask_dot(y, dy, dim)
    assert got.dtype == torch.float32
    assert_within_2x_torch_scaled(what, got, same, want, KERNEL_REL_ATOL[y.dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_kernel_matches_the_reference(case, dtype):
    shape, dim = case
    y, dy = _inputs(shape, dtype)
    _check(f"mask_dot {shape} dim {dim}", mask_dot_cpu(y, dy, dim), y, dy, dim)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_non_contiguous_inputs(dtype):
    """The op copies a strided y / dy once (the dispatcher sends those to ref instead)."""
    y, dy = _inputs((4, 6, 5, 7), dtype)
    y, dy = y.transpose(2, 3), dy.permute(0, 1, 3, 2)  # [4, 6, 7, 5] views
    assert not y.is_contiguous()
    _check("strided", OPS.ext_mask_dot(y, dy, 1), y, dy, 1)
    cl = torch.randn(3, 8, 5, 5).to(dtype).contiguous(memory_format=torch.channels_last)
    _check("channels_last", OPS.ext_mask_dot(cl, cl, 1), cl, cl, 1)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_backward_of_the_op(dtype):
    """The custom op's autograd (d y = g * dy, d dy = g * y along dim) matches ref's."""
    y, dy = _inputs((3, 5, 4, 3), dtype)
    g = torch.randn(5).float()
    got = torch.autograd.grad(mask_dot_cpu(y.requires_grad_(), dy.requires_grad_(), 1), (y, dy), g)
    yr, dyr = y.detach().double().requires_grad_(), dy.detach().double().requires_grad_()
    want = torch.autograd.grad(ref.mask_dot(yr, dyr, 1), (yr, dyr), g.double())
    yt, dyt = y.detach().requires_grad_(), dy.detach().requires_grad_()
    same = torch.autograd.grad(ref.mask_dot(yt, dyt, 1), (yt, dyt), g.to(dtype))
    for name, a, s, w in zip(("dy", "ddy"), got, same, want):
        assert a.dtype == dtype
        assert_within_2x_torch_scaled(name, a, s, w, KERNEL_REL_ATOL[dtype])


def test_op_passes_opcheck():
    y, dy = _inputs((3, 5, 4, 3), torch.float32)
    torch.library.opcheck(torch.ops.shiftnas.ext_mask_dot.default, (y.requires_grad_(), dy, 1))


def test_empty_and_bad_inputs():
    assert torch.equal(OPS.ext_mask_dot(torch.zeros(0, 4, 3), torch.zeros(0, 4, 3), 1), torch.zeros(4))
    y = torch.randn(2, 3)
    with pytest.raises(RuntimeError, match="dim must be in"):
        OPS.ext_mask_dot(y, y, 2)
    with pytest.raises(RuntimeError, match="same dtype"):
        OPS.ext_mask_dot(y, y.bfloat16(), 1)
    with pytest.raises(RuntimeError, match="shape"):
        OPS.ext_mask_dot(y, y.t().contiguous(), 1)
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        OPS.ext_mask_dot(y.double(), y.double(), 1)


def test_dispatch_sends_only_what_the_kernel_takes(monkeypatch):
    """The cpu backend runs contiguous fp32 / bf16 y, dy with a mask dim; the rest runs ref."""
    assert dispatch.select("mask_dot", torch.device("cpu"), torch.float32)[0] == "cpu"
    assert dispatch.select("mask_dot", torch.device("cpu"), torch.float64)[0] == "ref"
    calls = []
    kernel = OPS.ext_mask_dot
    monkeypatch.setattr(OPS, "ext_mask_dot", lambda *a: calls.append(a) or kernel(*a))
    y = torch.randn(3, 4, 5)
    cases = [(y, y, 1, True), (y, y, None, False), (y.transpose(1, 2), y.transpose(1, 2), 2, False),
             (y, y.bfloat16(), 1, False), (y.bfloat16(), y.bfloat16(), -1, True), (y.double(), y.double(), 1, False)]
    for a, b, dim, by_kernel in cases:
        n = len(calls)
        got = dispatch.call("mask_dot", a, b, dim)
        assert (len(calls) > n) == by_kernel, (a.dtype, b.dtype, a.is_contiguous(), dim)
        torch.testing.assert_close(got.double(), ref.mask_dot(a.double(), b.double(), dim), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_the_tap_gives_the_kernels_gradient(dtype):
    """`ref.mask_tap`'s mask gradient is the dispatched kernel's, cast to the mask's dtype."""
    y, dy = _inputs((4, 6, 5, 5), dtype)
    mask = torch.ones(6, requires_grad=True)
    ref.mask_tap(y, mask, 1).backward(dy)
    torch.testing.assert_close(mask.grad, mask_dot_cpu(y, dy, 1), rtol=0, atol=0)
