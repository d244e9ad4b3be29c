"""Export a subnet as a standalone model; save it as safetensors + arch JSON; load it back.

`load_subnet` rebuilds the static model from the arch JSON alone (no supernet, no pickle).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ..spaces import ArchConfig, get_space

__all__ = ["export_subnet", "save_subnet", "load_subnet", "build_static"]

FORMAT = "shiftnas-subnet/1"
WEIGHTS, META = "model.safetensors", "arch.json"


def export_subnet(supernet: nn.Module, arch: ArchConfig) -> nn.Module:
    """The subnet `arch` of `supernet` as plain torch modules with the sliced weights copied."""
    if not hasattr(supernet, "export"):
        raise ValueError(f"expected a shiftnas supernet, got {type(supernet).__name__}")
    model = supernet.export(arch)
    model.train(supernet.training)
    return model


def build_static(arch: ArchConfig, num_classes: int | None = None) -> nn.Module:
    """An uninitialised static model of `arch` (the exported model's class)."""
    if get_space(arch.space).family == "vit":
        from .static_vit import StaticViT

        return StaticViT(arch, num_classes)
    from .static_mbconv import StaticMBConv

    return StaticMBConv(arch, num_classes)


def save_subnet(model: nn.Module, arch: ArchConfig, path: str | os.PathLike) -> Path:
    """Write `path/model.safetensors` and `path/arch.json` (space, arch, classes, FLOPs, params)."""
    from safetensors.torch import save_file

    from ..cost import count_flops, count_params

    if getattr(model, "arch", arch) != arch:
        raise ValueError("the model was exported for a different arch than the one given")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    num_classes = int(model.num_classes)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": FORMAT,
        "space": arch.space,
        "arch": arch.to_dict(),
        "num_classes": num_classes,
        "flops": count_flops(arch.space, arch, num_classes),
        "params": count_params(arch.space, arch, num_classes),
    }
    _atomic_write(path / WEIGHTS, lambda tmp: save_file(state, str(tmp), metadata={"format": FORMAT}))
    _atomic_write(path / META, lambda tmp: tmp.write_text(json.dumps(meta, indent=1) + "\n"))
    return path


def load_subnet(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model written by `save_subnet` (safetensors: no code runs while loading)."""
    from safetensors.torch import load_file

    path = Path(path)
    meta_file, weights = path / META, path / WEIGHTS
    for f in (meta_file, weights):
        if not f.is_file():
            raise ValueError(f"{f} not found: expected a directory written by save_subnet")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"{meta_file} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{meta_file}: unknown format {meta.get('format') if isinstance(meta, dict) else meta!r}; expected {FORMAT!r}")
    num_classes = meta.get("num_classes")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"{meta_file}: num_classes must be an integer >= 1, got {repr(num_classes)[:40]}")
    try:  # the same checks as an arch file: space name, decision names and values
        arch = ArchConfig._from_obj({"space": meta.get("space"), "arch": meta.get("arch")})
    except ValueError as e:
        raise ValueError(f"{meta_file}: {e}") from None
    try:
        state = load_file(str(weights), device=str(device))
    except Exception as e:  # noqa: BLE001 - SafetensorError: a pickle, a truncated or foreign file
        raise ValueError(
            f"{weights} is not a safetensors file ({str(e).splitlines()[0][:200]}); "
            "load_subnet reads only safetensors (it never unpickles)"
        ) from None
    with torch.device("meta"):  # shapes without memory: a bad num_classes allocates nothing
        want = {k: tuple(v.shape) for k, v in build_static(arch, num_classes).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if want != got:
        bad = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
        detail = ", ".join(f"{k}: expected {want.get(k)}, file has {got.get(k)}" for k in bad[:3])
        raise ValueError(f"{weights} does not match arch {arch.short()} ({len(bad)} tensors differ: {detail})")
    model = build_static(arch, num_classes)
    model.load_state_dict(state)
    return model.to(device).eval()


def _atomic_write(dst: Path, write) -> None:
    tmp = dst.with_name(dst.name + ".tmp")
    write(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dst)
