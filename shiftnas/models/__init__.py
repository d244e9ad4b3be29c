"""Supernets (timm-registered), their static exports, and subnet save/load.

Nothing is imported eagerly: the names below resolve on first use (PEP 562). The supernets are
registered with timm by `shiftnas/__init__.py` as soon as timm is imported. The cost model
(`shiftnas.cost`) shares the width rules of `shiftnas.spaces` with these modules and imports
none of them.
"""
from .._lazy import lazy_exports

_EXPORTS = {  # submodule -> the public names it defines
    ".export": ("export_subnet", "load_subnet", "save_subnet"),
    ".mbconv": ("MBConvSupernet",),
    ".registry": ("build_supernet",),
    ".vit": ("ViTSupernet",),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
