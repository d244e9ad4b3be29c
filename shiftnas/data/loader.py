"""`build_loader`: one call for the training and evaluation loaders of an ImageFolder split."""

from __future__ import annotations

import os
import warnings

import torch

from ._base import ImageLoader
from .folder import CorruptImageError, DataError, corrupt_message, find_corrupt, scan_split
from .recipe import Recipe

__all__ = ["BACKENDS", "build_loader", "default_num_threads"]

BACKENDS = ("dali", "torch", "auto")
VERIFY = ("quick", "full", "none")


def default_num_threads() -> int:
    """This process's share of the CPU cores (torchrun ranks on one node split them), <= 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, min(8, cores // max(1, local)))


def _default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _probe(path: str) -> tuple[int, int]:
    """(channels as stored, shorter side) of one image; decides the defaults."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            mode, size = im.mode, im.size
    except Exception as e:
        raise CorruptImageError(f"cannot read {path}: {type(e).__name__}: {e}") from e
    gray = mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
    return (1 if gray else 3), min(size)


def _check_args(backend: str, verify: str, batch_size, image_size, world_size, rank, num_threads,
                max_corrupt_frac, channels) -> int:
    """build_loader's argument checks (a ValueError names the first bad one); returns num_threads
    with its default filled in."""
    if backend not in BACKENDS:
        raise ValueError(
            f"backend={backend!r}: allowed values are {', '.join(map(repr, BACKENDS))}"
        )
    if verify not in VERIFY:
        raise ValueError(f"verify={verify!r}: allowed values are {', '.join(map(repr, VERIFY))}")
    for name, v in (
        ("batch_size", batch_size),
        ("image_size", image_size),
        ("world_size", world_size),
    ):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r}: must be an integer >= 1")
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank!r}: must be in [0, world_size={world_size})")
    if num_threads is None:
        num_threads = default_num_threads()
    if not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads={num_threads!r}: must be an integer >= 1")
    if not isinstance(max_corrupt_frac, (int, float)) or not 0 <= max_corrupt_frac <= 1:
        raise ValueError(f"max_corrupt_frac={max_corrupt_frac!r}: must be a number in [0, 1]")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels={channels!r}: allowed values are 1, 3 or None (as stored)")
    return num_threads


def _without_corrupt(index, verify: str, skip_corrupt: bool, max_corrupt_frac: float, hint: str):
    """`index` after the `verify` check: a CorruptImageError naming the corrupt files, or with
    `skip_corrupt` the index without them (a DataError past `max_corrupt_frac`, or when none is
    left; a warning counts them, attributed to build_loader's caller)."""
    bad = find_corrupt(index.files, full=verify == "full")
    if bad and not skip_corrupt:
        raise CorruptImageError(corrupt_message(bad, index.root, hint))
    if bad and len(bad) > max_corrupt_frac * len(index):
        raise DataError(
            f"skip_corrupt: {len(bad)} of {len(index)} images under {index.root} are corrupt "
            f"(first: {min(bad)}: {bad[min(bad)]}), more than max_corrupt_frac={max_corrupt_frac:g} "
            f"allows ({int(max_corrupt_frac * len(index))}); check the data, or raise the limit "
            "(config data.max_corrupt_frac)"
        )
    if bad:
        warnings.warn(
            f"skip_corrupt: skipped {len(bad)} corrupt image(s) of {len(index)} under "
            f"{index.root} (first: {min(bad)}: {bad[min(bad)]})",
            stacklevel=3,
        )
        index = index.without(set(bad))
        if not index.files:
            raise DataError(
                f"split {index.root} has no images left after skipping {len(bad)} corrupt ones"
            )
    return index


def _resolve_backend(backend: str) -> str:
    """"auto": "dali" when DALI imports, else "torch"; any other backend as it is."""
    if backend == "auto":
        from .dali_backend import dali_available

        backend = "dali" if dali_available() is None else "torch"
    return backend


def _resolve_device(device: str | torch.device | None) -> torch.device:
    device = _default_device() if device is None else torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device}: CUDA is not available here; use device='cpu'")
    return device


def _corrupt_hint(skip_corrupt: bool) -> str:
    """What an error about corrupt files tells the user to do."""
    if skip_corrupt:
        return "PIL reads the file(s) but the decoder does not: remove or re-encode them"
    return (
        "Remove or replace the file(s), or leave them out: config data.skip_corrupt=true "
        "(build_loader: skip_corrupt=True, with verify='full' to catch corruption in the middle of a file)"
    )


def _open_loader(backend: str, index, recipe: Recipe, hint: str, **kw) -> ImageLoader:
    """The loader of `backend` ("dali" or "torch") over `index`."""
    if backend == "dali":
        from .dali_backend import DALIImageLoader

        return DALIImageLoader(index, recipe, hint=hint, **kw)
    from .torch_backend import TorchImageLoader

    return TorchImageLoader(index, recipe, hint=hint, **kw)


def build_loader(
    root: str | os.PathLike,
    split: str,
    batch_size: int,
    image_size: int,
    train: bool,
    rank: int = 0,
    world_size: int = 1,
    backend: str = "dali",
    num_threads: int | None = None,
    seed: int = 0,
    *,
    device: str | torch.device | None = None,
    augment: bool | None = None,
    channels: int | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    crop_pct: float | None = None,
    drop_last: bool = False,
    skip_corrupt: bool = False,
    max_corrupt_frac: float = 0.01,
    verify: str = "quick",
) -> ImageLoader:
    """A loader of ``root/split`` (``root/split/<class>/<image>``) for this rank.

    Yields ``(images, labels)``: float32 ``(B, C, image_size, image_size)`` normalised with
    ``mean``/``std`` (defaults: ImageNet's for RGB, Fashion-MNIST's for grayscale), int64
    ``(B,)``, both on ``device`` (default: the current CUDA device, else CPU). Has ``len()``
    (batches per epoch for this rank), ``set_epoch(e)`` and ``classes``.

    Args:
        train: shuffle (seeded by ``seed``) and, unless ``augment=False``, the ImageNet training
            augmentation (random resized crop + flip); else resize + centre crop, in order.
        rank, world_size: this process's shard; all ranks together read each image once per epoch.
        backend: ``"dali"``, ``"torch"`` (DataLoader + PIL + torchvision), or ``"auto"`` (DALI when it
            imports).
        num_threads: DALI CPU threads / DataLoader worker processes (default: this rank's share of
            the cores, at most 8).
        augment: default ``train``; ``False`` trains on resize + centre crop (e.g. 28px Fashion-MNIST).
        channels: 1 or 3; default: as stored (probed on the first image), so grayscale stays 1.
        crop_pct: evaluation centre-crop fraction; default 0.875 when the images are larger than
            ``image_size``, else 1.0 (nothing is cropped from 28px Fashion-MNIST at 28).
        drop_last: yield only full batches, the same number on every rank (DDP-friendly); the
            images past them are skipped this epoch. Default False: every image is yielded.
        verify: check every file before the first epoch: ``"quick"`` (signature and end marker: empty,
            foreign and truncated files), ``"full"`` (decode with PIL; slow on ImageNet), ``"none"``.
        skip_corrupt: files that fail ``verify`` are left out with a warning that counts them
            (default: an error naming them). Ranks stay consistent: every rank checks the same list.
        max_corrupt_frac: with ``skip_corrupt``, more corrupt files than this fraction of the split
            is an error (DataError) that names the count and the limit: damaged data is not
            trained on silently shrunk.

    Raises:
        DataError: a missing root or split, an empty class folder, a split without images, bad
            arguments. CorruptImageError (a DataError): a file that cannot be decoded, by name.
    """
    num_threads = _check_args(backend, verify, batch_size, image_size, world_size, rank, num_threads,
                              max_corrupt_frac, channels)
    backend, device = _resolve_backend(backend), _resolve_device(device)

    index = scan_split(root, split)
    hint = _corrupt_hint(skip_corrupt)
    if verify != "none":
        index = _without_corrupt(index, verify, skip_corrupt, max_corrupt_frac, hint)
    if len(index) < world_size:
        raise DataError(
            f"split {index.root} has {len(index)} image(s), fewer than world_size={world_size}"
        )

    stored_channels, short_side = _probe(index.files[0])
    augment = train if augment is None else augment
    recipe = Recipe.make(image_size, augment, channels or stored_channels, short_side, mean, std, crop_pct)
    return _open_loader(
        backend, index, recipe, hint, batch_size=batch_size, train=bool(train), rank=rank,
        world_size=world_size, seed=int(seed), drop_last=drop_last, device=device, num_threads=num_threads,
    )
