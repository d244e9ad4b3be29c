"""`build_supernet(name)` and the timm registrations of the ViT supernets.

The MBConv supernets register themselves in `mbconv.py`.
"""
from __future__ import annotations

from timm.models import register_model
from torch import nn

from ..spaces import get_space
from .vit import ViTSupernet

__all__ = ["build_supernet"]


def build_supernet(space: str, num_classes: int | None = None, **kwargs) -> nn.Module:
    """The weight-sharing supernet of a search space (`shiftnas.list_spaces()` names them)."""
    sp = get_space(space)
    if sp.family == "vit":
        return ViTSupernet(sp, num_classes=num_classes, **kwargs)
    from .mbconv import MBConvSupernet

    return MBConvSupernet(sp, num_classes=num_classes, **kwargs)


# Keys timm's create_model adds for its weight loader; a supernet has no pretrained weights.
_TIMM_LOADER_KEYS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


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


def _vit(space: str, pretrained: bool, kwargs: dict) -> ViTSupernet:
    return ViTSupernet(space, **timm_kwargs(space, pretrained, kwargs))


@register_model
def shiftnas_autoformer_t_supernet(pretrained: bool = False, **kwargs) -> ViTSupernet:
    return _vit("autoformer-t", pretrained, kwargs)


@register_model
def shiftnas_autoformer_s_supernet(pretrained: bool = False, **kwargs) -> ViTSupernet:
    return _vit("autoformer-s", pretrained, kwargs)


@register_model
def shiftnas_autoformer_b_supernet(pretrained: bool = False, **kwargs) -> ViTSupernet:
    return _vit("autoformer-b", pretrained, kwargs)


@register_model
def shiftnas_vit_fmnist_supernet(pretrained: bool = False, **kwargs) -> ViTSupernet:
    return _vit("vit-fmnist", pretrained, kwargs)
