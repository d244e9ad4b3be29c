"""Supernets (timm-registered), their static exports, and subnet save/load.

Nothing is imported eagerly: the names below resolve on first use (PEP 562), so the cost-term
modules (`vit_cost`, `mbconv_cost`) load without torch or timm. The supernets are registered
with timm by `shiftnas/__init__.py` as soon as timm is imported.
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
