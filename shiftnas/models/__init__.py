"""Supernets (timm-registered), their static exports, and subnet save/load.

Nothing is imported eagerly: the names below resolve on first use (PEP 562). The supernets are
registered with timm by `shiftnas/__init__.py` as soon as timm is imported. The cost model
(`shiftnas.cost`) shares the width rules of `shiftnas.spaces` with these modules and imports
none of them.
"""
from .._lazy import lazy_exports

_EXPORTS = {
    "MBConvSupernet": ".mbconv",
    "ViTSupernet": ".vit",
    "build_supernet": ".registry",
    "export_subnet": ".export",
    "load_subnet": ".export",
    "save_subnet": ".export",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
