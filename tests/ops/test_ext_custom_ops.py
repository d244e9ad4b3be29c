"""The compiled ops are registered custom ops: `torch.library.opcheck` (schema, fake
implementation, autograd registration) passes on CPU for LayerNorm and depthwise conv, and
`torch.compile` traces the cpu backend's ops without a graph break."""

from __future__ import annotations

import pytest
import torch

from shiftnas import _ext

if _ext.load() is None:
    pytest.skip(str(_ext.unavailable_reason()), allow_module_level=True)

from shiftnas.ops import dwconv_ext, layer_norm_ext


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
