"""A sha256 digest of what a checkpoint or an exported subnet holds, to detect silent corruption.

    hexdigest = content_digest({"model": net.state_dict(), "step": 7})

The digest is taken over the *contents* (what a loader hands back), not over a file's bytes:
every dict key and value, list and tuple, number, string and, for each tensor, its dtype, shape
and raw bytes. Dict keys are taken in sorted order, so a format that reorders keys (safetensors
sorts them) gives the same digest. A flipped byte in tensor data, a changed number or a changed
shape all change the digest; bytes a loader never reads (e.g. the part of a storage no tensor
views) do not. Tensors are read from the CPU (a CUDA tensor is copied first).

`torch.save`/`torch.load` do not check the CRC32 their zip records carry, and safetensors has
no checksum: without this, a flipped bit on disk loads as a different weight, silently.
"""
from __future__ import annotations

import hashlib
from typing import Any

import torch

__all__ = ["ALGO", "content_digest"]

ALGO = "sha256"


def content_digest(obj: Any) -> str:
    """sha256 hex digest of `obj` (nested dicts/lists/tuples of tensors, numbers, str, bytes,
    None, torch dtypes/devices/sizes). ``ValueError`` for anything else."""
    h = hashlib.sha256()
    _feed(h, obj, "obj")
    return h.hexdigest()


def _key_order(k: Any) -> tuple:
    return (type(k).__name__, k) if isinstance(k, (int, str)) else (type(k).__name__, repr(k))


def _token(h: Any, tag: bytes, payload: bytes) -> None:
    h.update(tag + len(payload).to_bytes(8, "little") + payload)


def _feed(h: Any, obj: Any, where: str) -> None:
    if isinstance(obj, torch.Tensor):
        _feed_tensor(h, obj, where)
    elif isinstance(obj, dict):
        _token(h, b"d", str(len(obj)).encode())
        for k in sorted(obj, key=_key_order):
            _feed(h, k, f"{where} key")
            _feed(h, obj[k], f"{where}[{k!r}]")
    elif isinstance(obj, torch.Size):  # before tuple: a Size is a tuple
        _token(h, b"S", repr(tuple(obj)).encode())
    elif isinstance(obj, (list, tuple)):
        _token(h, b"l" if isinstance(obj, list) else b"t", str(len(obj)).encode())
        for i, v in enumerate(obj):
            _feed(h, v, f"{where}[{i}]")
    elif isinstance(obj, bool):  # before int: a bool is an int
        _token(h, b"b", b"1" if obj else b"0")
    elif isinstance(obj, int):
        _token(h, b"i", str(obj).encode())
    elif isinstance(obj, float):
        _token(h, b"f", obj.hex().encode())
    elif isinstance(obj, complex):
        _token(h, b"c", f"{obj.real.hex()},{obj.imag.hex()}".encode())
    elif isinstance(obj, str):
        _token(h, b"s", obj.encode("utf-8", "surrogatepass"))
    elif isinstance(obj, bytes):
        _token(h, b"y", obj)
    elif obj is None:
        _token(h, b"n", b"")
    elif isinstance(obj, (torch.dtype, torch.device)):
        _token(h, b"o", f"{type(obj).__name__}:{obj}".encode())
    else:
        raise ValueError(f"cannot take a digest of {where}: {type(obj).__module__}.{type(obj).__qualname__} "
                         "(allowed: tensors, dicts, lists, tuples, numbers, str, bytes, None)")


def _feed_tensor(h: Any, t: torch.Tensor, where: str) -> None:
    t = t.detach()
    if t.device.type == "meta":
        raise ValueError(f"cannot take a digest of {where}: a meta tensor has no data")
    if t.layout != torch.strided:
        t = t.to_dense()
    if t.is_quantized:
        t = t.int_repr()
    t = t.resolve_conj().resolve_neg().to("cpu").contiguous()
    _token(h, b"T", f"{t.dtype}|{tuple(t.shape)}".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
