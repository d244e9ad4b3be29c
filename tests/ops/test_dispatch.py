import pytest
import torch

from shiftnas import _ext
from shiftnas.ops import ElasticLayerNorm, dispatch, ref


@pytest.fixture(autouse=True)
def _clear_cache():
    dispatch.refresh()
    yield
    dispatch.refresh()


def test_every_op_has_ref():
    assert set(dispatch.backends()["ref"].ops) >= {"linear", "layer_norm", "attention", "conv2d", "batch_norm"}


def test_cpu_layer_norm_served_by_extension():
    name, _ = dispatch.select("layer_norm", torch.device("cpu"), torch.float32)
    if _ext.load() is None:
        assert name == "ref"
        pytest.fail(f"the cpu backend cannot run: {_ext.unavailable_reason()}")
    assert name == "cpu"


def test_forced_backend(monkeypatch):
    monkeypatch.setenv("SHIFTNAS_BACKEND", "ref")
    dispatch.refresh()
    assert dispatch.select("layer_norm", torch.device("cpu"), torch.float32)[0] == "ref"
    monkeypatch.setenv("SHIFTNAS_BACKEND", "cuda")
    dispatch.refresh()
    with pytest.raises(RuntimeError, match="SHIFTNAS_BACKEND=cuda cannot run layer_norm.*cuda.*tensors, got cpu"):
        dispatch.select("layer_norm", torch.device("cpu"), torch.float32)
    monkeypatch.setenv("SHIFTNAS_BACKEND", "fast")
    dispatch.refresh()
    with pytest.raises(ValueError, match=r"SHIFTNAS_BACKEND='fast'; allowed: \['triton', 'cuda', 'cpu', 'ref'\]"):
        dispatch.select("layer_norm", torch.device("cpu"), torch.float32)


def test_elastic_layer_norm_backends_agree(monkeypatch):
    torch.manual_seed(0)
    ln = ElasticLayerNorm(240)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    x = torch.randn(3, 50, 240)
    out = {}
    for b in ("ref", "cpu"):
        monkeypatch.setenv("SHIFTNAS_BACKEND", b)
        dispatch.refresh()
        xi = x.clone().requires_grad_()
        ln.zero_grad()
        y = ln(xi, 216)
        (y * torch.linspace(-1, 1, 216)).sum().backward()
        out[b] = (y, xi.grad, ln.weight.grad.clone(), ln.bias.grad.clone())
    for a, b in zip(out["ref"], out["cpu"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert out["cpu"][2][216:].abs().sum() == 0


def test_forced_backend_needs_refresh(monkeypatch):
    """The variable is read when choices are made; refresh() makes a change take effect."""
    assert dispatch.select("layer_norm", torch.device("cpu"), torch.float32)[0] != "none"
    monkeypatch.setenv("SHIFTNAS_BACKEND", "ref")
    dispatch.refresh()
    assert dispatch.select("layer_norm", torch.device("cpu"), torch.float32)[0] == "ref"


def test_report_lists_every_op():
    ops = {row[0] for row in dispatch.report("cpu")}
    assert ops >= {"linear", "layer_norm", "attention", "conv2d", "batch_norm"}


def test_ref_linear_bad_activation():
    with pytest.raises(ValueError, match="activation='relu'"):
        ref.linear(torch.randn(2, 4), torch.randn(4, 4), None, 4, "relu")


def test_layer_norm_bf16_input_fp32_weights():
    """Mixed precision: bf16 activations with fp32 master weights still reach the extension."""
    ln = ElasticLayerNorm(64)
    x = torch.randn(4, 64, dtype=torch.bfloat16, requires_grad=True)
    y = ln(x, 48)
    assert y.dtype == torch.bfloat16 and y.shape == (4, 48)
    y.float().sum().backward()
    assert ln.weight.grad.dtype == torch.float32 and ln.weight.grad[48:].abs().sum() == 0


def test_relpos_attention_falls_back_to_ref_with_a_stated_reason(monkeypatch):
    """The Triton attention kernel has no relative position terms: `attention_relpos` is served by
    ref, and `shiftnas backends` says why triton was passed over; forcing triton does not raise
    (ops a forced backend lacks run on ref), while plain attention is triton's."""
    rows = {op: (chosen, why) for op, chosen, why in dispatch.report("cpu")}
    chosen, why = rows["attention_relpos"]
    assert chosen == "ref" and "triton: triton does not implement attention_relpos" in why
    monkeypatch.setenv("SHIFTNAS_BACKEND", "triton")
    dispatch.refresh()
    assert dispatch.select("attention_relpos", torch.device("cpu"), torch.float32) == ("ref", ref.attention_relpos)
    assert dispatch.select("attention_relpos", torch.device("cuda"), torch.bfloat16)[0] == "ref"
    if dispatch.backends()["triton"].reasons("attention", torch.device("cpu"), torch.float32, forced=True):
        return  # no triton here: the contrast below needs it
    assert dispatch.select("attention", torch.device("cpu"), torch.float32)[0] == "triton"


@pytest.fixture
def cpu_refuses_odd_widths():
    """The cpu backend with an argument limit on layer_norm (odd widths refused), and a count of
    the calls that reached its kernel; the registered backend is restored afterwards."""
    import dataclasses

    if _ext.load() is None:
        pytest.skip(str(_ext.unavailable_reason()))
    original = dispatch.backends()["cpu"]
    calls = []
    kernel = original.ops["layer_norm"]

    def counted(*a, **k):
        calls.append(1)
        return kernel(*a, **k)

    limited = dataclasses.replace(
        original, ops={**original.ops, "layer_norm": counted},
        op_args={"layer_norm": lambda x, *a, **k: f"odd width {x.shape[-1]}" if x.shape[-1] % 2 else None})
    dispatch.register(limited)
    yield calls
    dispatch.register(original)


def test_a_refused_argument_runs_on_the_next_backend(cpu_refuses_odd_widths):
    w, b = torch.randn(40), torch.randn(40)
    for width in (32, 33):
        x = torch.randn(4, width)
        got = dispatch.call("layer_norm", x, w, b, 20, 1e-5)
        torch.testing.assert_close(got, ref.layer_norm(x, w, b, 20, 1e-5), rtol=1e-5, atol=1e-5)
    assert len(cpu_refuses_odd_widths) == 1  # only the even width reached the cpu kernel


def test_a_forced_backend_refusing_the_arguments_is_an_error(cpu_refuses_odd_widths, monkeypatch):
    monkeypatch.setenv("SHIFTNAS_BACKEND", "cpu")
    dispatch.refresh()
    with pytest.raises(RuntimeError, match="SHIFTNAS_BACKEND=cpu cannot run layer_norm on these inputs: odd width 33"):
        dispatch.call("layer_norm", torch.randn(4, 33), torch.randn(40), torch.randn(40), 20, 1e-5)
    assert cpu_refuses_odd_widths == []


def test_triton_attention_states_its_head_dims():
    pytest.importorskip("triton")
    triton = dispatch.backends()["triton"]
    q = torch.randn(1, 2, 5, 48)
    assert triton.op_args["attention"](q, q, q) == "triton attention is built for head_dim [32, 64], got 48"
    assert triton.op_args["attention_masked"](q[..., :32], q, q, None) is None
    w = torch.randn(8, 1, 5, 5)
    assert triton.op_args["dwconv"](q, w, None, 1, 2) is None
    assert "pads k // 2 = 2, got padding=1" in triton.op_args["dwconv"](q, w, None, 1, 1)


def test_triton_dwconv_states_its_kernel_sizes_strides_and_batch():
    pytest.importorskip("triton")
    check = dispatch.backends()["triton"].op_args["dwconv"]
    x = torch.empty(2, 8, 9, 9, device="meta")
    assert check(x, torch.empty(8, 1, 7, 7), None, 2, 3) is None
    assert check(x, torch.empty(8, 1, 9, 9), None, 1, 4) == "triton dwconv is built for square kernels [3, 5, 7], got (9, 9)"
    assert check(x, torch.empty(8, 1, 3, 3), None, 3, 1) == "triton dwconv is built for strides [1, 2], got 3"
    big = torch.empty(70000, 8, 9, 9, device="meta")
    assert check(big, torch.empty(8, 1, 3, 3), None, 1, 1) == "triton dwconv takes batches up to 65535 (its grid), got 70000"


def test_forced_triton_refuses_a_dwconv_its_kernel_cannot_take(monkeypatch):
    """A 9x9 kernel: the stated limit refuses it before the kernel is called (unforced, the next
    backend would run it: test_a_refused_argument_runs_on_the_next_backend)."""
    pytest.importorskip("triton")
    if dispatch.backends()["triton"].reasons("dwconv", torch.device("cpu"), torch.float32, forced=True):
        pytest.skip("triton cannot run on CPU tensors here")
    monkeypatch.setenv("SHIFTNAS_BACKEND", "triton")
    dispatch.refresh()
    with pytest.raises(RuntimeError, match=r"cannot run dwconv on these inputs: triton dwconv is built for square kernels"):
        dispatch.call("dwconv", torch.randn(1, 4, 10, 10), torch.randn(4, 1, 9, 9), None, 1, 4)
    monkeypatch.delenv("SHIFTNAS_BACKEND")
    dispatch.refresh()
