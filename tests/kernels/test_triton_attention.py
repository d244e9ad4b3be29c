"""Triton elastic attention (kernels/attention.py) against the SDPA reference, forward and backward:
`shiftnas.ops.ref.attention_heads` (`ref.attention`, or `ref.attention_masked` and a head count).

Without a GPU the kernels run in the Triton interpreter on CPU tensors (tests/conftest.py sets
TRITON_INTERPRET=1 before this module imports them); shapes stay small because it is slow.
Tolerance (docs/design.md, "Kernel tests"): max |kernel - ref| <= 2 * max |torch same dtype -
ref| + atol, with ref the fp64 computation on the same (rounded) inputs. bf16 runs only on CUDA:
the interpreter's tl.dot is wrong for bf16.
"""
import pytest
import torch
from shiftnas.kernels.attention import (
    elastic_attention,
    elastic_attention_masked,
)
from tolerance import assert_within_2x_torch, ref_scale

from shiftnas.ops.ref import attention_heads

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])
# Absolute slack on top of the 2x rule, relative to the reference's largest magnitude.
ATOL = {torch.float32: 1e-6, torch.float16: 1e-4, torch.bfloat16: 1e-3}


def _inputs(B, H, N, d, dtype, seed=0, layout="qkv"):
    """q, k, v [B, H, N, d] (views of a head-major qkv buffer, as ElasticAttention makes them,
    or contiguous) and a non-contiguous dO."""
    g = torch.Generator().manual_seed(seed)
    if layout == "qkv":
        buf = torch.randn(B, N, H, 3, d, generator=g).to(DEVICE, dtype)
        q, k, v = buf.permute(3, 0, 2, 1, 4).unbind(0)
    else:
        q, k, v = (torch.randn(B, H, N, d, generator=g).to(DEVICE, dtype) for _ in range(3))
    do = torch.randn(B, N, H, d, generator=g).to(DEVICE, dtype).transpose(1, 2)
    return q, k, v, do


def _outputs(fn, q, k, v, do, head_mask=None, num_heads=None):
    """(o, dq, dk, dv[, d_head_mask]) of fn, gradients by autograd."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    args = list(leaves)
    if head_mask is not None:
        head_mask = head_mask.detach().clone().requires_grad_()
        leaves.append(head_mask)
        args += [head_mask, num_heads]
    o = fn(*args)
    grads = torch.autograd.grad(o, leaves, do)
    return (o.detach(), *grads)


def _compare(names, got, same, ref, atol):
    for name, g, s, r in zip(names, got, same, ref):
        assert_within_2x_torch(name, g, s, r, atol * max(ref_scale(r), 1.0))


def _check_against_ref(fn, q, k, v, do, dtype, head_mask=None, num_heads=None):
    got = _outputs(fn, q, k, v, do, head_mask, num_heads)
    same = _outputs(attention_heads, q, k, v, do, head_mask, num_heads)
    d64 = [t.double() for t in (q, k, v, do)]
    mask64 = None if head_mask is None else head_mask.double()
    ref = _outputs(attention_heads, *d64, mask64, num_heads)
    names = ["o", "dq", "dk", "dv", "d_head_mask"]
    _compare(names, got, same, ref, ATOL[dtype])
    return got


# (B, H, N, d): N = 50 (one masked tile) and 197 (four tiles, masked tail) are the ViT lengths.
SHAPES = [(1, 1, 50, 32), (2, 3, 50, 64), (1, 2, 197, 32)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(shape, dtype):
    q, k, v, do = _inputs(*shape, dtype)
    o = _check_against_ref(elastic_attention, q, k, v, do, dtype)[0]
    # The output is laid out [B, N, H, d] so that the caller's merge of heads is a view.
    assert o.transpose(1, 2).is_contiguous()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "shape, mask, num_heads",
    [
        # H_max = 4 > H = 3 mask entries; head 2 has mask 0: no dq/dk/dv but a d(mask).
        ((2, 3, 50, 32), [1.0, 0.5, 0.0, 0.7], None),
        # Device head count 2 of 3: head 2 is skipped (zero output, zero grads, zero d(mask)).
        ((1, 3, 197, 64), [0.9, -0.4, 0.6], 2),
    ],
    ids=["mask", "mask+num_heads"],
)
def test_masked_matches_reference(shape, mask, num_heads, dtype):
    q, k, v, do = _inputs(*shape, dtype, seed=1)
    head_mask = torch.tensor(mask, device=DEVICE)
    nh = None if num_heads is None else torch.tensor([num_heads], device=DEVICE)
    got = _check_against_ref(elastic_attention_masked, q, k, v, do, dtype, head_mask, nh)
    o, dq, dk, dv, dmask = got
    assert dmask.dtype == head_mask.dtype and dmask.shape == head_mask.shape
    H = shape[1]
    assert (dmask[H:] == 0).all()
    for h, m in enumerate(mask[:H]):
        skipped = num_heads is not None and h >= num_heads
        if skipped or m == 0.0:
            assert (dq[:, h] == 0).all() and (dk[:, h] == 0).all() and (dv[:, h] == 0).all()
        if skipped:
            assert (o[:, h] == 0).all() and dmask[h] == 0
        elif m == 0.0:
            assert dmask[h] != 0


@pytest.mark.parametrize("num_heads", [0, 5])
def test_num_heads_edge_values(num_heads):
    """0 active heads: all zeros; more than H: every head computed."""
    q, k, v, do = _inputs(2, 2, 20, 32, torch.float32, seed=2)
    head_mask = torch.ones(2, device=DEVICE)
    nh = torch.tensor(num_heads, device=DEVICE)
    got = _outputs(elastic_attention_masked, q, k, v, do, head_mask, nh)
    if num_heads == 0:
        assert all((t == 0).all() for t in got)
    else:
        ref = _outputs(elastic_attention, q, k, v, do)
        for g, r in zip(got, ref):
            torch.testing.assert_close(g, r, rtol=0, atol=0)


def test_contiguous_inputs_and_saved_logsumexp():
    q, k, v, do = _inputs(1, 2, 33, 64, torch.float32, seed=3, layout="contiguous")
    _check_against_ref(elastic_attention, q, k, v, do, torch.float32)
    _, o_raw, lse2 = torch.ops.shiftnas.elastic_attention(q, k, v)
    assert o_raw.numel() == 0
    scores = (q.double() @ k.double().transpose(-1, -2)) / 64**0.5
    expected = torch.logsumexp(scores, dim=-1) / torch.log(torch.tensor(2.0, dtype=torch.float64))
    torch.testing.assert_close(lse2.double(), expected, rtol=0, atol=1e-5)


def test_torch_compile_traces_the_op():
    q, k, v, do = _inputs(1, 2, 20, 32, torch.float32, seed=4)
    head_mask = torch.tensor([1.0, 0.5], device=DEVICE)
    nh = torch.tensor([2], device=DEVICE)
    compiled = torch.compile(elastic_attention_masked, backend="aot_eager", fullgraph=True)
    got = _outputs(compiled, q, k, v, do, head_mask, nh)
    eager = _outputs(elastic_attention_masked, q, k, v, do, head_mask, nh)
    for g, e in zip(got, eager):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


@pytest.mark.parametrize("masked", [False, True], ids=["plain", "masked"])
def test_opcheck(masked):
    q, k, v, _ = _inputs(1, 2, 20, 32, torch.float32, seed=5)
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    args = (q, k, v)
    if masked:
        head_mask = torch.tensor([0.5, 1.0], device=DEVICE, requires_grad=True)
        args += (head_mask, torch.tensor([1], device=DEVICE))
    torch.library.opcheck(torch.ops.shiftnas.elastic_attention.default, args)


def _bad_cases():
    def qkv(N=8, d=32, dtype=torch.float32):
        return [torch.zeros(1, 2, N, d, dtype=dtype, device=DEVICE) for _ in range(3)]

    q, k, v = qkv()
    ones = torch.ones(2, device=DEVICE)
    yield "ndim", (q[0], k[0], v[0]), {}, "q must be 4-D"
    yield "k shape", (q, qkv(N=9)[1], v), {}, "k shape"
    yield "v dtype", (q, k, v.half()), {}, "v dtype"
    yield "float64", qkv(dtype=torch.float64), {}, "q dtype torch.float64 unsupported"
    yield "head dim", qkv(d=48), {}, "head_dim d=48 unsupported"
    if not CUDA:
        bf16 = qkv(dtype=torch.bfloat16)
        yield "bf16 interpreted", bf16, {}, "bfloat16 unsupported in the Triton interpreter"
    yield "device", (q, k, v.to("meta")), {}, "v is on meta"
    yield "short mask", (q, k, v), {"head_mask": ones[:1]}, "head_mask has 1 entries"
    yield "int mask", (q, k, v), {"head_mask": ones.long()}, "head_mask must be a 1-D float"
    float_nh = torch.tensor(1.0, device=DEVICE)
    yield "float num_heads", (q, k, v), {"head_mask": ones, "num_heads": float_nh}, "num_heads must"
    yield "int num_heads", (q, k, v), {"head_mask": ones, "num_heads": 1}, "num_heads must"


@pytest.mark.parametrize("case", list(_bad_cases()), ids=lambda c: c[0])
def test_bad_inputs_raise_value_error(case):
    _, args, kwargs, match = case
    with pytest.raises(ValueError, match=match):
        if "head_mask" in kwargs:
            elastic_attention_masked(*args, **kwargs)
        else:
            elastic_attention(*args)
