"""`shiftnas export`: any subnet of a trained run (an arch file) as a standalone model."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..spaces import ArchConfig
from .generate import export_arch
from .run import add_run_arguments

__all__ = ["add_export_parser", "read_arch_file"]


def read_arch_file(path: str | Path) -> ArchConfig:
    """The arch of a JSON/YAML file `{space, arch}` or of an exported subnet's arch.json (as
    `shiftnas cost --arch` reads it)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"--arch {str(path)!r}: no such file (expected an arch JSON/YAML written by shiftnas)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:  # unreadable, binary or not UTF-8
        raise ValueError(f"--arch {str(path)!r}: cannot read it as UTF-8 text: {e}") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            return ArchConfig.from_yaml(text)
        obj = json.loads(text) if text.strip() else None
        if isinstance(obj, dict) and "format" in obj:  # arch.json of an exported subnet
            obj = {"space": obj.get("space"), "arch": obj.get("arch")}
        return ArchConfig.from_json(json.dumps(obj))
    except (json.JSONDecodeError, RecursionError) as e:  # RecursionError: nested too deeply
        raise ValueError(f"--arch {str(path)!r} is not valid JSON: {str(e).splitlines()[0]}") from None
    except ValueError as e:
        raise ValueError(f"--arch {str(path)!r}: {e}") from None


def _cmd_export(args) -> int:
    from ..cost import count_flops, count_params
    from .run import load_run

    arch = read_arch_file(args.arch)
    run = load_run(args.run, checkpoint=args.checkpoint, device=args.device)
    if arch.space != run.space.name:
        raise ValueError(
            f"--arch {args.arch!r} is an arch of space {arch.space!r}, but run {str(run.run_dir)!r} "
            f"trained a supernet of space {run.space.name!r}; give an arch of {run.space.name!r}"
        )
    path = export_arch(run, arch, args.out)
    flops = count_flops(run.space, arch, run.num_classes)
    params = count_params(run.space, arch, run.num_classes)
    print(f"{path}  {flops / 1e6:.2f} MFLOPs  {params:,} params  {arch.short()}")
    return 0


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``export`` to a ``shiftnas`` sub-parser set."""
    p = subparsers.add_parser(
        "export",
        help="write a subnet of a trained run as a standalone model",
        description=(
            "Export the subnet ARCH of a run's supernet (EMA weights when kept; CNN BatchNorm\n"
            "statistics recalibrated for it) as OUT/model.safetensors + OUT/arch.json, loadable\n"
            "with shiftnas.models.export.load_subnet. ARCH is a {space, arch} JSON/YAML or an\n"
            "exported arch.json; its space must be the run's.\n\n"
            "example:\n"
            "  shiftnas export --run runs/fmnist-vit-shift --arch best.json --out subnets/best"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(p)
    p.add_argument("--arch", required=True, metavar="ARCH.json", help="the subnet to export")
    p.add_argument("--out", required=True, metavar="OUT",
                   help="folder to write (new, empty, or an earlier export, which is replaced)")
    p.set_defaults(fn=_cmd_export)
    return p
