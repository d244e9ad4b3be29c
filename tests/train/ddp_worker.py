"""Run under torchrun by test_train_ddp.py: train a tiny config with DDP (gloo) and record, on
every rank, the architectures sampled and a digest of the weights, B and the generator; rank 0
writes what all ranks saw to OUT/ranks.json.

    python -m torch.distributed.run --standalone --nproc_per_node=2 ddp_worker.py OUT key=value ...
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from shiftnas.train.config import load_config
from shiftnas.train.distributed import init_distributed, shutdown
from shiftnas.train.engine import Trainer


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().double().reshape(-1).cpu() for t in tensors])


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    cfg = load_config(None, sys.argv[2:])
    info = init_distributed("cpu")
    tr = Trainer(cfg, info=info)
    seen: list[list[str]] = []
    real = tr.sampler.next

    def next_(step, score_fn=None):
        picked = real(step, score_fn)
        seen.append([(a.hard() if hasattr(a, "hard") else a).short() for a, _ in picked])
        return picked

    tr.sampler.next = next_
    tr.fit()
    mine = {
        "rank": info.rank,
        "archs": seen,
        "weights": flat(tr.net.parameters()).tolist()[:: max(1, sum(p.numel() for p in tr.net.parameters()) // 4000)],
        "weights_sum": float(flat(tr.net.parameters()).sum()),
        "extra": flat(tr.extra_params).tolist() if tr.extra_params else [],
        "B": tr.sampler.shift.B.detach().tolist() if hasattr(tr.sampler, "shift") else [],
        "images_seen": tr.images_seen,
    }
    everyone = [None] * info.world_size
    dist.all_gather_object(everyone, mine)
    if info.is_main:
        (out / "ranks.json").write_text(json.dumps(everyone))
    shutdown(info)


if __name__ == "__main__":
    main()
