"""Vision-transformer search spaces with AutoFormer semantics.

One embed dim shared by all layers, heads and MLP ratio chosen per layer, depth by skipping
trailing blocks, a fixed head dim (qkv width = heads x head_dim, independent of embed dim).

AutoFormer values: microsoft/Cream, AutoFormer/experiments/supernet/supernet-{T,S,B}.yaml.
Their SUPERNET section allocates the shared weights (T: embed 256, 4 heads, mlp 4.0, depth 14)
while SEARCH_SPACE lists what is sampled (T: embed up to 240): `super_*` below keeps both.
"""
from __future__ import annotations

from .base import ArchConfig, Decision, SearchSpace, register_space

__all__ = ["vit_space", "vit_layers"]


def vit_space(
    name: str,
    *,
    embed_dim: tuple[int, ...],
    mlp_ratio: tuple[float, ...],
    num_heads: tuple[int, ...],
    depth: tuple[int, ...],
    img_size: int,
    patch_size: int,
    in_chans: int,
    num_classes: int,
    head_dim: int,
    super_embed_dim: int,
    super_num_heads: int,
    super_mlp_ratio: float,
    source: str,
) -> SearchSpace:
    max_depth = max(depth)
    decisions = [
        Decision("depth", "depth", tuple(depth)),
        Decision("embed_dim", "embed_dim", tuple(embed_dim)),
    ]
    for i in range(max_depth):
        gate = ("depth", i)
        decisions.append(Decision(f"layers.{i}.num_heads", "num_heads", tuple(num_heads), gate))
        decisions.append(Decision(f"layers.{i}.mlp_ratio", "mlp_ratio", tuple(float(r) for r in mlp_ratio), gate))
    if super_embed_dim < max(embed_dim) or super_num_heads < max(num_heads) or super_mlp_ratio < max(mlp_ratio):
        raise ValueError(f"{name}: the supernet must be at least as large as the space's max")
    if img_size % patch_size:
        raise ValueError(f"{name}: img_size {img_size} is not a multiple of patch_size {patch_size}")
    hparams = dict(
        img_size=img_size,
        patch_size=patch_size,
        in_chans=in_chans,
        num_classes=num_classes,
        head_dim=head_dim,
        super_embed_dim=super_embed_dim,
        super_num_heads=super_num_heads,
        super_mlp_ratio=float(super_mlp_ratio),
        super_depth=max_depth,
    )
    return register_space(
        SearchSpace(name, "vit", tuple(decisions), hparams, source, describe_fn=_describe)
    )


def vit_layers(arch: ArchConfig) -> list[tuple[int, float]]:
    """(num_heads, mlp_ratio) of each active layer."""
    return [(arch[f"layers.{i}.num_heads"], arch[f"layers.{i}.mlp_ratio"]) for i in range(arch["depth"])]


def mlp_hidden(embed_dim: int, ratio: float) -> int:
    """MLP width of a layer, AutoFormer's rounding: int(ratio * embed_dim)."""
    return int(ratio * embed_dim)


def _describe(arch: ArchConfig) -> str:
    layers = vit_layers(arch)
    heads = ",".join(str(h) for h, _ in layers)
    ratios = ",".join(f"{r:g}" for _, r in layers)
    return f"d{arch['depth']} e{arch['embed_dim']} h[{heads}] r[{ratios}]"


_CREAM = "microsoft/Cream AutoFormer/experiments/supernet/supernet-{}.yaml"

# AutoFormer-T: SEARCH_SPACE embed 192/216/240, mlp 3.5/4.0, heads 3/4, depth 12/13/14;
# SUPERNET embed 256, heads 4, mlp 4.0, depth 14.
vit_space(
    "autoformer-t",
    embed_dim=(192, 216, 240), mlp_ratio=(3.5, 4.0), num_heads=(3, 4), depth=(12, 13, 14),
    img_size=224, patch_size=16, in_chans=3, num_classes=1000, head_dim=64,
    super_embed_dim=256, super_num_heads=4, super_mlp_ratio=4.0, source=_CREAM.format("T"),
)
# AutoFormer-S: embed 320/384/448, mlp 3.0/3.5/4.0, heads 5/6/7, depth 12/13/14;
# SUPERNET embed 448, heads 7, mlp 4.0, depth 14.
vit_space(
    "autoformer-s",
    embed_dim=(320, 384, 448), mlp_ratio=(3.0, 3.5, 4.0), num_heads=(5, 6, 7), depth=(12, 13, 14),
    img_size=224, patch_size=16, in_chans=3, num_classes=1000, head_dim=64,
    super_embed_dim=448, super_num_heads=7, super_mlp_ratio=4.0, source=_CREAM.format("S"),
)
# AutoFormer-B: embed 528/576/624, mlp 3.0/3.5/4.0, heads 9/10, depth 14/15/16;
# SUPERNET embed 640, heads 10, mlp 4.0, depth 16.
vit_space(
    "autoformer-b",
    embed_dim=(528, 576, 624), mlp_ratio=(3.0, 3.5, 4.0), num_heads=(9, 10), depth=(14, 15, 16),
    img_size=224, patch_size=16, in_chans=3, num_classes=1000, head_dim=64,
    super_embed_dim=640, super_num_heads=10, super_mlp_ratio=4.0, source=_CREAM.format("B"),
)
# Fashion-MNIST: 28x28 grayscale, patch 4 -> 49 tokens + cls = 50. Head dim 32. Chosen so the
# max/min FLOPs ratio is about 8 (>= 4 asked), with a CPU-trainable max subnet (~63 MFLOPs).
vit_space(
    "vit-fmnist",
    embed_dim=(64, 96, 128), mlp_ratio=(2.0, 3.0, 4.0), num_heads=(2, 3, 4), depth=(4, 5, 6),
    img_size=28, patch_size=4, in_chans=1, num_classes=10, head_dim=32,
    super_embed_dim=128, super_num_heads=4, super_mlp_ratio=4.0, source="shiftnas (this project)",
)
