"""bench_kernels: the CPU suite. The `cpu` backend ops of `shiftnas._C` (layer_norm_cpu, dwconv_cpu)
vs ref_slice and dense, per dtype of `--cpu-dtypes`, interleaved by `harness.time_cpu`."""

from __future__ import annotations

from harness import loadavg
from kernel_cases import (
    Impls,
    OpCase,
    build_dw_case,
    build_vit_case,
    dw_layers,
    vit_dims,
)
from kernel_run import Ctx, Report, try_case

CPU_SHAPES = (("autoformer-t", "max"), ("autoformer-t", "mid"), ("autoformer-s", "max"))


def no_mask(case: OpCase) -> OpCase:
    case.impls.pop("full_mask", None)  # the CPU suite compares with ref_slice and dense only
    return case


def build_cpu_ln_case(space: str, width: str, dims: dict, dtype, impls: Impls) -> OpCase:
    return no_mask(build_vit_case("layer_norm", space, width, dims, dtype, "cpu", impls, ("cpu",)))


def cpu_plan(ctx: Ctx) -> list[tuple[str, object]]:
    """(label, thunk building the case) per CPU case."""
    import torch

    args = ctx.args
    ops = [o for o in args.ops.split(",") if o]
    layers = [
        L for L in dw_layers(args.cpu_batch, False) if (L["Cm"], L["H"]) in ((144, 112), (768, 14))
    ]
    builders = []
    if "layer_norm" in ops:
        builders.append(("layer_norm", build_cpu_ln_case))
    cases = []
    for dt in [getattr(torch, d) for d in args.cpu_dtypes.split(",") if d]:
        for s, w in CPU_SHAPES:
            dims = {**vit_dims(s, w), "B": args.cpu_batch}
            for op, build in builders:
                cases.append(
                    (
                        f"{op} {s} {w} {dt}",
                        lambda b=build, s=s, w=w, d=dims, t=dt: b(s, w, d, t, ctx.impls),
                    )
                )
        if "dwconv" in ops:
            for L in layers:
                for w in ("max", "mid"):
                    cases.append(
                        (
                            f"dwconv {L['name']} {w} {dt}",
                            lambda L=L, w=w, dt=dt: no_mask(
                                build_dw_case(L, w, dt, "cpu", ctx.impls, ("cpu",))
                            ),
                        )
                    )
    return cases


def run_cpu_suite(ctx: Ctx, report: Report) -> None:
    import torch

    args = ctx.args
    cases = cpu_plan(ctx)
    print(
        f"plan: {len(cases)} cases x {len(ctx.passes)} passes x (cpu, ref_slice, dense), {args.repeats} "
        f"interleaved repeats after {args.warmup} warm-up, {torch.get_num_threads()} threads; "
        f"loadavg {loadavg()[0]:.2f}",
        flush=True,
    )
    print("\n== ops (ms median; speed vs D=dense, R=ref_slice)", flush=True)
    for label, build in cases:
        if ctx.budget.left() < 2:
            report.add("skipped_for_budget", label)
            continue
        try_case(label, build, ctx, report)
