"""Kernel benchmark: every elastic op against slicing, full-width masking and the dense static op.

Per op and shape, the elastic implementations under test (the Triton kernels of
`shiftnas.kernels` and the `cuda` backend ops on GPU; the `cpu` backend ops of `shiftnas._C` on
CPU) are timed next to three baselines:

  ref_slice  AutoFormer-style slicing in PyTorch (the `ref` backend): slice the max-size weights
             (views), call F.linear / F.layer_norm / SDPA / F.conv2d
  full_mask  DNAS-style full-width masking: run the op at the full max width and multiply the
             output by a 0/1 prefix mask
  dense      the dense static op of the active shape: contiguous weights of exactly the active
             shape (F.linear = cuBLAS, F.layer_norm, SDPA on contiguous q/k/v, F.conv2d)

Suites (`--device`, default cuda when available, else cpu):

  cuda   bf16 (`--dtype`), `triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])`, forward and
         forward+backward. ViT ops (layer_norm, linear qkv / proj, mlp, attention) at
         AutoFormer-T/S/B shapes (the space's max arch and a mid arch, weights allocated at the
         supernet size, batch 128 x 197 tokens, heads x 64); dwconv at cnn-bignas layers (batch
         128 at 224 px). Then the masked-op sweep (linear_masked / mlp_masked /
         elastic_attention_masked / elastic_dwconv_masked with the active width a device tensor,
         f in {0.25, 0.5, 0.75, 1.0}: cost(f) / cost(1)), then the whole-step check (autoformer-t
         supernet training step at a sampled arch, SHIFTNAS_BACKEND unset, vs the exported model
         `net.export(arch)`; batch 64, bf16 autocast, no optimizer step). The suite prints an
         estimate and caps itself at `--budget-s` (default 270 s from process start, so
         `make bench-gpu` ends within 5 minutes); what does not fit is listed as skipped, and a
         watchdog ends the process `--grace-s` after the budget whatever hangs.
  cpu    the `cpu` backend ops (layer_norm_cpu, dwconv_cpu, bias_gelu_cpu) vs ref_slice and dense,
         float32 and bfloat16, `--threads` 2; per case all implementations run interleaved (one
         call of each per repeat, the starting one rotating), median and p20/p80 of
         `--repeats` (>= 10 asked) after `--warmup`, time.perf_counter; each case records the
         CPU load of other processes meanwhile.
  --smoke  tiny shapes and 1-2 repeats through the cuda suite's code paths on CPU, with
         TRITON_INTERPRET=1 set before triton is imported; float32 (the interpreter rejects bf16
         attention), the step on vit-fmnist with SHIFTNAS_BACKEND=triton. Proves the script runs;
         results go to /tmp/shiftnas_bench_kernels_smoke/, never to bench/results/.

Output: `<out-dir>/kernels_<suite>.json` (rewritten after every case, so a timeout still leaves
JSON; "status" says how far it got) and `kernels_<suite>.png` (speed vs the dense static op per
case). Targets are reported, never asserted:
  GPU: every op >= 0.9x the dense static op's throughput (dense_ms / op_ms >= 0.9); a masked op
       at active fraction f costs <= f + 0.1 of full width; supernet step <= 1.1x exported step.
  CPU: the cpu backend >= 1.0x ref_slice for each op it provides.

    python bench/bench_kernels.py --device cuda            # -> bench/results/kernels_cuda.json
    python bench/bench_kernels.py --device cpu --repeats 20 # -> bench/results/kernels_cpu.json
    python bench/bench_kernels.py --smoke                   # -> /tmp/shiftnas_bench_kernels_smoke/
"""

from __future__ import annotations

import time

T_START = time.perf_counter()  # the budget counts from here (before torch is imported)

import argparse  # noqa: E402
import importlib  # noqa: E402
import importlib.metadata  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
SMOKE_DIR = Path("/tmp/shiftnas_bench_kernels_smoke")
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # for _common, also when not run as a script

from _common import (
    cpu_affinity,
    cpu_jiffies,
    cpu_name,
    foreign_load,
    git,
    loadavg,
    quantile,
    time_interleaved,
    utc_date,
    write_json,
)

VIT_SPACES = ("autoformer-t", "autoformer-s", "autoformer-b")
SPACE_SHORT = {"autoformer-t": "T", "autoformer-s": "S", "autoformer-b": "B", "smoke": "tiny"}
VIT_OPS = ("layer_norm", "linear_qkv", "linear_proj", "mlp", "attention")
# cnn-bignas depthwise layers (stage, block): 144 ch @112 px s2, 240 @28, 768 @14, 1296 @7.
DW_LAYERS = ((1, 0), (2, 1), (4, 1), (5, 1))
FRACTIONS = (1.0, 0.75, 0.5, 0.25)  # timed from full width down; reported ascending
UNDER_TEST = ("triton", "cuda", "cpu")
BASELINES = ("ref_slice", "full_mask", "dense")
IMPL_ORDER = UNDER_TEST + BASELINES
DT_SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
EPS = 1e-5
GPU_DENSE_TARGET = 0.9
MASK_SLACK = 0.1
STEP_TARGET = 1.1
CPU_REF_TARGET = 1.0


# =============================================================================== provenance
def git_info() -> dict:
    """Commit, and which kernel/op sources differ from it (the numbers may be for uncommitted code)."""
    status = git("status", "--porcelain", "--", "kernels", "shiftnas/ops", "csrc", "bench")
    changed = [ln[3:] for ln in (status or "").splitlines() if ln.strip()]
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(changed), "changed": changed[:40]}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine(device: str) -> dict:
    import torch

    out = {
        "device": device,
        "device_name": cpu_name(),
        "cpu_model": cpu_name(),
        "node": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": cpu_affinity(),
        "loadavg_1_5_15": loadavg(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        out.update(
            device_name=torch.cuda.get_device_name(0),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpu_capability=f"{props.major}.{props.minor}",
            cuda_runtime=torch.version.cuda,
            cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
        )
    return out


def short_error(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:400]}" if msg else type(e).__name__


# =============================================================================== result document
class Report:
    """The result document; rewritten (atomically) after every change, so a kill leaves JSON."""

    def __init__(self, path: Path, doc: dict):
        self.path, self.doc, self.lock = path, doc, threading.RLock()

    def add(self, key: str, item) -> None:
        with self.lock:
            self.doc.setdefault(key, []).append(item)
            self.write()

    def set(self, key: str, value) -> None:
        with self.lock:
            self.doc[key] = value
            self.write()

    def write(self, lock_timeout: float | None = None) -> None:
        if not self.lock.acquire(timeout=-1 if lock_timeout is None else lock_timeout):
            return
        try:
            self.doc["elapsed_s"] = round(time.perf_counter() - T_START, 1)
            write_json(self.path, self.doc, indent=1, default=str)
        finally:
            self.lock.release()


class Budget:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self.deadline = T_START + seconds if seconds > 0 else math.inf

    def left(self) -> float:
        return self.deadline - time.perf_counter()


def start_watchdog(report: Report, budget: Budget, grace_s: float) -> None:
    """End the process `grace_s` after the budget even if a compile or kernel hangs."""
    if not math.isfinite(budget.deadline):
        return

    def fire():
        report.doc["status"] = "hard_deadline"
        report.doc["hard_deadline_note"] = (
            f"watchdog ended the process {grace_s:.0f}s after the {budget.seconds:.0f}s budget; the "
            "case in flight is missing"
        )
        report.write(lock_timeout=5)
        print(f"\n!! hard deadline: exiting; partial results in {report.path}", flush=True)
        os._exit(3)

    delay = budget.deadline + grace_s - time.perf_counter()
    t = threading.Timer(max(1.0, delay), fire)
    t.daemon = True
    t.start()


# =============================================================================== timing
def _stats(ms: list[float]) -> dict:
    return {
        "median_ms": round(quantile(ms, 0.5), 5),
        "p20_ms": round(quantile(ms, 0.2), 5),
        "p80_ms": round(quantile(ms, 0.8), 5),
        "n": len(ms),
    }


def _clear(tensors) -> None:
    for t in tensors or ():
        t.grad = None


class Timer:
    """GPU: triton.testing.do_bench (CUDA events, L2 flushed per call). Smoke: perf_counter."""

    def __init__(self, device: str, warmup_ms: float, rep_ms: float, warmup_n: int, repeats: int):
        self.device, self.warmup_ms, self.rep_ms = device, warmup_ms, rep_ms
        self.warmup_n, self.repeats = warmup_n, repeats
        self.calls = 0

    def __call__(self, fn: Callable, grad_to_none=None, rep_ms: float | None = None) -> dict:
        self.calls += 1
        if self.device == "cuda":
            import triton.testing

            med, p20, p80 = triton.testing.do_bench(
                fn,
                warmup=self.warmup_ms,
                rep=rep_ms or self.rep_ms,
                grad_to_none=grad_to_none,
                quantiles=[0.5, 0.2, 0.8],
            )
            return {"median_ms": round(med, 5), "p20_ms": round(p20, 5), "p80_ms": round(p80, 5)}
        for _ in range(self.warmup_n):
            _clear(grad_to_none)
            fn()
        ts = []
        for _ in range(self.repeats):
            _clear(grad_to_none)
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        return _stats(ts)


def time_cpu(fns: dict[str, Callable], leaves, warmup: int, repeats: int) -> dict:
    """CPU: per name, stats of `repeats` calls; each repeat calls every fn once, order rotating.

    The leaves' .grad is reset (untimed) before every call.
    """
    secs = time_interleaved(fns, warmup, repeats, before=lambda: _clear(leaves))
    return {n: _stats([t * 1e3 for t in ts]) for n, ts in secs.items()}


# =============================================================================== implementations
class Impls:
    """The functions under test, each looked up once; a missing one records why, never raises."""

    def __init__(self, device: str, smoke: bool):
        self.device, self.smoke = device, smoke
        self.missing: dict[str, str] = {}
        self._cache: dict[str, Callable | None] = {}

    def get(self, module: str, name: str) -> Callable | None:
        key = f"{module}.{name}"
        if key not in self._cache:
            try:
                self._cache[key] = getattr(importlib.import_module(module), name)
            except Exception as e:  # ImportError, a kernel failing at import, AttributeError
                self._cache[key] = None
                self.missing[key] = short_error(e)
        return self._cache[key]

    def kernel(self, module: str, name: str) -> Callable | None:
        return self.get(f"shiftnas.kernels.{module}", name)

    def ext(self, module: str, name: str) -> Callable | None:
        """A `shiftnas._C` op, when the extension is built (with CUDA for the *_cuda ones)."""
        from shiftnas import _ext

        key = f"shiftnas.ops.{module}.{name}"
        why = _ext.unavailable_reason()
        if why is None and name.endswith("_cuda") and not _ext.has_cuda_ops():
            why = "shiftnas._C was built without CUDA sources"
        if why is None and name.endswith("_cuda") and self.device != "cuda":
            why = "needs CUDA tensors (this run has none)"
        if why:
            self.missing.setdefault(key, why)
            return None
        return self.get(f"shiftnas.ops.{module}", name)

    def reason(self, module: str, name: str) -> str:
        for key in (
            f"shiftnas.kernels.{module}.{name}",
            f"shiftnas.ops.{module}.{name}",
            f"{module}.{name}",
        ):
            if key in self.missing:
                return self.missing[key]
        return "unavailable"


@dataclass
class OpCase:
    """One op at one shape: zero-argument callables per implementation, sharing leaf tensors."""

    op: str
    space: str
    width: str
    shape: dict
    shape_str: str
    impls: dict[str, Callable] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    leaves: list = field(default_factory=list)


def _leaf(*shape, dtype, device, scale: float = 1.0, grad: bool = True, gen=None):
    import torch

    t = (torch.randn(*shape, generator=gen, dtype=torch.float32) * scale).to(
        device=device, dtype=dtype
    )
    return t.requires_grad_(grad)


def _prefix_mask(n_active: int, n: int, dtype, device, view=None):
    import torch

    m = (torch.arange(n, device=device) < n_active).to(dtype)
    return m.view(view) if view is not None else m


def _add(case: OpCase, name: str, fn: Callable | None, why: Callable[[], str]) -> None:
    if fn is None:
        case.unavailable[name] = why()
    else:
        case.impls[name] = fn


# --- ViT ops -----------------------------------------------------------------------------------
def vit_dims(space_name: str, width: str) -> dict:
    """Active and max (supernet) sizes of `space_name` at its max arch or a mid arch."""
    if space_name == "smoke":  # tiny, odd token count so the tails are exercised
        base = dict(B=2, N=17, d=32, Em=64, Hm=3, Dhm=128)
        act = dict(E=48, H=2, Dh=96) if width == "max" else dict(E=32, H=1, Dh=64)
        return {**base, **act}
    import shiftnas
    from shiftnas.spaces.vit import mlp_hidden

    sp = shiftnas.get_space(space_name)
    hp = sp.hparams
    emb = sp.decision("embed_dim").choices
    heads = sp.decision("layers.0.num_heads").choices
    ratios = sp.decision("layers.0.mlp_ratio").choices
    if width == "max":
        E, H, r = max(emb), max(heads), max(ratios)
    else:  # middle embed choice, lower-middle heads and mlp ratio
        E, H, r = emb[len(emb) // 2], heads[(len(heads) - 1) // 2], ratios[(len(ratios) - 1) // 2]
    n_tokens = (hp["img_size"] // hp["patch_size"]) ** 2 + 1
    return dict(
        B=128,
        N=n_tokens,
        d=hp["head_dim"],
        Em=hp["super_embed_dim"],
        Hm=hp["super_num_heads"],
        Dhm=mlp_hidden(hp["super_embed_dim"], hp["super_mlp_ratio"]),
        E=E,
        H=H,
        Dh=mlp_hidden(E, r),
    )


def build_vit_case(
    op: str, space: str, width: str, dims: dict, dtype, device, impls: Impls, under_test
):
    import torch
    import torch.nn.functional as F

    from shiftnas.ops import ref

    g = torch.Generator().manual_seed(0)
    kw = dict(dtype=dtype, device=device, gen=g)
    B, N, d = dims["B"], dims["N"], dims["d"]
    E, Em, H, Hm, Dh, Dhm = (dims[k] for k in ("E", "Em", "H", "Hm", "Dh", "Dhm"))
    tok = f"{B}x{N}"

    if op == "layer_norm":
        case = OpCase(op, space, width, dict(B=B, N=N, C=E, C_max=Em), f"[{tok}, {E}/{Em}]")
        x, xf = _leaf(B, N, E, **kw), _leaf(B, N, Em, **kw)
        w, b = _leaf(Em, scale=0.1, **kw), _leaf(Em, scale=0.1, **kw)
        with torch.no_grad():
            w += 1
        wd = w.detach()[:E].clone().requires_grad_(True)
        bd = b.detach()[:E].clone().requires_grad_(True)
        m = _prefix_mask(E, Em, dtype, device)
        case.leaves = [x, xf, w, b, wd, bd]
        if "triton" in under_test:
            f = impls.kernel("layer_norm", "layer_norm")
            _add(
                case,
                "triton",
                f and (lambda: f(x, w, b, E, EPS)),
                lambda: impls.reason("layer_norm", "layer_norm"),
            )
        if "cuda" in under_test:
            f = impls.ext("layer_norm_ext", "layer_norm_cuda")
            _add(
                case,
                "cuda",
                f and (lambda: f(x, w, b, E, EPS)),
                lambda: impls.reason("layer_norm_ext", "layer_norm_cuda"),
            )
        case.impls["ref_slice"] = lambda: ref.layer_norm(x, w, b, E, EPS)
        case.impls["full_mask"] = lambda: F.layer_norm(xf, (Em,), w, b, EPS) * m
        case.impls["dense"] = lambda: F.layer_norm(x, (E,), wd, bd, EPS)
        return case

    if op in ("linear_qkv", "linear_proj"):
        if op == "linear_qkv":  # embed -> 3 * heads * d (rows head-major, active heads a prefix)
            K, Km, Nout, Nm = E, Em, 3 * H * d, 3 * Hm * d
        else:  # heads * d -> embed
            K, Km, Nout, Nm = H * d, Hm * d, E, Em
        case = OpCase(
            op,
            space,
            width,
            dict(B=B, N=N, K=K, K_max=Km, N_out=Nout, N_max=Nm),
            f"[{tok}, {K}/{Km}] -> {Nout}/{Nm}",
        )
        x, xf = _leaf(B, N, K, **kw), _leaf(B, N, Km, **kw)
        W, b = _leaf(Nm, Km, scale=Km**-0.5, **kw), _leaf(Nm, scale=0.02, **kw)
        Wd = W.detach()[:Nout, :K].clone().requires_grad_(True)
        bd = b.detach()[:Nout].clone().requires_grad_(True)
        m = _prefix_mask(Nout, Nm, dtype, device)
        case.leaves = [x, xf, W, b, Wd, bd]
        if "triton" in under_test:
            f = impls.kernel("linear", "linear")
            _add(
                case,
                "triton",
                f and (lambda: f(x, W, b, Nout)),
                lambda: impls.reason("linear", "linear"),
            )
        case.impls["ref_slice"] = lambda: ref.linear(x, W, b, Nout)
        case.impls["full_mask"] = lambda: F.linear(xf, W, b) * m
        case.impls["dense"] = lambda: F.linear(x, Wd, bd)
        return case

    if op == "mlp":
        case = OpCase(
            op,
            space,
            width,
            dict(B=B, N=N, E=E, E_max=Em, hidden=Dh, hidden_max=Dhm),
            f"[{tok}, {E}/{Em}] hidden {Dh}/{Dhm}",
        )
        x, xf = _leaf(B, N, E, **kw), _leaf(B, N, Em, **kw)
        W1, b1 = _leaf(Dhm, Em, scale=Em**-0.5, **kw), _leaf(Dhm, scale=0.02, **kw)
        W2, b2 = _leaf(Em, Dhm, scale=Dhm**-0.5, **kw), _leaf(Em, scale=0.02, **kw)
        W1d = W1.detach()[:Dh, :E].clone().requires_grad_(True)
        b1d = b1.detach()[:Dh].clone().requires_grad_(True)
        W2d = W2.detach()[:E, :Dh].clone().requires_grad_(True)
        b2d = b2.detach()[:E].clone().requires_grad_(True)
        mh, me = _prefix_mask(Dh, Dhm, dtype, device), _prefix_mask(E, Em, dtype, device)
        case.leaves = [x, xf, W1, b1, W2, b2, W1d, b1d, W2d, b2d]
        if "triton" in under_test:
            f = impls.kernel("mlp", "mlp")
            _add(
                case,
                "triton",
                f and (lambda: f(x, W1, b1, W2, b2, Dh)),
                lambda: impls.reason("mlp", "mlp"),
            )
        ref_mlp = getattr(ref, "mlp", None)
        if ref_mlp is not None:
            case.impls["ref_slice"] = lambda: ref_mlp(x, W1, b1, W2, b2, Dh)
        else:
            case.impls["ref_slice"] = lambda: ref.linear(
                ref.linear(x, W1, b1, Dh, "gelu"), W2, b2, E
            )
        case.impls["full_mask"] = lambda: F.linear(F.gelu(F.linear(xf, W1, b1)) * mh, W2, b2) * me
        case.impls["dense"] = lambda: F.linear(F.gelu(F.linear(x, W1d, b1d)), W2d, b2d)
        return case

    if op == "attention":
        case = OpCase(
            op,
            space,
            width,
            dict(B=B, heads=H, heads_max=Hm, N=N, d=d),
            f"[{B}, {H}/{Hm} heads, {N}, {d}]",
        )
        # The model's layout: qkv linear output [B, N, heads, 3, d] viewed as q, k, v [B, H, N, d].
        qkv, qkvf = _leaf(B, N, H, 3, d, **kw), _leaf(B, N, Hm, 3, d, **kw)
        q_, k_, v_ = (_leaf(B, H, N, d, **kw) for _ in range(3))  # dense: contiguous q, k, v
        mh = _prefix_mask(H, Hm, dtype, device, view=(1, Hm, 1, 1))
        case.leaves = [qkv, qkvf, q_, k_, v_]

        def split(t):
            return t.permute(3, 0, 2, 1, 4).unbind(0)

        if "triton" in under_test:
            f = impls.kernel("attention", "elastic_attention")
            _add(
                case,
                "triton",
                f and (lambda: f(*split(qkv))),
                lambda: impls.reason("attention", "elastic_attention"),
            )
        case.impls["ref_slice"] = lambda: ref.attention(*split(qkv))
        case.impls["full_mask"] = lambda: F.scaled_dot_product_attention(*split(qkvf)) * mh
        case.impls["dense"] = lambda: F.scaled_dot_product_attention(q_, k_, v_)
        return case

    raise ValueError(f"unknown op {op!r}")


# --- depthwise conv ----------------------------------------------------------------------------
def dw_layers(batch: int, smoke: bool) -> list[dict]:
    """cnn-bignas depthwise layers at 224 px: max (widest hidden, largest k) and mid widths."""
    if smoke:
        return [
            dict(name="tiny s1", B=2, H=8, stride=1, Cm=24, C_max=24, k_max=5, C_mid=16, k_mid=3),
            dict(name="tiny s2", B=2, H=9, stride=2, Cm=16, C_max=16, k_max=3, C_mid=8, k_mid=3),
        ]
    import shiftnas
    from shiftnas.models.static_mbconv import conv_out, hidden_width

    sp = shiftnas.get_space("cnn-bignas")
    hp = sp.hparams

    def ch(n):
        return sp.decision(n).choices

    def mid(c):
        return c[len(c) // 2]

    size = conv_out(224, hp["stem_stride"])
    pmax, pmid = max(ch("stem.width")), mid(ch("stem.width"))
    out = []
    for s, st in enumerate(hp["stages"]):
        w = ch(f"stage{s}.width")
        for j in range(max(ch(f"stage{s}.depth"))):
            stride = st["stride"] if j == 0 else 1
            t, k = ch(f"stage{s}.block{j}.expand"), ch(f"stage{s}.block{j}.kernel")
            in_max, in_mid = (pmax, pmid) if j == 0 else (max(w), mid(w))
            if (s, j) in DW_LAYERS:
                out.append(
                    dict(
                        name=f"bignas s{s}b{j}",
                        B=batch,
                        H=size,
                        stride=stride,
                        Cm=hidden_width(in_max, max(t)),
                        C_max=hidden_width(in_max, max(t)),
                        k_max=max(k),
                        C_mid=hidden_width(in_mid, mid(t)),
                        k_mid=min(k),
                    )
                )
            if j == 0:
                size = conv_out(size, stride)
        pmax, pmid = max(w), mid(w)
    return out


def build_dw_case(layer: dict, width: str, dtype, device, impls: Impls, under_test) -> OpCase:
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    kw = dict(dtype=dtype, device=device, gen=g)
    B, Hs, s, Cm = layer["B"], layer["H"], layer["stride"], layer["Cm"]
    C, k = layer[f"C_{width}"], layer[f"k_{width}"]
    p = k // 2
    case = OpCase(
        "dwconv",
        layer["name"],
        width,
        dict(B=B, C=C, C_max=Cm, H=Hs, W=Hs, k=k, stride=s),
        f"[{B}, {C}/{Cm}, {Hs}x{Hs}] k{k} s{s}",
    )
    x, xf = _leaf(B, C, Hs, Hs, **kw), _leaf(B, Cm, Hs, Hs, **kw)
    w = _leaf(Cm, 1, k, k, scale=1.0 / k, **kw)  # the active kernel, already cropped (OFA)
    wd = w.detach()[:C].clone().requires_grad_(True)
    m = _prefix_mask(C, Cm, dtype, device, view=(1, Cm, 1, 1))
    case.leaves = [x, xf, w, wd]
    if "triton" in under_test:
        f = impls.kernel("dwconv", "elastic_dwconv")
        _add(
            case,
            "triton",
            f and (lambda: f(x, w, None, s)),
            lambda: impls.reason("dwconv", "elastic_dwconv"),
        )
    if "cuda" in under_test or "cpu" in under_test:
        name = "cuda" if "cuda" in under_test else "cpu"
        f = impls.ext("dwconv_ext", f"dwconv_{name}")
        _add(
            case,
            name,
            f and (lambda: f(x, w, None, s, p)),
            lambda: impls.reason("dwconv_ext", f"dwconv_{name}"),
        )
    case.impls["ref_slice"] = lambda: F.conv2d(x, w[:C], None, s, p, 1, C)
    case.impls["full_mask"] = lambda: F.conv2d(xf, w, None, s, p, 1, Cm) * m
    case.impls["dense"] = lambda: F.conv2d(x, wd, None, s, p, 1, C)
    return case


# --- CPU-only ops ------------------------------------------------------------------------------
def build_cpu_ln_case(space: str, width: str, dims: dict, dtype, impls: Impls) -> OpCase:
    case = build_vit_case("layer_norm", space, width, dims, dtype, "cpu", impls, ())
    case.impls.pop("full_mask")  # the CPU suite compares with ref_slice and dense only
    f = impls.ext("layer_norm_ext", "layer_norm_cpu")
    E, (x, _, w, b, _, _) = dims["E"], case.leaves
    _add(
        case,
        "cpu",
        f and (lambda: f(x, w, b, E, EPS)),
        lambda: impls.reason("layer_norm_ext", "layer_norm_cpu"),
    )
    return case


def build_bias_gelu_case(space: str, width: str, dims: dict, dtype, impls: Impls) -> OpCase:
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    kw = dict(dtype=dtype, device="cpu", gen=g)
    M, n, nm = dims["B"] * dims["N"], dims["Dh"], dims["Dhm"]
    case = OpCase("bias_gelu", space, width, dict(M=M, N=n, N_max=nm), f"[{M}, {n}/{nm}]")
    x, xf = _leaf(M, n, **kw), _leaf(M, nm, **kw)
    b = _leaf(nm, scale=0.1, **kw)
    bd = b.detach()[:n].clone().requires_grad_(True)
    case.leaves = [x, xf, b, bd]
    f = impls.ext("bias_gelu_ext", "bias_gelu_cpu")
    _add(
        case, "cpu", f and (lambda: f(x, b)), lambda: impls.reason("bias_gelu_ext", "bias_gelu_cpu")
    )
    case.impls["ref_slice"] = lambda: F.gelu(x + b[:n])
    case.impls["dense"] = lambda: F.gelu(x + bd)
    return case


def build_linear_gelu_case(space: str, width: str, dims: dict, dtype, impls: Impls) -> OpCase:
    """fc1 + bias + GELU as a cpu-backend `linear` would run it (F.linear without bias, then the
    C++ bias+GELU reading the full bias buffer) vs ref.linear (sliced F.linear with bias, F.gelu)."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    kw = dict(dtype=dtype, device="cpu", gen=g)
    M, E, n, nm, em = dims["B"] * dims["N"], dims["E"], dims["Dh"], dims["Dhm"], dims["Em"]
    case = OpCase("linear_gelu", space, width, dict(M=M, E=E, N=n, N_max=nm), f"[{M}, {E}] -> {n}/{nm}")
    x = _leaf(M, E, **kw)
    w, b = _leaf(nm, em, scale=0.05, **kw), _leaf(nm, scale=0.1, **kw)
    wd = w.detach()[:n, :E].clone().requires_grad_(True)
    bd = b.detach()[:n].clone().requires_grad_(True)
    case.leaves = [x, w, b, wd, bd]
    f = impls.ext("bias_gelu_ext", "bias_gelu_cpu")
    _add(
        case, "cpu", f and (lambda: f(F.linear(x, w[:n, :E]), b)),
        lambda: impls.reason("bias_gelu_ext", "bias_gelu_cpu"),
    )
    ref_linear = impls.get("shiftnas.ops.ref", "linear")
    case.impls["ref_slice"] = lambda: ref_linear(x, w, b, n, "gelu")
    case.impls["dense"] = lambda: F.gelu(F.linear(x, wd, bd))
    return case


# =============================================================================== running op cases
def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _fwd(fn: Callable) -> Callable:
    import torch

    def run():
        with torch.no_grad():
            return fn()

    return run


def _fwd_bwd(fn: Callable, gy) -> Callable:
    def run():
        fn().backward(gy)

    return run


def prepare(case: OpCase, device: str, passes) -> tuple[dict, dict, dict, dict]:
    """First calls (compile, autotune), gradients of the outputs' shapes, forward errors vs ref.

    Returns (runnable fns per pass, errors per impl, setup seconds per impl, max abs err vs ref).
    """
    import torch

    errors, setup_s, outs, gys = dict(case.unavailable), {}, {}, {}
    for name, fn in case.impls.items():
        t0 = time.perf_counter()
        try:
            y = _fwd(fn)()
            _sync(device)
            if name in UNDER_TEST or name == "ref_slice":
                outs[name] = y.detach().float()
            gys[name] = torch.randn(y.shape, device=y.device, dtype=torch.float32).to(y.dtype)
            del y
            if "fwd+bwd" in passes:
                _clear(case.leaves)
                _fwd_bwd(fn, gys[name])()
                _sync(device)
        except Exception as e:  # a kernel that fails: record it and go on with the others
            errors[name] = short_error(e)
        setup_s[name] = round(time.perf_counter() - t0, 3)
    _clear(case.leaves)
    err = {}
    if "ref_slice" in outs:
        r = outs["ref_slice"]
        for name in UNDER_TEST:
            if name in outs:
                a = outs[name]
                err[name] = (
                    round((a - r).abs().max().item(), 6)
                    if a.shape == r.shape
                    else f"shape {tuple(a.shape)}"
                )
    fns = {}
    for p in passes:
        fns[p] = {}
        for name, fn in case.impls.items():
            if name in errors:
                continue
            fns[p][name] = _fwd(fn) if p == "fwd" else _fwd_bwd(fn, gys[name])
    return fns, errors, setup_s, err


def make_row(
    case: OpCase, section: str, dtype, pas: str, ms: dict, errors: dict, suite: str
) -> dict:
    ratios, targets = {}, {}
    for name in UNDER_TEST:
        if name not in ms:
            continue
        t = ms[name]["median_ms"]
        ratios[name] = {
            f"speed_vs_{base}": round(ms[base]["median_ms"] / t, 4)
            for base in BASELINES
            if base in ms and t > 0
        }
        if suite == "cpu":
            r = ratios[name].get("speed_vs_ref_slice")
            targets[f"{name} >= {CPU_REF_TARGET}x ref_slice"] = (
                None if r is None else r >= CPU_REF_TARGET
            )
        else:
            r = ratios[name].get("speed_vs_dense")
            targets[f"{name} >= {GPU_DENSE_TARGET}x dense"] = (
                None if r is None else r >= GPU_DENSE_TARGET
            )
    baseline_vs_dense = {
        base: round(ms["dense"]["median_ms"] / ms[base]["median_ms"], 4)
        for base in ("ref_slice", "full_mask")
        if base in ms and "dense" in ms
    }
    return {
        "section": section,
        "op": case.op,
        "space": case.space,
        "width": case.width,
        "shape": case.shape,
        "shape_str": case.shape_str,
        "dtype": str(dtype).replace("torch.", ""),
        "pass": pas,
        "ms": {n: ms[n] for n in IMPL_ORDER if n in ms},
        "ratios": ratios,
        "baseline_speed_vs_dense": baseline_vs_dense,
        "targets": targets,
        "errors": {n: e for n, e in errors.items()},
    }


def run_gpu_case(case: OpCase, ctx, report: Report) -> None:
    fns, errors, setup_s, err = prepare(case, ctx.device, ctx.passes)
    for p in ctx.passes:
        ms = {}
        for name, f in fns[p].items():
            try:
                ms[name] = ctx.timer(f, grad_to_none=case.leaves)
            except Exception as e:
                errors[name] = short_error(e)
        row = make_row(case, "ops", ctx.dtype, p, ms, errors, "gpu")
        row["setup_s"] = setup_s
        row["max_abs_err_vs_ref"] = err
        report.add("cases", row)
        print_case_line(row, ctx.suite)


def run_cpu_case(case: OpCase, ctx, report: Report) -> None:
    fns, errors, setup_s, err = prepare(case, "cpu", ctx.passes)
    for p in ctx.passes:
        j0, t0 = cpu_jiffies(), time.perf_counter()
        try:
            ms = time_cpu(fns[p], case.leaves, ctx.args.warmup, ctx.args.repeats)
        except Exception as e:
            ms, errors["timing"] = {}, short_error(e)
        row = make_row(case, "ops", case_dtype(case), p, ms, errors, "cpu")
        row["foreign_cpu_load"] = foreign_load(j0, cpu_jiffies(), time.perf_counter() - t0)
        row["max_abs_err_vs_ref"] = err
        report.add("cases", row)
        print_case_line(row, "cpu")


def case_dtype(case: OpCase):
    return case.leaves[0].dtype


# =============================================================================== masked sweep
def build_masked(op: str, space: str, dims_or_layer: dict, dtype, device, impls: Impls):
    """(fn, leaves, width tensor, max width, shape_str) of a masked kernel at full allocation."""
    import torch

    g = torch.Generator().manual_seed(0)
    kw = dict(dtype=dtype, device=device, gen=g)
    if op == "dwconv_masked":
        L = dims_or_layer
        B, Hs, s, Cm, k = L["B"], L["H"], L["stride"], L["Cm"], L["k_max"]
        f = impls.kernel("dwconv", "elastic_dwconv_masked")
        x, w, mask = (
            _leaf(B, Cm, Hs, Hs, **kw),
            _leaf(Cm, 1, k, k, scale=1.0 / k, **kw),
            _leaf(Cm, **kw),
        )
        with torch.no_grad():
            mask.fill_(1)
        active = torch.tensor([Cm], device=device, dtype=torch.int32)
        fn = f and (lambda: f(x, w, None, s, active, mask))
        return (
            fn,
            [x, w, mask],
            active,
            Cm,
            f"[{B}, C/{Cm}, {Hs}x{Hs}] k{k} s{s}",
            ("dwconv", "elastic_dwconv_masked"),
        )
    D = dims_or_layer
    B, N, d, Em, Hm, Dhm = D["B"], D["N"], D["d"], D["Em"], D["Hm"], D["Dhm"]
    if op == "linear_masked":  # fc1-shaped: embed -> hidden, the active out width a device tensor
        f = impls.kernel("linear", "linear_masked")
        x, W, b, mask = (
            _leaf(B, N, Em, **kw),
            _leaf(Dhm, Em, scale=Em**-0.5, **kw),
            _leaf(Dhm, scale=0.02, **kw),
            _leaf(Dhm, **kw),
        )
        with torch.no_grad():
            mask.fill_(1)
        width = torch.tensor([Dhm], device=device, dtype=torch.int32)
        fn = f and (lambda: f(x, W, b, Dhm, out_width=width, mask=mask))
        return (
            fn,
            [x, W, b, mask],
            width,
            Dhm,
            f"[{B}x{N}, {Em}] -> w/{Dhm}",
            ("linear", "linear_masked"),
        )
    if op == "mlp_masked":
        f = impls.kernel("mlp", "mlp_masked")
        x = _leaf(B, N, Em, **kw)
        W1, b1 = _leaf(Dhm, Em, scale=Em**-0.5, **kw), _leaf(Dhm, scale=0.02, **kw)
        W2, b2 = _leaf(Em, Dhm, scale=Dhm**-0.5, **kw), _leaf(Em, scale=0.02, **kw)
        mask = _leaf(Dhm, **kw)
        with torch.no_grad():
            mask.fill_(1)
        width = torch.tensor([Dhm], device=device, dtype=torch.int32)
        fn = f and (lambda: f(x, W1, b1, W2, b2, Dhm, hidden_width=width, hidden_mask=mask))
        return (
            fn,
            [x, W1, b1, W2, b2, mask],
            width,
            Dhm,
            f"[{B}x{N}, {Em}] hidden w/{Dhm}",
            ("mlp", "mlp_masked"),
        )
    if op == "attention_masked":
        f = impls.kernel("attention", "elastic_attention_masked")
        qkv = _leaf(B, N, Hm, 3, d, **kw)
        mask = _leaf(Hm, **kw)
        with torch.no_grad():
            mask.fill_(1)
        heads = torch.tensor([Hm], device=device, dtype=torch.int32)
        fn = f and (lambda: f(*qkv.permute(3, 0, 2, 1, 4).unbind(0), mask, heads))
        return (
            fn,
            [qkv, mask],
            heads,
            Hm,
            f"[{B}, h/{Hm} heads, {N}, {d}]",
            ("attention", "elastic_attention_masked"),
        )
    raise ValueError(op)


def run_sweep_item(op: str, space: str, spec: dict, ctx, report: Report) -> None:
    import torch

    fn, leaves, width, wmax, shape_str, (mod, name) = build_masked(
        op, space, spec, ctx.dtype, ctx.device, ctx.impls
    )
    row_base = {
        "section": "sweep",
        "op": op,
        "space": space,
        "shape_str": shape_str,
        "width_max": wmax,
        "dtype": str(ctx.dtype).replace("torch.", ""),
    }
    if fn is None:
        for p in ctx.passes:
            report.add("sweep", {**row_base, "pass": p, "error": ctx.impls.reason(mod, name)})
        print(
            f"  sweep {op:17s} {SPACE_SHORT.get(space, space):12s} unavailable: {ctx.impls.reason(mod, name)}"
        )
        return
    gy = None
    for p in ctx.passes:
        points, error = [], None
        try:
            for f in FRACTIONS:
                w = max(1, round(f * wmax))
                if op == "dwconv_masked":
                    w = max(1, min(wmax, 8 * round(f * wmax / 8)))
                width.fill_(w)
                if gy is None:
                    y = _fwd(fn)()
                    gy = torch.randn(y.shape, device=y.device, dtype=torch.float32).to(y.dtype)
                    del y
                run = _fwd(fn) if p == "fwd" else _fwd_bwd(fn, gy)
                _clear(leaves)
                run()  # first call at this width (compile / autotune on the first)
                _sync(ctx.device)
                points.append(
                    {
                        "f": f,
                        "width": w,
                        "f_actual": round(w / wmax, 4),
                        "ms": ctx.timer(run, grad_to_none=leaves),
                    }
                )
        except Exception as e:
            error = short_error(e)
        full = next((pt["ms"]["median_ms"] for pt in points if pt["f"] == 1.0), None)
        for pt in points:
            if full:
                pt["cost_ratio"] = round(pt["ms"]["median_ms"] / full, 4)
                pt["target"] = f"<= f_actual + {MASK_SLACK}"
                pt["met"] = pt["cost_ratio"] <= pt["f_actual"] + MASK_SLACK
        points.sort(key=lambda pt: pt["f"])
        row = {**row_base, "pass": p, "points": points}
        if error:
            row["error"] = error
        report.add("sweep", row)
        cells = " ".join(
            f"f={pt['f_actual']:.2f}:{pt.get('cost_ratio', float('nan')):.2f}{'' if pt.get('met', True) else '!'}"
            for pt in points
        )
        print(
            f"  sweep {op:17s} {SPACE_SHORT.get(space, space):12s} {p:8s} {cells}"
            + (f"  ERROR {error}" if error else "")
        )
    width.fill_(wmax)


# =============================================================================== whole step
def run_step(ctx, report: Report) -> None:
    import torch
    import torch.nn.functional as F

    import shiftnas
    from shiftnas.ops import dispatch

    smoke = ctx.suite == "smoke"
    space_name = "vit-fmnist" if smoke else "autoformer-t"
    batch = 2 if smoke else ctx.args.step_batch
    amp = not smoke and ctx.dtype in (torch.bfloat16, torch.float16)
    sp = shiftnas.get_space(space_name)
    arch = sp.sample(random.Random(ctx.args.seed))
    torch.manual_seed(0)
    t_build = time.perf_counter()
    net = shiftnas.build_supernet(space_name).to(ctx.device).train()
    exported = net.export(arch).train()
    hp = sp.hparams
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, hp["in_chans"], hp["img_size"], hp["img_size"], generator=g).to(
        ctx.device
    )
    y = torch.randint(0, hp["num_classes"], (batch,), generator=g).to(ctx.device)
    build_s = time.perf_counter() - t_build

    def stepper(module, fwd):
        def step():
            module.zero_grad(set_to_none=True)
            with torch.autocast(ctx.device, dtype=ctx.dtype, enabled=amp):
                loss = F.cross_entropy(fwd(x), y)
            loss.backward()

        return step

    # supernet: the default dispatch (SHIFTNAS_BACKEND unset) on GPU; the smoke forces triton so
    # the kernels run in the interpreter (CPU tensors never pick triton by themselves).
    variants = [
        ("supernet", "triton" if smoke else None, stepper(net, lambda t: net(t, arch))),
        ("exported", None, stepper(exported, exported)),
        ("supernet_ref", "ref", stepper(net, lambda t: net(t, arch))),
    ]
    doc = {
        "space": space_name,
        "arch": arch.short() if hasattr(arch, "short") else str(arch),
        "batch": batch,
        "input": list(x.shape),
        "autocast": str(ctx.dtype).replace("torch.", "") if amp else None,
        "what": "zero_grad(set_to_none) + forward + cross_entropy + backward, no optimizer step",
        "build_s": round(build_s, 2),
        "models": {},
        "backend_choices": {},
        "rounds": 2,
    }
    saved = os.environ.get("SHIFTNAS_BACKEND")

    def with_backend(name, fn):
        if name is None:
            os.environ.pop("SHIFTNAS_BACKEND", None)
        else:
            os.environ["SHIFTNAS_BACKEND"] = name
        dispatch.refresh()
        try:
            return fn()
        finally:
            if saved is None:
                os.environ.pop("SHIFTNAS_BACKEND", None)
            else:
                os.environ["SHIFTNAS_BACKEND"] = saved
            dispatch.refresh()

    ok = {}
    for name, backend, step in variants:
        entry = {"SHIFTNAS_BACKEND": backend}
        t0 = time.perf_counter()

        def first(step=step):
            step()
            _sync(ctx.device)
            # (op, device type, dtype) -> backend the dispatcher picked during this step
            return dict(getattr(dispatch, "_CACHE", {}))

        try:
            choices = with_backend(backend, first)
            entry["first_step_s"] = round(time.perf_counter() - t0, 2)
            if name != "exported":
                doc["backend_choices"][name] = {
                    f"{k[0]}/{k[1]}/{str(k[2]).replace('torch.', '')}": v[0]
                    for k, v in choices.items()
                }
            ok[name] = (backend, step)
        except Exception as e:
            entry["error"] = short_error(e)
        doc["models"][name] = entry
    rep_ms = max(4 * ctx.args.rep_ms, 400) if ctx.device == "cuda" else None
    rounds: dict[str, list] = {n: [] for n in ok}
    for r in range(2):  # two rounds, the order reversed in the second
        names = list(ok) if r == 0 else list(reversed(list(ok)))
        for name in names:
            backend, step = ok[name]
            try:
                rounds[name].append(
                    with_backend(backend, lambda step=step: ctx.timer(step, rep_ms=rep_ms))
                )
            except Exception as e:
                doc["models"][name]["error"] = short_error(e)
    for name, rs in rounds.items():
        if rs:
            doc["models"][name]["rounds_ms"] = rs
            doc["models"][name]["median_ms"] = round(statistics.mean(r["median_ms"] for r in rs), 4)
    med = {n: m.get("median_ms") for n, m in doc["models"].items()}
    if med.get("supernet") and med.get("exported"):
        r = med["supernet"] / med["exported"]
        doc["supernet/exported"] = round(r, 4)
        doc["target"] = f"supernet/exported <= {STEP_TARGET}"
        doc["met"] = r <= STEP_TARGET
    if med.get("supernet_ref") and med.get("exported"):
        doc["supernet_ref/exported"] = round(med["supernet_ref"] / med["exported"], 4)
    if ctx.device == "cuda":
        doc["dispatch_report_cuda_bfloat16"] = [
            list(r) for r in dispatch.report("cuda", torch.bfloat16)
        ]
    report.set("step", doc)
    parts = [
        f"{n} {m.get('median_ms', float('nan')):.2f} ms"
        + (f" ERROR {m['error']}" if "error" in m else "")
        for n, m in doc["models"].items()
    ]
    print(
        f"  step {space_name} b{batch}: "
        + " | ".join(parts)
        + (
            f" | supernet/exported {doc['supernet/exported']:.3f} (target <= {STEP_TARGET})"
            if "supernet/exported" in doc
            else ""
        )
    )


# =============================================================================== printing, plot
def _fmt_ms(ms: dict | None) -> str:
    if not ms:
        return "-"
    v = ms["median_ms"]
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def print_case_line(row: dict, suite: str) -> None:
    ms = row["ms"]
    names = [n for n in IMPL_ORDER if n in ms or n in row["errors"]]
    cells = " ".join(f"{n}={_fmt_ms(ms.get(n)) if n in ms else 'ERR'}" for n in names)
    rat = " ".join(
        f"{n}:{r.get('speed_vs_dense', float('nan')):.2f}xD/{r.get('speed_vs_ref_slice', float('nan')):.2f}xR"
        for n, r in row["ratios"].items()
    )
    miss = [k for k, v in row["targets"].items() if v is False]
    print(
        f"  {row['op']:11s} {SPACE_SHORT.get(row['space'], row['space']):12s} {row['width']:3s} {row['pass']:8s} "
        f"{cells} | {rat}" + (f" | MISS {','.join(miss)}" if miss else ""),
        flush=True,
    )


def print_table(doc: dict) -> None:
    rows = doc.get("cases", [])
    if not rows:
        return
    under = [n for n in UNDER_TEST if any(n in r["ms"] or n in r["errors"] for r in rows)]
    bases = [n for n in BASELINES if any(n in r["ms"] for r in rows)]
    cols = under + bases
    hdr = (
        f"{'op':11s} {'space':12s} {'w':3s} {'shape':38s} {'dtype':8s} {'pass':8s} | "
        + " ".join(f"{c + ' ms':>13s}" for c in cols)
        + " | "
        + " ".join(f"{u + '/dense':>12s} {u + '/ref':>10s}" for u in under)
        + (" | load" if doc.get("suite") == "cpu" else "")
    )
    print("\n" + hdr)
    print("-" * len(hdr))
    for r in rows:
        cells = []
        for c in cols:
            if c in r["ms"]:
                m = r["ms"][c]
                cells.append(f"{_fmt_ms(m):>13s}")
            else:
                cells.append(f"{'ERR' if c in r['errors'] else '-':>13s}")
        rat = []
        for u in under:
            rr = r["ratios"].get(u, {})
            d, f = rr.get("speed_vs_dense"), rr.get("speed_vs_ref_slice")
            rat.append(f"{(f'{d:.2f}x' if d else '-'):>12s} {(f'{f:.2f}x' if f else '-'):>10s}")
        miss = any(v is False for v in r["targets"].values())
        load = f" | {r.get('foreign_cpu_load')}" if doc.get("suite") == "cpu" else ""
        print(
            f"{r['op']:11s} {SPACE_SHORT.get(r['space'], r['space']):12s} {r['width']:3s} {r['shape_str']:38s} "
            f"{r['dtype']:8s} {r['pass']:8s} | "
            + " ".join(cells)
            + " | "
            + " ".join(rat)
            + load
            + ("  <- target missed" if miss else "")
        )
    errs = {}
    for r in rows:
        for n, e in r["errors"].items():
            errs.setdefault(f"{r['op']}/{n}", e)
    if errs:
        print("\nunavailable / failed implementations (first reason per op and impl):")
        for k, e in errs.items():
            print(f"  {k}: {e}")


def summarize(doc: dict) -> dict:
    out = {}
    for r in doc.get("cases", []):
        for k, v in r["targets"].items():
            s = out.setdefault(k, {"met": 0, "missed": 0, "unknown": 0})
            s["met" if v else "missed" if v is False else "unknown"] += 1
    for r in doc.get("sweep", []):
        s = out.setdefault(
            f"masked cost(f)/cost(1) <= f + {MASK_SLACK}", {"met": 0, "missed": 0, "unknown": 0}
        )
        if "points" not in r:
            s["unknown"] += 1
        for pt in r.get("points", []):
            s["met" if pt.get("met") else "missed" if "met" in pt else "unknown"] += 1
    st = doc.get("step")
    if st:
        s = out.setdefault(
            f"supernet step <= {STEP_TARGET}x exported", {"met": 0, "missed": 0, "unknown": 0}
        )
        s["met" if st.get("met") else "missed" if "met" in st else "unknown"] += 1
    return out


def plot(doc: dict, path: Path) -> str | None:
    """Bar chart per pass: speed vs the dense static op (dense_ms / impl_ms) of every case."""
    rows = [r for r in doc.get("cases", []) if "dense" in r["ms"]]
    if not rows:
        return "no case with a dense timing"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:
        return short_error(e)
    passes = [p for p in ("fwd", "fwd+bwd") if any(r["pass"] == p for r in rows)]
    impls = [n for n in IMPL_ORDER if n != "dense" and any(n in r["ms"] for r in rows)]
    n_cases = max(sum(r["pass"] == p for r in rows) for p in passes)
    fig, axes = plt.subplots(
        1,
        len(passes),
        figsize=(7 * len(passes), 1.5 + 0.1 * n_cases * max(1, len(impls))),
        squeeze=False,
    )
    colors = {
        "triton": "tab:blue",
        "cuda": "tab:green",
        "cpu": "tab:green",
        "ref_slice": "tab:orange",
        "full_mask": "tab:red",
    }
    target = CPU_REF_TARGET if doc.get("suite") == "cpu" else GPU_DENSE_TARGET
    for ax, p in zip(axes[0], passes):
        rs = [r for r in rows if r["pass"] == p]
        labels = [
            f"{r['op']} {SPACE_SHORT.get(r['space'], r['space'])} {r['width']} {DT_SHORT.get(r['dtype'], r['dtype'])}"
            for r in rs
        ]
        h = 0.8 / max(1, len(impls))
        for i, n in enumerate(impls):
            ys = [j + (i - (len(impls) - 1) / 2) * h for j in range(len(rs))]
            vals = [
                r["ms"]["dense"]["median_ms"] / r["ms"][n]["median_ms"] if n in r["ms"] else 0
                for r in rs
            ]
            ax.barh(ys, vals, height=h, label=n, color=colors.get(n))
        ax.axvline(1.0, color="k", lw=0.8)
        if doc.get("suite") != "cpu":
            ax.axvline(target, color="tab:red", lw=0.8, ls="--", label=f"target {target}x")
        ax.set_yticks(range(len(rs)))
        ax.set_yticklabels(labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("speed vs dense static op (dense ms / ms; > 1 = faster)")
        ax.set_title(f"{p}")
        ax.legend(fontsize=7, loc="lower right")
    m = doc.get("machine", {})
    fig.suptitle(
        f"bench_kernels ({doc.get('suite')}): {m.get('device_name')}, torch {doc.get('torch')}, "
        f"commit {str((doc.get('git') or {}).get('commit'))[:10]}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# =============================================================================== driver
@dataclass
class Ctx:
    args: argparse.Namespace
    suite: str  # "gpu" | "cpu" | "smoke"
    device: str
    dtype: object
    passes: tuple
    timer: Timer | None
    impls: Impls
    budget: Budget


def lighten_autotune(rep_ms: float, warmup_ms: float) -> list[str]:
    """Benchmark the Triton autotuners' candidate configs for rep_ms instead of 100 ms each."""
    import triton
    import triton.testing
    from triton.runtime.autotuner import Autotuner

    changed = []
    for mod in ("linear", "mlp", "attention", "dwconv", "layer_norm"):
        try:
            m = importlib.import_module(f"shiftnas.kernels.{mod}")
        except Exception:
            continue
        for name, obj in vars(m).items():
            if isinstance(obj, Autotuner) and obj.__dict__.get("_bench_light") is None:
                obj.do_bench = lambda fn, quantiles: triton.testing.do_bench(  # noqa: E731
                    fn, warmup=warmup_ms, rep=rep_ms, quantiles=quantiles
                )
                obj._bench_light = True
                changed.append(f"{mod}.{name}")
    return changed


def install_autotune_listener(stats: dict) -> None:
    try:
        import triton

        if triton.knobs.autotuning.listener is not None:
            return

        def listener(
            fn=None,
            key=None,
            best_config=None,
            configs_timings=None,
            duration=None,
            cache_hit=None,
            **_,
        ):
            stats["keys"] = stats.get("keys", 0) + 1
            stats["seconds"] = round(stats.get("seconds", 0.0) + (duration or 0.0), 2)

        triton.knobs.autotuning.listener = listener
    except Exception:
        pass


def gpu_plan(ctx) -> list[tuple[str, Callable]]:
    """(label, thunk) per op case, most important first: max widths, then mid widths."""
    args, plan = ctx.args, []
    spaces = ["smoke"] if ctx.suite == "smoke" else [s for s in args.spaces.split(",") if s]
    ops = [o for o in args.ops.split(",") if o]
    under = ("triton",) if ctx.suite == "smoke" else ("triton", "cuda")
    layers = dw_layers(128, ctx.suite == "smoke")
    for width in ("max", "mid"):
        for s in spaces:
            for op in VIT_OPS:
                if op in ops:
                    plan.append(
                        (
                            f"{op} {s} {width}",
                            lambda op=op, s=s, width=width: build_vit_case(
                                op,
                                s,
                                width,
                                vit_dims(s, width),
                                ctx.dtype,
                                ctx.device,
                                ctx.impls,
                                under,
                            ),
                        )
                    )
        if "dwconv" in ops:
            for L in layers:
                plan.append(
                    (
                        f"dwconv {L['name']} {width}",
                        lambda L=L, width=width: build_dw_case(
                            L, width, ctx.dtype, ctx.device, ctx.impls, under
                        ),
                    )
                )
    return plan


def sweep_plan(ctx) -> list[tuple[str, str, dict]]:
    if ctx.suite == "smoke":
        spaces = ["smoke"]
        layers = dw_layers(2, True)[:1]
    else:
        spaces = [s for s in ctx.args.spaces.split(",") if s]
        layers = [L for L in dw_layers(128, False) if (L["Cm"], L["H"]) in ((768, 14), (144, 112))]
    ops = [o for o in ctx.args.ops.split(",") if o]
    items = []
    for s in spaces:
        dims = {**vit_dims(s, "max")}
        for op, base in (
            ("linear_masked", "linear_qkv"),
            ("mlp_masked", "mlp"),
            ("attention_masked", "attention"),
        ):
            if base in ops or op in ops:
                items.append((op, s, dims))
    if "dwconv" in ops:
        for L in layers:
            items.append(("dwconv_masked", L["name"], L))
    return items


def run_gpu_suite(ctx, report: Report) -> None:
    import torch

    args = ctx.args
    plan = gpu_plan(ctx) if "ops" in args.sections else []
    sweep = sweep_plan(ctx) if "sweep" in args.sections else []
    do_step = "step" in args.sections
    per_call_s = (args.warmup_ms + args.rep_ms + 20) / 1e3 if ctx.suite == "gpu" else 0.05
    n_timed = len(plan) * len(ctx.passes) * 5 + len(sweep) * len(ctx.passes) * len(FRACTIONS)
    est = n_timed * per_call_s + (3 * 2 * max(4 * args.rep_ms, 400) / 1e3 if do_step else 0)
    compile_note = (
        "+ Triton compile/autotune, ~60-150 s on a machine with a cold Triton cache"
        if ctx.suite == "gpu"
        else ""
    )
    print(
        f"plan: {len(plan)} op cases x {len(ctx.passes)} passes, {len(sweep)} masked-sweep items x {len(FRACTIONS)} "
        f"fractions, step={'yes' if do_step else 'no'}; estimated ~{est:.0f}s of timing {compile_note}; "
        f"budget {args.budget_s:.0f}s from start ({ctx.budget.left():.0f}s left), hard stop +{args.grace_s:.0f}s",
        flush=True,
    )
    report.set(
        "estimate", {"timed_calls": n_timed, "timing_s": round(est, 1), "budget_s": args.budget_s}
    )
    step_reserve = args.step_reserve_s if do_step else 0.0
    sweep_reserve = 15.0 if sweep and ctx.suite == "gpu" else 0.0
    skipped = []

    print("\n== ops (ms median; speed vs D=dense, R=ref_slice)", flush=True)
    for label, build in plan:
        if ctx.budget.left() < step_reserve + sweep_reserve + 3:
            skipped.append(f"ops: {label}")
            continue
        try:
            case = build()
            run_gpu_case(case, ctx, report)
        except Exception as e:
            report.add("cases_failed", {"case": label, "error": short_error(e)})
            print(f"  {label}: FAILED {short_error(e)}", flush=True)
        finally:
            case = None
            if ctx.device == "cuda":
                torch.cuda.empty_cache()
    if sweep:
        print("\n== masked-op sweep: cost(f) / cost(1)  ('!' = above f + 0.1)", flush=True)
    for op, space, spec in sweep:
        if ctx.budget.left() < step_reserve + 2:
            skipped.append(f"sweep: {op} {space}")
            continue
        try:
            run_sweep_item(op, space, spec, ctx, report)
        except Exception as e:
            report.add(
                "sweep", {"section": "sweep", "op": op, "space": space, "error": short_error(e)}
            )
            print(f"  sweep {op} {space}: FAILED {short_error(e)}", flush=True)
        if ctx.device == "cuda":
            torch.cuda.empty_cache()
    if do_step:
        print("\n== whole training step", flush=True)
        if ctx.budget.left() < 10:
            skipped.append("step")
        else:
            try:
                run_step(ctx, report)
            except Exception as e:
                report.set("step", {"error": short_error(e)})
                print(f"  step FAILED {short_error(e)}", flush=True)
    report.set("skipped_for_budget", skipped)
    if skipped:
        print(
            f"\nskipped to stay within the budget: {len(skipped)}: "
            + "; ".join(skipped[:12])
            + (" ..." if len(skipped) > 12 else "")
        )


def _no_mask(case: OpCase) -> OpCase:
    case.impls.pop("full_mask", None)  # the CPU suite compares with ref_slice and dense only
    return case


def run_cpu_suite(ctx, report: Report) -> None:
    import torch

    args = ctx.args
    dtypes = [getattr(torch, d) for d in args.cpu_dtypes.split(",") if d]
    ops = [o for o in args.ops.split(",") if o]
    layers = dw_layers(args.cpu_batch, False)
    layers = [L for L in layers if (L["Cm"], L["H"]) in ((144, 112), (768, 14))]
    cases = []
    for dt in dtypes:
        for s, w in (("autoformer-t", "max"), ("autoformer-t", "mid"), ("autoformer-s", "max")):
            dims = {**vit_dims(s, w), "B": args.cpu_batch}
            if "layer_norm" in ops:
                cases.append(
                    (
                        f"layer_norm {s} {w} {dt}",
                        lambda s=s, w=w, dims=dims, dt=dt: build_cpu_ln_case(
                            s, w, dims, dt, ctx.impls
                        ),
                    )
                )
            if "bias_gelu" in ops or "mlp" in ops:
                cases.append(
                    (
                        f"bias_gelu {s} {w} {dt}",
                        lambda s=s, w=w, dims=dims, dt=dt: build_bias_gelu_case(
                            s, w, dims, dt, ctx.impls
                        ),
                    )
                )
                cases.append(
                    (
                        f"linear_gelu {s} {w} {dt}",
                        lambda s=s, w=w, dims=dims, dt=dt: build_linear_gelu_case(
                            s, w, dims, dt, ctx.impls
                        ),
                    )
                )
        if "dwconv" in ops:
            for L in layers:
                for w in ("max", "mid"):
                    cases.append(
                        (
                            f"dwconv {L['name']} {w} {dt}",
                            lambda L=L, w=w, dt=dt: _no_mask(
                                build_dw_case(L, w, dt, "cpu", ctx.impls, ("cpu",))
                            ),
                        )
                    )
    print(
        f"plan: {len(cases)} cases x {len(ctx.passes)} passes x (cpu, ref_slice, dense), {args.repeats} interleaved "
        f"repeats after {args.warmup} warm-up, {torch.get_num_threads()} threads; loadavg {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    print("\n== ops (ms median; speed vs D=dense, R=ref_slice)", flush=True)
    for label, build in cases:
        if ctx.budget.left() < 2:
            report.add("skipped_for_budget", label)
            continue
        try:
            run_cpu_case(build(), ctx, report)
        except Exception as e:
            report.add("cases_failed", {"case": label, "error": short_error(e)})
            print(f"  {label}: FAILED {short_error(e)}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default=None,
        help="default: cuda if available, else cpu",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny shapes on CPU via TRITON_INTERPRET=1; results to /tmp",
    )
    p.add_argument(
        "--out-dir", default=None, help=f"default {RESULTS_DIR} ({SMOKE_DIR} with --smoke)"
    )
    p.add_argument(
        "--dtype",
        default="bfloat16",
        choices=("bfloat16", "float16", "float32"),
        help="GPU suite dtype",
    )
    p.add_argument("--passes", default="fwd,fwd+bwd")
    p.add_argument(
        "--sections", default="ops,sweep,step", help="GPU suite: comma list of ops,sweep,step"
    )
    p.add_argument("--spaces", default=",".join(VIT_SPACES), help="ViT spaces of the GPU suite")
    p.add_argument(
        "--ops", default="layer_norm,linear_qkv,linear_proj,mlp,attention,dwconv,bias_gelu"
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="stop starting work this many seconds after start (GPU default 270, smoke 600, cpu none)",
    )
    p.add_argument(
        "--grace-s", type=float, default=15.0, help="watchdog: hard exit this long after the budget"
    )
    p.add_argument(
        "--step-reserve-s",
        type=float,
        default=45.0,
        help="GPU: seconds kept for the whole-step check",
    )
    p.add_argument("--step-batch", type=int, default=64)
    p.add_argument("--warmup-ms", type=float, default=10.0, help="do_bench warmup (GPU)")
    p.add_argument("--rep-ms", type=float, default=50.0, help="do_bench rep (GPU)")
    p.add_argument(
        "--autotune-rep-ms",
        type=float,
        default=20.0,
        help="GPU: ms each Triton autotune candidate is timed (Triton's default: 100); 0 = Triton's default",
    )
    p.add_argument("--threads", type=int, default=2, help="torch threads (CPU suite)")
    p.add_argument(
        "--repeats",
        type=int,
        default=20,
        help="CPU suite: interleaved timed repeats (>= 10 advised)",
    )
    p.add_argument(
        "--warmup", type=int, default=3, help="CPU suite: untimed calls of each impl first"
    )
    p.add_argument("--cpu-dtypes", default="float32,bfloat16")
    p.add_argument(
        "--cpu-batch", type=int, default=8, help="CPU suite: images per batch (x 197 tokens)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled arch of the step check")
    args = p.parse_args(argv)

    if args.smoke:
        # Before triton is imported anywhere: the kernels decide interpreter vs GPU at decoration.
        os.environ["TRITON_INTERPRET"] = "1"
        args.device = "cpu"
    import torch

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    suite = "smoke" if args.smoke else ("gpu" if args.device == "cuda" else "cpu")
    out_dir = Path(args.out_dir) if args.out_dir else (SMOKE_DIR if args.smoke else RESULTS_DIR)
    if args.smoke and RESULTS_DIR.resolve() in [out_dir.resolve(), *out_dir.resolve().parents]:
        p.error(f"--smoke never writes to {RESULTS_DIR}; pick another --out-dir")
    if suite == "cpu" and args.repeats < 10:
        print(
            f"note: --repeats {args.repeats} < 10: a quick look, not a careful measurement",
            file=sys.stderr,
        )
    if args.budget_s is None:
        args.budget_s = {"gpu": 270.0, "smoke": 600.0, "cpu": 0.0}[suite]
    passes = tuple(x for x in args.passes.split(",") if x)
    for x in passes:
        if x not in ("fwd", "fwd+bwd"):
            p.error(f"--passes: unknown pass {x!r}; allowed: fwd, fwd+bwd")
    args.sections = [s for s in args.sections.split(",") if s]
    if suite == "cpu":
        torch.set_num_threads(args.threads)
    dtype = torch.float32 if suite == "smoke" else getattr(torch, args.dtype)

    budget = Budget(args.budget_s)
    name = {"gpu": "cuda", "cpu": "cpu", "smoke": "smoke"}[suite]
    json_path, png_path = out_dir / f"kernels_{name}.json", out_dir / f"kernels_{name}.png"
    doc = {
        "benchmark": "bench/bench_kernels.py",
        "suite": suite,
        "status": "running",
        "date": utc_date(),
        "git": git_info(),
        "machine": machine(args.device),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "argv": sys.argv[1:] if argv is None else list(argv),
        "settings": {
            "dtype": str(dtype).replace("torch.", "")
            if suite != "cpu"
            else args.cpu_dtypes.split(","),
            "passes": list(passes),
            "threads": torch.get_num_threads(),
            "timing": (
                f"triton.testing.do_bench(fn, warmup={args.warmup_ms}, rep={args.rep_ms}, grad_to_none=leaves, "
                "quantiles=[0.5, 0.2, 0.8]) per implementation (CUDA events, L2 flushed before each call)"
                if suite == "gpu"
                else f"time.perf_counter, {args.repeats} interleaved repeats (order rotating) after "
                f"{args.warmup} warm-up calls of each implementation; median, p20, p80"
                if suite == "cpu"
                else "time.perf_counter, 1 warm-up + 2 repeats (smoke: proves the code runs, numbers meaningless)"
            ),
            "budget_s": args.budget_s,
            "env": {
                k: os.environ.get(k)
                for k in ("SHIFTNAS_BACKEND", "TRITON_INTERPRET", "OMP_NUM_THREADS")
            },
        },
        "definitions": {
            "triton": "shiftnas.kernels.* (layer_norm, linear, mlp, elastic_attention, elastic_dwconv) on the max-size weights",
            "cuda / cpu": "the shiftnas._C backend ops (layer_norm_cuda/dwconv_cuda; layer_norm_cpu/dwconv_cpu/bias_gelu_cpu)",
            "ref_slice": "AutoFormer-style slicing, the ref backend: views of the max-size weights into F.linear / "
            "F.layer_norm / SDPA / F.conv2d (attention: SDPA on the model's q/k/v views of the [B, N, H, 3, d] qkv output)",
            "full_mask": "DNAS-style: the op at the full max width (input at max width too) times a 0/1 prefix mask",
            "dense": "the dense static op of the active shape: contiguous weights of exactly the active shape "
            "(F.linear = cuBLAS, F.layer_norm, F.conv2d; attention: SDPA on contiguous [B, H, N, d] q, k, v)",
            "fwd": "forward under torch.no_grad()",
            "fwd+bwd": "forward + backward(grad) with the input and all weights requiring grad; .grad reset to None "
            "outside the timed region",
            "speed_vs_X": "X_ms / impl_ms (throughput ratio; > 1 = faster than X)",
            "max widths": "ViT: the space's max arch (embed, heads, mlp ratio) on weights of the supernet size; "
            "mid: middle embed, lower-middle heads and ratio. dwconv: cnn-bignas layers, max = widest hidden and k 5, "
            "mid = middle width x middle expand and k 3",
            "masked sweep": "the *_masked kernels with the active width a device tensor and a mask of ones (with grad); "
            "cost_ratio = ms(f) / ms(f=1)",
        },
        "targets": (
            {"cpu": f"cpu backend >= {CPU_REF_TARGET}x ref_slice for each op it provides"}
            if suite == "cpu"
            else {
                "ops": f"every op >= {GPU_DENSE_TARGET}x the dense static op's throughput",
                "masked": f"masked op at active fraction f costs <= f + {MASK_SLACK} of full width",
                "step": f"supernet training step at a sampled arch <= {STEP_TARGET}x the exported model's step",
            }
        ),
        "cases": [],
    }
    if suite == "smoke":
        doc["note"] = "SMOKE RUN: TRITON_INTERPRET=1 on CPU, tiny shapes; the timings mean nothing"
    report = Report(json_path, doc)
    report.write()
    start_watchdog(report, budget, args.grace_s)

    impls = Impls(args.device, suite == "smoke")
    timer = None
    if suite != "cpu":
        timer = Timer(args.device, args.warmup_ms, args.rep_ms, 1, 2)
        at_stats: dict = {}
        if suite == "gpu":
            install_autotune_listener(at_stats)
            if args.autotune_rep_ms > 0:
                doc["settings"]["autotune"] = {
                    "rep_ms": args.autotune_rep_ms,
                    "warmup_ms": 5,
                    "autotuners": lighten_autotune(args.autotune_rep_ms, 5),
                }
        doc["autotune_stats"] = at_stats
    ctx = Ctx(args, suite, args.device, dtype, passes, timer, impls, budget)
    print(
        f"bench_kernels [{suite}] on {doc['machine']['device_name']}, torch {torch.__version__}, "
        f"triton {doc['triton']}, commit {str(doc['git']['commit'])[:10]}{' (dirty)' if doc['git']['dirty'] else ''}"
        f" -> {json_path}",
        flush=True,
    )
    try:
        if suite == "cpu":
            run_cpu_suite(ctx, report)
        else:
            run_gpu_suite(ctx, report)
        status = "complete" if not doc.get("skipped_for_budget") else "budget_exhausted"
    except KeyboardInterrupt:
        status = "interrupted"
    doc["unavailable"] = dict(impls.missing)
    doc["summary"] = summarize(doc)
    doc["status"] = status
    doc["plot"] = str(png_path)
    doc["plot_error"] = plot(doc, png_path)
    report.write()
    print_table(doc)
    print("\ntargets (met / missed / unknown):")
    for k, v in doc["summary"].items():
        print(f"  {k}: {v['met']} / {v['missed']} / {v['unknown']}")
    if doc["unavailable"]:
        print("unavailable:")
        for k, v in doc["unavailable"].items():
            print(f"  {k}: {v}")
    if suite == "smoke":
        print(
            "\nSMOKE RUN (TRITON_INTERPRET=1 on CPU, tiny shapes): the code paths ran; the numbers mean nothing"
        )
    print(
        f"\n{status} in {time.perf_counter() - T_START:.0f}s -> {json_path}"
        + (f", {png_path}" if not doc["plot_error"] else f" (no plot: {doc['plot_error']})")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
