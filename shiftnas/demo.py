"""`make demo`: build every supernet, sample subnets, print their cost, export one subnet.

Until the training issue lands this is the tour of the foundation: spaces, supernets, the
exact cost model and export. Run as `python -m shiftnas.demo [--out runs/demo]`.
"""
from __future__ import annotations

import argparse
import random
import time

import torch

from . import build_supernet, count_flops, count_params, export_subnet, get_space, list_spaces, load_subnet, save_subnet


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m shiftnas.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/demo", help="where the exported subnet goes (default: runs/demo)")
    ap.add_argument("--samples", type=int, default=5, help="subnets sampled per space (default: 5)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.samples < 1:
        ap.error(f"--samples must be >= 1, got {args.samples}")
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)

    print(f"{'space':<13} {'arch':<64} {'MFLOPs':>9} {'params':>11}")
    for name in list_spaces():
        space = get_space(name)
        t0 = time.perf_counter()
        with torch.device("meta"):  # the ImageNet supernets hold ~100M weights: build shapes only
            net = build_supernet(name)
        n_super = sum(p.numel() for p in net.parameters())
        for _ in range(args.samples):
            arch = space.sample(rng)
            desc = arch.short()
            desc = desc if len(desc) <= 64 else desc[:61] + "..."
            print(f"{name:<13} {desc:<64} {count_flops(space, arch) / 1e6:>9.1f} {count_params(space, arch):>11,}")
        print(f"{'':<13} (supernet: {n_super:,} weights, built in {time.perf_counter() - t0:.2f}s)")

    # Export one real subnet of the Fashion-MNIST ViT, check it against the supernet, reload it.
    space = get_space("vit-fmnist")
    net = build_supernet("vit-fmnist").eval()
    arch = space.sample(rng)
    sub = export_subnet(net, arch)
    path = save_subnet(sub, arch, args.out)
    x = torch.randn(4, space.hparams["in_chans"], space.hparams["img_size"], space.hparams["img_size"])
    with torch.no_grad():
        err = (load_subnet(path)(x) - net(x, arch)).abs().max().item()
    print(f"\nexported vit-fmnist subnet {arch.short()} to {path}/ (model.safetensors + arch.json)")
    print(f"reloaded without the supernet: max |logit difference| = {err:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
