"""`build_supernet(name)`: the weight-sharing supernet of a search space.

The timm registrations sit beside their models (`vit.py`, `mbconv.py`), with their
`default_cfgs` from `timm_cfg.py`.
"""
from __future__ import annotations

from torch import nn

from ..spaces import get_space

__all__ = ["build_supernet"]


def build_supernet(space: str, num_classes: int | None = None, **kwargs) -> nn.Module:
    """The weight-sharing supernet of a search space (`shiftnas.list_spaces()` names them)."""
    sp = get_space(space)
    if sp.family == "vit":
        from .vit import ViTSupernet

        return ViTSupernet(sp, num_classes=num_classes, **kwargs)
    from .mbconv import MBConvSupernet

    return MBConvSupernet(sp, num_classes=num_classes, **kwargs)
