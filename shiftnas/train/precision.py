"""Which autocast dtype a run computes in (`optim.amp`), and what the CPU can do fast.

    dtype, scaler, line = amp_setup("auto", torch.device("cpu"))  # line: which dtype and why
    cpu_features()   # {"cpu_capability": "AVX2", "cpu_flags": {"avx2": True, ...}, "native_bf16": False}

`optim.amp=auto` (the default) is bf16 on CUDA and on CPUs with AMX (`amx_bf16` in
/proc/cpuinfo: "fast_bf16"), fp32 elsewhere. Without bf16 instructions oneDNN emulates bf16: on
an AMD EPYC with AVX2 only, a single-thread `F.linear` took 827 ms in bf16 vs 58 ms in fp32 and
a fmnist-vit-shift step 14 s vs 1.2 s. With `avx512_bf16` but no AMX ("native_bf16" without
"fast_bf16"; a Xeon VM on 2026-12-06, 2 threads) a 2048^3 matmul ran 144 GFLOP/s in bf16 vs
304 in fp32, and a cnn-fmnist supernet step at batch 64 was 5% / 10% slower in bf16 at the
space's middle / max arch (16% faster at min), vit-fmnist 2.3-2.5x slower. An explicit
`optim.amp=bf16` is honoured on any CPU, with one warning per process where it is not fast. `optim.amp=gpu` is bf16 on CUDA and fp32 on every CPU: the
Fashion-MNIST ViT configs use it, because that small ViT trains ~1.3x faster in fp32 than in
bf16 even on an AMX CPU (autocast's casts outweigh the small matmuls; README "Measured so far"). Training, `shiftnas evaluate/search/rank` and fine-tuning all take
their dtype from the Trainer, so they follow the same rule.
"""
from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = ["CPU_FLAGS", "FAST_BF16_FLAGS", "NATIVE_BF16_FLAGS", "amp_name", "amp_setup", "cpu_features"]

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")  # recorded by the benchmarks
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # either one: bf16 instructions in hardware
FAST_BF16_FLAGS = ("amx_bf16",)  # bf16 faster than fp32 here: what optim.amp=auto needs (module doc)
_warned_slow_bf16 = False


def _cpuinfo_flags(text: str) -> set[str] | None:
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":  # x86 Linux
            return set(value.split())
    return None


def cpu_features(cpuinfo: str | None = None) -> dict[str, Any]:
    """The CPU's vector capability as torch sees it and the flags that decide bf16 speed.

    {"cpu_capability": torch.backends.cpu.get_cpu_capability() (e.g. "AVX2", "AVX512"),
    "cpu_flags": {flag: bool for CPU_FLAGS}, or None where /proc/cpuinfo has no flags line
    (not Linux on x86), "native_bf16": whether any of NATIVE_BF16_FLAGS is present,
    "fast_bf16": whether any of FAST_BF16_FLAGS is}.
    `cpuinfo`: the text of /proc/cpuinfo (default: read it).
    """
    if cpuinfo is None:
        return dict(_host_features())
    flags = _cpuinfo_flags(cpuinfo)
    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": None if flags is None else {f: f in flags for f in CPU_FLAGS},
        "native_bf16": flags is not None and any(f in flags for f in NATIVE_BF16_FLAGS),
        "fast_bf16": flags is not None and any(f in flags for f in FAST_BF16_FLAGS),
    }


@functools.lru_cache(maxsize=1)
def _host_features() -> tuple[tuple[str, Any], ...]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    return tuple(cpu_features(text).items())


def _cpu_words(feat: dict[str, Any]) -> str:
    have = [f for f in NATIVE_BF16_FLAGS if (feat["cpu_flags"] or {}).get(f)]
    if feat["fast_bf16"]:
        return f"CPU has native bf16 ({', '.join(have)})"
    if have:
        return (f"CPU has native bf16 ({', '.join(have)}) but no AMX (no {'/'.join(FAST_BF16_FLAGS)}): bf16 matmuls "
                f"would be ~2x slower than fp32 here")
    return (f"CPU (torch capability {feat['cpu_capability']}) has no native bf16 "
            f"(no {'/'.join(NATIVE_BF16_FLAGS)}): bf16 would be ~10x slower than fp32 here")


def amp_name(dtype: torch.dtype | None) -> str:
    """'bf16', 'fp16' or 'fp32' (no autocast)."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[dtype]


def amp_setup(mode: str, device: torch.device) -> tuple[torch.dtype | None, Any, str]:
    """(autocast dtype or None for fp32, a GradScaler for fp16 else None, one line: which and why).

    `mode`: "auto" | "gpu" (bf16 on CUDA, fp32 on CPU) | "bf16" | "fp16" (CUDA only: a
    ValueError on CPU) | "off".
    """
    global _warned_slow_bf16
    cpu = device.type != "cuda"
    if mode == "off":
        return None, None, "amp: fp32 (optim.amp=off)"
    if mode == "gpu":  # for models that train faster in fp32 on a CPU, even one with native bf16
        if cpu:
            return None, None, "amp: fp32 (optim.amp=gpu: bf16 on a CUDA device only)"
        return torch.bfloat16, None, "amp: bf16 (optim.amp=gpu: a CUDA device)"
    if mode == "fp16":
        if cpu:
            raise ValueError("optim.amp=fp16 needs a GPU (GradScaler); on CPU use optim.amp=auto, bf16 or off")
        return torch.float16, torch.amp.GradScaler("cuda"), "amp: fp16 with a GradScaler (optim.amp=fp16)"
    if mode not in ("auto", "bf16"):
        raise ValueError(f"optim.amp={mode!r}: allowed values are 'auto', 'gpu', 'bf16', 'fp16', 'off'")
    feat = cpu_features() if cpu else None
    if mode == "auto":
        if not cpu:
            return torch.bfloat16, None, "amp: bf16 (optim.amp=auto: a CUDA device)"
        dtype = torch.bfloat16 if feat["fast_bf16"] else None
        return dtype, None, f"amp: {amp_name(dtype)} (optim.amp=auto: {_cpu_words(feat)})"
    if cpu and not feat["fast_bf16"] and not _warned_slow_bf16:
        _warned_slow_bf16 = True
        warnings.warn(f"optim.amp=bf16: this {_cpu_words(feat)}; optim.amp=auto picks fp32 on this CPU",
                      stacklevel=3)
    return torch.bfloat16, None, "amp: bf16 (optim.amp=bf16)"
