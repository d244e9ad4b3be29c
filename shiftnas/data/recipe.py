"""The preprocessing recipe both backends implement: what a batch means, not how it is made.

Training (``augment=True``): the ImageNet recipe of torchvision/timm/DALI's RN50 example,
scaled to ``image_size``: random resized crop (area 8-100 %, aspect 3/4-4/3) resized to
``image_size`` x ``image_size``, horizontal flip with p=0.5, normalise.
Evaluation, and training with ``augment=False``: resize the shorter side to
``floor(image_size / crop_pct)``, centre crop ``image_size`` (offset ``(H - size) / 2`` rounded half
up, DALI's rule), normalise. Interpolation is bilinear with antialiasing in both backends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "DEFAULT_CROP_PCT",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RRC_RATIO",
    "RRC_SCALE",
    "Recipe",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Over the 60,000 Fashion-MNIST training images (the usual torchvision numbers): the default
# for 1-channel data, so the default run's inputs have mean ~0 and std ~1.
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)
DEFAULT_CROP_PCT = 0.875  # timm / torchvision ImageNet evaluation: resize 256, crop 224


@dataclass(frozen=True)
class Recipe:
    image_size: int
    augment: bool  # random resized crop + flip (else resize + centre crop)
    channels: int  # 1 (grayscale) or 3 (RGB)
    mean: tuple[float, ...]  # in [0, 1] pixel units, one per channel
    std: tuple[float, ...]
    crop_pct: float

    @property
    def resize_size(self) -> int:
        """Shorter side before the centre crop (timm: floor(size / crop_pct))."""
        return math.floor(self.image_size / self.crop_pct)

    @classmethod
    def make(
        cls,
        image_size: int,
        augment: bool,
        channels: int,
        native_short_side: int,
        mean=None,
        std=None,
        crop_pct=None,
    ) -> Recipe:
        if channels not in (1, 3):
            raise ValueError(
                f"channels={channels!r}: allowed values are 1 (grayscale), 3 (RGB) or None (as stored)"
            )
        if mean is None:
            mean = FASHION_MNIST_MEAN if channels == 1 else IMAGENET_MEAN
        if std is None:
            std = FASHION_MNIST_STD if channels == 1 else IMAGENET_STD
        mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean={mean} / std={std}: need one value per channel ({channels})")
        if any(s <= 0 for s in std):
            raise ValueError(f"std={std}: every value must be > 0")
        if crop_pct is None:
            # Cropping 12.5 % off a 28px Fashion-MNIST image would cut into the object; crop
            # only when the images are larger than the target (ImageNet-like data).
            crop_pct = DEFAULT_CROP_PCT if native_short_side > image_size else 1.0
        if not 0.0 < crop_pct <= 1.0:
            raise ValueError(f"crop_pct={crop_pct}: must be in (0, 1]")
        return cls(int(image_size), bool(augment), int(channels), mean, std, float(crop_pct))
