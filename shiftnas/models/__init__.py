"""Supernets (timm-registered), their static exports, and subnet save/load."""
from . import mbconv as _mbconv  # noqa: F401  (registers the MBConv supernets with timm)
from . import registry as _registry  # noqa: F401  (registers the ViT supernets with timm)
