"""`torch.compile(fullgraph=True)` traces a supernet training step (forward and loss; the backward
through AOT autograd) with every backend forced in turn (SHIFTNAS_BACKEND) that can run here: no
graph break anywhere in the dispatch or a compiled op, and the loss and gradients are eager's.
Triton runs in its interpreter on CPU tensors (tests/conftest.py) when there is no GPU."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from shiftnas import build_supernet, get_space
from shiftnas.ops import dispatch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _why_not(backend: str) -> str | None:
    b = dispatch.backends()[backend]
    why = b.available()
    if why is None and DEVICE not in b.devices:
        why = f"{backend} runs on {list(b.devices)} tensors, not {DEVICE}"
    return why


@pytest.fixture(params=dispatch.BACKEND_ORDER)
def forced(request, monkeypatch):
    why = _why_not(request.param)
    if why:
        pytest.skip(why)
    monkeypatch.setenv("SHIFTNAS_BACKEND", request.param)
    dispatch.refresh()
    yield request.param
    monkeypatch.delenv("SHIFTNAS_BACKEND")
    dispatch.refresh()


@pytest.mark.parametrize("space", ["vit-fmnist", "cnn-fmnist"])
def test_compile_traces_a_supernet_step_in_one_graph(forced, space):
    torch.manual_seed(0)
    sp = get_space(space)
    model = build_supernet(space).to(DEVICE).train()
    arch = sp.min()
    res = arch.to_dict().get("resolution", sp.hparams.get("img_size"))  # a CNN space takes its arch's
    x = torch.randn(2, 1, res, res, device=DEVICE)
    y = torch.tensor([1, 7], device=DEVICE)

    def step(x, y):
        return F.cross_entropy(model(x, arch), y)

    def grads(loss):
        model.zero_grad(set_to_none=True)
        loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    torch._dynamo.reset()
    want_loss = step(x, y)
    want = grads(want_loss)
    got_loss = torch.compile(step, fullgraph=True, backend="aot_eager")(x, y)
    got = grads(got_loss)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6)
    assert got.keys() == want.keys()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
