"""`shiftnas prepare imagenet` on a small synthetic JPEG tree: layout checks that name the bad
class or file, minival and the rest of train as hard links (no copies), the counts file,
idempotence; and the preparation lock, which leaves no file behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from shiftnas.cli import main
from shiftnas.data import DataError, scan_split
from shiftnas.data.imagenet import MINIVAL, REST, prepare_imagenet
from shiftnas.data.prepare import MARKER, file_lock

CLASSES = ("n01440764", "n01443537", "n01484850")
quiet = {"log": lambda *_: None}


def _jpeg(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 10), (shade, 255 - shade, 7)).save(path, format="JPEG")


@pytest.fixture
def tree(tmp_path) -> Path:
    """ROOT/train: 6 JPEGs per class; ROOT/val: 2 per class; ImageNet's file naming."""
    root = tmp_path / "imagenet"
    for k, cls in enumerate(CLASSES):
        for i in range(6):
            _jpeg(root / "train" / cls / f"{cls}_{i}.JPEG", 40 * k + i)
        for i in range(2):
            _jpeg(root / "val" / cls / f"ILSVRC2012_val_{k}{i}.JPEG", 40 * k + i)
    return root


def _listing(split_dir: Path) -> dict[str, set[str]]:
    return {c.name: {f.name for f in c.iterdir()} for c in sorted(split_dir.iterdir())}


def test_minival_and_rest_are_hard_links_that_partition_train(tree):
    train_before = _listing(tree / "train")
    marker = prepare_imagenet(tree, 2, num_classes=3, **quiet)

    mini, rest = _listing(tree / MINIVAL), _listing(tree / REST)
    assert _listing(tree / "train") == train_before  # train/ untouched
    for cls in CLASSES:
        assert len(mini[cls]) == 2 and len(rest[cls]) == 4
        assert mini[cls] | rest[cls] == train_before[cls] and not mini[cls] & rest[cls]
        for split, names in ((MINIVAL, mini[cls]), (REST, rest[cls])):
            for name in names:  # the same inode as the train file: a link, not a copy
                linked, original = (tree / split / cls / name).stat(), (tree / "train" / cls / name).stat()
                assert linked.st_ino == original.st_ino and original.st_nlink == 2
    assert scan_split(tree, MINIVAL).classes == scan_split(tree, "train").classes == CLASSES

    on_disk = json.loads((tree / MARKER).read_text())
    assert on_disk == marker
    assert on_disk["images"] == {"train": 18, "val": 6, MINIVAL: 6, REST: 12}
    assert on_disk["counts"][MINIVAL] == dict.fromkeys(CLASSES, 2)
    assert on_disk["minival_per_class"] == 2 and on_disk["num_classes"] == 3
    assert sorted(p.name for p in tree.iterdir()) == sorted(["train", "val", MINIVAL, REST, MARKER])


def test_a_rerun_is_left_alone_and_other_settings_need_force(tree):
    prepare_imagenet(tree, 2, num_classes=3, **quiet)
    picked = _listing(tree / MINIVAL)
    said = []
    prepare_imagenet(tree, 2, num_classes=3, log=said.append)
    assert "already prepared" in said[0] and _listing(tree / MINIVAL) == picked

    with pytest.raises(DataError, match=r"minival_per_class=2, this run asks for 3; pass --force"):
        prepare_imagenet(tree, 3, num_classes=3, **quiet)
    prepare_imagenet(tree, 3, num_classes=3, force=True, **quiet)
    assert {len(v) for v in _listing(tree / MINIVAL).values()} == {3}
    assert {len(v) for v in _listing(tree / REST).values()} == {3}
    assert (tree / "train" / CLASSES[0] / f"{CLASSES[0]}_0.JPEG").stat().st_nlink == 2  # old links gone


def test_the_draw_depends_on_the_seed_only(tree, tmp_path):
    other = tmp_path / "copy"
    for split in ("train", "val"):
        for f in (tree / split).rglob("*.JPEG"):
            _jpeg(other / f.relative_to(tree), 0)
    prepare_imagenet(tree, 2, num_classes=3, seed=5, **quiet)
    prepare_imagenet(other, 2, num_classes=3, seed=5, **quiet)
    assert _listing(tree / MINIVAL) == _listing(other / MINIVAL)


def _fails(root: Path, match: str, **kw) -> None:
    with pytest.raises(DataError, match=match):
        prepare_imagenet(root, 2, **{"num_classes": 3, **kw}, **quiet)
    assert not (root / MINIVAL).exists() and not (root / MARKER).exists()  # nothing written
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []


def test_wrong_class_count_is_named(tree):
    _fails(tree, r"train has 3 class folders, expected 1000 \(--num-classes", num_classes=1000)


def test_val_classes_must_match_train(tree):
    shutil.rmtree(tree / "val" / CLASSES[1])
    _jpeg(tree / "val" / "n99999999" / "a.JPEG", 9)
    _fails(tree, rf"val lacks class folder {CLASSES[1]} that train has \(1 missing, 1 extra\)")


def test_empty_and_unreadable_files_are_named(tree):
    empty = tree / "train" / CLASSES[0] / "empty.JPEG"
    empty.write_bytes(b"")
    cut = tree / "val" / CLASSES[2] / "cut.JPEG"
    cut.write_bytes((tree / "val" / CLASSES[2] / "ILSVRC2012_val_20.JPEG").read_bytes()[:100])
    _fails(tree, rf"2 corrupt image\(s\) under {re.escape(str(tree))}: {re.escape(str(empty))}: empty file; "
                 rf"{re.escape(str(cut))}: truncated JPEG")


def test_a_class_with_too_few_images_is_named(tree):
    for i in range(4):
        os.remove(tree / "train" / CLASSES[2] / f"{CLASSES[2]}_{i}.JPEG")
    _fails(tree, rf"--minival-per-class 2: class {CLASSES[2]} has 2 train images; each class needs more than 2")


def test_cli_prepares_and_reports_bad_input_in_one_line(tree, capsys):
    args = ["prepare", "imagenet", "--root", str(tree), "--num-classes", "3"]
    assert main([*args, "--minival-per-class", "1"]) == 0
    assert "hard-linked minival 3 (1 per class) and train_minus_minival 15" in capsys.readouterr().out
    assert main([*args, "--minival-per-class", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "shiftnas prepare: error: --minival-per-class 0: must be >= 1\n"


def test_file_lock_excludes_and_leaves_no_file(tmp_path):
    path = tmp_path / ".data.lock"
    holders, most = [], []

    def hold(n: int) -> None:
        for _ in range(n):
            with file_lock(path):
                holders.append(1)
                most.append(len(holders))
                time.sleep(0.002)
                holders.pop()

    threads = [threading.Thread(target=hold, args=(15,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(most) == 60 and max(most) == 1  # never two holders, though each release removes the file
    assert not path.exists()
