"""Bad data folders and images beyond tests/data/test_data_bad_input.py: each ends in one
clear error naming the file, or is skipped and counted where asked, or loads when it is valid.

- class folders with no file at all, or only empty sub-folders;
- files with an image extension that are no image (GIF, PDF, HTML, ZIP, AVI, a dangling
  symlink): named by the quick check, or skipped and counted with `skip_corrupt=True`;
- unusual but valid images (RGBA, palette, 16-bit, CMYK, 1-bit, PNG named .JPEG): they load;
- corruption found while decoding in a DataLoader worker: one line naming the file, not the
  worker's traceback;
- the same inputs through train.py and `shiftnas prepare`: exit 2 and one error line.
"""
from __future__ import annotations

import gzip
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from clicheck import assert_one_line_error, make_mini_root, shiftnas_main, train_main
from fmnist_tiny import tiny_overrides
from PIL import Image

from shiftnas.data import CorruptImageError, DataError, build_loader, scan_split


def _corrupt_middle(data: bytes) -> bytes:
    """Signature and IEND intact (the quick check passes), pixel data broken (decoding fails)."""
    b = bytearray(data)
    start = b.index(b"IDAT") + 4
    for k in range(start + 2, start + 12):
        b[k] ^= 0xFF
    return bytes(b)


@pytest.fixture
def mini_root(tmp_path) -> Path:
    """train/minival/val, classes a and b, 8 random 28x28 PNGs each: one batch of 16."""
    return make_mini_root(tmp_path / "data")


def _loader(root, **kw):
    args = {"batch_size": 4, "image_size": 28, "train": False, "backend": "torch", "num_threads": 1,
            "device": "cpu"} | kw
    return build_loader(root, "train", **args)


# ----------------------------------------------------------------------- folders
def test_class_folder_with_no_file_at_all(mini_root):
    (mini_root / "train" / "a0").mkdir()
    with pytest.raises(DataError, match=f"class folder {mini_root}/train/a0 has no images"):
        scan_split(mini_root, "train")
    (mini_root / "train" / "a0" / "sub" / "deeper").mkdir(parents=True)  # only empty folders
    with pytest.raises(DataError, match=f"class folder {mini_root}/train/a0 has no images"):
        scan_split(mini_root, "train")


def test_every_class_folder_empty(mini_root):
    for cls in "ab":
        for f in (mini_root / "val" / cls).iterdir():
            f.unlink()
    with pytest.raises(DataError, match="has no images: its 2 class folder"):
        scan_split(mini_root, "val")


# ----------------------------------------------------------------------- not images
NOT_IMAGES = {
    "anim.png": b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x00\x00\x00\x00\x00,"
                b"\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;",
    "paper.jpg": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\ntrailer\n<<>>\n%%EOF\n",
    "page.jpeg": b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n",
    "archive.webp": b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + b"\x00" * 40,
    "movie.webp": b"RIFF\x24\x00\x00\x00AVI LIST" + b"\x00" * 32,
    "nul.bmp": b"\x00" * 64,
    "text.tiff": "é" * 40 + "\n",
}


@pytest.mark.parametrize("name", sorted(NOT_IMAGES))
def test_non_image_with_image_extension(mini_root, name):
    bad = mini_root / "train" / "b" / name
    data = NOT_IMAGES[name]
    bad.write_bytes(data if isinstance(data, bytes) else data.encode())
    with pytest.raises(CorruptImageError, match=f"1 corrupt image\\(s\\) under {mini_root}/train: {bad}: "):
        _loader(mini_root)
    with pytest.warns(UserWarning, match="skipped 1 corrupt image\\(s\\) of 17"):
        ld = _loader(mini_root, skip_corrupt=True, max_corrupt_frac=0.1)
    assert len(ld.index) == 16


def test_skip_corrupt_stops_beyond_its_limit(mini_root):
    """1 of 17 images is 5.9%: over the default 1% limit, an error naming the count and the
    limit; under a 10% limit, skipped. A bad limit is named."""
    bad = mini_root / "train" / "b" / "x.png"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(DataError, match=rf"1 of 17 images under {mini_root}/train are corrupt .*"
                                        r"more than max_corrupt_frac=0.01 allows \(0\)"):
        _loader(mini_root, skip_corrupt=True)
    with pytest.warns(UserWarning, match="skipped 1 corrupt image"):
        _loader(mini_root, skip_corrupt=True, max_corrupt_frac=1 / 17)
    with pytest.raises(ValueError, match=r"max_corrupt_frac=1.5: must be a number in \[0, 1\]"):
        _loader(mini_root, skip_corrupt=True, max_corrupt_frac=1.5)


def test_dangling_symlink_named_like_an_image(mini_root):
    link = mini_root / "train" / "a" / "gone.png"
    link.symlink_to(mini_root / "nowhere.png")
    with pytest.raises(CorruptImageError, match=f"{link}: FileNotFoundError"):
        _loader(mini_root)


# ----------------------------------------------------------------------- odd but valid
def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_unusual_valid_images_load(mini_root):
    base = Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8))
    odd = {
        "rgba.png": _encode(base.convert("RGBA"), "PNG"),
        "palette.png": _encode(base.convert("P"), "PNG"),
        "la.png": _encode(base.convert("LA"), "PNG"),
        "deep16.png": _encode(Image.fromarray(np.arange(784, dtype=np.uint16).reshape(28, 28) * 80), "PNG"),
        "cmyk.jpg": _encode(base.convert("CMYK"), "JPEG"),
        "bits.bmp": _encode(base.convert("1"), "BMP"),
        "actually_png.JPEG": _encode(base, "PNG"),
        "big.TIFF": _encode(base.resize((300, 17)), "TIFF"),
    }
    for name, data in odd.items():
        (mini_root / "train" / "a" / name).write_bytes(data)
    for channels in (1, 3):
        ld = _loader(mini_root, channels=channels, verify="full")
        seen = 0
        for x, _ in ld:
            assert tuple(x.shape[1:]) == (channels, 28, 28) and bool(x.isfinite().all())
            seen += x.shape[0]
        assert seen == 16 + len(odd)


# ----------------------------------------------------------------------- decode time
def test_decode_error_in_a_worker_is_one_line(mini_root):
    bad = mini_root / "train" / "b" / "3.png"
    bad.write_bytes(_corrupt_middle(bad.read_bytes()))
    ld = _loader(mini_root, num_threads=1)
    with pytest.raises(CorruptImageError) as e:
        for _ in ld:
            pass
    msg = str(e.value)
    assert msg.startswith(f"cannot decode {bad}: ") and "\n" not in msg and "Traceback" not in msg, msg


# ----------------------------------------------------------------------- through train.py
def _train(root: Path, out: Path, *extra: str) -> str:
    argv = [*tiny_overrides(root, out, "bad-data"), "optim.steps=2", "optim.warmup_steps=0", *extra]
    rc, _, err = train_main(argv, seconds=300)
    return assert_one_line_error(rc, err, "train.py")


def test_train_py_truncated_image(mini_root, tmp_path):
    bad = mini_root / "val" / "a" / "5.png"
    bad.write_bytes(bad.read_bytes()[:-40])
    line = _train(mini_root, tmp_path / "runs")
    assert str(bad) in line and "truncated PNG" in line
    assert not (tmp_path / "runs" / "bad-data").exists()  # refused before anything was written


def test_train_py_skips_corrupt_images_with_data_skip_corrupt(mini_root, tmp_path):
    bad = mini_root / "val" / "a" / "5.png"
    bad.write_bytes(bad.read_bytes()[:-40])
    assert "data.skip_corrupt=true" in _train(mini_root, tmp_path / "runs")  # the error says how
    argv = [*tiny_overrides(mini_root, tmp_path / "runs", "skip"), "optim.steps=2", "optim.warmup_steps=0",
            "data.skip_corrupt=true", "data.max_corrupt_frac=0.1"]
    with pytest.warns(UserWarning, match=rf"skipped 1 corrupt image\(s\) of 16 under {mini_root}/val \(first: {bad}"):
        rc, _, err = train_main(argv, seconds=300)
    assert rc == 0, err[-2000:]
    summary = json.loads((tmp_path / "runs" / "skip" / "summary.json").read_text())
    assert all(r["images"] == 15 for r in summary["rows"])
    # The search commands read the run's data the way the run did: the same image left out.
    from shiftnas.search.run import load_run

    run = load_run(tmp_path / "runs" / "skip")
    with pytest.warns(UserWarning, match=rf"skipped 1 corrupt image\(s\) of 16 under {mini_root}/val"):
        loader = run.loader("val")
    loader.set_epoch(0)
    assert sum(len(y) for _, y in loader) == 15


def test_train_py_empty_class_folder(mini_root, tmp_path):
    (mini_root / "minival" / "c").mkdir()
    assert f"class folder {mini_root}/minival/c has no images" in _train(mini_root, tmp_path / "runs")


def test_train_py_corruption_found_while_training(mini_root, tmp_path):
    """The quick check passes the file; the first batch decodes it, in a loader worker."""
    bad = mini_root / "train" / "b" / "6.png"
    bad.write_bytes(_corrupt_middle(bad.read_bytes()))
    argv = [*tiny_overrides(mini_root, tmp_path / "runs", "bad-data"), "optim.steps=2", "optim.warmup_steps=0"]
    rc, _, err = train_main(argv, seconds=300)
    assert rc == 2 and "Traceback" not in err, err[-2000:]
    lines = err.splitlines()  # the run's own lines (amp, ...) first, then the one error line
    assert lines[-1].startswith(f"train.py [rank 0]: error: cannot decode {bad}")
    assert not [x for x in lines[:-1] if "error" in x]
    argv += ["data.skip_corrupt=true", "data.max_corrupt_frac=0.1"]  # every image decoded first: left out
    with pytest.warns(UserWarning, match=rf"skipped 1 corrupt image\(s\) of 16 under {mini_root}/train"):
        rc, _, err = train_main([*argv, "data.batch_size=15"], seconds=300)
    assert rc == 0, err[-2000:]


def test_train_py_data_root_is_a_file(tmp_path):
    f = tmp_path / "data.tar"
    f.write_bytes(b"\x00" * 10)
    assert "is not a directory" in _train(f, tmp_path / "runs")


# ----------------------------------------------------------------------- prepare
@pytest.mark.parametrize("how", ["garbage", "truncated", "wrong magic", "empty"])
def test_prepare_corrupt_idx_files(tmp_path, how):
    from shiftnas.data.prepare import SOURCE_FILES

    src = tmp_path / "src"
    src.mkdir()
    for key, name in SOURCE_FILES.items():
        n, shape = (20, (28, 28)) if "images" in key else (20, ())
        arr = np.zeros((n, *shape), np.uint8)
        header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        raw = header + arr.tobytes()
        if how == "wrong magic":
            raw = b"\x12\x34" + raw[2:]
        data = gzip.compress(raw)
        if how == "garbage":
            data = os.urandom(64)
        elif how == "truncated":
            data = data[: len(data) // 2]
        elif how == "empty":
            data = b""
        (src / name).write_bytes(data)
    rc, _, err = shiftnas_main(["prepare", "fashion-mnist", "--source", str(src), "--out", str(tmp_path / "out")])
    line = assert_one_line_error(rc, err, "shiftnas prepare")
    assert str(src) in line, line
