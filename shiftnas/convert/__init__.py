"""Convert other projects' supernet checkpoints into ShiftNAS supernets.

    shiftnas convert --from autoformer supernet-tiny.pth --space autoformer-t --out converted/af-t
    net = shiftnas.convert.load_supernet("converted/af-t")     # a ViTSupernet / MBConvSupernet, eval mode
    sub = shiftnas.export_subnet(net, arch)                     # then save_subnet, count_flops, ...

A source is a module of this package (`SOURCES`, imported when used) with:

    SPACES: tuple[str, ...]                                   the spaces it converts into
    expected_keys(space) -> dict[str, tuple[int, ...]]        every key of the source's supernet
                                                              state_dict (their names) and its shape
    to_shiftnas(state, space) -> dict[str, torch.Tensor]      our supernet's state_dict

The shared part is here: the file is read with `torch.load(weights_only=True)` (argparse.Namespace
allowed: AutoFormer's checkpoints keep their `args` in one; nothing else that runs code is), the
usual wrappers are taken off ("model" or "state_dict" entries, a "module." prefix), the keys and
shapes are checked against `expected_keys` (an error lists the missing, extra and mis-shaped ones),
our supernet is built and loaded with `strict=True`, and the output directory is written:

    supernet.safetensors   our supernet's state_dict; its header metadata holds the sha256 of the
                           tensors (`shiftnas.integrity.content_digest`) and of supernet.json
    supernet.json          format, space, num_classes, source, source file name and its sha256

Both files are written into a temporary directory beside `--out`, which is renamed into place at
the end: a failure leaves no `--out` at all. An existing `--out` is never overwritten.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

__all__ = ["FORMAT", "SOURCES", "check_keys", "convert", "load_supernet", "read_state", "source_module"]

SOURCES = {"autoformer": "shiftnas.convert.autoformer", "attentivenas": "shiftnas.convert.attentivenas"}
FORMAT = "shiftnas-supernet/1"
WEIGHTS, META = "supernet.safetensors", "supernet.json"
_SHOW = 5  # names shown per list in a key error; the rest counted


def source_module(source: str):
    """The converter module of `source` (a key of SOURCES)."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; allowed: {sorted(SOURCES)}")
    try:
        return importlib.import_module(SOURCES[source])
    except ModuleNotFoundError as e:
        if e.name != SOURCES[source]:
            raise
        raise ValueError(f"source {source!r}: its converter {SOURCES[source]} is not installed") from None


def read_state(path: str | os.PathLike) -> dict:
    """The tensors of a supernet checkpoint: `torch.load(weights_only=True)`, then the wrappers
    ("model" / "state_dict" entries, a "module." prefix) taken off."""
    import argparse

    import torch

    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"{str(p)!r}: " + ("a directory, not a checkpoint file" if p.is_dir() else "no such checkpoint file"))
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - UnpicklingError, RuntimeError (not a zip), EOFError, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(f"{str(p)!r} cannot be read with torch.load(weights_only=True) ({type(e).__name__}: "
                         f"{first}); only tensors, containers and numbers are loaded, never code") from None
    return _unwrap(obj, p)


def _unwrap(obj: Any, p: Path) -> dict:
    import torch

    where = "the file"
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        key = next((k for k in ("model", "state_dict") if isinstance(obj.get(k), dict)), None)
        if key is None:
            keys = sorted(map(str, obj))[:10]
            raise ValueError(f"{str(p)!r}: no state_dict in {where} (keys {keys}; expected tensors, or a "
                             "'model' or 'state_dict' entry holding them)")
        obj, where = obj[key], f"{where}[{key!r}]"
    if not isinstance(obj, dict):
        raise ValueError(f"{str(p)!r}: {where} holds a {type(obj).__name__}, not a state_dict")  # noqa: TRY004
    bad = [str(k) for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        raise ValueError(f"{str(p)!r}: {where} is not a state_dict: {len(bad)} entries are not "
                         f"name -> tensor ({_names(bad)})")
    if obj and all(k.startswith("module.") for k in obj):  # saved from a DistributedDataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _names(items: list[str]) -> str:
    more = f", ... and {len(items) - _SHOW} more" if len(items) > _SHOW else ""
    return ", ".join(items[:_SHOW]) + more


def check_keys(state: dict, expected: dict[str, tuple[int, ...]], what: str) -> None:
    """A ValueError naming the missing, extra and mis-shaped keys of `state` (`what` says what
    it should be: "an AutoFormer supernet for space 'autoformer-t'")."""
    missing = [k for k in expected if k not in state]
    extra = sorted(k for k in state if k not in expected)
    shaped = [f"{k}: expected {tuple(s)}, got {tuple(state[k].shape)}"
              for k, s in expected.items() if k in state and tuple(state[k].shape) != tuple(s)]
    problems = [f"{len(v)} {label} ({_names(v)})" for label, v in
                (("missing keys", missing), ("extra keys", extra), ("keys of the wrong shape", shaped)) if v]
    if problems:
        raise ValueError(f"not {what} ({len(expected)} keys expected): " + "; ".join(problems))


def convert(source: str, path: str | os.PathLike, space: str, out: str | os.PathLike) -> Path:
    """Convert the `source` supernet checkpoint `path` into our supernet of `space`, written to
    the new directory `out` (module docstring); returns `out`."""
    from ..models import build_supernet

    mod = source_module(source)
    if space not in mod.SPACES:
        raise ValueError(f"--from {source} converts into spaces {list(mod.SPACES)}, not {space!r}")
    out = Path(out).expanduser()
    if out.exists() or out.is_symlink():
        raise ValueError(f"--out {str(out)!r} already exists; give a new directory (nothing was overwritten)")
    state = read_state(path)
    check_keys(state, mod.expected_keys(space), f"the {source} supernet for space {space!r}")
    net = build_supernet(space)
    ours = mod.to_shiftnas(state, space)
    try:
        net.load_state_dict(ours, strict=True)
    except RuntimeError as e:  # a converter bug, not the user's file: say so
        raise ValueError(f"converter {SOURCES[source]} gave a state_dict that {space} does not take: "
                         f"{' '.join(str(e).split())[:400]}") from None
    meta = {"format": FORMAT, "space": space, "num_classes": int(net.num_classes), "source": source,
            "source_file": Path(path).name, "source_sha256": _sha256(Path(path).expanduser())}
    return _write_dir(net.state_dict(), meta, out)


def _write_dir(state: dict, meta: dict, out: Path) -> Path:
    from safetensors.torch import save

    from ..atomic import fsync_dir, write_text_atomic
    from ..integrity import content_digest

    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    meta_bytes = (json.dumps(meta, indent=1) + "\n").encode("utf-8")
    digests = {"format": FORMAT, "sha256": content_digest(state), "meta_sha256": hashlib.sha256(meta_bytes).hexdigest()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # a leftover of a crashed conversion
    tmp.mkdir()
    try:
        write_text_atomic(tmp / WEIGHTS, save(state, metadata=digests))
        write_text_atomic(tmp / META, meta_bytes)
        if out.exists() or out.is_symlink():
            raise ValueError(f"--out {str(out)!r} appeared while converting; nothing was overwritten")
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(out.parent)
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def load_supernet(path: str | os.PathLike, device: str = "cpu", verify: bool = True):
    """The supernet a conversion wrote to `path` (safetensors: no code runs), in eval mode, its
    digests checked (`verify=False` skips that)."""
    from ..integrity import content_digest
    from ..models import build_supernet
    from ..models.export import read_weights_dir

    path = Path(path).expanduser()
    _, meta, meta_bytes, weights, state, digests = read_weights_dir(path, META, WEIGHTS, FORMAT, "`shiftnas convert`")
    if verify and (digests.get("sha256") != content_digest(state)
                   or digests.get("meta_sha256") != hashlib.sha256(meta_bytes).hexdigest()):
        raise ValueError(f"{str(path)!r} is corrupt: {WEIGHTS} or {META} does not match the sha256 digests "
                         "written with them; convert again (load_supernet(path, verify=False) skips the check)")
    net = build_supernet(meta.get("space"), num_classes=meta.get("num_classes"))
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{str(weights)!r} does not fit the {meta.get('space')} supernet: "
                         f"{' '.join(str(e).split())[:300]}") from None
    return net.to(device).eval()
