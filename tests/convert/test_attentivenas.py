"""AttentiveNAS supernet checkpoint -> our cnn-bignas supernet (shiftnas/convert/attentivenas.py).

Their state_dict is written out here independently of the converter, from
facebookresearch/AttentiveNAS:
- configs/eval_attentive_nas_models.yml `supernet_config` (SUPERNET below);
- models/attentive_nas_dynamic_model.py: `first_conv`, `blocks.{i}` numbered through the stages
  at their largest depth, each a `MobileInvertedResidualBlock(mobile_inverted_conv, shortcut)`
  with a `DynamicShortcutLayer` on every block, `last_conv.{final_expand_layer,feature_mix_layer}`
  (use_v3_head, expand 6), `classifier`;
- models/modules/dynamic_layers.py: `DynamicMBConvLayer` (`inverted_bottleneck` unless expand 1,
  with round(max_in * max_t) channels; `depth_conv` with `se`; `point_linear`), the
  `DynamicConvBnActLayer` / `DynamicShortcutLayer` (`.conv` a `DynamicPointConv2d`),
  `DynamicLinearLayer` (`.linear` a `DynamicLinear`);
- models/modules/dynamic_ops.py: the dynamic convs hold `.conv` (an nn.Conv2d), `DynamicLinear`
  `.linear`; `DynamicBatchNorm2d` holds `.bn` and `.bn_tracking.{0,1}` (affine=False);
  `DynamicSeparableConv2d.KERNEL_TRANSFORM_MODE = None` (no kernel transform matrices);
- models/modules/static_layers.py: `SELayer.fc.{reduce,expand}` with bias, mid channels
  make_divisible(C // 4, 8); `ShortcutLayer`: avg_pool2d(x, stride, padding=H % 2), then the 1x1
  conv where the width changes.
The reference forward below follows those files too: it runs a subnet from *their* tensors.
"""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from shiftnas.convert.attentivenas import SPACES, expected_keys, to_shiftnas
from shiftnas.models.mbconv import MBConvSupernet
from shiftnas.spaces import get_space
from shiftnas.spaces.cnn import make_divisible

# (c, d, k, t, s, se) per mb stage; first_conv c [16, 24] stride 2; last_conv c [1792, 1984]
SUPERNET = [
    ([16, 24], [1, 2], [3, 5], [1], 1, False),
    ([24, 32], [3, 4, 5], [3, 5], [4, 5, 6], 2, False),
    ([32, 40], [3, 4, 5, 6], [3, 5], [4, 5, 6], 2, True),
    ([64, 72], [3, 4, 5, 6], [3, 5], [4, 5, 6], 2, False),
    ([112, 120, 128], [3, 4, 5, 6, 7, 8], [3, 5], [4, 5, 6], 1, True),
    ([192, 200, 208, 216], [3, 4, 5, 6, 7, 8], [3, 5], [6], 2, True),
    ([216, 224], [1, 2], [3, 5], [6], 1, True),
]
FIRST, LAST, CLASSES = 24, 1984, 1000


def _bn_keys(prefix: str, c: int) -> dict:
    keys = {f"{prefix}.bn.{n}": (c,) for n in ("weight", "bias", "running_mean", "running_var")}
    keys[f"{prefix}.bn.num_batches_tracked"] = ()
    for t in (0, 1):
        keys.update({f"{prefix}.bn_tracking.{t}.running_mean": (c,), f"{prefix}.bn_tracking.{t}.running_var": (c,),
                     f"{prefix}.bn_tracking.{t}.num_batches_tracked": ()})
    return keys


def their_keys() -> dict:
    keys = {"first_conv.conv.conv.weight": (FIRST, 3, 3, 3), **_bn_keys("first_conv.bn", FIRST)}
    cin, i = FIRST, 0
    for c, d, k, t, _, se in SUPERNET:
        for _ in range(max(d)):
            b, mid = f"blocks.{i}.mobile_inverted_conv", round(cin * max(t))
            if max(t) != 1:
                keys[f"{b}.inverted_bottleneck.conv.conv.weight"] = (mid, cin, 1, 1)
                keys.update(_bn_keys(f"{b}.inverted_bottleneck.bn", mid))
            keys[f"{b}.depth_conv.conv.conv.weight"] = (mid, 1, max(k), max(k))
            keys.update(_bn_keys(f"{b}.depth_conv.bn", mid))
            if se:
                m = make_divisible(mid // 4, 8)
                keys.update({f"{b}.depth_conv.se.fc.reduce.weight": (m, mid, 1, 1), f"{b}.depth_conv.se.fc.reduce.bias": (m,),
                             f"{b}.depth_conv.se.fc.expand.weight": (mid, m, 1, 1), f"{b}.depth_conv.se.fc.expand.bias": (mid,)})
            keys[f"{b}.point_linear.conv.conv.weight"] = (max(c), mid, 1, 1)
            keys.update(_bn_keys(f"{b}.point_linear.bn", max(c)))
            keys[f"blocks.{i}.shortcut.conv.conv.weight"] = (max(c), cin, 1, 1)
            cin, i = max(c), i + 1
    keys["last_conv.final_expand_layer.conv.conv.weight"] = (6 * cin, cin, 1, 1)
    keys.update(_bn_keys("last_conv.final_expand_layer.bn", 6 * cin))
    keys["last_conv.feature_mix_layer.conv.conv.weight"] = (LAST, 6 * cin, 1, 1)
    keys.update({"classifier.linear.linear.weight": (CLASSES, LAST), "classifier.linear.linear.bias": (CLASSES,)})
    return keys


def random_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Their keys with random float64 values: fan-in scaled weights, BN with non-trivial stats."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in their_keys().items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.randint(0, 1000, (), generator=g)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=g, dtype=torch.float64) + 0.5
        elif name.endswith(".bn.weight"):
            state[name] = 1 + 0.2 * torch.randn(shape, generator=g, dtype=torch.float64)
        elif len(shape) == 1:  # BN bias / mean, conv and linear biases
            state[name] = 0.2 * torch.randn(shape, generator=g, dtype=torch.float64)
        else:
            fan_in = shape[1] * (shape[2] * shape[3] if len(shape) == 4 else 1)
            state[name] = torch.randn(shape, generator=g, dtype=torch.float64) / max(fan_in, 9) ** 0.5
    return state


def reference_forward(sd: dict, arch, x: torch.Tensor) -> torch.Tensor:
    """AttentiveNAS's subnet `arch` (eval mode) computed from their state_dict `sd`."""
    def bn(prefix, h):
        c = h.shape[1]
        p = {n: sd[f"{prefix}.bn.{n}"][:c] for n in ("running_mean", "running_var", "weight", "bias")}
        return F.batch_norm(h, p["running_mean"], p["running_var"], p["weight"], p["bias"], False, 0.0, 1e-5)

    def w(name, out, inp):
        return sd[name][:out, :inp]

    h = F.silu(bn("first_conv.bn", F.conv2d(x, w("first_conv.conv.conv.weight", arch["stem.width"], 3), None, 2, 1)))
    i = 0
    for s, (_, d, k_all, t_all, stride, se) in enumerate(SUPERNET):
        for j in range(max(d)):
            if j < arch[f"stage{s}.depth"]:
                b, cin, cout = f"blocks.{i}.mobile_inverted_conv", h.shape[1], arch[f"stage{s}.width"]
                k, t = arch[f"stage{s}.block{j}.kernel"], arch[f"stage{s}.block{j}.expand"]
                mid, st = make_divisible(round(cin * t), 8), stride if j == 0 else 1
                y = h
                if max(t_all) != 1:
                    y = F.silu(bn(f"{b}.inverted_bottleneck.bn", F.conv2d(y, w(f"{b}.inverted_bottleneck.conv.conv.weight", mid, cin))))
                o = (max(k_all) - k) // 2  # centre crop, no transform
                dw = sd[f"{b}.depth_conv.conv.conv.weight"][:mid, :, o:o + k, o:o + k]
                y = F.silu(bn(f"{b}.depth_conv.bn", F.conv2d(y, dw, None, st, k // 2, 1, mid)))
                if se:
                    m, f = make_divisible(mid // 4, 8), f"{b}.depth_conv.se.fc"
                    z = F.relu(F.conv2d(y.mean((2, 3), keepdim=True), w(f"{f}.reduce.weight", m, mid), sd[f"{f}.reduce.bias"][:m]))
                    y = y * (F.relu6(F.conv2d(z, w(f"{f}.expand.weight", mid, m), sd[f"{f}.expand.bias"][:mid]) + 3) / 6)
                y = bn(f"{b}.point_linear.bn", F.conv2d(y, w(f"{b}.point_linear.conv.conv.weight", cout, mid)))
                sc = h if st == 1 else F.avg_pool2d(h, st, padding=0 if h.shape[-1] % 2 == 0 else 1)
                if cin != cout:
                    sc = F.conv2d(sc, w(f"blocks.{i}.shortcut.conv.conv.weight", cout, cin))
                h = y + sc
            i += 1
    c, head = h.shape[1], arch["head.width"]
    h = F.silu(bn("last_conv.final_expand_layer.bn", F.conv2d(h, w("last_conv.final_expand_layer.conv.conv.weight", 6 * c, c))))
    h = F.silu(F.conv2d(h.mean((2, 3), keepdim=True), w("last_conv.feature_mix_layer.conv.conv.weight", head, 6 * c)))
    return F.linear(h.flatten(1), sd["classifier.linear.linear.weight"][:, :head], sd["classifier.linear.linear.bias"])


@pytest.fixture(scope="module")
def converted():
    state = random_state()
    net = MBConvSupernet("cnn-bignas", dtype=torch.float64)
    net.load_state_dict(to_shiftnas(state, "cnn-bignas"), strict=True)
    return state, net.eval()


def test_expected_keys_are_theirs():
    assert SPACES == ("cnn-bignas",)
    keys = expected_keys("cnn-bignas")
    assert keys == their_keys() and list(keys) == list(their_keys())  # their module order too
    assert len(keys) == 1468


def test_weights_land_where_they_should(converted):
    state, net = converted
    assert torch.equal(net.stem_conv.weight, state["first_conv.conv.conv.weight"])
    assert torch.equal(net.stem_bn.running_var, state["first_conv.bn.bn.running_var"])
    # stage 4 block 0 is their block 2 + 5 + 6 + 6 = 19 (mb1..mb4 at their largest depth)
    blk = net.stages[4][0]
    assert torch.equal(blk.project_conv.weight, state["blocks.19.mobile_inverted_conv.point_linear.conv.conv.weight"])
    assert torch.equal(blk.shortcut_conv.weight, state["blocks.19.shortcut.conv.conv.weight"])
    assert torch.equal(blk.se.reduce.bias, state["blocks.19.mobile_inverted_conv.depth_conv.se.fc.reduce.bias"])
    assert torch.equal(blk.dw_conv.transform_5to3, torch.eye(9, dtype=torch.float64))
    assert int(blk.dw_bn.num_batches_tracked) == int(state["blocks.19.mobile_inverted_conv.depth_conv.bn.bn.num_batches_tracked"])
    assert net.stages[4][1].shortcut_conv is None  # their blocks.20.shortcut never runs: dropped
    assert torch.equal(net.feature_mix.weight, state["last_conv.feature_mix_layer.conv.conv.weight"][:, :, 0, 0])
    assert torch.equal(net.classifier.bias, state["classifier.linear.linear.bias"])


def test_converted_subnets_compute_attentivenas_subnets(converted):
    """min, max (at 192 px: the CPU time of 288 px buys nothing here) and a random subnet: the
    converted supernet and its export give AttentiveNAS's output computed from their tensors."""
    state, net = converted
    sp = get_space("cnn-bignas")
    g = torch.Generator().manual_seed(1)
    big = sp.from_indices({**sp.indices(sp.max()), "resolution": 0})
    for arch in [sp.min(), big, sp.sample(random.Random(2))]:
        r = arch["resolution"]
        x = torch.randn(1, 3, r, r, generator=g, dtype=torch.float64)
        with torch.no_grad():
            ref, out, sub = reference_forward(state, arch, x), net(x, arch), net.export(arch)(x)
        assert ref.abs().max() > 1e-3  # not a degenerate network
        torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(sub, ref, rtol=1e-9, atol=1e-9)


def test_bad_space_and_bad_state_are_named():
    with pytest.raises(ValueError, match=r"into spaces \['cnn-bignas'\], not 'cnn-fmnist'"):
        expected_keys("cnn-fmnist")
    state = random_state()
    state.pop("blocks.3.shortcut.conv.conv.weight")
    state["first_conv.conv.conv.weight"] = torch.zeros(16, 3, 3, 3)
    with pytest.raises(ValueError, match="not an AttentiveNAS supernet for space 'cnn-bignas'") as e:
        to_shiftnas(state, "cnn-bignas")
    assert "blocks.3.shortcut.conv.conv.weight" in str(e.value)
    assert "first_conv.conv.conv.weight: expected (24, 3, 3, 3), got (16, 3, 3, 3)" in str(e.value)
