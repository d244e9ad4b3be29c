"""MBConv supernet: exact cost model, export equality, ArchSample masks, input errors, timm."""

from __future__ import annotations

import itertools
import random
import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from shiftnas.cost import count_flops, count_params, expected_cost
from shiftnas.models.mbconv import MBConvSupernet, resize_to
from shiftnas.models.static_mbconv import StaticMBConv
from shiftnas.ops.batch_norm import ElasticBatchNorm2d
from shiftnas.ops.conv import ElasticDWConv2d
from shiftnas.spaces import ArchConfig, get_space
from shiftnas.spaces.arch_sample import ArchSample

from archutil import register_toy_attentivenas

SPACES = ["cnn-fmnist", "cnn-bignas"]


def _archs(space, n: int, seed: int = 0):
    rng = random.Random(seed)
    return [space.min(), space.max()] + [space.sample(rng) for _ in range(n)]


def _at_resolution(space, arch, resolution: int):
    return space.from_indices(
        {**space.indices(arch), "resolution": space.decision("resolution").index(resolution)}
    )


def _input(space, arch, batch: int = 2, device=None) -> torch.Tensor:
    r = arch["resolution"]
    return torch.randn(batch, space.hparams["in_chans"], r, r, device=device)


def _counted_macs(model: torch.nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as fc:
        model(x)
    total = fc.get_total_flops()
    assert total % 2 == 0
    return total // 2


def _randomise(net: MBConvSupernet) -> MBConvSupernet:
    """Non-trivial BN parameters and statistics (undoes the zero-init) and kernel transforms."""
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("bn.weight"):
                t.normal_(1.0, 0.2)
            elif name.endswith(("bn.bias", "running_mean")):
                t.normal_(0.0, 0.2)
            elif name.endswith("running_var"):
                t.uniform_(0.5, 2.0)
            elif ".transform_" in name:
                t.add_(0.05 * torch.randn_like(t))
    return net


@pytest.fixture(scope="module")
def fmnist_net():
    torch.manual_seed(0)
    return _randomise(MBConvSupernet("cnn-fmnist"))


@pytest.fixture(scope="module")
def bignas_net():
    torch.manual_seed(1)
    return _randomise(MBConvSupernet("cnn-bignas"))


@pytest.fixture(scope="module")
def bignas_archs():
    """Two random cnn-bignas archs at 192 px, shared by the CPU tests (oneDNN builds a kernel
    for every new conv shape: ~1 s per arch the first time, ~0.1 s after)."""
    sp, rng = get_space("cnn-bignas"), random.Random(4)
    return [_at_resolution(sp, sp.sample(rng), 192) for _ in range(2)]


# -- (a) exact cost model ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", SPACES)
def test_cost_matches_flop_counter_and_params(name):
    """count_flops == FlopCounterMode / 2 and count_params == exported params, 52 archs per space.

    Counting runs on the meta device (shapes only), so even 288 px cnn-bignas costs nothing.
    """
    sp = get_space(name)
    net = MBConvSupernet(sp, device="meta").eval()  # eval: meta train-mode BN is 3x slower
    for arch in _archs(sp, 50, seed=1):
        model = net.export(arch)
        x = _input(sp, arch, batch=1, device="meta")
        assert count_flops(sp, arch) == _counted_macs(model, x), arch.short()
        assert count_params(sp, arch) == sum(p.numel() for p in model.parameters()), arch.short()


def _cpu_vs_meta(arch, batch: int) -> None:
    sp = get_space(arch.space)
    x = _input(sp, arch, batch=batch)
    with torch.no_grad():
        cpu = _counted_macs(StaticMBConv(arch).eval(), x)
    with torch.device("meta"):
        meta = _counted_macs(StaticMBConv(arch).eval(), x.to("meta"))
    assert cpu == meta == batch * count_flops(sp, arch)


def test_meta_counting_equals_cpu_fmnist():
    _cpu_vs_meta(get_space("cnn-fmnist").sample(random.Random(3)), batch=1)


def test_meta_counting_equals_cpu_bignas(bignas_archs):
    _cpu_vs_meta(bignas_archs[0], batch=2)  # batch 2: the shapes the other CPU tests use


def test_cost_other_num_classes():
    sp = get_space("cnn-fmnist")
    arch = sp.max()
    with torch.device("meta"):
        model = StaticMBConv(arch, num_classes=37).eval()
        macs = _counted_macs(model, _input(sp, arch, batch=1))
    assert count_flops(sp, arch, num_classes=37) == macs
    assert count_params(sp, arch, num_classes=37) == sum(p.numel() for p in model.parameters())


# -- (b) export -------------------------------------------------------------------------------------
def _check_export(net, sp, arch):
    x = _input(sp, arch)
    net.train()
    with torch.no_grad():
        for _ in range(2):  # update this prefix's (randomised) running statistics
            net(_input(sp, arch), arch)
    net.eval()
    model = net.export(arch)
    assert isinstance(model, StaticMBConv) and not model.training
    assert model.arch == arch and model.num_classes == net.num_classes
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x, arch), atol=1e-5, rtol=1e-5)


def test_export_equals_supernet_fmnist(fmnist_net):
    sp = fmnist_net.space
    for arch in _archs(sp, 5, seed=2):
        _check_export(fmnist_net, sp, arch)


def test_export_equals_supernet_bignas(bignas_net, bignas_archs):
    for arch in bignas_archs:
        _check_export(bignas_net, bignas_net.space, arch)


def test_export_is_a_copy_and_loads_into_fresh_model(fmnist_net):
    arch = fmnist_net.space.sample(random.Random(5))
    fmnist_net.eval()
    model = fmnist_net.export(arch)
    fresh = StaticMBConv(arch)
    fresh.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        model.stem_conv.weight.zero_()  # must not touch the supernet
    assert fmnist_net.stem_conv.weight.abs().sum() > 0


# -- (c) differentiable cost ------------------------------------------------------------------------
@pytest.mark.parametrize("name", SPACES)
def test_expected_cost_exact_at_hard_onehots(name):
    sp = get_space(name)
    for arch in _archs(sp, 10, seed=6):
        s = ArchSample.from_arch(arch)
        s64 = ArchSample(sp.name, {k: v.double() for k, v in s.onehots.items()})
        flops, params = count_flops(sp, arch), count_params(sp, arch)
        assert expected_cost(sp, s64).item() == flops
        assert expected_cost(sp, s64, "params").item() == params
        # float32 one-hots (the generator's): exact up to float32 rounding of ~1e9
        assert expected_cost(sp, s).item() == pytest.approx(flops, rel=1e-6)
        assert expected_cost(sp, s, "params").item() == pytest.approx(params, rel=1e-6)


@pytest.mark.parametrize("name", SPACES)
def test_expected_cost_gradient_reaches_onehots(name):
    sp = get_space(name)
    arch = sp.sample(random.Random(7))
    s = ArchSample.from_arch(arch, requires_grad=True)
    expected_cost(sp, s).backward()
    for d in sp.decisions:
        g = s.onehots[d.name].grad
        if d.name in arch.to_dict() and len(d.choices) > 1:  # single-choice ones may go unused
            assert g is not None and g.abs().sum() > 0, d.name
    # more resolution -> more FLOPs
    g = s.onehots["resolution"].grad
    assert (g[1:] > g[:-1]).all()


# -- (d) ArchSample forward -------------------------------------------------------------------------
def _check_sample(net, sp, arch, train: bool):
    x = _input(sp, arch)
    net.train(train)
    torch.manual_seed(8)
    ref = net(x, arch)
    s = ArchSample.from_arch(arch, requires_grad=True)
    torch.manual_seed(8)
    out = net(x, s)
    torch.testing.assert_close(out, ref, atol=0, rtol=0)
    out.square().mean().backward()
    for name in arch.to_dict():
        g = s.onehots[name].grad
        assert g is not None and g.abs().sum() > 0, f"{arch.short()}: no gradient for {name}"
    net.zero_grad(set_to_none=True)


def test_sample_forward_equals_config_forward_fmnist(fmnist_net):
    sp = fmnist_net.space
    for i, arch in enumerate(_archs(sp, 3, seed=9)):
        _check_sample(fmnist_net, sp, arch, train=i % 2 == 0)
    fmnist_net.eval()


def test_sample_forward_equals_config_forward_bignas(bignas_net, bignas_archs):
    _check_sample(bignas_net, bignas_net.space, bignas_archs[1], train=False)


# -- (e) errors --------------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors(fmnist_net):
    sp = fmnist_net.space
    arch = sp.min()  # resolution 24
    x = _input(sp, arch)
    other = get_space("cnn-bignas").min()
    with pytest.raises(ValueError, match="arch is from space 'cnn-bignas', expected 'cnn-fmnist'"):
        fmnist_net(x, other)
    with pytest.raises(ValueError, match="arch is from space 'cnn-bignas', expected 'cnn-fmnist'"):
        fmnist_net(x, ArchSample.from_arch(other))
    with pytest.raises(ValueError, match="arch is from space 'cnn-bignas'"):
        fmnist_net.export(other)
    with pytest.raises(ValueError, match="ArchConfig or ArchSample"):
        fmnist_net(x, arch.to_dict())
    with pytest.raises(ValueError, match="4-D"):
        fmnist_net(x[0], arch)
    with pytest.raises(ValueError, match="expected 1 input channels, got 3"):
        fmnist_net(x.expand(-1, 3, -1, -1), arch)
    big = torch.randn(2, 1, 28, 28)
    with pytest.raises(ValueError, match="expected 24x24 input for resolution 24, got 28x28"):
        fmnist_net(big, arch)
    fmnist_net.eval()
    assert fmnist_net(resize_to(big, 24), arch).shape == (2, 10)
    assert torch.equal(resize_to(x, 24), x)
    torch.testing.assert_close(
        resize_to(big, 24), F.interpolate(big, size=(24, 24), mode="bilinear", align_corners=False)
    )
    with pytest.raises(ValueError, match="needs a cnn space"):
        MBConvSupernet("vit-fmnist")
    with pytest.raises(ValueError, match=r"kernel=4; allowed: \[3, 5, 7\]"):
        ElasticDWConv2d(8, (3, 5, 7)).active_weight(4, 8)


# -- (f) timm -----------------------------------------------------------------------------------------
def test_timm_create_model():
    model = timm.create_model("shiftnas_cnn_fmnist_supernet")
    assert isinstance(model, MBConvSupernet) and model.num_classes == 10
    model = timm.create_model("shiftnas_cnn_fmnist_supernet", num_classes=7).eval()
    arch = model.space.max()
    assert model(_input(model.space, arch), arch).shape == (2, 7)
    assert "shiftnas_cnn_bignas_supernet" in timm.list_models("shiftnas_cnn*")
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("shiftnas_cnn_fmnist_supernet", pretrained=True)


# -- (g) elastic ops ----------------------------------------------------------------------------------
def _crop(w: torch.Tensor, k: int) -> torch.Tensor:
    o = (w.shape[-1] - k) // 2
    return w[:, :, o : o + k, o : o + k]


def test_dw_kernel_transform_chain():
    torch.manual_seed(11)
    conv = ElasticDWConv2d(16, (3, 5, 7), stride=2)
    c = 12
    w7 = conv.weight[:c]
    torch.testing.assert_close(conv.active_weight(3, c), _crop(w7, 3))  # identity transforms
    torch.testing.assert_close(conv.active_weight(7, c), w7)
    with torch.no_grad():
        conv.transform_7to5.add_(0.1 * torch.randn(25, 25))
        conv.transform_5to3.add_(0.1 * torch.randn(9, 9))
    w5 = (_crop(w7, 5).reshape(c, 25) @ conv.transform_7to5).reshape(c, 1, 5, 5)
    w3 = (_crop(w5, 3).reshape(c, 9) @ conv.transform_5to3).reshape(c, 1, 3, 3)
    torch.testing.assert_close(conv.active_weight(5, c), w5)
    torch.testing.assert_close(conv.active_weight(3, c), w3)
    assert not torch.allclose(w3, _crop(w7, 3))
    x = torch.randn(2, c, 9, 9)
    torch.testing.assert_close(conv(x, 3), F.conv2d(x, w3, None, 2, 1, 1, c))
    names = {n for n, _ in conv.named_parameters()}
    assert names == {"weight", "transform_7to5", "transform_5to3"}
    assert {n for n, _ in ElasticDWConv2d(8, (3, 5)).named_parameters()} == {
        "weight",
        "transform_5to3",
    }


def test_batch_norm_updates_only_the_active_prefix():
    bn = ElasticBatchNorm2d(16)
    bn(torch.randn(4, 10, 3, 3) * 3 + 1)
    assert (bn.running_mean[:10] != 0).all() and (bn.running_mean[10:] == 0).all()
    assert (bn.running_var[10:] == 1).all() and int(bn.num_batches_tracked) == 1
    bn.eval()
    x = torch.randn(2, 6, 3, 3)
    ref = F.batch_norm(
        x, bn.running_mean[:6], bn.running_var[:6], bn.weight[:6], bn.bias[:6], False, 0.1, 1e-5
    )
    torch.testing.assert_close(bn(x), ref)


# -- (h) AttentiveNAS shortcut (cnn-bignas) ---------------------------------------------------------
# facebookresearch/AttentiveNAS configs/eval_attentive_nas_models.yml, `pareto_models` a0-a6:
# resolution, width [first_conv, mb1..mb7, last_conv], and per stage kernel_size, expand_ratio,
# depth. Published MFLOPs: the table in that repository's README.md. Then our exact MACs and params.
ATTENTIVENAS_MODELS = {
    "a0": (192, [16, 16, 24, 32, 64, 112, 192, 216, 1792], [3, 3, 3, 3, 3, 3, 3], [1, 4, 4, 4, 4, 6, 6],
           [1, 3, 3, 3, 3, 3, 1], 203, 203_389_568, 8_954_184),
    "a1": (224, [16, 16, 24, 32, 64, 112, 192, 216, 1984], [3, 3, 3, 5, 3, 5, 3], [1, 4, 4, 4, 4, 6, 6],
           [1, 3, 3, 3, 3, 3, 1], 279, 279_238_816, 9_452_872),
    "a2": (224, [16, 16, 24, 32, 64, 112, 200, 224, 1984], [3, 3, 3, 3, 3, 5, 3], [1, 4, 5, 4, 4, 6, 6],
           [1, 3, 3, 3, 3, 4, 1], 317, 316_730_080, 11_149_824),
    "a3": (224, [16, 16, 24, 32, 64, 112, 208, 224, 1984], [3, 3, 3, 5, 3, 3, 3], [1, 4, 4, 4, 4, 6, 6],
           [2, 3, 3, 4, 3, 5, 1], 357, 356_518_400, 12_784_928),
    "a4": (256, [16, 16, 24, 32, 64, 112, 192, 216, 1984], [3, 3, 3, 5, 3, 5, 3], [1, 4, 4, 5, 4, 6, 6],
           [1, 3, 3, 4, 3, 5, 1], 444, 443_530_752, 11_809_640),
    "a5": (256, [16, 16, 24, 32, 72, 112, 192, 216, 1792], [3, 3, 3, 5, 3, 3, 3], [1, 4, 5, 4, 4, 6, 6],
           [1, 3, 3, 3, 4, 6, 1], 491, 490_520_064, 12_597_464),
    "a6": (288, [16, 16, 24, 32, 64, 112, 216, 224, 1984], [3, 3, 3, 3, 3, 5, 3], [1, 4, 6, 5, 4, 6, 6],
           [1, 3, 3, 4, 4, 6, 1], 709, 709_007_232, 15_154_792),
}


def attentivenas_arch(name: str):
    """The released AttentiveNAS model `name` (a0-a6) as a cnn-bignas arch."""
    r, w, k, e, d = ATTENTIVENAS_MODELS[name][:5]
    values = {"resolution": r, "stem.width": w[0], "head.width": w[-1]}
    for s in range(7):
        values.update({f"stage{s}.width": w[s + 1], f"stage{s}.depth": d[s]})
        for j in range(d[s]):
            values.update({f"stage{s}.block{j}.kernel": k[s], f"stage{s}.block{j}.expand": e[s]})
    return ArchConfig.from_dict("cnn-bignas", values)


@pytest.mark.parametrize("name", sorted(ATTENTIVENAS_MODELS))
def test_attentivenas_released_models_match_published_mflops(name):
    published, macs, params = ATTENTIVENAS_MODELS[name][5:]
    sp, arch = get_space("cnn-bignas"), attentivenas_arch(name)
    assert count_flops(sp, arch) == macs and count_params(sp, arch) == params
    assert abs(macs / 1e6 - published) / published < 0.01  # measured: within 0.2%
    with torch.device("meta"):
        model = StaticMBConv(arch).eval()
        assert _counted_macs(model, _input(sp, arch, batch=1)) == macs
    assert sum(p.numel() for p in model.parameters()) == params
    # a shortcut conv exactly where a stage's first block changes the width
    widths = ATTENTIVENAS_MODELS[name][1]
    assert [stage[0].shortcut_conv is not None for stage in model.stages] == [
        a != b for a, b in itertools.pairwise(widths[:8])
    ]


def test_export_equals_supernet_attentivenas_a0(bignas_net):
    _check_export(bignas_net, bignas_net.space, attentivenas_arch("a0"))


def test_attentivenas_shortcut_semantics(monkeypatch):
    """The shortcut alone (branch zeroed): avg_pool2d(x, 2, padding=H % 2), then a bias-free 1x1
    conv where the width changes; the identity where neither changes; OFA spaces: no shortcut."""
    sp = register_toy_attentivenas(monkeypatch)
    torch.manual_seed(12)
    for values, conv in [
        ({"stage0.width": 16}, (True, False, True)),  # 8 -> 16, 16 -> 16 (pool only), 16 -> 8
        ({"stem.width": 16, "stage0.width": 16, "stage2.width": 16}, (False, False, False)),
        ({"stage0.width": 16, "stage1.width": 24, "stage2.width": 16}, (True, True, True)),
    ]:
        arch = sp.from_indices({**sp.indices(sp.min()), **{
            k: sp.decision(k).index(v) for k, v in values.items()}})
        model = StaticMBConv(arch).eval()
        assert tuple(st[0].shortcut_conv is not None for st in model.stages) == conv
        for stage in model.stages:
            block = stage[0]
            with torch.no_grad():
                block.project_bn.weight.zero_()
                block.project_bn.bias.zero_()
            x = torch.randn(2, block.dw_conv.in_channels if block.expand_conv is None
                            else block.expand_conv.in_channels, 13, 13)
            ref = x if block.stride == 1 else F.avg_pool2d(x, 2, padding=1)
            if block.shortcut_conv is not None:
                ref = F.conv2d(ref, block.shortcut_conv.weight)
            assert block.shortcut_conv is None or block.shortcut_conv.bias is None
            with torch.no_grad():
                out = block(x)
            assert out.shape[-1] == (13 if block.stride == 1 else 7)
            torch.testing.assert_close(out, ref, rtol=0, atol=0)
    fm = StaticMBConv(get_space("cnn-fmnist").max())
    assert all(b.shortcut_conv is None and b.residual == (j > 0) for st in fm.stages for j, b in enumerate(st))


def test_attentivenas_toy_space_cost_and_export(monkeypatch):
    """Odd grids into the shortcut pool and narrowing stages: exact cost and export equality."""
    sp = register_toy_attentivenas(monkeypatch)
    torch.manual_seed(13)
    net = _randomise(MBConvSupernet(sp))
    for arch in _archs(sp, 20, seed=14):
        model = net.export(arch)
        assert count_flops(sp, arch) == _counted_macs(model.eval(), _input(sp, arch, batch=1)), arch.short()
        assert count_params(sp, arch) == sum(p.numel() for p in model.parameters()), arch.short()
        _check_export(net, sp, arch)


@pytest.mark.parametrize("stride,kernel", [(1, 3), (2, 5), (2, 7)])
def test_exported_depthwise_conv_runs_the_dwconv_op_and_exports_as_a_plain_conv(stride, kernel):
    """`DepthwiseConv2d` (the exported subnet's depthwise conv) equals nn.Conv2d with the same
    weights, forward and backward (odd sizes); it runs the compiled `shiftnas::ext_dwconv` where
    the extension is built; torch.export records a standard aten convolution, no shiftnas op;
    torch.jit.script compiles it."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from shiftnas import _ext
    from shiftnas.models.static_mbconv import DepthwiseConv2d

    torch.manual_seed(0)
    dw = DepthwiseConv2d(7, kernel, stride)
    plain = torch.nn.Conv2d(7, 7, kernel, stride, kernel // 2, groups=7, bias=False)
    plain.load_state_dict(dw.state_dict())
    x = torch.randn(3, 7, 11, 13, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.add(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    with Ops() as ops:
        y = dw(x)
    y2 = plain(x2)
    g = torch.randn_like(y)
    y.backward(g)
    y2.backward(g)
    torch.testing.assert_close(y, y2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dw.weight.grad, plain.weight.grad, rtol=1e-4, atol=1e-4)
    if _ext.load() is not None:
        assert "shiftnas.ext_dwconv" in ops.seen, ops.seen
    graph = torch.export.export(dw, (x.detach(),)).graph_module.code
    assert "aten.conv2d" in graph and "shiftnas" not in graph, graph
    with torch.no_grad(), warnings.catch_warnings():  # TorchScript: as nn.Conv2d (still scriptable)
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates torch.jit.script
        torch.testing.assert_close(torch.jit.script(dw)(x), y2, rtol=1e-5, atol=1e-5)
