"""``shiftnas prepare imagenet``: check an ImageNet train/val tree and carve minival from train.

    ROOT/train/<wnid>/...                read, never changed (1000 class folders, 1,281,167 images)
    ROOT/val/<wnid>/...                  read, never changed (the same folders, 50,000 images)
    ROOT/minival/<wnid>/...              hard links to N train images per class (default 50:
                                         50,000, the paper's held-out set for L_val)
    ROOT/train_minus_minival/<wnid>/...  hard links to the other train images: train on this
                                         split (data.train_split) so minival is never trained on
    ROOT/PREPARED.json                   written last: parameters and the images per class of
                                         every split

Checks first, writes nothing on bad input: both splits exist, train has the expected number of
class folders and val the same ones, every file is a readable image (`check_image`: empty,
foreign and truncated files are named). Hard links copy no image data, so both new splits cost
only directory entries; they need ROOT on one file system. The picks are a seeded, per-class
sample, so a rerun with the same settings finds the tree finished and leaves it alone; other
settings need ``--force``. The new splits are built in ``ROOT/.prepare-tmp-*`` and renamed into
place, so an interrupted run never leaves a tree that looks finished.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import secrets
import shutil
import time
from collections import Counter
from pathlib import Path

from ..atomic import atomic_write
from .folder import DataError, SplitIndex, corrupt_message, find_corrupt, scan_split
from .prepare import MARKER, check_existing, file_lock

__all__ = ["CARVED", "DEFAULT_MINIVAL_PER_CLASS", "add_imagenet_parser", "prepare_imagenet"]

FORMAT = "shiftnas/imagenet-minival"
FORMAT_VERSION = 1
DEFAULT_MINIVAL_PER_CLASS = 50
IMAGENET_CLASSES = 1000
MINIVAL, REST = "minival", "train_minus_minival"
CARVED = (MINIVAL, REST)
LOCK = ".shiftnas-prepare.lock"


def _per_class(index: SplitIndex) -> dict[str, int]:
    n = Counter(index.labels)
    return {c: n[i] for i, c in enumerate(index.classes)}


def _validate(train: SplitIndex, val: SplitIndex, num_classes: int, per_class: int, workers: int | None) -> None:
    """Raise a `DataError` naming what is wrong with the layout or the files, if anything is."""
    if len(train.classes) != num_classes:
        raise DataError(
            f"{train.root} has {len(train.classes)} class folders, expected {num_classes} "
            f"(--num-classes; ImageNet-1k has {IMAGENET_CLASSES})"
        )
    if val.classes != train.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        what = (f"{val.root} lacks class folder {only_train[0]} that train has" if only_train
                else f"{val.root} has class folder {only_val[0]} that train lacks")
        raise DataError(f"{what} ({len(only_train)} missing, {len(only_val)} extra): val needs train's classes")
    bad = find_corrupt(train.files + val.files, workers=workers)
    if bad:
        root = train.root.parent
        raise DataError(corrupt_message(bad, root, "Remove or replace them, then run this again."))
    counts = _per_class(train)
    short = sorted(c for c, n in counts.items() if n <= per_class)
    if short:
        more = f" ({len(short) - 1} more classes have too few)" if len(short) > 1 else ""
        raise DataError(
            f"--minival-per-class {per_class}: class {short[0]} has {counts[short[0]]} train images{more}; "
            f"each class needs more than {per_class}, so that some stay in {REST}"
        )


def _pick(train: SplitIndex, per_class: int, seed: int) -> set[str]:
    """The train files of minival: `per_class` of every class, a seeded sample (sorted classes)."""
    rng = random.Random(seed)
    by_class: dict[int, list[str]] = {}
    for f, label in zip(train.files, train.labels):
        by_class.setdefault(label, []).append(f)
    return {f for label in sorted(by_class) for f in rng.sample(by_class[label], per_class)}


def _link_splits(tmp: Path, train: SplitIndex, held: set[str]) -> None:
    """tmp/minival and tmp/train_minus_minival as hard links to the train files."""
    for cls in train.classes:
        for split in CARVED:
            (tmp / split / cls).mkdir(parents=True)
    for f, label in zip(train.files, train.labels):
        cls = train.classes[label]
        rel = os.path.relpath(f, train.root / cls)
        dst = tmp / (MINIVAL if f in held else REST) / cls / rel
        if os.sep in rel:
            dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, dst)
        except OSError as e:
            raise DataError(f"cannot hard-link {f} to {dst}: {e} (the splits must share a file system; "
                            "nothing is copied)") from e


def _state(root: Path, want: dict, counts: dict[str, dict[str, int]]) -> tuple[str, str]:
    """("absent" | "finished" | "damaged" | "other" | "foreign", why) of the carved splits."""
    present = [s for s in CARVED if (root / s).exists()]
    try:
        have = json.loads((root / MARKER).read_text())
        ok = isinstance(have, dict) and have.get("format") == FORMAT
    except (OSError, ValueError):
        ok = False
    if not ok:
        if not present:
            return "absent", ""
        return "foreign", f"{root / present[0]} exists but {root / MARKER} does not describe it"
    for key in ("version", "num_classes", "minival_per_class", "seed"):
        if have.get(key) != want[key]:
            return "other", f"{root} was prepared with {key}={have.get(key)!r}, this run asks for {want[key]!r}"
    try:
        found = {**counts, **{s: _per_class(scan_split(root, s)) for s in CARVED}}
    except DataError as e:
        return "damaged", str(e)
    if found != have.get("counts"):
        bad = next(s for s in found if found[s] != have.get("counts", {}).get(s))
        return "damaged", f"{root / bad} does not hold the images {MARKER} lists"
    return "finished", ""


def _publish(root: Path, tmp: Path, marker: dict) -> None:
    """Move tmp's splits into root (replacing old ones) and write the marker last."""
    (root / MARKER).unlink(missing_ok=True)  # from here until the end the tree is not finished
    for split in CARVED:
        if (root / split).exists():
            (root / split).rename(tmp / f"old-{split}")
        (tmp / split).rename(root / split)
    os.sync()  # the links reach the disk before the marker says they are there
    atomic_write(root / MARKER, lambda f: f.write(json.dumps(marker, indent=1).encode()), tmp=tmp / MARKER)


def prepare_imagenet(
    root: str | os.PathLike,
    minival_per_class: int = DEFAULT_MINIVAL_PER_CLASS,
    *,
    num_classes: int = IMAGENET_CLASSES,
    seed: int = 0,
    workers: int | None = None,
    force: bool = False,
    log=print,
) -> dict:
    """Check ``root`` and write minival + train_minus_minival (module doc); return the marker."""
    if minival_per_class < 1:
        raise DataError(f"--minival-per-class {minival_per_class}: must be >= 1")
    if num_classes < 1:
        raise DataError(f"--num-classes {num_classes}: must be >= 1")
    root = Path(os.path.abspath(os.fspath(root)))
    want = {"format": FORMAT, "version": FORMAT_VERSION, "num_classes": num_classes,
            "minival_per_class": minival_per_class, "seed": seed}
    t0 = time.perf_counter()
    train, val = scan_split(root, "train"), scan_split(root, "val")  # a missing split: its own error
    with file_lock(root / LOCK):
        state, why = _state(root, want, {"train": _per_class(train), "val": _per_class(val)})
        existing = check_existing(root, state, why, force=force, log=log, replace=" and ".join(CARVED))
        if existing is not None:
            return existing
        _validate(train, val, num_classes, minival_per_class, workers)
        held = _pick(train, minival_per_class, seed)
        for stale in root.glob(".prepare-tmp-*"):  # left by a killed run; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        tmp = root / f".prepare-tmp-{os.getpid()}-{secrets.token_hex(3)}"
        tmp.mkdir()
        try:
            _link_splits(tmp, train, held)
            counts = {"train": _per_class(train), "val": _per_class(val),
                      **{s: _per_class(scan_split(tmp, s)) for s in CARVED}}
            marker = {**want, "counts": counts, "images": {s: sum(c.values()) for s, c in counts.items()},
                      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
            _publish(root, tmp, marker)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    n = marker["images"]
    log(f"{root}: {num_classes} classes checked (train {n['train']:,}, val {n['val']:,} images); "
        f"hard-linked {MINIVAL} {n[MINIVAL]:,} ({minival_per_class} per class) and {REST} {n[REST]:,} "
        f"in {time.perf_counter() - t0:.1f}s")
    return marker


_DESCRIPTION = """\
Check an ImageNet tree (ROOT/train/<wnid>/..., ROOT/val/<wnid>/... with val already sorted into
class folders) and carve two splits from train with hard links (no image is copied; train/ and
val/ are left as they are):
  ROOT/minival              N train images per class: the probability shift's validation split
  ROOT/train_minus_minival  the rest of train: train on it (data.train_split=train_minus_minival)
                            so that minival is never trained on
Counts go to ROOT/PREPARED.json. Bad input (a missing split, a wrong number of classes, val
classes that differ from train's, empty or unreadable files) is an error naming it, and nothing
is written. A finished ROOT is left alone.

example:
  shiftnas prepare imagenet --root /data/imagenet --minival-per-class 50
"""


def _cmd_prepare_imagenet(args) -> int:
    prepare_imagenet(args.root, args.minival_per_class, num_classes=args.num_classes, seed=args.seed,
                     workers=args.workers, force=args.force)
    return 0


def add_imagenet_parser(datasets) -> argparse.ArgumentParser:
    """Add ``imagenet`` to the data sets of ``shiftnas prepare``."""
    p = datasets.add_parser("imagenet", help="check an ImageNet train/val tree and carve minival with hard links",
                            description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="the folder holding train/ and val/")
    p.add_argument("--minival-per-class", type=int, default=DEFAULT_MINIVAL_PER_CLASS,
                   help=f"train images per class in {MINIVAL} (default: {DEFAULT_MINIVAL_PER_CLASS})")
    p.add_argument("--num-classes", type=int, default=IMAGENET_CLASSES,
                   help=f"class folders train/ and val/ must have (default: {IMAGENET_CLASSES})")
    p.add_argument("--seed", type=int, default=0, help="seed of the minival draw (default: 0)")
    p.add_argument("--workers", type=int, default=None, help="threads checking the files (default: cores, at most 8)")
    p.add_argument("--force", action="store_true", help=f"replace {MINIVAL} and {REST} prepared with other settings")
    p.set_defaults(fn=_cmd_prepare_imagenet)
    return p
