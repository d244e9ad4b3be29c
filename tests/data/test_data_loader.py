"""build_loader: shapes, dtypes, normalisation, label mapping, sharding and epochs, and the
DALI and torch backends agreeing on evaluation batches."""

from __future__ import annotations

import collections
import functools
import gc
import operator
import os

import numpy as np
import pytest
import torch

from shiftnas.data import FASHION_MNIST_FOLDERS, build_loader, scan_split
from shiftnas.data.dali_backend import dali_available

BACKENDS = [
    "torch",
    pytest.param(
        "dali",
        marks=pytest.mark.skipif(
            dali_available() is not None, reason=f"no DALI: {dali_available()}"
        ),
    ),
]
needs_dali = pytest.mark.skipif(dali_available() is not None, reason=f"no DALI: {dali_available()}")


def to_uint8(images: torch.Tensor, loader) -> np.ndarray:
    """Undo the normalisation: (B, C, H, W) uint8 as decoded."""
    r = loader.recipe
    mean = torch.tensor(r.mean).view(1, -1, 1, 1) * 255
    std = torch.tensor(r.std).view(1, -1, 1, 1) * 255
    x = images.cpu() * std + mean
    assert (x - x.round()).abs().max() < 1e-3, "resize/crop should be exact here"
    return x.round().clamp(0, 255).to(torch.uint8).numpy()


def collect(loader, truth):
    """[(source index, label)] of one pass, checking every label against the source."""
    got = []
    for images, labels in loader:
        for img, y in zip(to_uint8(images, loader), labels.tolist()):
            i, want = truth[img[0].tobytes()]
            assert y == want, f"image {i}: label {y}, expected {want}"
            got.append(i)
    return got


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_batches_shapes_dtypes(fmnist_root, backend):
    ld = build_loader(
        fmnist_root, "minival", 64, 28, train=True, backend=backend, num_threads=2, device="cpu"
    )
    assert ld.classes == FASHION_MNIST_FOLDERS and ld.num_classes == 10
    assert len(ld) == -(-5000 // 64)
    for k, (x, y) in enumerate(ld):  # augmented: random resized crop + flip
        assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32 and x.is_contiguous()
        assert y.shape == (64,) and y.dtype == torch.int64 and 0 <= y.min() and y.max() < 10
        assert x.min() >= (0 - 0.2860) / 0.3530 - 1e-4 and x.max() <= (1 - 0.2860) / 0.3530 + 1e-4
        if k == 3:
            break
    ld = build_loader(
        fmnist_root,
        "minival",
        32,
        40,
        train=True,
        backend=backend,
        num_threads=1,
        device="cpu",
        channels=3,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
    )
    x, y = next(iter(ld))
    assert x.shape == (32, 3, 40, 40)  # grayscale expanded on request: three equal channels
    for c in (1, 2):  # DALI's resize may round a channel differently by one grey level
        torch.testing.assert_close(x[:, c], x[:, 0], rtol=0, atol=1.01 / 127.5)
    assert -1 - 1e-5 <= x.min() and x.max() <= 1 + 1e-5


@needs_dali
def test_eval_full_val_dali_equals_torch_and_is_normalised(fmnist_root, fmnist_idx):
    """The official 10,000 test images, in order: both backends, batch for batch."""
    kw = {"batch_size": 500, "image_size": 28, "train": False, "num_threads": 2, "device": "cpu"}
    dali = build_loader(fmnist_root, "val", backend="dali", **kw)
    tv = build_loader(fmnist_root, "val", backend="torch", **kw)
    assert len(dali) == len(tv) == 20
    n, s, ss, labels = 0, 0.0, 0.0, []
    for (xd, yd), (xt, yt) in zip(dali, tv, strict=True):
        torch.testing.assert_close(xd, xt, rtol=0, atol=1e-5)
        assert torch.equal(yd, yt)
        n += xd.numel()
        s += xd.double().sum().item()
        ss += xd.double().square().sum().item()
        labels += yd.tolist()
    mean, std = s / n, (ss / n - (s / n) ** 2) ** 0.5
    assert abs(mean) < 0.01 and abs(std - 1) < 0.01  # Fashion-MNIST statistics by default
    # order == sorted (class, file); as many of each class as the IDX labels say
    assert np.bincount(labels).tolist() == np.bincount(fmnist_idx["test_labels"]).tolist()
    assert labels == sorted(labels)


@needs_dali
@pytest.mark.parametrize(
    "tree,split,size,channels", [("jpeg", "val", 64, 3), ("fmnist", "val", 36, 1)]
)
def test_eval_resize_crop_dali_close_to_torch(jpeg_tree, small_tree, tree, split, size, channels):
    """With a real resize (and JPEG decoding) the backends differ only by interpolation."""
    root = jpeg_tree if tree == "jpeg" else small_tree[0]
    kw = {"batch_size": 8, "image_size": size, "train": False, "num_threads": 2, "device": "cpu"}
    dali = build_loader(root, split, backend="dali", **kw)
    tv = build_loader(root, split, backend="torch", **kw)
    assert dali.recipe == tv.recipe and dali.recipe.channels == channels
    for (xd, yd), (xt, yt) in zip(dali, tv, strict=True):
        assert xd.shape == xt.shape == (xd.shape[0], channels, size, size)
        assert torch.equal(yd, yt)
        diff = (
            (xd - xt).abs() * torch.tensor(dali.recipe.std).view(1, -1, 1, 1) * 255
        )  # grey levels
        # measured: JPEG 0.36 mean / 4 max, Fashion-MNIST 0.09 / 1 grey levels
        assert diff.mean() < 1.0 and diff.max() < 8, (diff.mean(), diff.max())


def test_label_mapping_matches_torchvision_and_dali(small_tree, jpeg_tree):
    from torchvision.datasets import ImageFolder

    for root in (small_tree[0], jpeg_tree):
        idx = scan_split(root, "val")
        ref = ImageFolder(str(root / "val"))
        assert ref.class_to_idx == idx.class_to_idx
        assert [(p, y) for p, y in ref.samples] == list(zip(idx.files, idx.labels))
    if dali_available() is not None:
        return
    # DALI's own labelling of a file_root (sorted subfolders) gives the same labels.
    from nvidia.dali import fn, pipeline_def

    root = small_tree[0] / "train"
    idx = scan_split(small_tree[0], "train")

    @pipeline_def(batch_size=len(idx), num_threads=1, device_id=None)
    def pipe():
        enc, label = fn.readers.file(file_root=str(root), name="Reader")
        return fn.get_property(enc, key="source_info"), label

    p = pipe()
    p.build()
    paths, labels = p.run()
    dali_map = {
        str(root / bytes(np.array(paths[k])).decode()): int(np.array(labels[k])[0])
        for k in range(len(idx))
    }
    assert dali_map == dict(zip(idx.files, idx.labels))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("world_size", [2, 3])
def test_shards_cover_every_image_once_per_epoch(small_tree, backend, world_size):
    root, truth = small_tree
    n = len(truth["train"])
    assert n == 101
    loaders = [
        build_loader(
            root,
            "train",
            8,
            28,
            train=True,
            rank=r,
            world_size=world_size,
            backend=backend,
            num_threads=1,
            seed=3,
            device="cpu",
            augment=False,
        )
        for r in range(world_size)
    ]
    orders = []
    for epoch in range(3):
        seen = collections.Counter()
        for ld in loaders:
            expected_len = len(ld)
            got = collect(ld, truth["train"])
            assert -(-len(got) // 8) == expected_len  # len() was this epoch's batch count
            assert abs(len(got) - n / world_size) < 1  # shard sizes differ by at most one
            seen.update(got)
            if ld.rank == 0:
                orders.append(got)
        assert len(seen) == n and set(seen.values()) == {1}, f"epoch {epoch}: {seen.most_common(3)}"
    assert orders[0] != orders[1] != orders[2]  # reshuffled every epoch

    # evaluation: each rank keeps its contiguous chunk, in file order
    evals = [
        build_loader(
            root,
            "val",
            4,
            28,
            train=False,
            rank=r,
            world_size=world_size,
            backend=backend,
            num_threads=1,
            device="cpu",
        )
        for r in range(world_size)
    ]
    chunks = [collect(ld, truth["val"]) for ld in evals]
    files = scan_split(root, "val").files
    flat = [int(f.rsplit("/", 1)[1][:5]) for f in files]
    assert functools.reduce(operator.iadd, chunks, []) == flat
    assert [collect(ld, truth["val"]) for ld in evals] == chunks  # same every epoch


@pytest.mark.parametrize("backend", BACKENDS)
def test_set_epoch_and_abandoned_pass(small_tree, backend):
    root, truth = small_tree
    kw = {
        "batch_size": 8,
        "image_size": 28,
        "train": True,
        "rank": 1,
        "world_size": 2,
        "backend": backend,
        "num_threads": 1,
        "seed": 5,
        "device": "cpu",
        "augment": False,
    }
    a, b = build_loader(root, "train", **kw), build_loader(root, "train", **kw)
    a.set_epoch(4)
    b.set_epoch(4)
    assert a.epoch == 4
    first = collect(a, truth["train"])
    assert collect(b, truth["train"]) == first  # deterministic in (seed, epoch)
    assert a.epoch == 5
    # leave a pass early: the next pass is a whole epoch (5 was consumed by the abandoned one)
    for k, _ in enumerate(a):
        if k == 1:
            break
    assert a.epoch == 6
    b.set_epoch(6)
    assert collect(a, truth["train"]) == collect(b, truth["train"])
    # ranks 0 and 1 of a resumed epoch still split the data exactly
    c = build_loader(root, "train", **{**kw, "rank": 0})
    c.set_epoch(6)
    d = build_loader(root, "train", **kw)
    d.set_epoch(6)
    both = collect(c, truth["train"]) + collect(d, truth["train"])
    assert sorted(both) == sorted(i for i, _ in truth["train"].values())
    other_seed = build_loader(root, "train", **{**kw, "seed": 6})
    other_seed.set_epoch(4)
    assert collect(other_seed, truth["train"]) != first


@pytest.mark.parametrize("backend", BACKENDS)
def test_drop_last_same_batch_count_on_every_rank(small_tree, backend):
    root, _truth = small_tree
    counts = []
    for epoch in range(2):
        for r in range(3):  # shards of 33, 34, 34 images
            ld = build_loader(
                root,
                "train",
                11,
                28,
                train=True,
                rank=r,
                world_size=3,
                backend=backend,
                num_threads=1,
                device="cpu",
                augment=False,
                drop_last=True,
            )
            ld.set_epoch(epoch)
            sizes = [x.shape[0] for x, _ in ld]
            assert sizes == [11] * len(ld) == [11] * 3
            counts.append(len(sizes))
    assert set(counts) == {3}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (mixed decode)")
@pytest.mark.parametrize("backend", BACKENDS)
def test_gpu_output(small_tree, backend):
    root, truth = small_tree
    ld = build_loader(
        root, "val", 8, 28, train=False, backend=backend, num_threads=2, device="cuda"
    )
    x, y = next(iter(ld))
    assert x.is_cuda and y.is_cuda and y.dtype == torch.int64 and x.shape == (8, 1, 28, 28)
    assert collect(ld, truth["val"])


class _Finalized:
    """Writes the pid of the process that finalizes it: garbage only the cycle collector frees."""

    def __init__(self, path):
        self.path, self.me = path, self

    def __del__(self):
        with open(self.path, "a") as f:
            f.write(f"{os.getpid()}\n")


def test_workers_do_not_finalize_the_callers_garbage(fmnist_root, tmp_path, monkeypatch):
    """A forked worker inherits the caller's uncollected garbage; if its collector finalized it,
    a DALI pipeline among it would hang the worker (its executor waits on threads a child does
    not have). Here each worker runs a full collection before its first image; the garbage must
    be finalized once, by the caller."""
    from shiftnas.data import torch_backend

    decode = torch_backend._FolderDataset.__getitem__

    def collect_first(self, key):
        gc.collect()
        return decode(self, key)

    monkeypatch.setattr(torch_backend._FolderDataset, "__getitem__", collect_first)
    marker = tmp_path / "finalized"
    ld = build_loader(fmnist_root, "val", 8, 28, train=False, backend="torch", num_threads=2, device="cpu")
    old = _Finalized(marker)
    gc.collect()  # now in the oldest generation, which only a full collection examines
    del old  # garbage that the caller's collector would free at its next full collection
    assert next(iter(ld))[0].shape == (8, 1, 28, 28)  # the workers fork here
    del ld
    gc.collect()
    assert marker.read_text().split() == [str(os.getpid())]


def test_a_loader_freed_by_the_cycle_collector_stops_its_workers_at_once(fmnist_root, monkeypatch):
    """The persistent workers of a loader that only the cycle collector frees (a Trainer holds
    its loaders in a cycle) get the stop message and exit by themselves. Left to the DataLoader
    iterator's __del__, the collector first ended its queues' feeder threads, the message never
    left, and each worker was terminated after a 5 s join: whatever test happened to trigger the
    collection stalled (202-263 s in `make test`)."""
    import multiprocessing.process
    import time

    from torch.utils.data._utils import MP_STATUS_CHECK_INTERVAL

    terminated = []
    terminate = multiprocessing.process.BaseProcess.terminate

    def record(self):
        terminated.append(self.pid)
        terminate(self)

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "terminate", record)
    ld = build_loader(fmnist_root, "val", 8, 28, train=False, backend="torch", num_threads=2, device="cpu")
    assert next(iter(ld))[0].shape == (8, 1, 28, 28)  # the workers start, and persist
    workers = list(ld._dl._iterator._workers)
    assert len(workers) == 2 and all(w.is_alive() for w in workers)
    ld.me = ld  # a cycle: only the collector frees it
    del ld
    t0 = time.perf_counter()
    gc.collect()
    took = time.perf_counter() - t0
    assert not any(w.is_alive() for w in workers)
    assert terminated == []  # stopped, not killed
    assert took < MP_STATUS_CHECK_INTERVAL, f"the collection took {took:.1f} s"
