"""Run by test_train_ddp.py as a one-process gloo group: the max subnet (every parameter used),
then the min one (blocks skipped), backward through DDP wrapped as the engine wraps it (or, with
`plain`, a bare DDP with find_unused_parameters=True); prints the parameters left without a
gradient by the min subnet.

    python ddp_unused_worker.py PORT [plain]
"""
from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

from shiftnas.models.registry import build_supernet
from shiftnas.train.distributed import wrap_ddp


def main() -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=0, world_size=1)
    net = build_supernet("vit-fmnist", num_classes=10)
    if sys.argv[2:] == ["plain"]:
        model = torch.nn.parallel.DistributedDataParallel(net, find_unused_parameters=True)
    else:
        model = wrap_ddp(net, torch.device("cpu"))
    x = torch.randn(2, 1, 28, 28)
    for arch in (net.space.max(), net.space.min()):
        net.zero_grad(set_to_none=True)
        model(x, arch).sum().backward()
    print("no grad:", sum(p.grad is None for p in net.parameters()), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
