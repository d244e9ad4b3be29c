"""Data: ImageFolder loaders (DALI, or torch as the fallback) and data-set preparation.

    train = build_loader(root, "train", 256, 224, train=True, rank=r, world_size=w)
    val = build_loader(root, "val", 256, 224, train=False, rank=r, world_size=w)
    for epoch in range(epochs):
        train.set_epoch(epoch)
        for images, labels in train: ...

``root`` is an ImageFolder tree (``root/<split>/<class>/<image>``): ImageNet's ``train``/``val``,
or Fashion-MNIST from ``shiftnas prepare fashion-mnist`` (``train``, ``minival``, ``val``).
See shiftnas/data/README.md.
"""

from .folder import IMG_EXTENSIONS, CorruptImageError, DataError, SplitIndex, scan_split
from .imagenet import prepare_imagenet
from .loader import BACKENDS, build_loader, default_num_threads
from .prepare import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_FOLDERS,
    default_data_root,
    is_prepared,
    prepare_fashion_mnist,
)
from .recipe import FASHION_MNIST_MEAN, FASHION_MNIST_STD, IMAGENET_MEAN, IMAGENET_STD, Recipe

__all__ = [
    "BACKENDS",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_FOLDERS",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMG_EXTENSIONS",
    "CorruptImageError",
    "DataError",
    "Recipe",
    "SplitIndex",
    "build_loader",
    "default_data_root",
    "default_num_threads",
    "is_prepared",
    "prepare_fashion_mnist",
    "prepare_imagenet",
    "scan_split",
]
