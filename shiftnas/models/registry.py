"""`build_supernet(name)` and the timm registrations of the ViT supernets.

The MBConv supernets register themselves in `mbconv.py`; both use `timm_cfg.py` for the
default cfgs and the create_model keywords.
"""
from __future__ import annotations

from timm.models import register_model
from torch import nn

from ..spaces import get_space
from .timm_cfg import timm_create, timm_default_cfgs
from .vit import ViTSupernet

__all__ = ["build_supernet"]


def build_supernet(space: str, num_classes: int | None = None, **kwargs) -> nn.Module:
    """The weight-sharing supernet of a search space (`shiftnas.list_spaces()` names them)."""
    sp = get_space(space)
    if sp.family == "vit":
        return ViTSupernet(sp, num_classes=num_classes, **kwargs)
    from .mbconv import MBConvSupernet

    return MBConvSupernet(sp, num_classes=num_classes, **kwargs)


def _vit(space: str, pretrained: bool, kwargs: dict) -> ViTSupernet:
    return timm_create(ViTSupernet, space, pretrained, kwargs)


# Read by timm's register_model (the entrypoint's module `default_cfgs`), keyed by model name.
default_cfgs = timm_default_cfgs(("autoformer-t", "autoformer-s", "autoformer-b", "vit-fmnist"))


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
