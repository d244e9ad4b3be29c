"""timm integration of the supernets, imported by the registrations beside them (`vit.py`, `mbconv.py`).

Every registered supernet has a timm default cfg (`timm_default_cfg`: input size, mean/std, crop,
interpolation, first conv, classifier), attached to the model `timm.create_model` returns
(`timm_create`), so `timm.data.resolve_data_config(model=m)` gives the space's input (1 x 28 x 28
and Fashion-MNIST's mean/std for the fmnist spaces), not timm's ImageNet fallback. No timm import
at module level: timm's import hook (shiftnas/__init__.py) imports the registrations, which
import this module, while timm itself may still be importing them.
"""
from __future__ import annotations

from torch import nn

from ..spaces import get_space

__all__ = ["timm_create", "timm_default_cfg", "timm_default_cfgs", "timm_kwargs", "timm_name"]


# Keys timm's create_model adds for its weight loader; a supernet has no pretrained weights.
_TIMM_LOADER_KEYS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def timm_default_cfg(space: str) -> dict:
    """timm's pretrained-cfg fields for the supernet of `space` (no weights: `url` empty). The
    input is the space's largest (a CNN space's largest resolution); ImageNet's mean/std,
    bicubic and crop 0.875 for the 3-channel spaces, Fashion-MNIST's mean/std and no crop for
    the 1-channel ones (shiftnas.data.recipe)."""
    from ..data.recipe import (
        DEFAULT_CROP_PCT,
        FASHION_MNIST_MEAN,
        FASHION_MNIST_STD,
        IMAGENET_MEAN,
        IMAGENET_STD,
    )

    sp = get_space(space)
    hp = sp.hparams
    size = hp["img_size"] if sp.family == "vit" else max(sp.decision("resolution").choices)
    rgb = hp["in_chans"] == 3
    return {
        "url": "", "num_classes": hp["num_classes"], "input_size": (hp["in_chans"], size, size),
        "pool_size": None, "crop_pct": DEFAULT_CROP_PCT if rgb else 1.0,
        "interpolation": "bicubic" if rgb else "bilinear",
        "mean": IMAGENET_MEAN if rgb else FASHION_MNIST_MEAN, "std": IMAGENET_STD if rgb else FASHION_MNIST_STD,
        "first_conv": "patch_embed" if sp.family == "vit" else "stem_conv",
        "classifier": "head" if sp.family == "vit" else "classifier",
        "license": "apache-2.0", "notes": (f"ShiftNAS {space} supernet; no pretrained weights",),
    }


def timm_name(space: str) -> str:
    """The timm model name of a space's supernet: autoformer-t -> shiftnas_autoformer_t_supernet."""
    return f"shiftnas_{space.replace('-', '_')}_supernet"


def timm_default_cfgs(spaces) -> dict:
    """The `default_cfgs` a registering module holds for timm's register_model, keyed by name."""
    from timm.models import generate_default_cfgs

    return generate_default_cfgs({timm_name(s): timm_default_cfg(s) for s in spaces})


def timm_create(cls, space: str, pretrained: bool, kwargs: dict) -> nn.Module:
    """A timm entrypoint's model: `cls(space, ...)` from the create_model keywords, with timm's
    `pretrained_cfg` / `default_cfg` attributes set from the registry."""
    from timm.models import get_pretrained_cfg

    model = cls(space, **timm_kwargs(space, pretrained, kwargs))
    cfg = get_pretrained_cfg(timm_name(space))
    if cfg is not None:
        model.pretrained_cfg = cfg.to_dict()
        model.default_cfg = model.pretrained_cfg
    return model


def timm_kwargs(space: str, pretrained: bool, kwargs: dict) -> dict:
    """The constructor keywords of a timm `create_model` call, without timm's loader keys."""
    if pretrained:
        raise ValueError(f"no pretrained weights are published for the {space} supernet; use pretrained=False")
    kwargs = {k: v for k, v in kwargs.items() if k not in _TIMM_LOADER_KEYS}
    in_chans = kwargs.pop("in_chans", None)
    want = get_space(space).hparams["in_chans"]
    if in_chans is not None and in_chans != want:
        raise ValueError(f"{space} takes in_chans={want} (fixed by the space), got in_chans={in_chans}")
    return kwargs
