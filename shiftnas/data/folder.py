"""ImageFolder trees: the one scan both loader backends share, with the bad-input checks.

A split is ``ROOT/<split>/<class>/**/<image>``. Classes are the sorted names of the class
folders and label ``i`` is the ``i``-th of them: the rule of torchvision's ``ImageFolder`` and
of DALI's ``fn.readers.file(file_root=...)``. Both backends read the file list built here, so
they agree on every label by construction (tests/data/test_loader.py checks the rule against
both libraries).
"""

from __future__ import annotations

import contextlib
import gc
import os
import warnings
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "IMG_EXTENSIONS",
    "CorruptImageError",
    "DataError",
    "SplitIndex",
    "check_image",
    "find_corrupt",
    "fork_safe",
    "scan_split",
]

# Formats that both DALI's decoder and PIL read (GIF and JPEG 2000 are left out: one of the
# two cannot read them everywhere). Matched case-insensitively: ImageNet uses ".JPEG".
IMG_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pbm",
    ".pnm",
)

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"
_MAGICS = (  # content decides the format, not the extension (ImageNet has PNGs named .JPEG)
    (b"\xff\xd8\xff", "jpeg"),
    (_PNG_MAGIC, "png"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"RIFF", "webp"),
    (b"P1", "pnm"),
    (b"P2", "pnm"),
    (b"P3", "pnm"),
    (b"P4", "pnm"),
    (b"P5", "pnm"),
    (b"P6", "pnm"),
)


class DataError(ValueError):
    """Bad input data: the message names the path and says what to do."""


class CorruptImageError(DataError):
    """An image file that cannot be decoded; the message names the file(s)."""


@dataclass(frozen=True)
class SplitIndex:
    """The images of one split, in the order both backends use (sorted class, sorted path)."""

    root: Path  # the split folder, ROOT/<split>
    classes: tuple[str, ...]
    files: tuple[str, ...]  # absolute paths
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.files)

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    def without(self, bad: set[str]) -> SplitIndex:
        keep = [i for i, f in enumerate(self.files) if f not in bad]
        return SplitIndex(
            self.root,
            self.classes,
            tuple(self.files[i] for i in keep),
            tuple(self.labels[i] for i in keep),
        )


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def scan_split(root: str | os.PathLike, split: str) -> SplitIndex:
    """List ``root/split`` as an ImageFolder split; raise `DataError` naming the bad path.

    Hidden entries (``.name``) are skipped, as are non-image files (with one warning that
    counts them). An image directly under the split folder has no class and is an error
    rather than being dropped.
    """
    root = Path(os.path.abspath(os.fspath(root)))
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise DataError(
            f"data root {root} {what}: expected an ImageFolder tree {root}/<split>/<class>/<image> "
            f"(for Fashion-MNIST: shiftnas prepare fashion-mnist --out {root})"
        )
    split_dir = root / split
    if not split_dir.is_dir():
        have = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise DataError(
            f"split folder {split_dir} does not exist; {root} has: {', '.join(have) or 'no folders'}"
        )
    entries = sorted(os.scandir(split_dir), key=lambda e: e.name)
    loose = [
        e.path for e in entries if not e.name.startswith(".") and e.is_file() and _is_image(e.name)
    ]
    if loose:
        raise DataError(
            f"split {split_dir} has {len(loose)} image(s) outside any class folder (e.g. {loose[0]}); "
            f"images must be at {split_dir}/<class>/<image>, where the class folder gives the label"
        )
    classes = [
        e.name for e in entries if e.is_dir(follow_symlinks=True) and not e.name.startswith(".")
    ]
    if not classes:
        raise DataError(
            f"split {split_dir} has no images: it has no class folders "
            f"(expected {split_dir}/<class>/<image>)"
        )
    files: list[str] = []
    labels: list[int] = []
    empty: list[str] = []
    ignored: list[str] = []
    for label, cls in enumerate(classes):
        cls_dir = split_dir / cls
        n0 = len(files)
        # sorted(os.walk(...)) then sorted names: torchvision's make_dataset order.
        for dirpath, dirnames, fnames in sorted(os.walk(cls_dir, followlinks=True)):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in sorted(fnames):
                if name.startswith("."):
                    continue
                path = os.path.join(dirpath, name)
                if _is_image(name):
                    files.append(path)
                    labels.append(label)
                else:
                    ignored.append(path)
        if len(files) == n0:
            empty.append(str(cls_dir))
    if not files:
        raise DataError(
            f"split {split_dir} has no images: its {len(classes)} class folder(s) hold no "
            f"files with an image extension ({' '.join(IMG_EXTENSIONS)})"
        )
    if empty:
        raise DataError(
            f"class folder {empty[0]} has no images"
            + (f" (and {len(empty) - 1} more empty class folders)" if len(empty) > 1 else "")
            + ": an empty class would shift the label of every later class; remove the folder or add images"
        )
    if ignored:
        warnings.warn(
            f"{split_dir}: ignored {len(ignored)} file(s) without an image extension "
            f"(e.g. {ignored[0]}); images are {' '.join(IMG_EXTENSIONS)}",
            stacklevel=2,
        )
    return SplitIndex(split_dir, tuple(classes), tuple(files), tuple(labels))


def check_image(path: str, full: bool = False) -> str | None:
    """Why ``path`` is not a readable image, or None.

    Quick mode reads the first and last bytes: a known image signature, and for JPEG/PNG the
    end marker (EOI / IEND), which catches empty, foreign and truncated files at ~15 us each
    (0.8 s for Fashion-MNIST's 55,000 train PNGs). Full mode also decodes the image with PIL,
    which a corrupt middle needs.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            head = os.pread(fd, 16, 0)
            tail = os.pread(fd, 1024, max(0, size - 1024))
        finally:
            os.close(fd)
        if size == 0:
            return "empty file"
        kind = next((k for magic, k in _MAGICS if head.startswith(magic)), None)
        if kind is None:
            return "not an image (unknown file signature)"
        if kind == "webp" and head[8:12] != b"WEBP":
            return "not an image (RIFF file that is not WebP)"
        if kind == "png" and _PNG_IEND not in tail[-64:]:
            return "truncated PNG (no IEND chunk at the end)"
        # 0xFFD9 cannot occur inside entropy-coded data (0xFF is byte-stuffed there), so a
        # missing EOI near the end means the file was cut short.
        if kind == "jpeg" and b"\xff\xd9" not in tail:
            return "truncated JPEG (no end-of-image marker)"
        if full:
            from PIL import Image

            with Image.open(path) as im:
                im.load()
    except Exception as e:  # noqa: BLE001 - any failure to read is the answer
        return f"{type(e).__name__}: {e}"
    return None


@contextlib.contextmanager
def fork_safe():
    """Start worker processes inside this block: they will not finalize what the caller dropped.

    A forked child inherits every object of its parent, including garbage that only the cycle
    collector frees, and its own collector then runs those objects' finalizers. For a DALI
    pipeline (the DALI backend, or any DALI use earlier in the process) the finalizer destroys an
    executor whose condition variables wait on threads that a child does not have: the worker
    hangs for ever, and the DataLoader waiting on it with it (seen in the test suite, where both
    backends run in one process). ``gc.freeze()`` moves the parent's objects out of the child's
    reach for the fork; the parent gets them back, and collects them itself, on exit. Fork stays
    the start method: a forkserver or spawn start would require every user script to guard its
    main module (the multiprocessing "safe importing" rule)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _check_chunk(args) -> list[tuple[str, str]]:
    files, full = args
    out = []
    for f in files:
        why = check_image(f, full)
        if why is not None:
            out.append((f, why))
    return out


def find_corrupt(files, full: bool = False, workers: int | None = None) -> dict[str, str]:
    """``{path: reason}`` for every file of ``files`` that `check_image` rejects."""
    files = list(files)
    workers = workers or min(8, os.cpu_count() or 1)
    step = max(256, -(-len(files) // (8 * workers)))
    chunks = [(files[i : i + step], full) for i in range(0, len(files), step)]
    if len(chunks) == 1:
        return dict(_check_chunk(chunks[0]))
    # Decoding is CPU-bound (processes); the quick check is a few syscalls per file, where
    # threads hide cold-storage latency without pickling the file list.
    pool = ProcessPoolExecutor(workers) if full else ThreadPoolExecutor(workers)
    with pool:
        with fork_safe():  # the processes start when the chunks are submitted
            results = pool.map(_check_chunk, chunks)
        return {f: why for found in results for f, why in found}


def corrupt_message(bad: dict[str, str], where: Path, hint: str) -> str:
    items = sorted(bad.items())
    listed = "; ".join(f"{p}: {r}" for p, r in items[:5])
    more = f" (and {len(items) - 5} more)" if len(items) > 5 else ""
    return f"{len(items)} corrupt image(s) under {where}: {listed}{more}. {hint}"
