"""bench_supernet: the archs, the models of an arch, one training step, and the peak-memory child.

Models of one arch: ``supernet`` (`net(x, arch)`, the weight-sharing supernet), ``exported``
(`shiftnas.export_subnet(net, arch)`, the dense static model) and ``timm`` (timm's
`VisionTransformer` of the same shape, only for ViT archs where every layer has heads * head_dim
== embed_dim and one mlp ratio).

Peak memory is measured in a fresh subprocess per (space, arch, model, dtype): `measure_memory`
runs `memory_child` in a pool that forks one process per measurement.
"""

from __future__ import annotations

import ctypes
import gc
import multiprocessing
import os
import random
import resource

from harness import short_error

ARCH_LABELS = ("min", "middle", "max")
MODELS = ("supernet", "exported", "timm")
MEMORY_STEPS = 3


# -- archs ----------------------------------------------------------------------------------------
def make_arch(space, label: str):
    """min / max of the space; middle = the middle candidate (index len // 2) of every decision."""
    if label == "min":
        return space.min()
    if label == "max":
        return space.max()
    if label == "middle":
        return space.from_indices({d.name: len(d.choices) // 2 for d in space.decisions})
    raise ValueError(f"arch label {label!r}; allowed: {list(ARCH_LABELS)}")


def bin_archs(space_name: str, n_bins: int, seed: int = 0) -> list[dict]:
    """One arch per FLOPs bin, no generator: `shiftnas.sampling.sample_in_bin` (a uniform draw
    walked greedily into the bin); ``in_bin`` False where the bin was not reached."""
    from shiftnas.cost import FlopsBins
    from shiftnas.sampling import sample_in_bin

    bins = FlopsBins(space_name, n_bins=n_bins)
    rng = random.Random(seed)
    out = []
    for k in range(n_bins):
        draw = sample_in_bin(space_name, bins, k, rng)
        out.append({"label": f"bin{k}", "bin": k, "arch": draw.arch, "in_bin": draw.hit})
    return out


def timm_shape(space, arch) -> dict | None:
    """timm VisionTransformer kwargs of `arch`; None when a uniform timm ViT cannot express it."""
    if space.family != "vit":
        return None
    hp = space.hparams
    E, d = arch["embed_dim"], hp["head_dim"]
    layers = [
        (arch[f"layers.{i}.num_heads"], arch[f"layers.{i}.mlp_ratio"]) for i in range(arch["depth"])
    ]
    if any(h * d != E for h, _ in layers) or len({r for _, r in layers}) != 1:
        return None
    return {
        "img_size": hp["img_size"],
        "patch_size": hp["patch_size"],
        "in_chans": hp["in_chans"],
        "num_classes": hp["num_classes"],
        "embed_dim": E,
        "depth": arch["depth"],
        "num_heads": layers[0][0],
        "mlp_ratio": layers[0][1],
        "qkv_bias": True,
        "class_token": True,
        "global_pool": "token",
    }


def make_inputs(space, arch, batch: int, seed: int = 0):
    import torch

    hp = space.hparams
    res = arch["resolution"] if space.family == "cnn" else hp["img_size"]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, hp["in_chans"], res, res, generator=g)
    y = torch.randint(0, hp["num_classes"], (batch,), generator=g)
    return x, y


# -- models and the step --------------------------------------------------------------------------
def build_supernet(space_name: str):
    import torch

    import shiftnas

    torch.manual_seed(0)
    return shiftnas.build_supernet(space_name).train()


def build_models(net, space, arch, which=MODELS) -> dict:
    """{model name: (module whose grads are zeroed, forward callable)} for `which`; timm only
    where `timm_shape` can express the arch."""
    import torch

    import shiftnas

    out = {}
    if "supernet" in which:
        out["supernet"] = (net, lambda x: net(x, arch))
    if "exported" in which:
        sub = shiftnas.export_subnet(net, arch).train()
        out["exported"] = (sub, sub)
    kw = timm_shape(space, arch) if "timm" in which else None
    if kw is not None:
        from timm.models.vision_transformer import VisionTransformer

        torch.manual_seed(0)
        vit = VisionTransformer(**kw).train()
        out["timm"] = (vit, vit)
    return out


def train_step(module, fwd, x, y, dtype) -> None:
    """zero_grad(set_to_none=True), forward under bf16 autocast when `dtype` is bfloat16 (as
    optim.amp=bf16 trains), cross-entropy, backward; no optimizer step."""
    import torch
    import torch.nn.functional as F

    module.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        loss = F.cross_entropy(fwd(x), y)
    loss.backward()


# -- memory (fresh subprocess per model, arch and dtype) ------------------------------------------
def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _hwm_mb() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def memory_child(spec: str, threads: int, batch: int) -> dict | None:
    """In a fresh process: RSS of building one model (``space:label:model:dtype``) and the peak
    RSS of `MEMORY_STEPS` training steps; None where the model does not exist for the arch."""
    import torch

    import shiftnas

    torch.set_num_threads(threads)
    space_name, label, model, dtype = spec.split(":")
    space = shiftnas.get_space(space_name)
    arch = make_arch(space, label)
    gc.collect()
    _malloc_trim()
    rss_start = _rss_mb()
    net = build_supernet(space_name) if model != "timm" else None
    models = build_models(net, space, arch, which=(model,))
    del net
    if model not in models:
        return None
    module, fwd = models[model]
    del models  # the exported model's build also built a supernet: drop everything but the model
    gc.collect()
    _malloc_trim()
    x, y = make_inputs(space, arch, batch)
    rss_build = _rss_mb()
    hwm_reset = _reset_hwm()
    for _ in range(MEMORY_STEPS):
        train_step(module, fwd, x, y, getattr(torch, dtype))
    hwm = _hwm_mb() if hwm_reset else None
    if hwm is None:
        # ru_maxrss is a fallback only: a child starts with its parent's peak, which hides the
        # step's own peak.
        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "rss_model_mb": round(rss_build - rss_start, 1),
        "peak_rss_mb_step": round(hwm - rss_build, 1),
        "peak_source": "VmHWM after clear_refs" if hwm_reset else "ru_maxrss (upper bound)",
    }


def _memory_job(job: tuple) -> dict | None:
    try:
        return memory_child(*job)
    except Exception as e:  # one model's failure is its row's, not the run's
        return {"error": short_error(e)}


def measure_memory(
    jobs: list[tuple[str, int, int]], processes: int, timeout_s: float = 900
) -> list:
    """`memory_child(spec, threads, batch)` of every job, each in a fresh process (a pool with one
    task per process) forked from a forkserver that has imported torch, timm and shiftnas but run
    nothing, so neither imports nor allocator state carry over between measurements."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(
        ["torch", "timm.models.vision_transformer", "shiftnas", "supernet_models"]
    )
    with ctx.Pool(max(1, processes), maxtasksperchild=1) as pool:
        pending = [pool.apply_async(_memory_job, (job,)) for job in jobs]
        out = []
        for res in pending:
            try:
                out.append(res.get(timeout=timeout_s))
            except multiprocessing.TimeoutError:
                out.append({"error": f"no result within {timeout_s:.0f} s (killed or hung)"})
        return out
