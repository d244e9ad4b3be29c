"""Vision-transformer search spaces with AutoFormer semantics.

One embed dim shared by all layers, heads and MLP ratio chosen per layer, depth by skipping
trailing blocks, a fixed head dim (qkv width = heads x head_dim, independent of embed dim).

AutoFormer values: microsoft/Cream, AutoFormer/experiments/supernet/supernet-{T,S,B}.yaml.
Their SUPERNET section allocates the shared weights (T: embed 256, 4 heads, mlp 4.0, depth 14)
while SEARCH_SPACE lists what is sampled (T: embed up to 240): `super_*` below keeps both.

Model options AutoFormer trains T/S/B with (its README's commands: `--gp --change_qkv
--relative_position`, max relative distance 14), on for the autoformer spaces, off for vit-fmnist:

- `rel_pos` (int, 0 = off): 2-D relative position encoding of max distance `rel_pos` on the keys
  (added to q.k) and on the values (added to attn.v), shared by the heads of a layer
  (AutoFormer's RelativePosition2D_super; `shiftnas.ops.rel_pos`).
- `pool`: "cls" (the cls token's output) or "mean" (the mean of the patch tokens' outputs after
  the final norm, AutoFormer's `--gp`; the cls token is still in the sequence).
- `ln_eps`: the LayerNorm epsilon (AutoFormer: torch's default 1e-5).

`vit_variant` derives a space from a registered one with some arguments changed, e.g. the
released AutoFormer-T subnet's mlp ratio 3.0, outside supernet-T's search space.
"""
from __future__ import annotations

from .base import ArchConfig, Decision, SearchSpace, get_space, list_spaces, register_space

__all__ = ["vit_layers", "vit_space", "vit_variant"]

POOLS = ("cls", "mean")
_ARGS: dict[str, dict] = {}  # space name -> the vit_space arguments that built it (for vit_variant)


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
    rel_pos: int = 0,
    pool: str = "cls",
    ln_eps: float = 1e-6,
) -> SearchSpace:
    args = {k: v for k, v in locals().items() if k != "name"}
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
    if isinstance(rel_pos, bool) or not isinstance(rel_pos, int) or rel_pos < 0:
        raise ValueError(f"{name}: rel_pos={rel_pos!r}; allowed: an int >= 0 (max relative distance, 0 = off)")
    if pool not in POOLS:
        raise ValueError(f"{name}: pool={pool!r}; allowed: {list(POOLS)}")
    if not (isinstance(ln_eps, float) and 0.0 < ln_eps < 1.0):
        raise ValueError(f"{name}: ln_eps={ln_eps!r}; allowed: a float in (0, 1)")
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
        rel_pos=rel_pos,
        pool=pool,
        ln_eps=ln_eps,
    )
    space = register_space(SearchSpace(name, "vit", tuple(decisions), hparams, source, describe_fn=_describe))
    _ARGS[name] = args
    return space


def vit_variant(base: str, name: str, **changes) -> SearchSpace:
    """The space `base` with some `vit_space` arguments changed, registered as `name` (the same
    call again returns it; `name` taken by another definition is an error). E.g. the released
    AutoFormer-T subnet (mlp ratios 3.0-4.0) in supernet-T:
    `vit_variant("autoformer-t", "autoformer-t-mlp3", mlp_ratio=(3.0, 3.5, 4.0))`."""
    if base not in _ARGS:
        raise ValueError(f"vit_variant: base {base!r} is not a vit space; allowed: {sorted(_ARGS)}")
    unknown = sorted(set(changes) - set(_ARGS[base]))
    if unknown:
        raise ValueError(f"vit_variant: unknown argument(s) {unknown}; allowed: {sorted(_ARGS[base])}")
    args = {**_ARGS[base], **changes}
    if "source" not in changes:
        args["source"] = f"{base} ({_ARGS[base]['source']}) with " + ", ".join(f"{k}={v}" for k, v in changes.items())
    if name in _ARGS:
        if _ARGS[name] == args:
            return get_space(name)
        raise ValueError(f"vit_variant: space {name!r} already exists with other arguments; pick another name")
    if name in list_spaces():
        raise ValueError(f"vit_variant: space {name!r} already exists (a {get_space(name).family} space); pick another name")
    return vit_space(name, **args)


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
# What AutoFormer's supernet_train.py builds with its README's flags (--gp --change_qkv
# --relative_position, --max_relative_position 14 by default) and nn.LayerNorm's default eps.
_AUTOFORMER = {"rel_pos": 14, "pool": "mean", "ln_eps": 1e-5}
# What the three AutoFormer spaces share: ImageNet at 224 px, patch 16, head dim 64, MLP ratio 4 in the supernet.
_AUTOFORMER_IMAGENET = dict(img_size=224, patch_size=16, in_chans=3, num_classes=1000, head_dim=64,
                            super_mlp_ratio=4.0, **_AUTOFORMER)

# AutoFormer-T: SEARCH_SPACE embed 192/216/240, mlp 3.5/4.0, heads 3/4, depth 12/13/14;
# SUPERNET embed 256, heads 4, mlp 4.0, depth 14.
vit_space(
    "autoformer-t",
    embed_dim=(192, 216, 240), mlp_ratio=(3.5, 4.0), num_heads=(3, 4), depth=(12, 13, 14),
    super_embed_dim=256, super_num_heads=4, source=_CREAM.format("T"), **_AUTOFORMER_IMAGENET,
)
# AutoFormer-S: embed 320/384/448, mlp 3.0/3.5/4.0, heads 5/6/7, depth 12/13/14;
# SUPERNET embed 448, heads 7, mlp 4.0, depth 14.
vit_space(
    "autoformer-s",
    embed_dim=(320, 384, 448), mlp_ratio=(3.0, 3.5, 4.0), num_heads=(5, 6, 7), depth=(12, 13, 14),
    super_embed_dim=448, super_num_heads=7, source=_CREAM.format("S"), **_AUTOFORMER_IMAGENET,
)
# AutoFormer-B: embed 528/576/624, mlp 3.0/3.5/4.0, heads 9/10, depth 14/15/16;
# SUPERNET embed 640, heads 10, mlp 4.0, depth 16.
vit_space(
    "autoformer-b",
    embed_dim=(528, 576, 624), mlp_ratio=(3.0, 3.5, 4.0), num_heads=(9, 10), depth=(14, 15, 16),
    super_embed_dim=640, super_num_heads=10, source=_CREAM.format("B"), **_AUTOFORMER_IMAGENET,
)
# Fashion-MNIST: 28x28 grayscale, patch 4 -> 49 tokens + cls = 50. Head dim 32. Chosen so the
# max/min FLOPs ratio is about 8 (>= 4 asked), with a CPU-trainable max subnet (~63 MFLOPs).
vit_space(
    "vit-fmnist",
    embed_dim=(64, 96, 128), mlp_ratio=(2.0, 3.0, 4.0), num_heads=(2, 3, 4), depth=(4, 5, 6),
    img_size=28, patch_size=4, in_chans=1, num_classes=10, head_dim=32,
    super_embed_dim=128, super_num_heads=4, super_mlp_ratio=4.0, source="shiftnas (this project)",
)
