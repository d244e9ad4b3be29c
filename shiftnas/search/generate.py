"""The generator's subnet for a FLOPs budget (docs/method.md section 2, Deployment), and its export.

    run = load_run("runs/demo-shift")
    generate_arch(run, "25M")        # {"budget", "bin", "arch", "flops", "rel_error", "in_bin", ...}
    generate_sweep(run)              # the same for every bin centre
    export_arch(run, arch, "out/")   # out/model.safetensors + out/arch.json

No search and no evaluation: the trained ArchGenerator maps the budget's bin to an
architecture in one deterministic forward (arg-max of every decision).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..cost import count_flops, count_params
from ..spaces import ArchConfig
from .budget import format_budget, parse_budget, parse_latency
from .run import add_run_arguments

__all__ = ["EXPORT_FORMATS", "add_generate_parser", "export_arch", "generate_arch", "generate_latency",
           "generate_sweep"]

# An export is always model.safetensors + arch.json (what save_subnet writes, what load_subnet
# reads); a format other than safetensors adds one file beside them (written by search/export.py).
EXPORT_FORMATS = {"safetensors": None, "onnx": "model.onnx", "torch-export": "model.pt2"}
_SUBNET_FILES = frozenset({"model.safetensors", "arch.json", *filter(None, EXPORT_FORMATS.values())})


def _describe(run, arch: ArchConfig, budget: float, k: int, window: tuple[int, int]) -> dict[str, Any]:
    flops = count_flops(run.space, arch, run.num_classes)
    try:
        in_bin = run.bins.bin_of(flops) == k
    except ValueError:  # outside the bins' range (another num_classes than the space's)
        in_bin = False
    return {
        "space": run.space.name,
        "budget": float(budget),
        "budget_mflops": float(budget) / 1e6,
        "bin": int(k),
        "arch": arch.to_dict(),
        "short": arch.short(),
        "flops": int(flops),
        "mflops": flops / 1e6,
        "params": int(count_params(run.space, arch, run.num_classes)),
        "rel_error": (flops - budget) / budget,
        "in_bin": bool(in_bin),
        "window": [int(window[0]), int(window[1])],
        "within": bool(window[0] <= flops <= window[1]),
    }


def generate_arch(run, flops: str | float) -> dict[str, Any]:
    """The generator's arch for the budget `flops` (`25M`, `1.3G` or multiply-adds) and its cost.

    Keys: space, budget (multiply-adds), budget_mflops, bin, arch (decision -> value), short,
    flops, mflops, params, rel_error ((flops - budget) / budget), in_bin (the arch's FLOPs fall
    in the budget's bin), window ([budget - one bin width, budget]: the budget is a ceiling)
    and within (the arch's FLOPs lie in it: always, the generator decodes into the window).
    A budget outside the space's FLOPs range is a ValueError giving it.
    """
    gen = run.require_generator("generate")
    lo, hi = run.flops_range()
    budget = parse_budget(flops, lo, hi)
    window = gen.window(budget)
    return _describe(run, gen.generate(budget), budget, run.bins.bin_of(budget), window)


def generate_latency(run, latency: str | float) -> dict[str, Any]:
    """The generator's arch for a latency budget (`4ms`, `4000us`, `0.004s`; a number is ms) of
    a run trained with `sampler.cost=latency`: the budget is a ceiling on its table's predicted
    latency, as FLOPs budgets are. Keys as `generate_arch`'s, plus budget_ms, latency_ms (the
    table's prediction for the arch) and the window in ns."""

    gen = run.require_generator("generate --latency")
    lo, hi = run.cost_range("latency")
    budget = parse_latency(latency, lo, hi)
    window = gen.window(budget)
    return _latency_row(run, gen.generate(budget), budget, run.bins.bin_of(budget), window)


def _latency_row(run, arch: ArchConfig, budget: float, k: int, window: tuple[int, int]) -> dict[str, Any]:
    """`_describe`'s row for a latency run: the budget, error, bin and window in its latency (ns)."""
    from ..cost import count_cost

    r = _describe(run, arch, budget, k, window)
    ns = count_cost(run.space, arch, run.trainer.cost)
    r.update(budget_ms=budget / 1e6, budget_mflops=None, latency_ms=ns / 1e6, rel_error=(ns - budget) / budget,
             in_bin=run.bins.bin_of(ns) == k, within=bool(window[0] <= ns <= window[1]))
    return r


def generate_sweep(run) -> list[dict[str, Any]]:
    """The generator's arch for every bin (`generate(bin=k)`, budget = the bin's centre), bin 0 first."""
    gen = run.require_generator("generate --sweep")
    row = _latency_row if run.cost_name == "latency" else _describe
    return [row(run, gen.generate(bin=k), c, k, run.bins.window(k)) for k, c in enumerate(run.bins.centers.tolist())]


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"export folder {str(out)!r} is a file; give a new or empty folder")
    if out.is_dir():
        names = {p.name for p in out.iterdir()}
        if names and not names <= _SUBNET_FILES:
            other = sorted(names - _SUBNET_FILES)
            shown = ", ".join(other[:5]) + (f" and {len(other) - 5} more" if len(other) > 5 else "")
            raise ValueError(
                f"export folder {str(out)!r} already holds files that export did not write ({shown}); "
                "give a new or empty folder (an earlier export's folder is replaced)"
            )


def export_arch(run, arch: ArchConfig, out: str | Path, fmt: str = "safetensors") -> Path:
    """Write subnet `arch` of the run's supernet to `out`: model.safetensors + arch.json, and
    for `fmt` 'onnx' model.onnx, for 'torch-export' model.pt2 (`EXPORT_FORMATS`).

    CNN supernets get their BatchNorm statistics recalibrated for `arch` first (the same
    batches as `run.evaluate`), so the exported model is the one evaluation measured. `out`
    must be new, empty, or a folder written by an earlier export (then it is replaced, the
    files of another format included).
    """
    from ..models.export import export_subnet, save_subnet
    from ..train.evaluate import calibrate_bn
    from .export import inference_meta, require_format, save_format, val_inputs

    require_format(fmt)
    run.space.check(arch)
    out = Path(out).expanduser()
    _check_out(out)
    calib = run.calib_batches()
    if calib is not None:
        calibrate_bn(run.net, arch, calib, run.cfg.eval.bn_calib_batches)
    model = export_subnet(run.net, arch).eval()
    for name in filter(None, EXPORT_FORMATS.values()):  # an earlier export's: of another arch
        (out / name).unlink(missing_ok=True)
    info = inference_meta(run, arch)
    path = save_subnet(model, arch, out, extra={k: v for k, v in info.items() if k != "num_classes"})
    if EXPORT_FORMATS[fmt] is not None:
        save_format(model, val_inputs(run, arch, 2), fmt, path, {"space": arch.space, "arch": arch.to_dict(), **info})
    return path


def _human(r: dict[str, Any], edges: list[float]) -> str:
    k = r["bin"]
    if "latency_ms" in r:  # a latency run: budget, bin edges (ns) and the prediction in ms
        where = f"bin {k} ({edges[k] / 1e6:.3f}-{edges[k + 1] / 1e6:.3f} ms)"
        head = f"{r['budget_ms']:7.3f}ms  {where:<28} {r['latency_ms']:7.3f} ms  {r['mflops']:8.2f} MFLOPs  "
    else:
        where = f"bin {k} ({edges[k] / 1e6:.2f}-{edges[k + 1] / 1e6:.2f}M)"
        head = f"{format_budget(r['budget']):>7}  {where:<24} {r['mflops']:8.2f} MFLOPs  "
    return (
        head + f"{r['params'] / 1e6:7.3f}M params  {100 * r['rel_error']:+6.1f}%  "
        f"{'in-bin ' if r['in_bin'] else 'off-bin'}  {'' if r['within'] else 'OUTSIDE THE WINDOW  '}{r['short']}"
    )


def _cmd_generate(args) -> int:
    from .run import load_run

    if args.export and args.sweep:
        raise ValueError("--export needs one budget: give --flops, not --sweep")
    if args.flops is not None:
        parse_budget(args.flops)  # a malformed budget fails before the run is loaded
    if args.latency is not None:
        parse_latency(args.latency)
    run = load_run(args.run, checkpoint=args.checkpoint, device=args.device)
    if args.sweep:
        results = generate_sweep(run)
    elif args.latency is not None:
        results = [generate_latency(run, args.latency)]
    else:
        results = [generate_arch(run, args.flops)]
    if args.export:
        r = results[0]
        path = export_arch(run, ArchConfig.from_dict(run.space.name, r["arch"]), args.export)
        r["export"] = str(path)
    for r in results:
        print(json.dumps(r) if args.json else _human(r, run.bins.edges.tolist()))
    if args.export and not args.json:
        print(f"exported to {results[0]['export']}")
    return 0


def add_generate_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``generate`` to a ``shiftnas`` sub-parser set."""
    p = subparsers.add_parser(
        "generate",
        help="the generator's subnet for a FLOPs budget (no search)",
        description=(
            "Map a FLOPs budget to a subnet with the run's trained architecture generator: the\n"
            "budget's bin goes through the generator once (arg-max per decision); no search, no\n"
            "evaluation. Prints budget, bin, MFLOPs, params, relative FLOPs error and the arch.\n\n"
            "examples:\n"
            "  shiftnas generate --run runs/fmnist-vit-shift --flops 25M\n"
            "  shiftnas generate --run runs/fmnist-vit-shift --sweep --json\n"
            "  shiftnas generate --run runs/fmnist-vit-shift --flops 25M --export subnets/25M"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--flops", metavar="BUDGET",
                       help="FLOPs (multiply-adds) budget: 25M, 1.3G, 900k or a plain number")
    which.add_argument("--latency", metavar="TIME",
                       help="latency budget for a run trained with sampler.cost=latency: 4ms, 4000us, 0.004s "
                            "or a number of ms (its latency table's prediction)")
    which.add_argument("--sweep", action="store_true", help="one subnet per bin centre")
    p.add_argument("--export", default=None, metavar="OUT",
                   help="also write the subnet to OUT (model.safetensors + arch.json); one budget only")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(fn=_cmd_generate)
    return p
