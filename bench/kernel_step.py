"""bench_kernels: the whole-step check. A supernet training step at a sampled arch (the default
dispatch; the smoke forces triton) vs the exported model `net.export(arch)` vs the supernet on the
ref backend; zero_grad(set_to_none) + forward + cross_entropy + backward, no optimizer step."""

from __future__ import annotations

import os
import random
import statistics
import time

from harness import dtype_name, short_error
from kernel_cases import STEP_TARGET
from kernel_run import Ctx, Report, sync


def with_backend(name: str | None, fn):
    """`fn()` with SHIFTNAS_BACKEND set to `name` (unset for None), restored afterwards."""
    from shiftnas.ops import dispatch

    saved = os.environ.get("SHIFTNAS_BACKEND")

    def put(value):
        if value is None:
            os.environ.pop("SHIFTNAS_BACKEND", None)
        else:
            os.environ["SHIFTNAS_BACKEND"] = value
        dispatch.refresh()

    put(name)
    try:
        return fn()
    finally:
        put(saved)


def _build(ctx: Ctx, smoke: bool) -> tuple[dict, list]:
    """The step's description and its variants: (name, SHIFTNAS_BACKEND, step function)."""
    import torch
    import torch.nn.functional as F

    import shiftnas

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

    def stepper(module, forward):
        def step():
            module.zero_grad(set_to_none=True)
            with torch.autocast(ctx.device, dtype=ctx.dtype, enabled=amp):
                loss = F.cross_entropy(forward(x), y)
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
        "autocast": dtype_name(ctx.dtype) if amp else None,
        "what": "zero_grad(set_to_none) + forward + cross_entropy + backward, no optimizer step",
        "build_s": round(time.perf_counter() - t_build, 2),
        "models": {},
        "backend_choices": {},
        "rounds": 2,
    }
    return doc, variants


def _first_steps(doc: dict, variants: list, device: str) -> dict:
    """Run each variant once (compile, autotune); record the backends the dispatcher picked."""
    from shiftnas.ops import dispatch

    ok = {}
    for name, backend, step in variants:
        entry = {"SHIFTNAS_BACKEND": backend}
        t0 = time.perf_counter()

        def first(step=step):
            step()
            sync(device)
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
    return ok


def _timed_rounds(doc: dict, ok: dict, ctx: Ctx) -> None:
    """Two rounds of `ctx.timer` per variant, the order reversed in the second; the mean median."""
    rep_ms = max(4 * ctx.args.rep_ms, 400) if ctx.device == "cuda" else None
    rounds: dict[str, list] = {n: [] for n in ok}
    for r in range(2):
        for name in list(ok) if r == 0 else list(reversed(list(ok))):
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


def run_step(ctx: Ctx, report: Report) -> None:
    import torch

    from shiftnas.ops import dispatch

    doc, variants = _build(ctx, ctx.suite == "smoke")
    ok = _first_steps(doc, variants, ctx.device)
    _timed_rounds(doc, ok, ctx)
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
    ratio = doc.get("supernet/exported")
    tail = (
        f" | supernet/exported {ratio:.3f} (target <= {STEP_TARGET})" if ratio is not None else ""
    )
    print(f"  step {doc['space']} b{doc['batch']}: " + " | ".join(parts) + tail)
