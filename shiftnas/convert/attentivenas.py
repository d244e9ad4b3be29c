"""AttentiveNAS supernet checkpoints -> our `cnn-bignas` `MBConvSupernet`.

Source: facebookresearch/AttentiveNAS (`attentive_nas_pretrained.pth.tar`, its README), whose
`AttentiveNasDynamicModel` (models/attentive_nas_dynamic_model.py) is built from the
`supernet_config` of configs/{train,eval}_attentive_nas_models.yml: the config `cnn-bignas` was
made from, with the same shortcut semantics (`shiftnas/spaces/cnn.py`). Their layer names
(models/modules/dynamic_layers.py, dynamic_ops.py, static_layers.py):

    first_conv.conv.conv.weight, first_conv.bn.*                 -> stem_conv, stem_bn
    blocks.{i}.mobile_inverted_conv.inverted_bottleneck.conv.conv.weight, .bn.*
                                                                 -> stages.{s}.{j}.expand_conv, expand_bn
    blocks.{i}.mobile_inverted_conv.depth_conv.conv.conv.weight, .bn.*  -> dw_conv, dw_bn
    blocks.{i}.mobile_inverted_conv.depth_conv.se.fc.{reduce,expand}.{weight,bias}  -> se.{reduce,expand}
    blocks.{i}.mobile_inverted_conv.point_linear.conv.conv.weight, .bn.*  -> project_conv, project_bn
    blocks.{i}.shortcut.conv.conv.weight                         -> shortcut_conv (a stage's first block)
    last_conv.final_expand_layer.conv.conv.weight, .bn.*         -> final_conv, final_bn
    last_conv.feature_mix_layer.conv.conv.weight [O, I, 1, 1]    -> feature_mix.weight [O, I]
    classifier.linear.linear.{weight,bias}                       -> classifier

Blocks are numbered through the stages (i = the blocks of the earlier stages at their largest
depth + j). Each `DynamicBatchNorm2d` `X` holds `X.bn` (weight, bias, running_mean, running_var,
num_batches_tracked: -> our BN) and `X.bn_tracking.{0,1}` (running_mean, running_var,
num_batches_tracked of two trackers their training kept for the largest and smallest subnet;
dropped). Also dropped: the shortcut convs of the blocks after a stage's first (their input and
output widths are always equal, so the conv never runs). Their depthwise kernels have no
transform matrices (`DynamicSeparableConv2d.KERNEL_TRANSFORM_MODE = None`: a smaller kernel is
the plain centre crop), so our `transform_5to3` matrices are set to the identity.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..spaces import get_space
from ..spaces.cnn import make_divisible

__all__ = ["SPACES", "expected_keys", "to_shiftnas"]

SPACES = ("cnn-bignas",)

# (their key, its shape, our key or None when dropped, our shape)
_Entry = tuple[str, tuple[int, ...], str | None, tuple[int, ...]]


def _check_space(space: str) -> None:
    if space not in SPACES:
        raise ValueError(f"AttentiveNAS checkpoints convert into spaces {list(SPACES)}, not {space!r}")


def _conv(theirs: str, ours: str | None, shape: tuple[int, ...]) -> Iterator[_Entry]:
    """A `DynamicPointConv2d` / `DynamicSeparableConv2d` (their weight is `.conv.weight`)."""
    yield f"{theirs}.conv.weight", shape, None if ours is None else f"{ours}.weight", shape


def _bn(theirs: str, ours: str, c: int) -> Iterator[_Entry]:
    """A `DynamicBatchNorm2d`: `.bn` maps to our BN, the two `.bn_tracking` BNs are dropped."""
    for name in ("weight", "bias", "running_mean", "running_var"):
        yield f"{theirs}.bn.{name}", (c,), f"{ours}.{name}", (c,)
    yield f"{theirs}.bn.num_batches_tracked", (), f"{ours}.num_batches_tracked", ()
    for t in (0, 1):
        for name in ("running_mean", "running_var"):
            yield f"{theirs}.bn_tracking.{t}.{name}", (c,), None, (c,)
        yield f"{theirs}.bn_tracking.{t}.num_batches_tracked", (), None, ()


def _block(i: int, s: int, j: int, cin: int, cout: int, st: dict) -> Iterator[_Entry]:
    """`blocks.{i}` (a `MobileInvertedResidualBlock`) at its largest: `st` holds the stage's
    kernel sizes, expand ratios, SE flag and whether a stage's first block can change width."""
    theirs, ours = f"blocks.{i}.mobile_inverted_conv", f"stages.{s}.{j}"
    mid = round(cin * max(st["t"]))  # DynamicMBConvLayer: max_middle_channel
    if max(st["t"]) != 1:
        yield from _conv(f"{theirs}.inverted_bottleneck.conv", f"{ours}.expand_conv", (mid, cin, 1, 1))
        yield from _bn(f"{theirs}.inverted_bottleneck.bn", f"{ours}.expand_bn", mid)
    k = max(st["k"])
    yield from _conv(f"{theirs}.depth_conv.conv", f"{ours}.dw_conv", (mid, 1, k, k))
    yield from _bn(f"{theirs}.depth_conv.bn", f"{ours}.dw_bn", mid)
    if st["se"]:
        se_mid = make_divisible(mid // 4, 8)  # SELayer.REDUCTION = 4
        for name, shape in (("reduce", (se_mid, mid, 1, 1)), ("expand", (mid, se_mid, 1, 1))):
            yield f"{theirs}.depth_conv.se.fc.{name}.weight", shape, f"{ours}.se.{name}.weight", shape
            yield f"{theirs}.depth_conv.se.fc.{name}.bias", shape[:1], f"{ours}.se.{name}.bias", shape[:1]
    yield from _conv(f"{theirs}.point_linear.conv", f"{ours}.project_conv", (cout, mid, 1, 1))
    yield from _bn(f"{theirs}.point_linear.bn", f"{ours}.project_bn", cout)
    used = j == 0 and st["changes_width"]
    yield from _conv(f"blocks.{i}.shortcut.conv", f"{ours}.shortcut_conv" if used else None, (cout, cin, 1, 1))


def _plan(space: str) -> list[_Entry]:
    """Every key of their supernet state_dict, in their module order, with where it goes."""
    _check_space(space)
    sp = get_space(space)
    hp = sp.hparams
    if hp.get("shortcut") != "attentivenas":  # pragma: no cover - SPACES holds only such spaces
        raise ValueError(f"{space}: AttentiveNAS checkpoints need the attentivenas shortcut")
    choices = lambda name: sp.decision(name).choices  # noqa: E731
    widths = choices("stem.width")
    c = max(widths)
    plan = list(_conv("first_conv.conv", "stem_conv", (c, hp["in_chans"], 3, 3)))
    plan += _bn("first_conv.bn", "stem_bn", c)
    i = 0
    for s, stage in enumerate(hp["stages"]):
        out_widths = choices(f"stage{s}.width")
        st = {
            "k": choices(f"stage{s}.block0.kernel"),
            "t": choices(f"stage{s}.block0.expand"),
            "se": stage["se"],
            "changes_width": any(a != b for a in widths for b in out_widths),
        }
        for j in range(max(choices(f"stage{s}.depth"))):
            plan += _block(i, s, j, c if j == 0 else max(out_widths), max(out_widths), st)
            i += 1
        widths, c = out_widths, max(out_widths)
    fe, head = hp["final_expand"] * c, max(choices("head.width"))
    plan += _conv("last_conv.final_expand_layer.conv", "final_conv", (fe, c, 1, 1))
    plan += _bn("last_conv.final_expand_layer.bn", "final_bn", fe)
    plan.append(("last_conv.feature_mix_layer.conv.conv.weight", (head, fe, 1, 1), "feature_mix.weight", (head, fe)))
    n = hp["num_classes"]
    plan.append(("classifier.linear.linear.weight", (n, head), "classifier.weight", (n, head)))
    plan.append(("classifier.linear.linear.bias", (n,), "classifier.bias", (n,)))
    return plan


def expected_keys(space: str) -> dict[str, tuple[int, ...]]:
    """Every key of AttentiveNAS's supernet state_dict for `space` (their names) with its shape."""
    return {theirs: shape for theirs, shape, _, _ in _plan(space)}


def to_shiftnas(state: dict[str, torch.Tensor], space: str) -> dict[str, torch.Tensor]:
    """Our `MBConvSupernet(space)` state_dict from AttentiveNAS's (keys exactly `expected_keys`)."""
    from ..models.mbconv import MBConvSupernet
    from . import check_keys

    plan = _plan(space)
    check_keys(state, {t: shape for t, shape, _, _ in plan}, f"an AttentiveNAS supernet for space {space!r}")
    out = {ours: state[theirs].reshape(shape) for theirs, _, ours, shape in plan if ours is not None}
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in MBConvSupernet(space).state_dict().items()}
    dtype = state["first_conv.conv.conv.weight"].dtype
    for key, shape in want.items():
        if ".transform_" in key:  # their kernels are plain centre crops
            out[key] = torch.eye(shape[0], dtype=dtype)
    got = {k: tuple(v.shape) for k, v in out.items()}
    if got != want:  # pragma: no cover - the plan and our supernet disagree: a bug here
        bad = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
        raise RuntimeError(f"attentivenas converter: {len(bad)} keys do not match {space}: {bad[:5]}")
    return out
