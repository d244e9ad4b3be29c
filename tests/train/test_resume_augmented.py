"""A run with random augmentation (random-resized crop + flip) that is interrupted mid-epoch in
its second epoch and resumed ends bit-identical to the same run uninterrupted, on both loader
backends: each sample's crop and flip are a function of (seed, epoch, sample), not of how many
samples a worker or pipeline drew before."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from shiftnas.train import Trainer
from shiftnas.train.checkpoint import list_checkpoints, load_checkpoint

# 640 train images, batch 128: 5 batches an epoch. Checkpoints at steps 3 and 6; the crash is
# at step 8 (epoch 1, batch 2), so the resume starts inside the second epoch, one batch in.
STEPS = ["data.augment=true", "data.batch_size=128", "optim.steps=9", "run.ckpt_every=3",
         "optim.warmup_steps=1", "sampler.name=uniform"]


def _run(tiny_cfg, name, backend, crash_at=None, monkeypatch=None, resume=None):
    tr = Trainer(tiny_cfg(name, *STEPS, f"data.backend={backend}"), resume=resume)
    if crash_at is not None:
        real = tr.train_step

        def boom(x, y):
            if tr.step == crash_at:
                raise KeyboardInterrupt("simulated crash")
            return real(x, y)

        monkeypatch.setattr(tr, "train_step", boom)
        with pytest.raises(KeyboardInterrupt):
            tr.fit()
        return tr
    tr.fit()
    return tr


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_augmented_run_resumed_mid_epoch_ends_bit_identical(tiny_cfg, backend, monkeypatch):
    if backend == "dali" and importlib.util.find_spec("nvidia.dali") is None:
        pytest.skip("nvidia-dali is not installed")
    full = _run(tiny_cfg, "full", backend)
    cut = _run(tiny_cfg, "cut", backend, crash_at=7, monkeypatch=monkeypatch)
    assert [s for s, _ in list_checkpoints(cut.run_dir)] == [3, 6]
    resumed = _run(tiny_cfg, "cut", backend, resume="auto")
    assert resumed.step == 9
    a = load_checkpoint(list_checkpoints(full.run_dir)[-1][1])["model"]
    b = load_checkpoint(list_checkpoints(resumed.run_dir)[-1][1])["model"]
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert differ == [], f"{len(differ)} of {len(a)} tensors differ, e.g. {differ[:3]}"


def test_augmentation_repeats_within_an_epoch_and_is_seeded_apart_across_epochs(tiny_root):
    """Reading an epoch again gives the same batch; every (epoch, sample) pair has its own seed,
    so the per-sample seeding does not repeat one crop per image across epochs."""
    from shiftnas.data import build_loader

    ld = build_loader(tiny_root, "train", 32, 28, train=True, augment=True, seed=3, backend="torch",
                      num_threads=1, device="cpu", channels=1)

    def first(epoch):
        ld.set_epoch(epoch)
        return next(iter(ld))

    (x0, y0), (x0b, y0b), (_, y1) = first(0), first(0), first(1)
    assert torch.equal(x0, x0b) and torch.equal(y0, y0b)
    assert not torch.equal(y0, y1)  # another order in epoch 1
    from shiftnas.data.torch_backend import sample_seed

    seeds = {sample_seed(3, e, i) for e in range(3) for i in range(640)}
    assert len(seeds) == 3 * 640
