"""What every loader backend shares: sharding arithmetic, epochs, ``len()``, normalisation."""

from __future__ import annotations

import torch

from .folder import SplitIndex
from .recipe import Recipe

__all__ = ["ImageLoader", "shard_bounds"]


def shard_bounds(n: int, world_size: int, shard: int) -> tuple[int, int]:
    """``[lo, hi)`` of chunk ``shard`` of ``n`` items: DALI's split, sizes differ by at most 1."""
    return n * shard // world_size, n * (shard + 1) // world_size


class ImageLoader:
    """An iterable of ``(images, labels)``: float32 NCHW normalised and int64, on ``device``.

    Sharding follows DALI's reader: the split (globally shuffled when training) is cut into
    ``world_size`` contiguous chunks of ``N * k // world_size``; a rank reads one chunk per
    epoch, so the ranks together see every image exactly once per epoch. When training, the
    chunk a rank reads moves by one each epoch (DALI's ``stick_to_shard=False``); evaluation
    keeps rank ``r`` on chunk ``r``.

    Epochs: a pass over the loader runs epoch ``e``, then the next pass runs ``e + 1``
    (including after a pass that was left early). ``set_epoch(e)`` makes the next pass run
    epoch ``e``: call it before each pass when resuming a run. ``len()`` is the number of
    batches of the pass in progress, or else of the next pass.
    """

    backend = "?"

    def __init__(
        self,
        index: SplitIndex,
        recipe: Recipe,
        *,
        batch_size: int,
        train: bool,
        rank: int,
        world_size: int,
        seed: int,
        drop_last: bool,
        device: torch.device,
        num_threads: int,
    ):
        self.index = index
        self.recipe = recipe
        self.batch_size = batch_size
        self.train = train
        self.shuffle = train
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.drop_last = drop_last
        self.device = device
        self.num_threads = num_threads
        self._next_epoch = 0
        self._pass_epoch: int | None = None  # the epoch of the pass in progress
        mean = torch.tensor(recipe.mean, dtype=torch.float32).mul_(255).view(1, -1, 1, 1)
        self._mean = mean.to(device)
        self._inv_std = (
            (1.0 / torch.tensor(recipe.std, dtype=torch.float32).mul_(255))
            .view(1, -1, 1, 1)
            .to(device)
        )

    # -- public contract -------------------------------------------------------------------
    @property
    def classes(self) -> tuple[str, ...]:
        return self.index.classes

    @property
    def num_classes(self) -> int:
        return len(self.index.classes)

    @property
    def dataset_size(self) -> int:
        """Images in the whole split (all shards)."""
        return len(self.index)

    @property
    def epoch(self) -> int:
        return self._pass_epoch if self._pass_epoch is not None else self._next_epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass run epoch ``epoch`` (its shuffle and shard); see the class doc."""
        if int(epoch) < 0:
            raise ValueError(f"set_epoch({epoch}): epochs count from 0")
        self._next_epoch = int(epoch)

    def num_samples(self, epoch: int | None = None) -> int:
        """Images this rank yields in ``epoch`` (default: the current/next one)."""
        if self.drop_last:
            return self._batches_drop_last() * self.batch_size
        lo, hi = self.shard_bounds(self.epoch if epoch is None else epoch)
        return hi - lo

    def __len__(self) -> int:
        if self.drop_last:
            return self._batches_drop_last()
        return int(-(-self.num_samples() // self.batch_size))

    def __repr__(self) -> str:
        r = self.recipe
        return (
            f"{type(self).__name__}(root={str(self.index.root)!r}, images={len(self.index)}, "
            f"classes={self.num_classes}, batch_size={self.batch_size}, image_size={r.image_size}, "
            f"channels={r.channels}, augment={r.augment}, shard={self.rank}/{self.world_size}, "
            f"threads={self.num_threads}, device={self.device})"
        )

    # -- shared helpers ----------------------------------------------------------------------
    def shard_id(self, epoch: int) -> int:
        return (self.rank + epoch) % self.world_size if self.shuffle else self.rank

    def shard_bounds(self, epoch: int) -> tuple[int, int]:
        return shard_bounds(len(self.index), self.world_size, self.shard_id(epoch))

    def _batches_drop_last(self) -> int:
        # Every rank stops after the same number of full batches (the smallest shard's), so
        # DDP ranks take the same number of steps; the rest of the epoch is skipped on request.
        return (len(self.index) // self.world_size) // self.batch_size

    def _begin_pass(self) -> int:
        epoch = self._next_epoch
        self._next_epoch = epoch + 1
        self._pass_epoch = epoch
        return epoch

    def _end_pass(self) -> None:
        self._pass_epoch = None

    def _normalize(self, images_u8: torch.Tensor) -> torch.Tensor:
        x = images_u8.to(self.device, non_blocking=True).to(torch.float32)
        return x.sub_(self._mean).mul_(self._inv_std)
