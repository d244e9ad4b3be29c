"""`shiftnas export`: any subnet of a trained run (an arch file) as a standalone model."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..spaces import ArchConfig
from ..spaces.base import _loads
from .generate import export_arch
from .run import add_run_arguments

__all__ = ["add_export_parser", "read_arch_file"]


ARCH_KEYS = '{"space": NAME, "arch": {decision: value}}'


def read_arch_file(path: str | Path) -> ArchConfig:
    """The arch of a JSON/YAML file, as every command that takes `--arch` reads it.

    One rule: the document is a mapping with 'space' and 'arch'; other keys are the writer's
    (costs, budget, format ...) and ignored; a search result (`shiftnas search --out/--json`)
    holds it under 'best' beside 'space'. So every arch file shiftnas writes is accepted:
    `ArchConfig.to_json/to_yaml`, a line of `sample --json` or `generate --json`, an exported
    arch.json, `search --out`. Anything else is a ValueError naming the file and those keys.
    """
    path = Path(path).expanduser()
    where = f"--arch {str(path)!r}"
    if not path.is_file():
        raise ValueError(f"{where}: no such file (expected an arch JSON/YAML written by shiftnas)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:  # unreadable, binary or not UTF-8
        raise ValueError(f"{where}: cannot read it as UTF-8 text: {e}") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            obj = _loads(text, yaml.safe_load, "YAML")
        else:
            obj = _loads(text, json.loads, "JSON") if text.strip() else None
    except ValueError as e:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if len(lines) > 1 and _all_json_objects(lines):
            raise ValueError(f"{where} holds {len(lines)} JSON lines (as `sample --json -n {len(lines)}` prints); "
                             "an arch file holds one: keep the line you want (e.g. `sed -n 2p`)") from None
        raise ValueError(f"{where}: {e}") from None
    if isinstance(obj, dict) and "arch" not in obj and isinstance(obj.get("best"), dict) and "arch" in obj["best"]:
        obj = {"space": obj.get("space"), "arch": obj["best"]["arch"]}  # a search result: its best subnet
    if not isinstance(obj, dict) or not {"space", "arch"} <= set(obj):
        found = f"keys {sorted(str(k)[:40] for k in obj)[:8]}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise ValueError(f"{where}: expected a mapping {ARCH_KEYS} (extra keys are ignored; a search result's "
                         f"under 'best'), found {found}")
    try:
        return ArchConfig._from_obj({"space": obj["space"], "arch": obj["arch"]})
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def _all_json_objects(lines: list[str]) -> bool:
    try:
        return all(isinstance(json.loads(ln), dict) for ln in lines)
    except (ValueError, RecursionError):
        return False


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
            "with shiftnas.models.export.load_subnet. ARCH is any arch file shiftnas writes\n"
            "({space, arch} JSON/YAML, one line of sample/generate --json, an exported arch.json,\n"
            "a search --out result); its space must be the run's.\n\n"
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
