"""``backend="dali"``: NVIDIA DALI pipelines over an ImageFolder split.

``fn.readers.file`` gets the file list of `scan_split` (so labels match the torch backend
exactly) with ``shard_id``/``num_shards``, ``random_shuffle`` when training and
``pad_last_batch``; the iterator's ``LastBatchPolicy.PARTIAL`` then drops the padding, so an
epoch holds exactly the shard's images. Decoding is ``device="cpu"`` with ``device_id=None``
on a machine without a GPU and ``"mixed"`` (nvJPEG) when the output device is a GPU.

Epochs: a training pass (shuffled or augmented) runs on a pipeline built for that epoch, with
reader and augmentation seeds derived from ``(seed, e)`` and shard ``(rank + e) % world_size``
(all ranks still cover the split once). So epoch ``e``'s order and crops are the same whether
the run got there by training or by resuming a checkpoint (a resumed run skips the batches
before its step by reading them: the same random draws). A pass that is neither shuffled nor
augmented (evaluation) reuses its pipeline.
"""

from __future__ import annotations

import torch

from ._base import ImageLoader
from .folder import CorruptImageError, SplitIndex, corrupt_message, find_corrupt
from .recipe import RRC_RATIO, RRC_SCALE, Recipe

__all__ = ["DALIImageLoader", "dali_available"]


def dali_available() -> str | None:
    """None when DALI imports, else why not."""
    try:
        import nvidia.dali
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means "no DALI here"
        return f"{type(e).__name__}: {e}"
    return None


def _seed(*parts: int) -> int:
    h = 0x9E3779B9
    for p in parts:
        h = (h * 1_000_003 + int(p) + 1) % (2**31 - 1)
    return h


def _build_pipeline(
    files,
    labels,
    recipe: Recipe,
    *,
    batch_size: int,
    num_threads: int,
    device_id: int | None,
    shard_id: int,
    num_shards: int,
    shuffle: bool,
    reader_seed: int,
    seed: int,
):
    from nvidia.dali import fn, pipeline_def, types

    gpu = device_id is not None

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed)
    def pipeline():
        encoded, label = fn.readers.file(
            files=list(files),
            labels=list(labels),
            name="Reader",
            shard_id=shard_id,
            num_shards=num_shards,
            random_shuffle=shuffle,
            stick_to_shard=not shuffle,
            pad_last_batch=True,
            seed=reader_seed,
        )
        decoder_device = "mixed" if gpu else "cpu"
        out_type = types.GRAY if recipe.channels == 1 else types.RGB
        if recipe.augment:
            # Decoding only the crop window (libjpeg-turbo ROI decode) is DALI's RN50 recipe
            # and cheaper than decode-then-crop on a 500x375 image.
            image = fn.decoders.image_random_crop(
                encoded,
                device=decoder_device,
                output_type=out_type,
                random_area=list(RRC_SCALE),
                random_aspect_ratio=list(RRC_RATIO),
                num_attempts=10,
            )
            image = fn.resize(
                image,
                resize_x=recipe.image_size,
                resize_y=recipe.image_size,
                interp_type=types.INTERP_LINEAR,
                antialias=True,
            )
            mirror = fn.random.coin_flip(probability=0.5)
        else:
            image = fn.decoders.image(encoded, device=decoder_device, output_type=out_type)
            image = fn.resize(
                image,
                resize_shorter=recipe.resize_size,
                interp_type=types.INTERP_LINEAR,
                antialias=True,
            )
            mirror = 0
        image = fn.crop_mirror_normalize(
            image,
            crop=(recipe.image_size, recipe.image_size),
            crop_pos_x=0.5,
            crop_pos_y=0.5,
            mirror=mirror,
            mean=[m * 255 for m in recipe.mean],
            std=[s * 255 for s in recipe.std],
            dtype=types.FLOAT,
            output_layout="CHW",
        )
        return image, (label.gpu() if gpu else label)

    return pipeline()


class DALIImageLoader(ImageLoader):
    backend = "dali"

    def __init__(self, index: SplitIndex, recipe: Recipe, *, hint: str, **kw):
        super().__init__(index, recipe, **kw)
        why = dali_available()
        if why is not None:
            raise ImportError(
                f"backend='dali' needs NVIDIA DALI (pip install nvidia-dali-cuda130): {why}; "
                f"or pass backend='torch'"
            )
        self._hint = hint
        self._device_id = None
        if self.device.type == "cuda":
            self._device_id = (
                self.device.index if self.device.index is not None else torch.cuda.current_device()
            )
        elif self.device.type != "cpu":
            raise ValueError(
                f"device={self.device}: the DALI backend outputs to 'cpu' or 'cuda[:i]'"
            )
        self._it = None
        self._it_epoch = None  # the epoch self._it runs next, when it is usable

    def _build(self, epoch: int) -> None:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        self._it = None  # tear the old pipeline down first (threads, pinned/GPU memory)
        pipe = _build_pipeline(
            self.index.files,
            self.index.labels,
            self.recipe,
            batch_size=self.batch_size,
            num_threads=self.num_threads,
            device_id=self._device_id,
            shard_id=self.shard_id(epoch),
            num_shards=self.world_size,
            shuffle=self.shuffle,
            reader_seed=_seed(self.seed, epoch),
            seed=_seed(self.seed, epoch, self.rank, 1),
        )
        policy = LastBatchPolicy.DROP if self.drop_last else LastBatchPolicy.PARTIAL
        self._it = DALIGenericIterator(
            pipe,
            ["images", "labels"],
            reader_name="Reader",
            last_batch_policy=policy,
            auto_reset=True,
        )
        self._it_epoch = epoch

    def _raise_decode_error(self, err: Exception):
        self._it = None  # DALI: "Current pipeline object is no longer valid"
        msg = str(err)
        named = {f: "DALI failed to decode it" for f in self.index.files if f in msg}
        bad = named or find_corrupt(self.index.files, full=True)
        if bad:
            raise CorruptImageError(corrupt_message(bad, self.index.root, self._hint)) from err
        raise RuntimeError(f"DALI pipeline over {self.index.root} failed: {msg}") from err

    def __iter__(self):
        epoch = self._begin_pass()
        if self._it is None or self._it_epoch != epoch or self.shuffle or self.recipe.augment:
            self._build(epoch)
        self._it_epoch = None  # unusable until the pass completes
        want = len(self)
        seen = batches = 0
        it = iter(self._it)
        try:
            while True:
                try:
                    out = next(it)
                except StopIteration:
                    break
                except RuntimeError as e:
                    self._raise_decode_error(e)
                batches += 1
                if batches > want:  # drop_last: this rank's shard has an extra full batch
                    continue
                images, labels = out[0]["images"], out[0]["labels"]
                seen += images.shape[0]
                yield (
                    images,
                    labels.view(-1).to(device=self.device, dtype=torch.int64, non_blocking=True),
                )
            if seen != self.num_samples(epoch):  # never drop or repeat images silently
                raise RuntimeError(
                    f"DALI yielded {seen} images in epoch {epoch} of shard "
                    f"{self.shard_id(epoch)}/{self.world_size}; expected {self.num_samples(epoch)}"
                )
            self._it_epoch = epoch + 1
        finally:
            self._end_pass()
