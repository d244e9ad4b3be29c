"""Fixtures for the data tests: the real Fashion-MNIST, prepared once and cached, and small
trees carved from it (a few hundred images) for the shard/epoch/bad-input checks."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from shiftnas.data.prepare import (
    DEFAULT_SOURCE,
    FASHION_MNIST_FOLDERS,
    SOURCE_FILES,
    _write_png,
    default_data_root,
    prepare_fashion_mnist,
    read_idx,
)


def fmnist_source() -> Path:
    src = Path(os.environ.get("SHIFTNAS_FMNIST_SOURCE", DEFAULT_SOURCE))
    if not all((src / f).is_file() for f in SOURCE_FILES.values()):
        pytest.skip(
            f"Fashion-MNIST IDX files not in {src}: `make data` (apt-get install dataset-fashion-mnist)"
        )
    return src


@pytest.fixture(scope="session")
def fmnist_idx():
    src = fmnist_source()
    return {k: read_idx(src / f) for k, f in SOURCE_FILES.items()}


@pytest.fixture(scope="session")
def fmnist_root():
    """The full preparation, in $SHIFTNAS_DATA/fashion-mnist (default ~/.cache/shiftnas/...):
    ~10 s the first time on 2 cores, then reused (a finished tree is left alone)."""
    out = default_data_root() / "fashion-mnist"
    prepare_fashion_mnist(out, fmnist_source(), log=lambda *_: None)
    return out


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(f">BBBB{array.ndim}I", 0, 0, 0x08, array.ndim, *array.shape)
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


@pytest.fixture(scope="session")
def small_source(tmp_path_factory, fmnist_idx):
    """IDX files of the first 300 train / 60 test images of the real data (for prepare tests)."""
    d = tmp_path_factory.mktemp("fmnist-small-src")
    for key, n in (
        ("train_images", 300),
        ("train_labels", 300),
        ("test_images", 60),
        ("test_labels", 60),
    ):
        write_idx(d / SOURCE_FILES[key], fmnist_idx[key][:n])
    return d


def unique_subset(images, labels, per_class: dict[int, int]):
    """Indices of the first ``per_class[c]`` images of each class, no two with equal pixels."""
    seen, picked = set(), []
    want = dict(per_class)
    for i, (x, y) in enumerate(zip(images, labels)):
        y = int(y)
        if want.get(y, 0) > 0 and x.tobytes() not in seen:
            seen.add(x.tobytes())
            picked.append(i)
            want[y] -= 1
        if not any(want.values()):
            break
    return picked


def write_tree(root: Path, split: str, images, labels, indices) -> dict[bytes, tuple[int, int]]:
    """Write ``indices`` as ``root/split/<folder of label>/<i>.png``; {pixels: (i, label index)}.

    Labels are re-indexed over the classes present (sorted folder order), as the loaders do.
    """
    present = sorted({int(labels[i]) for i in indices})
    truth = {}
    for i in indices:
        y = int(labels[i])
        d = root / split / FASHION_MNIST_FOLDERS[y]
        d.mkdir(parents=True, exist_ok=True)
        _write_png(str(d / f"{i:05d}.png"), images[i])
        truth[images[i].tobytes()] = (i, present.index(y))
    return truth


@pytest.fixture(scope="session")
def small_tree(tmp_path_factory, fmnist_idx):
    """train: 101 real images of classes 0, 1, 2 (40 + 37 + 24: odd, uneven shards);
    val: 30 images. Returns (root, {split: {pixels: (index, label)}})."""
    root = tmp_path_factory.mktemp("fmnist-small") / "tree"
    x, y = fmnist_idx["train_images"], fmnist_idx["train_labels"]
    truth = {"train": write_tree(root, "train", x, y, unique_subset(x, y, {0: 40, 1: 37, 2: 24}))}
    xt, yt = fmnist_idx["test_images"], fmnist_idx["test_labels"]
    truth["val"] = write_tree(root, "val", xt, yt, unique_subset(xt, yt, {0: 10, 1: 10, 2: 10}))
    return root, truth


@pytest.fixture(scope="session")
def jpeg_tree(tmp_path_factory):
    """RGB JPEGs, 120x90 and 90x120, smooth content: resize/crop paths on colour data."""
    from PIL import Image

    root = tmp_path_factory.mktemp("jpeg") / "tree"
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / "val" / c).mkdir(parents=True)
        for i in range(6):
            w, h = (120, 90) if i % 2 == 0 else (90, 120)
            low = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
            img = Image.fromarray(low).resize((w, h), Image.BICUBIC)
            img.save(root / "val" / c / f"{i}.jpg", quality=95)
    return root
