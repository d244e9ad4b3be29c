"""The compiled ops are operators registered by C++: ``shiftnas._C`` defines ``shiftnas::ext_*``
(schemas, CPU kernels, autograd as a ``torch::autograd::Function`` for the Autograd key) when it is
loaded, and Python adds only their fake implementations. `torch.library.opcheck` (schema, fake
implementation, autograd registration) passes on CPU for LayerNorm and depthwise conv, `torch.compile`
traces the cpu backend's ops without a graph break, loading the module again registers nothing
twice, and the gradients through the ops match `shiftnas.ops.ref` at odd shapes (fp32, bf16)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from tolerance import KERNEL_REL_ATOL, assert_within_2x_torch_scaled

from shiftnas import _ext

if _ext.load() is None:
    pytest.skip(str(_ext.unavailable_reason()), allow_module_level=True)

from shiftnas.ops import dwconv_ext, layer_norm_ext, mask_dot_ext, ref

OPS = ("ext_layer_norm", "ext_layer_norm_backward", "ext_dwconv", "ext_dwconv_backward", "ext_mask_dot")
DIFFERENTIABLE = ("ext_layer_norm", "ext_dwconv", "ext_mask_dot")


def _ln_args(rows=(3, 5), c=12, cmax=16, active=9):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*rows, c, generator=g, requires_grad=True)
    w = torch.randn(cmax, generator=g, requires_grad=True)
    b = torch.randn(cmax, generator=g, requires_grad=True)
    return x, w, b, active, 1e-5


def _dw_args(bias=True, stride=2):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 9, 9, generator=g, requires_grad=True)
    w = torch.randn(8, 1, 3, 3, generator=g, requires_grad=True)
    b = torch.randn(8, generator=g, requires_grad=True) if bias else None
    return x, w, b, stride, 1


@pytest.mark.parametrize("name", OPS)
def test_the_ops_are_registered_by_cpp(name):
    """Schema, CPU kernel and autograd come from csrc/ops.cpp; nothing of them from Python."""
    qualname = f"shiftnas::{name}"
    op = getattr(torch.ops.shiftnas, name).default
    assert not op._defined_in_python
    dump = torch._C._dispatch_dump(qualname)
    assert "ops.cpp" in dump.split("debug: ", 1)[1].split("\n", 1)[0], dump  # the schema's registration
    assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CPU")
    for line in dump.splitlines():  # every kernel but the fake one (Meta / Python) is C++
        if line.startswith(("CPU:", "Autograd[alias]:", "CUDA:")):
            assert "ops.cpp" in line or "_cuda.cu" in line, line
    if name in DIFFERENTIABLE:
        assert "Autograd[alias]: " in dump and "ops.cpp" in dump.split("Autograd[alias]: ", 1)[1].split("\n")[0]
    # CUDA kernels in a CUDA build (mask_dot has a CPU kernel only)
    has_cuda = _ext.has_cuda_ops() and name != "ext_mask_dot"
    assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CUDA") == has_cuda


def test_loading_the_module_again_registers_nothing_twice():
    """A second import, a reload and torch.ops.load_library of the same file are no-ops."""
    code = (
        "import importlib, torch\n"
        "from shiftnas import _ext\n"
        "C = _ext.require()\n"
        "importlib.reload(C)\n"
        "torch.ops.load_library(C.__file__)\n"
        "import shiftnas._C\n"
        "from shiftnas.ops import layer_norm_ext\n"
        "importlib.reload(layer_norm_ext)\n"
        "x = torch.randn(4, 8, requires_grad=True)\n"
        "w, b = torch.ones(8), torch.zeros(8)\n"
        "layer_norm_ext.layer_norm_cpu(x, w, b, 6, 1e-5).sum().backward()\n"
        "print(x.grad.shape)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split("\n")[-2] == "torch.Size([4, 8])"


def test_double_backward_is_an_error():
    x, w, b, active, eps = _ln_args()
    y = layer_norm_ext.layer_norm_cpu(x, w, b, active, eps)
    (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="ext_layer_norm_backward"):
        gx.sum().backward()


def test_no_grad_and_inference_mode_calls():
    x, w, b, active, eps = _ln_args()
    want = layer_norm_ext.layer_norm_cpu(x, w, b, active, eps).detach()
    with torch.no_grad():
        y = layer_norm_ext.layer_norm_cpu(x, w, b, active, eps)
    assert y.grad_fn is None and not y.requires_grad and torch.equal(y, want)
    with torch.inference_mode():
        y = layer_norm_ext.layer_norm_cpu(x, w, b, active, eps)
    assert torch.equal(y, want)


def test_layer_norm_op_passes_opcheck():
    torch.library.opcheck(torch.ops.shiftnas.ext_layer_norm.default, _ln_args())


@pytest.mark.parametrize("bias", [True, False])
def test_dwconv_op_passes_opcheck(bias):
    torch.library.opcheck(torch.ops.shiftnas.ext_dwconv.default, _dw_args(bias))


def test_compile_traces_the_cpu_ops_in_one_graph():
    x, w, b, active, eps = _ln_args()
    xd, wd, bd, stride, pad = _dw_args()

    def f(x, w, b, xd, wd, bd):
        return (layer_norm_ext.layer_norm_cpu(x, w, b, active, eps).sum()
                + dwconv_ext.dwconv_cpu(xd, wd, bd, stride, pad).sum())

    want = f(x, w, b, xd, wd, bd)
    got = torch.compile(f, backend="eager", fullgraph=True)(x, w, b, xd, wd, bd)
    torch.testing.assert_close(got, want)


# --- gradients through the ops vs shiftnas.ops.ref at odd shapes --------------------------------


def _grads(fn, args, gy):
    """fn(*args) and the gradients of <fn(*args), gy> for the args that require grad."""
    y = fn(*args)
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    return (y.detach(), *torch.autograd.grad(y, leaves, gy))


def _leaves(ts, dtype):
    return [None if t is None else t.detach().to(dtype).requires_grad_(True) for t in ts]


def _check_against_ref(name, ours, reference, tensors, scalars, gy, dtype):
    """ours vs ref in float64, held to 2x ref's own error in `dtype` (tests/tolerance.py)."""
    got = _grads(ours, (*_leaves(tensors, dtype), *scalars), gy.to(dtype))
    want = _grads(reference, (*_leaves(tensors, torch.float64), *scalars), gy.double())
    same = _grads(reference, (*_leaves(tensors, dtype), *scalars), gy.to(dtype))
    for what, g, s, r in zip(("y", "grad_x", "grad_weight", "grad_bias"), got, same, want):
        assert g.dtype == dtype, what
        assert_within_2x_torch_scaled(f"{name} {what}", g, s, r, KERNEL_REL_ATOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("rows,c,cmax,active", [((3, 7), 13, 17, 11), ((5,), 33, 33, 33), ((2, 3, 1), 9, 12, 5)])
def test_layer_norm_gradients_match_ref(dtype, rows, c, cmax, active):
    g = torch.Generator().manual_seed(c)
    x = torch.randn(*rows, c, generator=g, dtype=torch.float64) * 2 + 0.5
    w = torch.randn(cmax, generator=g, dtype=torch.float64) * 0.5 + 1
    b = torch.randn(cmax, generator=g, dtype=torch.float64) * 0.1
    gy = torch.randn(*rows, active, generator=g, dtype=torch.float64)
    _check_against_ref("layer_norm", layer_norm_ext.layer_norm_cpu, ref.layer_norm, (x, w, b), (active, 1e-5), gy,
                       dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape,cmax,k,stride,bias", [((2, 5, 9, 11), 7, 3, 2, True), ((3, 3, 7, 5), 3, 5, 1, False),
                                                      ((1, 6, 13, 13), 9, 7, 2, True)])
def test_dwconv_gradients_match_ref(dtype, shape, cmax, k, stride, bias):
    g = torch.Generator().manual_seed(k)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    w = torch.randn(cmax, 1, k, k, generator=g, dtype=torch.float64) / k
    b = torch.randn(cmax, generator=g, dtype=torch.float64) if bias else None
    ho, wo = ((s + 2 * (k // 2) - k) // stride + 1 for s in shape[2:])
    gy = torch.randn(shape[0], shape[1], ho, wo, generator=g, dtype=torch.float64)
    tensors = (x, w) if b is None else (x, w, b)
    if b is None:
        ours = lambda x, w, s, p: dwconv_ext.dwconv_cpu(x, w, None, s, p)
        reference = lambda x, w, s, p: ref.dwconv(x, w, None, s, p)
    else:
        ours, reference = dwconv_ext.dwconv_cpu, ref.dwconv
    _check_against_ref("dwconv", ours, reference, tensors, (stride, k // 2), gy, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_mask_dot_gradients_match_ref(dtype):
    g = torch.Generator().manual_seed(3)
    y, dy = (torch.randn(3, 7, 5, generator=g, dtype=torch.float64) for _ in range(2))
    gout = torch.randn(7, generator=g, dtype=torch.float64)
    got = _grads(mask_dot_ext.mask_dot_cpu, (*_leaves((y, dy), dtype), 1), gout.float())
    want = _grads(ref.mask_dot, (*_leaves((y, dy), torch.float64), 1), gout)
    same = _grads(ref.mask_dot, (*_leaves((y, dy), dtype), 1), gout.to(dtype))
    for what, a, s, r in zip(("out", "grad_y", "grad_dy"), got, same, want):
        assert_within_2x_torch_scaled(f"mask_dot {what}", a, s, r, KERNEL_REL_ATOL[dtype])
