"""MBConv (MobileNetV3-style) search spaces with BigNAS / AttentiveNAS semantics.

Decisions: input resolution; stem width; per stage a width and a depth; per block a kernel size
(3/5/7, smaller kernels are centre crops of the largest, OFA-style) and an expand ratio; the
width of the final feature-mix layer. Blocks past a stage's depth are skipped.

The space's `shortcut` hparam says which blocks add a residual:
- "ofa" (OFA / BigNAS): every block but the first of its stage (stride 1, same width): identity.
- "attentivenas" (facebookresearch/AttentiveNAS `DynamicShortcutLayer`, `ShortcutLayer`,
  `MobileInvertedResidualBlock`): every block. The shortcut is the identity where the block keeps
  width and grid; where it downsamples, first `avg_pool2d(x, stride, padding=H % 2)` (kernel =
  stride, ceil_mode off, padding counted); where the width changes, then a 1x1 conv (no bias, no
  BN, no activation). Only a stage's first block can change either.

`cnn-bignas` values: facebookresearch/AttentiveNAS configs/train_attentive_nas_models.yml
(`supernet_config`: resolutions 192-288, first_conv, mb1..mb7, last_conv, use_v3_head), with
AttentiveNAS's shortcut.
"""
from __future__ import annotations

from .base import ArchConfig, Decision, SearchSpace, register_space

__all__ = [
    "SHORTCUTS",
    "cnn_blocks",
    "conv_out",
    "has_residual",
    "hidden_width",
    "make_divisible",
    "mbconv_space",
    "se_mid",
    "stage_input_size",
]

SHORTCUTS = ("ofa", "attentivenas")


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round channels to a multiple of `divisor`, never below 90% of `v` (MobileNet rule)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def hidden_width(in_width: int, expand: float) -> int:
    """Width inside an MBConv block: the input width itself when there is no expand conv."""
    return in_width if expand == 1 else make_divisible(round(in_width * expand), 8)


def se_mid(channels: int, reduction: int = 4) -> int:
    """Width of the squeeze-and-excitation reduce conv for `channels` active channels."""
    return make_divisible(channels // reduction, 8)


def conv_out(size: int, stride: int) -> int:
    """Spatial output size of an odd-kernel conv with padding k//2 (also of the AttentiveNAS
    shortcut's 2x2 average pool, padded by 1 on odd sizes)."""
    return (size - 1) // stride + 1


def stage_input_size(hp: dict, resolution: int, s: int) -> int:
    """Spatial size entering stage `s` of a cnn space with hparams `hp` at `resolution`
    (s == the number of stages: after the last stage)."""
    size = conv_out(resolution, hp["stem_stride"])
    for st in hp["stages"][:s]:
        size = conv_out(size, st["stride"])
    return size


def has_residual(shortcut: str, j: int) -> bool:
    """Whether block j of a stage adds a shortcut to its output (see the module docstring)."""
    return shortcut == "attentivenas" or j > 0


def mbconv_space(
    name: str,
    *,
    resolutions: tuple[int, ...],
    stem: dict,
    stages: list[dict],
    head_width: tuple[int, ...],
    in_chans: int,
    num_classes: int,
    final_expand: int = 6,
    dropout: float = 0.0,
    shortcut: str = "ofa",
    source: str,
) -> SearchSpace:
    decisions = [
        Decision("resolution", "resolution", tuple(resolutions)),
        Decision("stem.width", "width", tuple(stem["c"])),
    ]
    for s, st in enumerate(stages):
        decisions.append(Decision(f"stage{s}.width", "width", tuple(st["c"])))
        decisions.append(Decision(f"stage{s}.depth", "depth", tuple(st["d"])))
        for j in range(max(st["d"])):
            gate = (f"stage{s}.depth", j)
            decisions.append(Decision(f"stage{s}.block{j}.kernel", "kernel", tuple(st["k"]), gate))
            decisions.append(Decision(f"stage{s}.block{j}.expand", "expand", tuple(st["t"]), gate))
    decisions.append(Decision("head.width", "head_width", tuple(head_width)))
    for st in stages:
        if any(k % 2 == 0 for k in st["k"]):
            raise ValueError(f"{name}: kernel sizes must be odd, got {st['k']}")
    if shortcut not in SHORTCUTS:
        raise ValueError(f"{name}: shortcut={shortcut!r}; allowed: {list(SHORTCUTS)}")
    if shortcut == "attentivenas" and any(st["s"] not in (1, 2) for st in stages):
        raise ValueError(
            f"{name}: the attentivenas shortcut pools with padding H % 2, which keeps the grid of "
            f"strides 1 and 2 only; got strides {[st['s'] for st in stages]}"
        )
    hparams = dict(
        in_chans=in_chans,
        num_classes=num_classes,
        stem_stride=stem["s"],
        stages=[dict(stride=st["s"], se=bool(st["se"])) for st in stages],
        final_expand=final_expand,
        dropout=dropout,
        shortcut=shortcut,
    )
    return register_space(SearchSpace(name, "cnn", tuple(decisions), hparams, source, describe_fn=_describe))


def cnn_blocks(arch: ArchConfig) -> list[list[tuple[int, int]]]:
    """Per stage, the (kernel, expand) of each active block."""
    from .base import get_space

    n = len(get_space(arch.space).hparams["stages"])
    return [
        [(arch[f"stage{s}.block{j}.kernel"], arch[f"stage{s}.block{j}.expand"]) for j in range(arch[f"stage{s}.depth"])]
        for s in range(n)
    ]


def _describe(arch: ArchConfig) -> str:
    stages = cnn_blocks(arch)
    parts = [
        f"{arch[f'stage{s}.width']}:" + "".join(f"{k}{t}" for k, t in blocks) for s, blocks in enumerate(stages)
    ]
    return f"r{arch['resolution']} s{arch['stem.width']} " + " ".join(parts) + f" h{arch['head.width']}"


# AttentiveNAS supernet_config (configs/train_attentive_nas_models.yml) and shortcut. Its kernels
# are 3/5; the supernet also supports 7 (cnn-fmnist uses it).
mbconv_space(
    "cnn-bignas",
    resolutions=(192, 224, 256, 288),
    stem=dict(c=(16, 24), s=2),
    stages=[
        dict(c=(16, 24), d=(1, 2), k=(3, 5), t=(1,), s=1, se=False),
        dict(c=(24, 32), d=(3, 4, 5), k=(3, 5), t=(4, 5, 6), s=2, se=False),
        dict(c=(32, 40), d=(3, 4, 5, 6), k=(3, 5), t=(4, 5, 6), s=2, se=True),
        dict(c=(64, 72), d=(3, 4, 5, 6), k=(3, 5), t=(4, 5, 6), s=2, se=False),
        dict(c=(112, 120, 128), d=(3, 4, 5, 6, 7, 8), k=(3, 5), t=(4, 5, 6), s=1, se=True),
        dict(c=(192, 200, 208, 216), d=(3, 4, 5, 6, 7, 8), k=(3, 5), t=(6,), s=2, se=True),
        dict(c=(216, 224), d=(1, 2), k=(3, 5), t=(6,), s=1, se=True),
    ],
    head_width=(1792, 1984),
    in_chans=3,
    num_classes=1000,
    dropout=0.2,
    shortcut="attentivenas",
    source="facebookresearch/AttentiveNAS configs/train_attentive_nas_models.yml",
)

# A small MBConv space for 28x28 grayscale Fashion-MNIST (this project's choice).
mbconv_space(
    "cnn-fmnist",
    resolutions=(24, 28),
    stem=dict(c=(8, 16), s=1),
    stages=[
        dict(c=(8, 16), d=(1,), k=(3,), t=(1,), s=1, se=False),
        dict(c=(16, 24), d=(1, 2), k=(3, 5), t=(3, 4, 6), s=2, se=False),
        dict(c=(24, 32), d=(1, 2, 3), k=(3, 5, 7), t=(3, 4, 6), s=2, se=True),
        dict(c=(40, 48, 56), d=(1, 2, 3), k=(3, 5, 7), t=(3, 4, 6), s=1, se=True),
        dict(c=(64, 80), d=(1, 2), k=(3, 5, 7), t=(4, 6), s=2, se=True),
    ],
    head_width=(256, 320),
    in_chans=1,
    num_classes=10,
    dropout=0.0,
    source="shiftnas (this project)",
)
