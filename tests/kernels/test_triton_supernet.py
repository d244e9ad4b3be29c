"""The whole supernet forward/backward through the triton backend equals the ref backend
(SHIFTNAS_BACKEND=triton; on a machine without a GPU the kernels run in Triton's interpreter
on CPU tensors, so the architectures are the spaces' smallest)."""
from __future__ import annotations

import pytest
import torch
from shiftnas.kernels._env import interpret_mode
from tolerance import assert_rel_close

from shiftnas import build_supernet, get_space
from shiftnas.ops import dispatch
from shiftnas.spaces.arch_sample import ArchSample

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and not interpret_mode(),
    reason="needs a GPU or TRITON_INTERPRET=1",
)


def _run(monkeypatch, backend: str, net, x, arch):
    monkeypatch.setenv("SHIFTNAS_BACKEND", backend)
    dispatch.refresh()
    try:
        for p in net.parameters():
            p.grad = None
        sample = arch if not isinstance(arch, ArchSample) else ArchSample(
            arch.space, {k: v.detach().clone().requires_grad_(True) for k, v in arch.onehots.items()}
        )
        out = net(x, sample)
        out.float().square().mean().backward()
        grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
        if isinstance(sample, ArchSample):
            grads.update({f"onehot:{k}": v.grad.clone() for k, v in sample.onehots.items() if v.grad is not None})
        used = {dispatch.select(op, x.device, x.dtype)[0] for op in ("linear", "mlp", "layer_norm", "attention")}
        return out.detach(), grads, used
    finally:
        monkeypatch.delenv("SHIFTNAS_BACKEND")
        dispatch.refresh()


@pytest.mark.parametrize("as_sample", [False, True], ids=["arch", "generator-sample"])
def test_vit_supernet_triton_equals_ref(monkeypatch, as_sample):
    torch.manual_seed(0)
    space = get_space("vit-fmnist")
    net = build_supernet("vit-fmnist")
    arch = space.min()
    fed = ArchSample.from_arch(arch, requires_grad=True) if as_sample else arch
    x = torch.randn(2, 1, 28, 28)
    out_r, g_r, used_r = _run(monkeypatch, "ref", net, x, fed)
    out_t, g_t, used_t = _run(monkeypatch, "triton", net, x, fed)
    assert used_r == {"ref"} and used_t == {"triton"}
    assert_rel_close("logits", out_t, out_r)
    assert g_t.keys() == g_r.keys()
    for k in g_r:
        assert_rel_close(f"grad {k}", g_t[k], g_r[k])


def test_cnn_supernet_dwconv_triton_equals_ref(monkeypatch):
    torch.manual_seed(0)
    space = get_space("cnn-fmnist")
    net = build_supernet("cnn-fmnist")
    arch = space.min()
    x = torch.randn(2, 1, arch["resolution"], arch["resolution"])
    out_r, g_r, _ = _run(monkeypatch, "ref", net, x, arch)
    out_t, g_t, _ = _run(monkeypatch, "triton", net, x, arch)
    assert_rel_close("logits", out_t, out_r)
    for k in g_r:
        assert_rel_close(f"grad {k}", g_t[k], g_r[k])


def test_vit_supernet_with_rel_pos_runs_its_attention_on_ref(monkeypatch):
    """Forced triton, a supernet with relative position encodings: linear, mlp and layer_norm run
    on triton, attention_relpos falls back to ref (no error), and the result equals all-ref."""
    from shiftnas.spaces.vit import vit_variant

    space = vit_variant("vit-fmnist", "vit-fmnist-relpos", rel_pos=2, pool="mean", ln_eps=1e-5)
    torch.manual_seed(0)
    net = build_supernet(space.name)
    x = torch.randn(2, 1, 28, 28)
    out_r, g_r, _ = _run(monkeypatch, "ref", net, x, space.min())
    monkeypatch.setenv("SHIFTNAS_BACKEND", "triton")
    dispatch.refresh()
    assert dispatch.select("attention_relpos", x.device, x.dtype)[0] == "ref"
    assert dispatch.select("linear", x.device, x.dtype)[0] == "triton"
    out_t, g_t, used_t = _run(monkeypatch, "triton", net, x, space.min())
    assert used_t == {"triton"}  # linear, mlp, layer_norm (and plain attention) on triton
    assert_rel_close("logits", out_t, out_r)
    assert g_t.keys() == g_r.keys() and any("rel_pos" in k for k in g_r)
    for k in g_r:
        assert_rel_close(f"grad {k}", g_t[k], g_r[k])
