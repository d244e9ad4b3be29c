"""``backend="torch"``: the loader contract with a torch DataLoader, PIL decoding and
torchvision transforms - for platforms without DALI, and the baseline DALI is measured against.

Workers (``num_threads`` processes) decode and crop to uint8; the main process normalises the
uint8 batch on the output device, which moves a quarter of the bytes through shared memory
that float32 would.
"""

from __future__ import annotations

import os
import weakref

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ._base import ImageLoader, shard_bounds
from .folder import CorruptImageError, SplitIndex, fork_safe
from .recipe import RRC_RATIO, RRC_SCALE, Recipe

__all__ = ["TorchImageLoader"]


class _CentreCrop:
    """A ``size`` x ``size`` centre crop at DALI's crop_pos 0.5 anchor, rounded half up
    (torchvision's CenterCrop rounds half to even: a 1px shift that costs ~9 grey levels of mean
    difference on a 120x90 JPEG). A class, not a closure, so the dataset pickles: a spawn or
    forkserver start (Python 3.14's default on Linux) sends it to the workers."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, img):
        from torchvision.transforms.v2 import functional as F

        w, h = img.size
        top, left = int((h - self.size) / 2 + 0.5), int((w - self.size) / 2 + 0.5)
        return F.crop(img, top, left, self.size, self.size)


def _transform(recipe: Recipe):
    from torchvision.transforms import v2

    if recipe.augment:
        geometry = [
            v2.RandomResizedCrop(
                recipe.image_size, scale=RRC_SCALE, ratio=RRC_RATIO, antialias=True
            ),
            v2.RandomHorizontalFlip(),
        ]
    else:
        geometry = [v2.Resize(recipe.resize_size, antialias=True), _CentreCrop(recipe.image_size)]
    return v2.Compose([*geometry, v2.PILToTensor()])


def sample_seed(seed: int, epoch: int, i: int) -> int:
    """The augmentation seed of sample `i` in epoch `epoch` (a splitmix64-style mix)."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + i * 0x94D049BB133111EB) % 2**64
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) % 2**64
    return (x ^ (x >> 32)) % 2**63


class _FolderDataset(Dataset):
    """Items are (index, epoch) pairs from `_ShardSampler`. With augmentation, torch's RNG is
    seeded from (seed, epoch, index) before each sample's random transforms, so a crop depends on
    nothing else (not the worker, not how many samples came before): a run resumed mid-epoch
    draws the same crops as the run that was not interrupted. Items are read in DataLoader
    workers only (num_threads >= 1), so the training process's RNG is never touched."""

    def __init__(self, index: SplitIndex, recipe: Recipe, hint: str, seed: int):
        self.files, self.labels = index.files, index.labels
        self.mode = "L" if recipe.channels == 1 else "RGB"
        self.transform = _transform(recipe)
        self.augment = recipe.augment
        self.hint = hint
        self.seed = seed

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: tuple[int, int]):
        i, epoch = key
        im = self._decode(i)
        if self.augment:
            torch.manual_seed(sample_seed(self.seed, epoch, i))  # a worker's RNG (num_threads >= 1)
        return self.transform(im), self.labels[i]

    def _decode(self, i: int):
        from PIL import Image

        path = self.files[i]
        try:
            with Image.open(path) as im:
                im = im.convert(self.mode)  # decodes; truncation raises (LOAD_TRUNCATED_IMAGES off)
        except Exception as e:  # any decode failure names the file
            raise CorruptImageError(
                f"cannot decode {path}: {type(e).__name__}: {e}. {self.hint}"
            ) from e
        return im


class _ShardSampler(Sampler):
    """(index, epoch) pairs of one rank's chunk of epoch ``epoch``'s order (see `ImageLoader`).

    Holds plain numbers, not the loader: a loader <-> sampler cycle would be freed by the
    cyclic GC inside a forked worker of another loader, where DataLoader's iterator finaliser
    fails ("can only test a child process").
    """

    def __init__(
        self, n: int, *, shuffle: bool, seed: int, rank: int, world_size: int, limit: int | None
    ):
        self.n = n
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.limit = limit  # drop_last: images per epoch
        self.epoch = 0

    def _bounds(self) -> tuple[int, int]:
        shard = (self.rank + self.epoch) % self.world_size if self.shuffle else self.rank
        lo, hi = shard_bounds(self.n, self.world_size, shard)
        return lo, hi if self.limit is None else min(hi, lo + self.limit)

    def __iter__(self):
        if self.shuffle:  # a fresh global permutation per epoch, like DistributedSampler
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        lo, hi = self._bounds()
        return iter((i, self.epoch) for i in order[lo:hi].tolist())

    def __len__(self) -> int:
        lo, hi = self._bounds()
        return hi - lo


def _stop_workers(dl: DataLoader, pid: int) -> None:
    """Stop the persistent worker processes of ``dl`` (a later pass would start new ones).

    Run by a weakref callback when the loader owning ``dl`` is freed. Left to the DataLoader
    iterator's own ``__del__``, a loader freed by the cycle collector (a Trainer is a cycle)
    stalled whatever code triggered the collection for 5 s per worker: the collector first runs
    the multiprocessing finalizers of the iterator's index queues, which end their feeder
    threads, so the stop message ``__del__`` then puts on them never reaches the workers and
    each ``join`` waits out torch's 5 s timeout before the SIGTERM (measured: 15.3 s for a
    3-worker train.py run, 202-263 s in unrelated tests of `make test`). Here the callback holds
    ``dl``, so its iterator and queues are not garbage yet and the workers exit at once."""
    it = dl._iterator  # torch keeps the persistent workers' iterator there
    if it is None or os.getpid() != pid:  # no workers, or a forked child that does not own them
        return
    dl._iterator = None
    it._shutdown_workers()


def _own_message(e: CorruptImageError) -> CorruptImageError:
    """DataLoader re-raises a worker's error as ``type(msg)`` with the worker's whole traceback in
    ``msg``; keep the error's own one-line text (the file and the hint), which the CLI prints."""
    text, tag = str(e), f"{CorruptImageError.__name__}: "
    if "Traceback (most recent call last)" in text and tag in text:
        text = text[text.rindex(tag) + len(tag):].strip()
    return CorruptImageError(" ".join(text.split()))


class TorchImageLoader(ImageLoader):
    backend = "torch"

    def __init__(self, index: SplitIndex, recipe: Recipe, *, hint: str, **kw):
        super().__init__(index, recipe, **kw)
        limit = self._batches_drop_last() * self.batch_size if self.drop_last else None
        self._sampler = _ShardSampler(
            len(index),
            shuffle=self.shuffle,
            seed=self.seed,
            rank=self.rank,
            world_size=self.world_size,
            limit=limit,
        )
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + 7919 * self.rank)
        self._dl = DataLoader(
            _FolderDataset(index, recipe, hint, self.seed),
            batch_size=self.batch_size,
            sampler=self._sampler,
            num_workers=self.num_threads,
            pin_memory=self.device.type == "cuda",
            persistent_workers=self.num_threads > 0,
            generator=g,  # worker RNGs; augmentation is seeded per sample (_FolderDataset)
        )
        # The workers stop when this loader is freed (_stop_workers); at exit torch stops them.
        weakref.finalize(self, _stop_workers, self._dl, os.getpid()).atexit = False

    def __iter__(self):
        epoch = self._begin_pass()
        self._sampler.epoch = epoch
        try:
            with fork_safe():  # workers fork here (the first pass only: they are persistent)
                batches = iter(self._dl)
            for images, labels in batches:
                yield self._normalize(images), labels.to(self.device, non_blocking=True)
        except CorruptImageError as e:
            raise _own_message(e) from None
        finally:
            self._end_pass()
