"""Evaluating subnets of a supernet: BN recalibration, top-1/loss, per-bin architectures, tables.

- `prepare_input(model, x, arch)`: the input a supernet expects for `arch` (CNN spaces resize to
  `arch["resolution"]`, ViT spaces take the image as is).
- `calibrate_bn(model, arch, batches)`: BigNAS / OFA BatchNorm recalibration. The running
  statistics of a weight-sharing supernet mix every subnet trained so far, so before a subnet
  is evaluated its BN statistics are re-estimated: reset, then a few train-mode forwards of
  that subnet with momentum 1/(i+1) at batch i, which makes the running mean/var the exact
  average of the per-batch statistics. Models without BatchNorm (the ViTs) are left alone.
- `evaluate_arch(model, arch, loader)`: top-1 accuracy (%) and mean cross-entropy of one subnet,
  summed over DDP ranks when a process group is initialised (each rank evaluates its shard).
- `bin_archs(space, bins, seed)`: one architecture per FLOPs bin, drawn deterministically, so
  a ShiftNAS run and its baselines are judged on the same subnets.
- `arch_row(...)` / `format_bin_table(rows)`: JSON-able result rows and the fixed-width text
  table that `make demo` prints (FLOPs are multiply-accumulates, named MFLOPs as in the repo).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..cost import CostBins, count_cost, count_flops, count_params
from ..models.mbconv import resize_to
from ..ops.batch_norm import ElasticBatchNorm2d
from ..sampling.base import sample_in_bin
from ..spaces import ArchConfig, SearchSpace, get_space

__all__ = [
    "arch_row",
    "bin_archs",
    "calibrate_bn",
    "evaluate_arch",
    "format_bin_table",
    "prepare_input",
]

_BN_TYPES = (ElasticBatchNorm2d, nn.modules.batchnorm._BatchNorm)


def prepare_input(model: nn.Module, x: torch.Tensor, arch: ArchConfig) -> torch.Tensor:
    """`x` as the supernet expects it for `arch`: resized for CNN spaces, unchanged for ViTs."""
    family = model.space.family
    if family == "cnn":
        return resize_to(x, arch["resolution"])
    if family == "vit":
        return x
    raise ValueError(f"prepare_input: unknown model family {family!r} (expected 'cnn' or 'vit')")


def _device(model: nn.Module) -> torch.device | None:
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return None


def _split(batch: Any) -> tuple[torch.Tensor, Any]:
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and len(batch) >= 1:
        return batch[0], (batch[1] if len(batch) > 1 else None)
    raise ValueError(f"expected batches of (images, labels), got {type(batch).__name__}")


def _modes(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    return [(m, m.training) for m in model.modules()]


def _restore_modes(modes: list[tuple[nn.Module, bool]]) -> None:
    for m, training in modes:
        m.training = training


@torch.no_grad()
def has_batch_norm(model: nn.Module) -> bool:
    """Whether `model` holds BatchNorm layers (then a subnet's statistics need `calibrate_bn`)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) or "BatchNorm" in type(m).__name__
               for m in model.modules())


def calibrate_bn(model: nn.Module, arch: ArchConfig, batches: Iterable, n_batches: int = 20) -> int:
    """Re-estimate every BatchNorm's running statistics for the subnet `arch`.

    Resets running_mean to 0 and running_var to 1 (all channels, also those `arch` does not
    use), then forwards up to `n_batches` batches `(x, y)` of `batches` in train mode with
    momentum 1/(i+1) at batch i: the running statistics become the exact average of the
    per-batch means and (unbiased) variances. Momenta and train/eval modes are restored.
    Returns the number of batches used (0 at once for a model without BatchNorm).
    """
    bns = [m for m in model.modules() if isinstance(m, _BN_TYPES)]
    bns = [m for m in bns if getattr(m, "running_mean", None) is not None]
    if not bns:
        return 0
    if not isinstance(n_batches, int) or n_batches < 1:
        raise ValueError(f"calibrate_bn: n_batches={n_batches!r} must be a positive integer")
    it = iter(batches)
    first = next(it, None)
    if first is None:
        raise ValueError("calibrate_bn: `batches` yielded no batch; give at least one (x, y) batch")
    device = _device(model)
    modes = _modes(model)
    momenta = [m.momentum for m in bns]
    used = 0
    try:
        for m in bns:
            m.running_mean.zero_()
            m.running_var.fill_(1.0)
        model.train()
        # islice: no batch past the n_batches-th is drawn (a data loader would load it).
        for i, batch in enumerate(itertools.islice(itertools.chain([first], it), n_batches)):
            x, _ = _split(batch)
            if device is not None:
                x = x.to(device, non_blocking=True)
            for m in bns:
                m.momentum = 1.0 / (i + 1)
            model(prepare_input(model, x, arch), arch)
            used += 1
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        _restore_modes(modes)
    return used


def _all_reduce(values: list[float], device: torch.device | None) -> list[float]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return values
    backend = str(dist.get_backend())
    dev = torch.device("cpu")
    if "nccl" in backend and device is not None and device.type == "cuda":
        dev = device
    t = torch.tensor(values, dtype=torch.float64, device=dev)
    dist.all_reduce(t)
    return t.tolist()


@torch.no_grad()
def evaluate_arch(
    model: nn.Module,
    arch: ArchConfig,
    loader: Iterable,
    *,
    amp_dtype: torch.dtype | None = None,
    max_images: int | None = None,
    calib_batches: Iterable | None = None,
    calib_n: int = 20,
) -> dict[str, Any]:
    """Top-1 accuracy (%) and mean cross-entropy of subnet `arch` over `loader`.

    `loader` yields (images, labels) batches. With `calib_batches` the BN statistics are
    recalibrated first (`calibrate_bn`, `calib_n` batches). `max_images` caps the images
    counted on this process (the last batch is truncated; no further batch is drawn). Under an initialised torch.distributed process
    group the sums are all-reduced, so every rank returns the global numbers of the split
    whose shards the ranks hold. Returns {"top1": float, "loss": float, "images": int}.
    """
    if max_images is not None and max_images < 1:
        raise ValueError(f"evaluate_arch: max_images={max_images!r} must be >= 1 (or None)")
    if calib_batches is not None:
        calibrate_bn(model, arch, calib_batches, calib_n)
    device = _device(model)
    modes = _modes(model)
    correct, loss_sum, seen = 0.0, 0.0, 0
    try:
        model.eval()
        for batch in loader:
            x, y = _split(batch)
            if y is None:
                raise ValueError("evaluate_arch: the loader must yield (images, labels) batches")
            if device is not None:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if max_images is not None and seen + x.shape[0] > max_images:
                keep = max_images - seen
                x, y = x[:keep], y[:keep]
            if x.shape[0] == 0:
                continue
            x = prepare_input(model, x, arch)
            if amp_dtype is not None:
                with torch.autocast(x.device.type, dtype=amp_dtype):
                    logits = model(x, arch)
            else:
                logits = model(x, arch)
            logits = logits.float()
            correct += float((logits.argmax(dim=1) == y).sum())
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            seen += int(x.shape[0])
            if max_images is not None and seen >= max_images:
                break  # before drawing another batch from the loader
    finally:
        _restore_modes(modes)
    correct, loss_sum, total = _all_reduce([correct, loss_sum, float(seen)], device)
    images = round(total)
    if images == 0:
        raise ValueError(
            "evaluate_arch: zero images were evaluated (the loader yielded no non-empty batch)"
        )
    return {"top1": 100.0 * correct / images, "loss": loss_sum / images, "images": images}


def bins_record(bins: CostBins) -> dict[str, Any]:
    """The bins as a run's summary records them: edges and centres in millions of the cost's unit
    (`edges_mflops` / `centers_mflops` for FLOPs; `edges` / `centers` with `unit` and `cost`,
    e.g. ms and the latency table, for another cost)."""
    edges = [e / 1e6 for e in bins.edges.tolist()]
    centers = [c / 1e6 for c in bins.centers.tolist()]
    if bins.cost.name == "flops":
        return {"edges_mflops": edges, "centers_mflops": centers}
    return {"edges": edges, "centers": centers, "unit": bins.cost.display_unit, "cost": bins.cost.describe()}


def bin_archs(
    space: SearchSpace | str, bins: CostBins, seed: int = 0, max_tries: int = 200
) -> list[dict[str, Any]]:
    """One architecture per FLOPs bin k: `{"bin": k, "arch": ArchConfig, "hit": bool}`.

    Bin k draws with `random.Random(seed * 7919 + k)`, so the list depends on `seed` alone.
    `hit` is False when no architecture inside the bin was found (the closest one is given).
    """
    space = get_space(space)
    out = []
    for k in range(len(bins)):
        draw = sample_in_bin(space, bins, k, random.Random(seed * 7919 + k), max_tries)
        out.append({"bin": k, "arch": draw.arch, "hit": bool(draw.hit)})
    return out


def arch_row(
    space: SearchSpace | str,
    arch: ArchConfig,
    bins: CostBins,
    k: int,
    source: str,
    metrics: Mapping[str, Any],
    num_classes: int | None = None,
) -> dict[str, Any]:
    """A JSON-able summary of `arch` evaluated as bin `k`'s architecture from `source`."""
    space = get_space(space)
    if not 0 <= k < len(bins):
        raise ValueError(
            f"arch_row: bin k={k} is out of range; {bins!r} has bins 0..{len(bins) - 1}"
        )
    flops = count_flops(space, arch, num_classes)
    cost = flops if bins.cost.name == "flops" else count_cost(space, arch, bins.cost)
    try:
        in_bin = bins.bin_of(cost) == k
    except ValueError:  # outside the bins' range (e.g. another num_classes)
        in_bin = False
    extra = {}
    if bins.cost.name != "flops":  # the bin and the arch in the bins' cost (e.g. ms)
        extra = {"cost_unit": bins.cost.display_unit, "lo_cost": float(bins.edges[k]) / 1e6,
                 "hi_cost": float(bins.edges[k + 1]) / 1e6, "cost": cost / 1e6}
    flops_bins = bins.cost.name == "flops"  # else the bin's edges are in `cost_unit` (lo_cost, hi_cost)
    return {
        "bin": int(k),
        "lo_mflops": float(bins.edges[k]) / 1e6 if flops_bins else None,
        "hi_mflops": float(bins.edges[k + 1]) / 1e6 if flops_bins else None,
        "source": str(source),
        "arch": arch.short(),
        "arch_values": arch.to_dict(),
        "mflops": flops / 1e6,
        "params_m": count_params(space, arch, num_classes) / 1e6,
        "in_bin": bool(in_bin),
        **extra,
        **dict(metrics),
    }


def _fmt(v: Any, spec: str) -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return format(v, spec)
    return "-"


def format_bin_table(rows: Iterable[Mapping[str, Any]]) -> str:
    """Fixed-width text table of `arch_row` rows (plus "top1"), sorted by (bin, source)."""
    rows = sorted(rows, key=lambda r: (r["bin"], str(r["source"])))
    # Rows binned by another cost (e.g. latency) show the bins and that cost in its unit too.
    unit = next((r["cost_unit"] for r in rows if "cost_unit" in r), None)
    lo, hi = ("lo_mflops", "hi_mflops") if unit is None else ("lo_cost", "hi_cost")
    header = ["bin", f"range ({unit or 'MFLOPs'})", "source", "MFLOPs", "params(M)", "top-1", "in-bin", "arch"]
    if unit is not None:
        header.insert(4, unit)
    body = [
        [
            str(r["bin"]),
            f"{_fmt(r.get(lo), '.2f')}-{_fmt(r.get(hi), '.2f')}",
            str(r["source"]),
            _fmt(r.get("mflops"), ".2f"),
            *([] if unit is None else [_fmt(r.get("cost"), ".3f")]),
            _fmt(r.get("params_m"), ".3f"),
            _fmt(r.get("top1"), ".2f"),
            "yes" if r.get("in_bin") else "no",
            str(r.get("arch", "")),
        ]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    right = {0, 3, 4, 5} if unit is None else {0, 3, 4, 5, 6}  # numbers right-aligned; the last column is not padded

    def line(cells: list[str]) -> str:
        out = []
        for i, c in enumerate(cells):
            if i == len(cells) - 1:
                out.append(c)
            else:
                out.append(c.rjust(widths[i]) if i in right else c.ljust(widths[i]))
        return "  ".join(out).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), sep, *(line(r) for r in body)])
