"""Export a subnet as a standalone model; save it as safetensors + arch JSON; load it back.

`load_subnet` rebuilds the static model from the arch JSON alone (no supernet, no pickle).

Integrity: safetensors has no checksum, so `save_subnet` stores two sha256 digests in the
safetensors header's metadata: `sha256`, `shiftnas.integrity.content_digest` of the tensors
(names, dtypes, shapes, bytes), and `arch_sha256`, of the bytes of arch.json. `load_subnet`
checks both: a flipped byte in the weights, or an arch.json that is not the one written with
them, is a `ValueError` naming the file. A subnet without digests (written before subnets
carried them) is refused; `load_subnet(path, verify=False)` loads it unverified.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from ..integrity import content_digest
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


def save_subnet(model: nn.Module, arch: ArchConfig, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write `path/model.safetensors` and `path/arch.json` (space, arch, classes, FLOPs, params,
    and the keys of `extra`, e.g. what inference needs: `shiftnas.search.export.inference_meta`),
    both 0644 less the umask."""
    from safetensors.torch import save

    from ..atomic import write_text_atomic
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
    clash = sorted(set(extra or {}) & set(meta))
    if clash:
        raise ValueError(f"save_subnet: extra keys {clash} are arch.json's own; allowed: any other key")
    meta.update(extra or {})
    meta_bytes = (json.dumps(meta, indent=1) + "\n").encode("utf-8")
    digests = {"format": FORMAT, "sha256": content_digest(state), "arch_sha256": hashlib.sha256(meta_bytes).hexdigest()}
    write_text_atomic(path / WEIGHTS, save(state, metadata=digests))
    write_text_atomic(path / META, meta_bytes)
    return path


def read_weights_dir(path: Path, meta_name: str, weights_name: str, fmt: str, writer: str):
    """(meta file, meta dict, its bytes, weights file, state, safetensors metadata) of a directory
    holding a JSON description and safetensors weights (`save_subnet`, `shiftnas convert`); a
    ValueError names the file when either is missing, the JSON is bad, its format is not `fmt`
    or the weights are not safetensors (nothing is ever unpickled)."""
    from safetensors import safe_open

    meta_file, weights = path / meta_name, path / weights_name
    for f in (meta_file, weights):
        if not f.is_file():
            raise ValueError(f"{f} not found: expected a directory written by {writer}")
    meta_bytes = meta_file.read_bytes()
    try:
        meta = json.loads(meta_bytes.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"{meta_file} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise ValueError(f"{meta_file}: unknown format {meta.get('format') if isinstance(meta, dict) else meta!r}; expected {fmt!r}")
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            file_meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as e:  # noqa: BLE001 - SafetensorError: a pickle, a truncated or foreign file
        raise ValueError(
            f"{weights} is not a safetensors file ({(str(e).splitlines() or [type(e).__name__])[0][:200]}); "
            f"{writer}'s reader reads only safetensors (it never unpickles)"
        ) from None
    return meta_file, meta, meta_bytes, weights, state, file_meta


def load_subnet(path: str | os.PathLike, device: str | torch.device = "cpu", verify: bool = True) -> nn.Module:
    """Rebuild a model written by `save_subnet` (safetensors: no code runs while loading), its
    digests checked (`verify=False` skips that)."""
    meta_file, meta, meta_bytes, weights, state, file_meta = read_weights_dir(
        Path(path), META, WEIGHTS, FORMAT, "save_subnet")
    num_classes = meta.get("num_classes")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"{meta_file}: num_classes must be an integer >= 1, got {repr(num_classes)[:40]}")
    try:  # the same checks as an arch file: space name, decision names and values
        arch = ArchConfig._from_obj({"space": meta.get("space"), "arch": meta.get("arch")})
    except ValueError as e:
        raise ValueError(f"{meta_file}: {e}") from None
    with torch.device("meta"):  # shapes without memory: a bad num_classes allocates nothing
        want = {k: tuple(v.shape) for k, v in build_static(arch, num_classes).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if want != got:
        bad = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
        detail = ", ".join(f"{k}: expected {want.get(k)}, file has {got.get(k)}" for k in bad[:3])
        raise ValueError(f"{weights} does not match arch {arch.short()} ({len(bad)} tensors differ: {detail})")
    if verify:
        _verify(weights, file_meta, state, meta_file, meta_bytes)
    model = build_static(arch, num_classes)
    model.load_state_dict(state)
    return model.to(device).eval()


def _verify(weights: Path, file_meta: dict, state: dict, meta_file: Path, meta_bytes: bytes) -> None:
    """`ValueError` unless the digests save_subnet stored in `weights` match `state` and arch.json."""
    want, want_arch = file_meta.get("sha256"), file_meta.get("arch_sha256")
    if want is None or want_arch is None:
        raise ValueError(
            f"{weights} has no integrity digest (written before subnets carried one, or not by "
            "save_subnet), so it cannot be verified; to trust it anyway: load_subnet(path, verify=False), "
            "then save_subnet it again"
        )
    if content_digest(state) != want:
        raise ValueError(f"{weights} is corrupt: its tensors do not match the sha256 digest saved with "
                         "them; export the subnet again or restore the file from a copy")
    if hashlib.sha256(meta_bytes).hexdigest() != want_arch:
        raise ValueError(f"{meta_file} is not the arch.json written with {WEIGHTS} (its sha256 differs "
                         "from the one saved in the weights): corrupt or edited; export the subnet again")
