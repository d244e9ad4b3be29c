"""torchrun / DDP plumbing: process group from the torchrun environment, device choice, reductions.

`init_distributed(device)` reads RANK / WORLD_SIZE / LOCAL_RANK (set by torchrun; absent for a
plain `python train.py`, which runs as one process without a process group). The backend is
nccl when the device is CUDA, gloo otherwise (CPU, the tests). One process per GPU.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "all_reduce_mean_grads", "all_reduce_sum", "barrier", "gather_objects", "init_distributed", "shutdown",
           "wrap_ddp"]


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None: single process, no process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer (set by torchrun)") from None


def _attempt_store(timeout: datetime.timedelta):
    """Under torchrun, the agent's store with a prefix of its own per restart, else None.

    torchrun's agent keeps one TCPStore across the restarts of a job, and init_process_group
    keys the ranks' addresses by group name only, so a restarted rank can read a peer's
    address from the attempt that died and fail with gloo's "connectFullMesh ... Connection
    refused" (seen here on most restarts under load, each one costing a restart). A prefix
    per TORCHELASTIC_RESTART_COUNT gives every attempt fresh keys.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    attempt = _env_int("TORCHELASTIC_RESTART_COUNT", 0)
    addr, port = os.environ.get("MASTER_ADDR"), _env_int("MASTER_PORT", -1)
    if not addr or not 0 < port < 2**16:
        raise ValueError(f"MASTER_ADDR={addr!r} / MASTER_PORT={port}: torchrun sets both (port 1-65535)")
    store = dist.TCPStore(addr, port, world_size=None, is_master=False, timeout=timeout)
    return dist.PrefixStore(f"shiftnas/attempt-{attempt}", store)


def init_distributed(device: str = "auto", timeout_s: int = 1800) -> DistInfo:
    """Join the torchrun process group (if WORLD_SIZE > 1) and pick this rank's device.

    `device`: "auto" (CUDA when available), "cpu" or "cuda" (an error when no GPU is visible).
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device={device!r}; allowed: 'auto', 'cpu', 'cuda'")
    rank, world = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    local = _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} / WORLD_SIZE={world}: need 0 <= RANK < WORLD_SIZE")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise ValueError("run.device=cuda but torch sees no GPU; use run.device=cpu or auto")
        n = torch.cuda.device_count()
        if local >= n:
            raise ValueError(f"LOCAL_RANK={local} but only {n} GPU(s) are visible; use --nproc_per_node<={n}")
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    backend = None
    if world > 1:
        backend = "nccl" if use_cuda else "gloo"
        if not dist.is_initialized():
            timeout = datetime.timedelta(seconds=timeout_s)
            kw = {"device_id": dev} if use_cuda else {}
            store = _attempt_store(timeout)
            if store is not None:
                kw.update(store=store, rank=rank, world_size=world)
            dist.init_process_group(backend, timeout=timeout, **kw)
    return DistInfo(rank, world, local, dev, backend)


class _DDPNet(torch.nn.Module):
    """The supernet plus one parameter no forward uses (see wrap_ddp)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net
        self.never_used = torch.nn.Parameter(torch.zeros(1))

    def forward(self, *args, **kwargs):
        return self.net(*args, **kwargs)


def wrap_ddp(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`net` under DistributedDataParallel with find_unused_parameters=True: a subnet that skips
    blocks (every space has an elastic depth) leaves their parameters without a gradient, and
    DDP must not wait for them (they keep no gradient, as in a single process).

    A step whose subnets use every parameter (the max subnet) would make DDP print, once per
    rank, a C++ warning that find_unused_parameters=True found no unused parameter; it goes
    to stderr through c10 logging, not Python's `warnings`, so no filter can silence only it.
    The wrapper's `never_used` parameter is unused in every step, so that warning is never due;
    it is not in `net.parameters()` (no optimizer, no checkpoint holds it) and its gradient
    stays None.
    """
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(_DDPNet(net).to(device), device_ids=[device.index] if device.type == "cuda" else None,
               find_unused_parameters=True)


def shutdown(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def gather_objects(obj, info: DistInfo) -> list:
    """`obj` of every rank, in rank order (`[obj]` when single-process)."""
    if not info.distributed:
        return [obj]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum of `t` over ranks (in place; `t` itself when single-process)."""
    if info.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_mean_grads(params, info: DistInfo) -> None:
    """Average the gradients of `params` (modules outside DDP, e.g. the generator) over ranks.

    One flattened all-reduce; a parameter without a gradient counts as zero (every rank runs
    the same architecture, so the set is the same on all ranks).
    """
    if not info.distributed:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= info.world_size
    off = 0
    for p in params:
        n = p.numel()
        p.grad = flat[off : off + n].view_as(p).clone()
        off += n
