"""Every op of every backend that can run here agrees with the `ref` backend, forward and backward:
each (backend, op) pair a backend registers is called on small odd-sized fp32 inputs (on CUDA when
there is a GPU, else CPU; Triton in its interpreter) and held to the 2x rule against the ref op in
float64 (tests/tolerance.py), so no backend's op goes untested when it is added to the table."""
from __future__ import annotations

import pytest
import torch
from tolerance import assert_within_2x_torch_scaled

from shiftnas.ops import dispatch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
REL_ATOL = 1e-5  # x output scale, fp32


def _inputs(op: str, g: torch.Generator) -> tuple[list, tuple]:
    """(tensors, other arguments) of `op` at a small odd size with a narrower active part."""
    r = lambda *s: torch.randn(*s, generator=g)
    if op == "linear":
        return [r(3, 7, 13), r(24, 16), r(24)], (19, "gelu")
    if op == "mlp":
        return [r(3, 5, 13), r(40, 16), r(40), r(16, 40), r(16), torch.rand(33, generator=g)], (33,)
    if op == "layer_norm":
        return [r(3, 5, 20), r(24), r(24)], (17, 1e-5)
    if op == "attention":
        return [r(2, 2, 9, 32), r(2, 2, 9, 32), r(2, 2, 9, 32)], ()
    if op == "attention_masked":
        return [r(2, 3, 9, 32), r(2, 3, 9, 32), r(2, 3, 9, 32), torch.rand(4, generator=g)], ()
    if op == "dwconv":
        return [r(2, 5, 11, 11), r(8, 1, 5, 5), r(8)], (2, 2)
    if op == "mask_dot":
        return [r(3, 5, 7, 9), r(3, 5, 7, 9)], (1,)
    return [], ()  # an op no backend but ref implements: nothing to compare


def _call(fn, op: str, tensors: list, args: tuple):
    if op == "mlp":  # the mask comes after `hidden`
        return fn(*tensors[:5], *args, tensors[5])
    return fn(*tensors, *args)


def _run(fn, op, tensors, args, dtype):
    leaves = [t.to(DEVICE, dtype).requires_grad_() for t in tensors]
    y = _call(fn, op, leaves, args)
    gy = torch.linspace(-1, 1, y.numel(), device=DEVICE, dtype=dtype).reshape(y.shape)
    return [y.detach(), *torch.autograd.grad(y, leaves, gy)]


PAIRS = [(name, op) for name, b in dispatch.backends().items() if name != "ref" for op in sorted(b.ops)]


@pytest.mark.parametrize(("backend", "op"), PAIRS, ids=[f"{b}-{o}" for b, o in PAIRS])
def test_the_backends_op_agrees_with_ref(backend, op):
    b = dispatch.backends()[backend]
    why = b.reasons(op, torch.device(DEVICE), torch.float32, forced=True)
    if why:
        pytest.skip("; ".join(why))
    tensors, args = _inputs(op, torch.Generator().manual_seed(0))
    assert tensors, f"{op}: add its inputs to _inputs"
    check = b.op_args.get(op)
    assert check is None or check(*_call(lambda *a: a, op, tensors, args)) is None, "inputs within its limits"
    ref_op = dispatch.backends()["ref"].ops[op]
    got = _run(b.ops[op], op, tensors, args, torch.float32)
    same = _run(ref_op, op, tensors, args, torch.float32)
    want = _run(ref_op, op, tensors, args, torch.float64)
    names = ["y"] + [f"d{i}" for i in range(len(tensors))]
    for name, a, s, w in zip(names, got, same, want):
        assert_within_2x_torch_scaled(f"{backend} {op} {name}", a, s, w, REL_ATOL)
