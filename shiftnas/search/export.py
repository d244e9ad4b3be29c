"""`shiftnas export`: any subnet of a trained run (an arch file) as a standalone model:
model.safetensors + arch.json, and with `--format onnx|torch-export` model.onnx or model.pt2
beside them, checked against the PyTorch model (onnxruntime / `torch.export.load`)."""
from __future__ import annotations

import argparse
import importlib.util
import io
import json
from pathlib import Path
from typing import Any

from ..spaces import ArchConfig
from ..spaces.base import _loads
from .generate import EXPORT_FORMATS, export_arch
from .run import add_run_arguments

__all__ = ["add_export_parser", "check_format", "inference_meta", "read_arch_file", "require_format",
           "save_format", "val_inputs"]

# Python packages a format needs beyond torch (onnx: the torch.export-based exporter and its check).
FORMAT_PACKAGES = {"safetensors": (), "onnx": ("onnx", "onnxscript", "onnxruntime"), "torch-export": ()}
# The exported model's output differs from PyTorch's by float rounding only: at most this times
# max(1, the largest |logit|).
CHECK_RTOL = 1e-4


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


def inference_meta(run, arch: ArchConfig) -> dict[str, Any]:
    """What inference with subnet `arch` of `run` needs besides the weights: the model's input
    [C, H, W], num_classes, and the run's evaluation preprocessing (its val loader's recipe):
    resize the shorter side to `resize`, centre-crop `crop`, (CNNs: resize to the arch's
    resolution), scale to [0, 1], subtract `mean` and divide by `std` per channel."""
    r = run.trainer.val_loader.recipe
    side = arch.get("resolution", run.space.hparams.get("img_size", r.image_size))
    return {
        "input_size": [r.channels, int(side), int(side)],
        "num_classes": run.num_classes,
        "preprocess": {"resize": r.resize_size, "crop": r.image_size, "interpolation": "bilinear",
                       "mean": list(r.mean), "std": list(r.std), "channels": r.channels},
    }


def val_inputs(run, arch: ArchConfig, n: int):
    """The first `n` images of the run's val split (fixed order), as subnet `arch` takes them, on CPU."""
    from ..train.evaluate import prepare_input

    loader = run.loader("val")
    loader.set_epoch(0)
    x = next(iter(loader))[0][:n]
    return prepare_input(run.net, x, arch).float().cpu()


def require_format(fmt: str) -> None:
    """A ValueError naming `fmt`'s missing Python packages (or an unknown format), else nothing."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"--format {fmt!r}: allowed values are {', '.join(map(repr, EXPORT_FORMATS))}")
    missing = [p for p in FORMAT_PACKAGES[fmt] if importlib.util.find_spec(p) is None]
    if missing:
        raise ValueError(f"--format {fmt} needs the Python package(s) {', '.join(missing)}, not installed here: "
                         f"pip install {' '.join(missing)}")


def save_format(model, example, fmt: str, out: Path, meta: dict[str, Any]) -> Path:
    """Write `model` (a static subnet) as `out/model.onnx` (fmt 'onnx', opset of the torch.export-based
    exporter, input 'images', output 'logits', `meta` as JSON in its metadata_props 'shiftnas') or
    `out/model.pt2` ('torch-export', `torch.export.save`), traced on `example` [B, C, H, W] with the
    batch size dynamic. Returns the file."""
    import torch

    from ..atomic import write_text_atomic

    require_format(fmt)
    model, example = model.float().cpu().eval(), example.float().cpu()
    dynamic = ({0: torch.export.Dim("batch")},)
    if fmt == "onnx":
        program = torch.onnx.export(model, (example,), dynamo=True, input_names=["images"], output_names=["logits"],
                                    dynamic_shapes=dynamic, verbose=False)
        proto = program.model_proto
        entry = proto.metadata_props.add()
        entry.key, entry.value = "shiftnas", json.dumps(meta)
        data = proto.SerializeToString()
    else:
        buf = io.BytesIO()
        torch.export.save(torch.export.export(model, (example,), dynamic_shapes=dynamic), buf)
        data = buf.getvalue()
    path = out / EXPORT_FORMATS[fmt]
    write_text_atomic(path, data)
    return path


def check_format(out: str | Path, fmt: str, x) -> float:
    """max |logit difference| on `x` between the saved `fmt` file run by its own runtime
    (onnxruntime, `torch.export.load`) and the PyTorch model `load_subnet(out)`; a RuntimeError
    when it exceeds float rounding (CHECK_RTOL)."""
    import torch

    from ..models.export import load_subnet

    out = Path(out)
    path = out / EXPORT_FORMATS[fmt]
    with torch.no_grad():
        want = load_subnet(out)(x)
        if fmt == "onnx":
            import onnxruntime

            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
        else:
            got = torch.export.load(str(path)).module()(x)
    err = (got - want).abs().max().item()
    if not err <= CHECK_RTOL * max(1.0, want.abs().max().item()):  # not <=: a nan fails too
        raise RuntimeError(f"{path} gives logits {err:.3g} away from the PyTorch model's on {len(x)} val images: "
                           "not float rounding; report it with the arch.json")
    return err


def _cmd_export(args) -> int:
    from ..cost import count_flops, count_params
    from .run import load_run

    require_format(args.format)
    arch = read_arch_file(args.arch)
    run = load_run(args.run, checkpoint=args.checkpoint, device=args.device)
    if arch.space != run.space.name:
        raise ValueError(
            f"--arch {args.arch!r} is an arch of space {arch.space!r}, but run {str(run.run_dir)!r} "
            f"trained a supernet of space {run.space.name!r}; give an arch of {run.space.name!r}"
        )
    path = export_arch(run, arch, args.out, args.format)
    flops = count_flops(run.space, arch, run.num_classes)
    params = count_params(run.space, arch, run.num_classes)
    print(f"{path}  {flops / 1e6:.2f} MFLOPs  {params:,} params  {arch.short()}")
    if args.format != "safetensors":
        x = val_inputs(run, arch, 8)
        err = check_format(path, args.format, x)
        runtime = "onnxruntime" if args.format == "onnx" else "torch.export.load"
        print(f"{path / EXPORT_FORMATS[args.format]}: {runtime} vs PyTorch on {len(x)} val images, "
              f"max |logit difference| {err:.2e}")
    return 0


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``export`` to a ``shiftnas`` sub-parser set."""
    p = subparsers.add_parser(
        "export",
        help="write a subnet of a trained run as a standalone model",
        description=(
            "Export the subnet ARCH of a run's supernet (EMA weights when kept; CNN BatchNorm\n"
            "statistics recalibrated for it) as OUT/model.safetensors + OUT/arch.json, loadable\n"
            "with shiftnas.load_subnet; --format onnx adds OUT/model.onnx (input 'images' [B,C,H,W],\n"
            "output 'logits'), --format torch-export OUT/model.pt2 (torch.export.load), each checked\n"
            "against the PyTorch model on 8 val images. ARCH is any arch file shiftnas writes\n"
            "({space, arch} JSON/YAML, one line of sample/generate --json, an exported arch.json,\n"
            "a search --out result); its space must be the run's.\n\n"
            "examples:\n"
            "  shiftnas export --run runs/fmnist-vit-shift --arch best.json --out subnets/best\n"
            "  shiftnas export --run runs/fmnist-vit-shift --arch best.json --out subnets/best --format onnx"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(p)
    p.add_argument("--arch", required=True, metavar="ARCH.json", help="the subnet to export")
    p.add_argument("--out", required=True, metavar="OUT",
                   help="folder to write (new, empty, or an earlier export, which is replaced)")
    p.add_argument("--format", default="safetensors", choices=list(EXPORT_FORMATS),
                   help="safetensors (default); onnx adds model.onnx (needs onnx, onnxscript, onnxruntime); "
                        "torch-export adds model.pt2")
    p.set_defaults(fn=_cmd_export)
    return p
