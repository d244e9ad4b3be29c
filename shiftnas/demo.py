"""`make demo`: train ShiftNAS on Fashion-MNIST for a few CPU minutes, then use the generator.

    python -m shiftnas.demo [--out runs] [--steps 300] [overrides ...]

1. Trains the bundled config `fmnist-vit-shift` (configs/fmnist-vit-shift.yaml, shipped in the
   package as shiftnas/configs/; vit-fmnist supernet + architecture generator + probability
   shift) into `runs/demo-shift/` with a progress bar.
2. Prints the per-bin table: for every FLOPs bin, the generator's subnet and one fixed-seed
   random subnet of that bin, with inherited top-1 on (a fixed subset of) the val split.
3. Asks the generator for three budgets, prints the subnet it emits for each (no search, no
   retraining), exports the middle one as a standalone model and checks it.

A second `make demo` continues / re-reads the same run (`--resume auto`): a finished run is only
re-evaluated. Delete `runs/demo-shift/` to train from scratch.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

CONFIG = "fmnist-vit-shift"  # a bundled config's name (shiftnas.train.cli.resolve_config)


def demo_config(args: argparse.Namespace):
    """The demo's TrainConfig: the bundled CONFIG with the command line's settings over it (a
    ValueError when the config is not bundled: never the defaults in its place)."""
    from .train import load_config
    from .train.cli import resolve_config

    ov = [f"run.out_dir={args.out}", f"run.name={args.name}", f"eval.max_images={args.eval_images}"]
    if args.steps is not None:
        ov.append(f"optim.steps={args.steps}")
    return load_config(resolve_config(CONFIG), ov + list(args.overrides))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m shiftnas.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs", help="parent of the run directory (default: runs)")
    ap.add_argument("--name", default="demo-shift", help="run directory name (default: demo-shift)")
    ap.add_argument("--steps", type=int, default=300,
                    help="training steps (default 300 of the config's 1000: a fp32 step of batch 128 takes "
                         "~1.2 s on 2 cores without native bf16, so the demo stays near 10 minutes there)")
    ap.add_argument("--eval-images", type=int, default=2000,
                    help="val images per subnet in the table (default: 2000 of 10,000)")
    ap.add_argument("overrides", nargs="*", metavar="section.key=value")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    from . import count_flops, count_params, export_subnet, load_subnet, save_subnet
    from .train import Trainer
    from .train.evaluate import format_bin_table

    try:
        cfg = demo_config(args)
        t0 = time.perf_counter()
        trainer = Trainer(cfg, resume="auto")
        print(f"training {cfg.model.space} with the {cfg.sampler.name} sampler for {cfg.optim.steps} steps "
              f"(batch {cfg.data.batch_size}, amp {cfg.optim.amp}) -> {trainer.run_dir}/", flush=True)
        summary = trainer.fit()
    except ValueError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 2
    dt = time.perf_counter() - t0
    print(f"\n{summary['steps']} steps, {summary['images_seen']:,} images, {dt:.0f} s "
          f"(evaluation {summary['eval_s']:.0f} s on {summary['eval_images_per_arch']} val images per subnet)\n")
    print(format_bin_table(summary["rows"]))
    if "final_probs" in summary:
        probs = " ".join(f"{p:.3f}" for p in summary["final_probs"])
        print(f"\nsoftmax(B) at the end (bins 0..{len(summary['final_probs']) - 1}): {probs}")
        print(f"generator subnets inside their bin: {summary['generator_in_bin']}/{len(summary['final_probs'])}")

    space, gen = trainer.space, trainer.sampler.generator
    centers, K = trainer.bins.centers.tolist(), len(trainer.bins)
    budgets = [centers[k] for k in (K // 5, K // 2, (4 * K) // 5)]  # bin centres at ~20/50/80%
    print("\nthe generator's subnet for three budgets (arg-max, inherited weights, no search):")
    picked = []
    for b in budgets:
        arch = gen.generate(b)
        f, p = count_flops(space, arch), count_params(space, arch)
        picked.append(arch)
        print(f"  budget {b / 1e6:6.1f} MFLOPs -> {f / 1e6:6.1f} MFLOPs, {p / 1e6:.3f} M params  {arch.short()}")

    net = (trainer.ema.module if trainer.ema is not None else trainer.net).eval()
    arch = picked[1]
    sub = export_subnet(net, arch)
    path = save_subnet(sub, arch, trainer.run_dir / "subnet-mid")
    x = next(iter(trainer.val_loader))[0][:8].to(next(net.parameters()).device)
    with torch.no_grad():
        err = (load_subnet(path)(x.cpu()) - net(x, arch).cpu()).abs().max().item()
    print(f"\nexported the middle subnet to {path}/ (model.safetensors + arch.json); "
          f"reloaded without the supernet: max |logit difference| = {err:.2e}")
    print(f"plots: {trainer.run_dir / 'plots' / 'sampling.png'}, {trainer.run_dir / 'plots' / 'pareto.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
