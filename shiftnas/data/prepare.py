"""``shiftnas prepare fashion-mnist``: Fashion-MNIST IDX files -> an ImageFolder tree of PNGs.

    DIR/train/<class>/<i>.png     training images not in minival (i: index in train-images-idx3)
    DIR/minival/<class>/<i>.png   a class-balanced split carved from train (default 5,000): the
                                  validation data of the probability shift's L_val, never
                                  seen by the optimiser
    DIR/val/<class>/<i>.png       the official 10,000 test images (i: index in t10k-images-idx3)
    DIR/PREPARED.json             written last: counts, parameters and sha256 of the sources

Class folders are ``<label>_<name>`` (``0_t-shirt_top`` ... ``9_ankle_boot``): the digit
prefix makes the sorted folder order, which both loaders use for labels, the official label
order. The tree is built in ``DIR.tmp-*`` and renamed into place only when complete, so an
interrupted run never leaves a DIR that looks finished; a finished DIR is left alone.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import gzip
import hashlib
import json
import os
import secrets
import shutil
import struct
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from ..atomic import fsync_dir, write_json_atomic
from .folder import DataError

__all__ = [
    "DEFAULT_SOURCE",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_FOLDERS",
    "add_prepare_parser",
    "check_existing",
    "default_data_root",
    "file_lock",
    "is_prepared",
    "main",
    "minival_indices",
    "prepare_fashion_mnist",
    "read_idx",
]

DEFAULT_SOURCE = (
    "/usr/share/datasets/fashion-mnist"  # Debian: apt-get install dataset-fashion-mnist
)
SOURCE_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_MNIST_FOLDERS = tuple(
    f"{i}_{c.lower().replace('/', '_').replace(' ', '_')}"
    for i, c in enumerate(FASHION_MNIST_CLASSES)
)
MARKER = "PREPARED.json"
FORMAT = "shiftnas/fashion-mnist-imagefolder"
FORMAT_VERSION = 1
DEFAULT_MINIVAL = 5000


def default_data_root() -> Path:
    """``$SHIFTNAS_DATA``, else ``~/.cache/shiftnas``: where prepared data sets live."""
    return Path(os.environ.get("SHIFTNAS_DATA") or Path.home() / ".cache" / "shiftnas")


# -- reading ---------------------------------------------------------------------------------
def read_idx(path: str | os.PathLike) -> np.ndarray:
    """A uint8 IDX file (gzip or plain) as an array; errors name the file and what is wrong."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file {path}: {e}") from e
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise DataError(
            f"{path} is not an unsigned-byte IDX file (magic {data[:4].hex() or 'missing'})"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: IDX header cut short")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    n = int(np.prod(shape))
    if len(data) - header != n:
        raise DataError(
            f"{path}: IDX header says {shape} = {n} bytes, file has {len(data) - header}"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _source_paths(source: Path) -> dict[str, Path]:
    paths = {k: source / v for k, v in SOURCE_FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise DataError(
            f"Fashion-MNIST source files missing: {', '.join(missing)}. Install them with "
            f"`apt-get install dataset-fashion-mnist` (Debian/Ubuntu, into {DEFAULT_SOURCE}) or pass "
            f"--source DIR holding {', '.join(SOURCE_FILES.values())}"
        )
    return paths


def minival_indices(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of a class-balanced sample of ``n`` (classes get n // C, the first n % C one more)."""
    classes = np.unique(labels)
    if not 0 <= n <= len(labels):
        raise DataError(f"--minival {n}: must be in [0, {len(labels)}]")
    rng = np.random.default_rng(seed)
    picked = []
    for k, c in enumerate(classes):
        quota = n // len(classes) + (1 if k < n % len(classes) else 0)
        members = np.flatnonzero(labels == c)
        if quota > len(members):
            raise DataError(f"--minival {n}: class {c} has only {len(members)} training images")
        picked.append(rng.choice(members, size=quota, replace=False))
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


# -- writing ---------------------------------------------------------------------------------
def _write_png(path: str, pixels: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(pixels).save(path, format="PNG")


def _write_chunk(task) -> int:
    paths, pixels = task
    for p, a in zip(paths, pixels):
        _write_png(p, a)
    return len(paths)


def _plan(
    tmp: Path,
    split: str,
    images: np.ndarray,
    labels: np.ndarray,
    indices: np.ndarray,
    chunk: int = 2000,
):
    for c, folder in enumerate(FASHION_MNIST_FOLDERS):
        (tmp / split / folder).mkdir(parents=True, exist_ok=True)
    for lo in range(0, len(indices), chunk):
        idx = indices[lo : lo + chunk]
        paths = [str(tmp / split / FASHION_MNIST_FOLDERS[labels[i]] / f"{i:05d}.png") for i in idx]
        yield paths, images[idx]


def _count_tree(out: Path, splits) -> dict[str, dict[str, int]]:
    counts = {}
    for split in splits:
        counts[split] = {}
        for folder in FASHION_MNIST_FOLDERS:
            d = out / split / folder
            counts[split][folder] = (
                sum(1 for e in os.scandir(d) if e.name.endswith(".png")) if d.is_dir() else 0
            )
    return counts


def _tree_state(out: Path, want: dict) -> tuple[str, str]:
    """("absent" | "finished" | "damaged" | "other" | "foreign", why)."""
    if not out.exists():
        return "absent", ""
    if out.is_dir() and not any(out.iterdir()):
        return "absent", "empty folder"
    marker = out / MARKER
    try:
        have = json.loads(marker.read_text())
        ok = (
            isinstance(have, dict)
            and have.get("format") == FORMAT
            and isinstance(have.get("counts"), dict)
        )
    except Exception:  # noqa: BLE001 - unreadable or missing marker
        ok = False
    if not ok:
        return "foreign", (
            f"{out} exists but has no valid {MARKER}: it is not a finished Fashion-MNIST "
            f"preparation (an interrupted run or another tree)"
        )
    for key in ("version", "minival", "seed", "sources_sha256"):
        if have.get(key) != want[key]:
            return (
                "other",
                f"{out} was prepared with {key}={have.get(key)!r}, this run asks for {want[key]!r}",
            )
    found = _count_tree(out, have["counts"])
    if found != have["counts"]:
        bad = next(
            f"{s}/{c}" for s in found for c in found[s] if found[s][c] != have["counts"][s][c]
        )
        return "damaged", f"{out}/{bad} does not hold the images {MARKER} lists"
    return "finished", ""


@contextlib.contextmanager
def file_lock(path: Path):
    """Hold an exclusive lock named by the file ``path`` (concurrent ranks / test workers: one
    prepares, the rest wait); the file is removed on release, so nothing is left beside the data.

    Removal is safe because a waiter that wakes up holding a file that has since been removed
    (its inode no longer at ``path``) drops it and locks the current one instead.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        f = open(path, "a")  # noqa: SIM115 - held across the yield below
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(f.fileno()).st_ino:
            break
        f.close()
    try:
        yield
    finally:
        os.unlink(path)  # while still locked: the next holder creates a fresh file
        f.close()  # releases the lock


def is_prepared(out: str | os.PathLike) -> bool:
    """Whether ``out`` is a finished preparation (marker present and every count matching)."""
    out = Path(out)
    try:
        have = json.loads((out / MARKER).read_text())
        return have.get("format") == FORMAT and _count_tree(out, have["counts"]) == have["counts"]
    except Exception:  # noqa: BLE001 - not a finished tree, whatever the reason
        return False


def check_existing(tree: Path, state: str, why: str, *, force: bool, log, replace: str) -> dict | None:
    """What a preparation does with the tree it found (a state and why, as `_tree_state` gives
    them): a finished one's marker, to return as it is (unless `force`); a DataError for another
    or a foreign one (unless `force`; `replace` says what --force replaces); a warning for a
    damaged one (attributed to the preparation's caller). None: prepare."""
    if state == "finished" and not force:
        log(f"{tree}: already prepared, left alone")
        return json.loads((tree / MARKER).read_text())
    if state in ("other", "foreign") and not force:
        raise DataError(f"{why}; pass --force to replace {replace}")
    if state == "damaged":
        warnings.warn(f"{why}; preparing it again", stacklevel=3)
    return None


def _read_splits(paths: dict[str, Path], source, minival: int, seed: int) -> dict:
    """{split: (images, labels, indices)} of the IDX sources: train less the held-out minival
    (when `minival` > 0), val = the test set; a DataError when images and labels do not fit."""
    train_x, train_y = read_idx(paths["train_images"]), read_idx(paths["train_labels"])
    test_x, test_y = read_idx(paths["test_images"]), read_idx(paths["test_labels"])
    for x, y, name in ((train_x, train_y, "train"), (test_x, test_y, "test")):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(
                f"{source}: {name} images {x.shape} and labels {y.shape} do not match"
            )
        if y.max(initial=0) >= len(FASHION_MNIST_CLASSES):
            raise DataError(
                f"{source}: {name} labels go up to {y.max()}, Fashion-MNIST has 10 classes"
            )
    held = minival_indices(train_y, int(minival), seed)
    train_idx = np.setdiff1d(np.arange(len(train_y)), held)
    splits = {
        "train": (train_x, train_y, train_idx),
        "val": (test_x, test_y, np.arange(len(test_y))),
    }
    if len(held):
        splits["minival"] = (train_x, train_y, held)
    return splits


def _write_splits(tmp: Path, splits: dict, workers: int | None) -> dict[str, dict[str, int]]:
    """Write every split's PNGs under `tmp` (`workers` processes); the per-folder counts, checked
    against what was asked (a RuntimeError when they differ)."""
    tasks = [
        t for split, (x, y, idx) in splits.items() for t in _plan(tmp, split, x, y, idx)
    ]
    workers = workers or min(8, os.cpu_count() or 1)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            written = sum(pool.map(_write_chunk, tasks))
    else:
        written = sum(map(_write_chunk, tasks))
    counts = _count_tree(tmp, splits)
    expected = sum(len(idx) for _, _, idx in splits.values())
    if not written == expected == sum(n for c in counts.values() for n in c.values()):
        raise RuntimeError(f"{tmp}: wrote {written} of {expected} images, found {counts}")
    return counts


def _publish(tmp: Path, out: Path) -> None:
    """Put the finished tree `tmp` in place of `out` (any old tree there is removed after)."""
    os.sync()  # the PNGs reach the disk before the rename publishes the tree
    old = None
    if out.exists():
        old = out.parent / f"{out.name}.tmp-old-{secrets.token_hex(3)}"
        out.rename(old)
    tmp.rename(out)
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def prepare_fashion_mnist(
    out: str | os.PathLike,
    source: str | os.PathLike = DEFAULT_SOURCE,
    minival: int = DEFAULT_MINIVAL,
    *,
    seed: int = 0,
    workers: int | None = None,
    force: bool = False,
    log=print,
) -> dict:
    """Write the ImageFolder tree (module doc) unless ``out`` already holds it; return its marker.

    ``force`` replaces an existing tree that differs (other ``minival``/sources, or not ours).
    """
    out = Path(os.path.abspath(os.fspath(out)))
    paths = _source_paths(Path(source))
    want = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "minival": int(minival),
        "seed": int(seed),
        "sources_sha256": {k: _sha256(p) for k, p in paths.items()},
    }
    with file_lock(out.parent / f".{out.name}.lock"):
        state, why = _tree_state(out, want)
        existing = check_existing(out, state, why, force=force, log=log, replace="it, or choose another --out")
        if existing is not None:
            return existing
        for stale in out.parent.glob(f"{out.name}.tmp-*"):  # left by a killed run; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)

        t0 = time.perf_counter()
        splits = _read_splits(paths, source, minival, seed)

        tmp = out.parent / f"{out.name}.tmp-{os.getpid()}-{secrets.token_hex(3)}"
        tmp.mkdir()
        try:
            counts = _write_splits(tmp, splits, workers)
            marker = {
                **want,
                "source": str(Path(source).resolve()),
                "classes": list(FASHION_MNIST_CLASSES),
                "folders": list(FASHION_MNIST_FOLDERS),
                "counts": counts,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds"
                ),
            }
            write_json_atomic(tmp / MARKER, marker)
            _publish(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        n = {s: sum(c.values()) for s, c in counts.items()}
        log(
            f"{out}: prepared {', '.join(f'{s} {k:,}' for s, k in n.items())} images "
            f"in {time.perf_counter() - t0:.1f}s"
        )
        return marker


# -- command line ----------------------------------------------------------------------------
_DESCRIPTION = """\
Write Fashion-MNIST as an ImageFolder tree of PNGs: OUT/train, OUT/minival (a class-balanced
split carved from train for the probability shift's validation loss) and OUT/val (the official
test set), class folders 0_t-shirt_top ... 9_ankle_boot. Idempotent: a finished OUT is left
alone; an interrupted run is never mistaken for a finished one.

example:
  shiftnas prepare fashion-mnist --out ~/.cache/shiftnas/fashion-mnist
"""


def _cmd_prepare(args) -> int:
    prepare_fashion_mnist(
        args.out, args.source, args.minival, seed=args.seed, workers=args.workers, force=args.force
    )
    return 0


def add_prepare_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``prepare`` (with the data set as a sub-command) to a ``shiftnas`` sub-parser set."""
    p = subparsers.add_parser(
        "prepare",
        help="prepare a data set: Fashion-MNIST to ImageFolder, ImageNet checked + minival",
        description="Prepare a data set for training; e.g. shiftnas prepare fashion-mnist, "
        "shiftnas prepare imagenet --root /data/imagenet",
    )
    sets = p.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    fm = sets.add_parser(
        "fashion-mnist",
        help="Fashion-MNIST IDX files -> PNG ImageFolder tree",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fm.add_argument(
        "--out",
        default=str(default_data_root() / "fashion-mnist"),
        help="output folder (default: $SHIFTNAS_DATA/fashion-mnist, else ~/.cache/shiftnas/fashion-mnist)",
    )
    fm.add_argument(
        "--source",
        default=DEFAULT_SOURCE,
        help=f"folder with the four IDX .gz files (default: {DEFAULT_SOURCE}, "
        "from `apt-get install dataset-fashion-mnist`)",
    )
    fm.add_argument(
        "--minival",
        type=int,
        default=DEFAULT_MINIVAL,
        help=f"images held out of train for minival, class-balanced (default: {DEFAULT_MINIVAL}; 0: none)",
    )
    fm.add_argument("--seed", type=int, default=0, help="seed of the minival draw (default: 0)")
    fm.add_argument(
        "--workers", type=int, default=None, help="writer processes (default: cores, at most 8)"
    )
    fm.add_argument(
        "--force", action="store_true", help="replace an OUT that holds a different tree"
    )
    fm.set_defaults(fn=_cmd_prepare)
    from .imagenet import add_imagenet_parser

    add_imagenet_parser(sets)
    return p


def main(argv: list[str] | None = None) -> int:
    """``shiftnas prepare ...`` on its own: ``python -m shiftnas.data.prepare fashion-mnist --out DIR``.
    The same parser and error path as the CLI's (`shiftnas._command`), without importing it."""
    from .._command import root_parser, run_command

    ap, sub = root_parser()
    add_prepare_parser(sub)
    return run_command(ap.parse_args(["prepare", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    raise SystemExit(main())
