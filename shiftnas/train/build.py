"""What `Trainer` builds from a `TrainConfig` before the first step: the sampler, the optimizer
(AdamW with timm's weight-decay rule) and the data loaders (train, minival, val).

    sampler = build_train_sampler(cfg, space)
    optimizer = build_optimizer(cfg, net, extra_params, device)
    loaders = build_loaders(cfg, info, space, sampler.splits)   # .train, .minival, .val

`data_root` and `split_decay` serve the search too (`shiftnas.search.run`, `.ranking`).
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from ..sampling import build_sampler
from ..sampling.shift import shift_lr
from .config import TrainConfig
from .distributed import DistInfo

__all__ = ["Loaders", "build_loaders", "build_optimizer", "build_train_sampler", "data_root", "run_cost", "split_decay"]


def _no_decay(name: str, p: nn.Parameter) -> bool:
    # timm's rule: biases, norm weights and the position/class tokens take no weight decay.
    return p.ndim <= 1 or name.endswith(("pos_embed", "cls_token"))


def split_decay(named_parameters: Iterable[tuple[str, nn.Parameter]]) -> tuple[list, list]:
    """(decay, no_decay): the parameters that take weight decay and those that do not (timm's rule)."""
    decay, no_decay = [], []
    for n, p in named_parameters:
        (no_decay if _no_decay(n, p) else decay).append(p)
    return decay, no_decay


def data_root(cfg: TrainConfig) -> Path:
    """The folder that holds the run's data splits (data.root, or the default one of the dataset)."""
    if cfg.data.root:
        return Path(cfg.data.root).expanduser()
    from ..data.prepare import default_data_root

    return default_data_root() / cfg.data.dataset


def run_cost(c: TrainConfig, space):
    """The run's cost (`sampler.cost`, with `sampler.latency_table` for latency): what the
    binning samplers, the generator and the trainer's bin counts measure."""
    from ..cost import get_cost

    if c.sampler.cost == "latency":
        return get_cost(space, "latency", table=Path(c.sampler.latency_table).expanduser())
    return get_cost(space, c.sampler.cost)


def build_train_sampler(c: TrainConfig, space):
    """The sampler `c.sampler.name` over `space`, with the settings of the config it reads."""
    name = c.sampler.name
    kw: dict[str, Any] = {"seed": c.run.seed}
    if name in ("shift", "attentive", "bin_uniform"):
        kw["cost"] = run_cost(c, space)
    if name == "shift":
        warm = round(c.shift.warmup_frac * c.optim.steps)
        kw.update(
            n_bins=c.sampler.n_bins, total_steps=c.optim.steps, hidden=c.generator.hidden,
            tau_start=c.generator.tau_start, tau_end=c.generator.tau_end, lam=c.generator.lam,
            warmup_steps=warm, update_every=c.shift.update_every,
            shift_lr=shift_lr(c.shift.lr, c.shift.movement, warm, c.shift.update_every, c.optim.steps,
                              c.shift.max_lr, c.shift.probe_stride),
            estimator=c.shift.estimator, probe_stride=c.shift.probe_stride, pretrain_steps=c.generator.pretrain_steps,
            pretrain_lr=c.generator.pretrain_lr, grad_path=c.generator.grad_path,
            explore=c.generator.explore,
        )
    elif name == "sandwich":
        kw.update(n_random=c.sampler.n_random)
    elif name == "attentive":
        kw.update(n_random=c.sampler.n_random, n_candidates=c.sampler.n_candidates,
                  mode=c.sampler.mode, n_bins=c.sampler.n_bins)
    elif name == "bin_uniform":
        kw.update(n_bins=c.sampler.n_bins)
    return build_sampler(name, space, **kw)


def build_optimizer(cfg: TrainConfig, net: nn.Module, extra_params: list, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over the supernet (decay / no-decay groups at optim.lr) and the sampler's trainable
    parameters (`extra_params`, at generator.lr, no decay); fused on CUDA."""
    o = cfg.optim
    decay, no_decay = split_decay(net.named_parameters())
    groups = [
        {"params": decay, "weight_decay": o.weight_decay, "lr": o.lr},
        {"params": no_decay, "weight_decay": 0.0, "lr": o.lr},
    ]
    if extra_params:
        groups.append({"params": extra_params, "weight_decay": 0.0, "lr": cfg.generator.lr})
    kw = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=o.lr, **kw)


class Loaders(NamedTuple):
    train: Any
    minival: Any  # None unless the sampler reads the minival split
    val: Any


def _check_splits(c: TrainConfig, root: Path, splits: Iterable[str]) -> None:
    extra = {"minival": c.data.minival_split}
    needed = [c.data.train_split, c.data.val_split] + [extra[s] for s in splits]
    for split in needed:
        if not (root / split).is_dir():
            hint = (
                "run `shiftnas prepare fashion-mnist` (or `make data`)"
                if c.data.dataset == "fashion-mnist"
                else "see shiftnas/data/README.md for the ImageFolder layout"
            )
            raise ValueError(f"data split {split!r} not found: {str(root / split)!r} is not a directory; {hint}")


def build_loaders(c: TrainConfig, info: DistInfo, space, splits: Iterable[str]) -> Loaders:
    """The train loader (sharded, augmented, full batches), the minival loader when `splits` (the
    sampler's) has "minival", and the val loader; a ValueError names a missing split."""
    from ..data import build_loader

    root = data_root(c)
    splits = tuple(splits)
    _check_splits(c, root, splits)
    common = dict(backend=c.data.backend, num_threads=c.data.num_threads, device=info.device,
                  channels=space.hparams["in_chans"], **c.data.corrupt_checks())
    train = build_loader(
        root, c.data.train_split, c.data.batch_size, c.data.image_size, train=True,
        rank=info.rank, world_size=info.world_size, seed=c.run.seed, augment=c.data.augment,
        drop_last=True, **common,
    )
    if len(train) < 1:
        raise ValueError(
            f"the train split has fewer images per rank than data.batch_size={c.data.batch_size}; lower it"
        )
    minival = None
    if "minival" in splits:  # unsharded: every rank takes the same B step alone
        minival = build_loader(
            root, c.data.minival_split, c.data.batch_size, c.data.image_size, train=True,
            augment=False, seed=c.run.seed + 1, drop_last=True, **common,
        )
    # A subset (eval.max_images) must not be the first classes of a class-sorted split: then
    # read the split in a fixed shuffled order (no augmentation), the same for every arch.
    subset = c.eval.max_images is not None
    val = build_loader(
        root, c.data.val_split, c.eval.batch_size, c.data.image_size, train=subset,
        augment=False if subset else None, seed=c.run.seed + 2,
        rank=info.rank, world_size=info.world_size, **common,
    )
    return Loaders(train, minival, val)
