"""The `shiftnas` command line: spaces, sample, cost, backends, prepare, train; generate, search,
evaluate, export and rank on a trained run (`shiftnas.search`).

Startup stays light: a command defined in another module is imported only when it runs (the
others get a placeholder sub-parser with the same one-line help), and nothing here imports torch.
The root parser and the error path are `shiftnas._command`'s, which a command module that runs
on its own uses too (it never imports this module).
"""
from __future__ import annotations

import argparse
import importlib
import json
import random
import sys

from ._command import root_parser, run_command

EXAMPLES = """examples:
  shiftnas spaces
  shiftnas sample --space vit-fmnist -n 3 --seed 0
  shiftnas cost --arch runs/demo/arch.json
  shiftnas backends
  shiftnas prepare fashion-mnist --out ~/.cache/shiftnas/fashion-mnist
  shiftnas prepare imagenet --root /data/imagenet --minival-per-class 50
  shiftnas train --config fmnist-vit-shift optim.steps=300 run.name=quick
  shiftnas train --print-config
  shiftnas generate --run runs/fmnist-vit-shift --flops 25M --export subnets/25M
  shiftnas search --run runs/fmnist-vit-shift --flops 25M --method evolution
  shiftnas evaluate --run runs/fmnist-vit-shift --max-images 2000
  shiftnas export --run runs/fmnist-vit-shift --arch arch.json --out subnets/mine
  shiftnas rank --run runs/fmnist-vit-shift --n 25 --finetune-steps 100 --images 2000
  shiftnas convert --from autoformer supernet-tiny.pth --space autoformer-t --out converted/af-t
"""


def _cmd_spaces(args) -> int:
    from . import flops_range, get_space, list_spaces

    print(f"{'space':<13} {'family':<6} {'decisions':>9} {'archs':>10} {'MFLOPs min':>11} {'MFLOPs max':>11}  source")
    for name in list_spaces():
        sp = get_space(name)
        lo, hi = flops_range(sp)
        print(f"{name:<13} {sp.family:<6} {len(sp.decisions):>9} {sp.size():>10.3g} {lo / 1e6:>11.1f} {hi / 1e6:>11.1f}  {sp.source}")
    return 0


def _cmd_sample(args) -> int:
    from . import count_flops, count_params, get_space

    if args.n < 1:
        raise ValueError(f"-n must be >= 1, got {args.n}")

    sp = get_space(args.space)
    rng = random.Random(args.seed)
    for _ in range(args.n):
        arch = sp.sample(rng)
        if args.json:
            print(json.dumps({"space": sp.name, "arch": arch.to_dict(), "flops": count_flops(sp, arch), "params": count_params(sp, arch)}))
        else:
            print(f"{arch.short()}  {count_flops(sp, arch) / 1e6:.1f} MFLOPs  {count_params(sp, arch):,} params")
    return 0


def _cmd_cost(args) -> int:
    from . import count_flops, count_params
    from .search.export import read_arch_file

    if args.num_classes is not None and args.num_classes < 1:
        raise ValueError(f"--num-classes {args.num_classes}: must be >= 1 (omit it for the space's)")
    arch = read_arch_file(args.arch)
    flops, params = count_flops(arch.space, arch, args.num_classes), count_params(arch.space, arch, args.num_classes)
    print(json.dumps({"space": arch.space, "arch": arch.short(), "flops": flops, "mflops": round(flops / 1e6, 3), "params": params}))
    return 0


def _cmd_convert(args) -> int:
    from .convert import convert, load_supernet

    out = convert(args.source, args.checkpoint, args.space, args.out)
    net = load_supernet(out)  # read back what was written: the digests and strict shapes hold
    n = sum(p.numel() for p in net.parameters())
    print(json.dumps({"out": str(out), "space": args.space, "source": args.source,
                      "tensors": len(net.state_dict()), "params": n}))
    return 0


def _cmd_backends(args) -> int:
    import torch

    from .ops.dispatch import report

    dtype = getattr(torch, args.dtype)
    rows = report(args.device, dtype)
    w = max([len("op")] + [len(op) for op, _, _ in rows])
    print(f"{'op':<{w}} {'backend':<8} why the higher-priority backends were passed over ({args.device}, {args.dtype})")
    for op, chosen, why in rows:
        print(f"{op:<{w}} {chosen:<8} {why or '-'}")
    return 0


# Commands defined elsewhere: name -> (module, the function adding its sub-parser, its one-line
# help as that function gives it; tests/test_cli.py checks they agree).
MODULE_COMMANDS = {
    "prepare": ("shiftnas.data.prepare", "add_prepare_parser",
                "prepare a data set: Fashion-MNIST to ImageFolder, ImageNet checked + minival"),
    "train": ("shiftnas.train.cli", "add_train_parser", "train a supernet from a run config (what train.py does)"),
    "generate": ("shiftnas.search.generate", "add_generate_parser",
                 "the generator's subnet for a FLOPs budget (no search)"),
    "search": ("shiftnas.search.evolution", "add_search_parser",
               "evolutionary search for the best subnet under a FLOPs/params limit (baseline)"),
    "evaluate": ("shiftnas.search.evaluate", "add_evaluate_parser", "per-bin inherited top-1 of a trained run"),
    "export": ("shiftnas.search.export", "add_export_parser", "write a subnet of a trained run as a standalone model"),
    "rank": ("shiftnas.search.ranking", "add_rank_parser",
             "Kendall tau / Spearman between inherited and fine-tuned top-1"),
    "latency": ("shiftnas.latency.cli", "add_latency_parser",
                "measured latency tables: build one for this device, check its predictions"),
}


def _add_convert_parser(sub) -> None:
    from .convert import SOURCES

    p = sub.add_parser(
        "convert", help="convert another project's supernet checkpoint into a ShiftNAS supernet",
        description="e.g. shiftnas convert --from autoformer supernet-tiny.pth --space autoformer-t --out DIR; "
                    "then in Python: net = shiftnas.convert.load_supernet(DIR)")
    p.add_argument("--from", dest="source", required=True, choices=sorted(SOURCES), help="whose checkpoint it is")
    p.add_argument("checkpoint", metavar="SUPERNET", help="the source supernet checkpoint (.pth), read weights-only")
    p.add_argument("--space", required=True, help="the ShiftNAS space to convert into (see `shiftnas spaces`)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="a new directory: supernet.safetensors + supernet.json (never overwritten)")
    p.set_defaults(fn=_cmd_convert)


def version() -> str:
    """The installed distribution's version, else `shiftnas.__version__` (a source tree)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("shiftnas")
    except PackageNotFoundError:
        from . import __version__

        return __version__


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with `command`, only that command's module is imported (the other
    module commands are placeholders that list them in --help)."""
    ap, sub = root_parser(
        description="ShiftNAS: one-shot NAS with a probability shift (ICCV 2023).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--version", action="version", version=f"shiftnas {version()}")
    p = sub.add_parser("spaces", help="list the search spaces with their FLOPs range")
    p.set_defaults(fn=_cmd_spaces)
    p = sub.add_parser("sample", help="sample subnets of a space and print their cost",
                       description="Sample subnets uniformly; e.g. shiftnas sample --space autoformer-t -n 5")
    p.add_argument("--space", required=True, help="a space name (see `shiftnas spaces`)")
    p.add_argument("-n", type=int, default=5, help="how many (default: 5)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(fn=_cmd_sample)
    p = sub.add_parser("cost", help="exact FLOPs (MACs) and params of an arch file",
                       description="e.g. shiftnas cost --arch runs/demo/arch.json")
    p.add_argument("--arch", required=True,
                   help="an arch file shiftnas wrote: {space, arch} JSON/YAML, one line of sample/generate --json, "
                        "an exported arch.json or a search --out result")
    p.add_argument("--num-classes", type=int, default=None, help="classifier size (default: the space's)")
    p.set_defaults(fn=_cmd_cost)
    p = sub.add_parser("backends", help="which kernel backend runs each op here, and why",
                       description="e.g. shiftnas backends --device cpu --dtype float32")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default: cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16", "float64"])
    p.set_defaults(fn=_cmd_backends)
    _add_convert_parser(sub)
    for name, (module, adder, one_line) in MODULE_COMMANDS.items():
        if command is None or command == name:
            getattr(importlib.import_module(module), adder)(sub)
        else:
            sub.add_parser(name, help=one_line, add_help=False)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), "")  # "": no module command is built
    return run_command(build_parser(command).parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
