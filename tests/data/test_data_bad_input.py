"""Bad input: errors name the path; corrupt files are named, or skipped and counted on request;
nothing is mislabelled or dropped silently."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from shiftnas.data import CorruptImageError, DataError, build_loader, scan_split
from shiftnas.data.dali_backend import dali_available

BACKENDS = [
    "torch",
    pytest.param("dali", marks=pytest.mark.skipif(dali_available() is not None, reason="no DALI")),
]


def png_bytes(value: int, size=(12, 12)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full(size, value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
        buf, format="JPEG"
    )
    return buf.getvalue()


@pytest.fixture
def tree(tmp_path):
    """root/train/{a,b,c}/*.png: 4 images per class, pixel value = 10 * class + i."""
    root = tmp_path / "data"
    for c, cls in enumerate("abc"):
        (root / "train" / cls).mkdir(parents=True)
        for i in range(4):
            (root / "train" / cls / f"{i}.png").write_bytes(png_bytes(10 * c + i))
    return root


def load_all(root, backend, **kw):
    ld = build_loader(
        root,
        "train",
        4,
        12,
        train=False,
        backend=backend,
        num_threads=1,
        device="cpu",
        mean=(0.0,),
        std=(1 / 255,),
        **kw,
    )
    return [(round(float(x[k, 0, 0, 0])), int(y[k])) for x, y in ld for k in range(len(y))]


@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_root_and_split(tmp_path, tree, backend):
    with pytest.raises(DataError, match=f"data root {tmp_path}/nope does not exist"):
        build_loader(tmp_path / "nope", "train", 4, 12, train=True, backend=backend, device="cpu")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match=f"data root {tmp_path}/file is not a directory"):
        build_loader(tmp_path / "file", "train", 4, 12, train=True, backend=backend, device="cpu")
    with pytest.raises(
        DataError, match=f"split folder {tree}/val does not exist; {tree} has: train"
    ):
        build_loader(tree, "val", 4, 12, train=False, backend=backend, device="cpu")


def test_empty_class_folder(tree):
    (tree / "train" / "b0").mkdir()  # sorts between a and b: would shift b and c
    (tree / "train" / "b0" / "notes.txt").write_text("x")
    with pytest.raises(
        DataError, match=f"class folder {tree}/train/b0 has no images.*shift the label"
    ):
        scan_split(tree, "train")


def test_split_without_images(tree):
    (tree / "val").mkdir()
    with pytest.raises(DataError, match=f"split {tree}/val has no images: it has no class folders"):
        scan_split(tree, "val")
    (tree / "val" / "a").mkdir()
    (tree / "val" / "a" / "readme.md").write_text("x")
    with pytest.raises(DataError, match=f"split {tree}/val has no images: its 1 class folder"):
        scan_split(tree, "val")


def test_image_outside_class_folder_is_an_error(tree):
    (tree / "train" / "stray.png").write_bytes(png_bytes(0))
    with pytest.raises(
        DataError, match=f"1 image\\(s\\) outside any class folder \\(e.g. {tree}/train/stray.png"
    ):
        scan_split(tree, "train")


def test_non_image_files_are_counted(tree):
    (tree / "train" / "a" / "labels.csv").write_text("x")
    (tree / "train" / "a" / ".DS_Store").write_text("x")  # hidden: skipped quietly
    with pytest.warns(UserWarning, match="ignored 1 file\\(s\\) without an image extension"):
        assert len(scan_split(tree, "train")) == 12


CORRUPTIONS = {
    "garbage.png": b"this is not an image" * 20,
    "empty.jpg": b"",
    "truncated.png": png_bytes(0)[:-30],
    "truncated.jpg": jpeg_bytes(0)[:-100],
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corrupt_image_is_named(tree, backend, name):
    bad = tree / "train" / "b" / name
    bad.write_bytes(CORRUPTIONS[name])
    with pytest.raises(
        CorruptImageError,
        match=f"1 corrupt image\\(s\\) under {tree}/train: {bad}: .*skip_corrupt=True",
    ):
        build_loader(tree, "train", 4, 12, train=True, backend=backend, device="cpu")


@pytest.mark.parametrize("backend", BACKENDS)
def test_skip_corrupt_warns_with_count_and_keeps_labels(tree, backend):
    for name in ("garbage.png", "truncated.png"):
        (tree / "train" / "b" / name).write_bytes(CORRUPTIONS[name])
    with pytest.warns(
        UserWarning, match=f"skipped 2 corrupt image\\(s\\) of 14 under {tree}/train"
    ):
        got = load_all(tree, backend, skip_corrupt=True, max_corrupt_frac=0.5)
    # every good image once, with its own label (value // 10 is the class)
    assert sorted(got) == sorted((10 * c + i, c) for c in range(3) for i in range(4))


def _corrupt_middle(path):
    """A PNG whose signature and IEND are intact but whose pixel data is not: the quick check
    passes it, decoding fails."""
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 4
    for k in range(start + 2, start + 12):
        data[k] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("backend", BACKENDS)
def test_corrupt_middle_named_at_decode_time_or_found_by_full_verify(tree, backend):
    bad = tree / "train" / "c" / "2.png"
    _corrupt_middle(bad)
    ld = build_loader(
        tree, "train", 4, 12, train=False, backend=backend, num_threads=1, device="cpu"
    )
    with pytest.raises(CorruptImageError, match=str(bad)):
        for _ in ld:
            pass
    with pytest.raises(CorruptImageError, match=f"{bad}: "):
        build_loader(
            tree, "train", 4, 12, train=False, backend=backend, device="cpu", verify="full"
        )
    with pytest.warns(UserWarning, match="skipped 1 corrupt"):
        got = load_all(tree, backend, verify="full", skip_corrupt=True, max_corrupt_frac=0.5)
    assert len(got) == 11 and (22, 2) not in got and all(v // 10 == y for v, y in got)


def test_bad_arguments(tree):
    for kw, msg in [
        ({"backend": "tf"}, "backend='tf': allowed values are 'dali', 'torch', 'auto'"),
        ({"rank": 2, "world_size": 2}, "rank=2: must be in \\[0, world_size=2\\)"),
        ({"batch_size": 0}, "batch_size=0: must be an integer >= 1"),
        ({"num_threads": 0}, "num_threads=0"),
        ({"channels": 2}, "channels=2: allowed values are 1, 3 or None"),
        ({"verify": "some"}, "verify='some'"),
        ({"mean": (0.5, 0.5)}, "need one value per channel"),
        ({"crop_pct": 1.5}, "crop_pct=1.5"),
    ]:
        args = {
            "batch_size": 4,
            "image_size": 12,
            "train": True,
            "backend": "torch",
            "device": "cpu",
        } | kw
        with pytest.raises(ValueError, match=msg):
            build_loader(tree, "train", **args)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device=cuda: CUDA is not available here"):
            build_loader(tree, "train", 4, 12, train=True, backend="torch", device="cuda")
    with pytest.raises(DataError, match="has 12 image\\(s\\), fewer than world_size=13"):
        build_loader(
            tree, "train", 4, 12, train=True, rank=0, world_size=13, backend="torch", device="cpu"
        )
