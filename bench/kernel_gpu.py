"""bench_kernels: the GPU suite (and the smoke run through its code paths on CPU): op cases, the
masked-op sweep and the whole-step check, within `--budget-s`."""

from __future__ import annotations

import importlib

from harness import short_error
from kernel_cases import VIT_OPS, build_dw_case, build_vit_case, dw_layers, vit_dims
from kernel_run import Ctx, Report, try_case
from kernel_step import run_step
from kernel_sweep import FRACTIONS, run_sweep_item, sweep_plan


def lighten_autotune(rep_ms: float, warmup_ms: float) -> list[str]:
    """Benchmark the Triton autotuners' candidate configs for rep_ms instead of 100 ms each."""
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
                obj.do_bench = lambda fn, quantiles: triton.testing.do_bench(
                    fn, warmup=warmup_ms, rep=rep_ms, quantiles=quantiles
                )
                obj._bench_light = True
                changed.append(f"{mod}.{name}")
    return changed


def install_autotune_listener(stats: dict) -> None:
    """Count the autotuned keys and the seconds autotuning took into `stats`."""
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


def gpu_plan(ctx: Ctx) -> list[tuple[str, object]]:
    """(label, thunk) per op case, most important first: max widths, then mid widths."""
    args, plan = ctx.args, []
    smoke = ctx.suite == "smoke"
    spaces = ["smoke"] if smoke else [s for s in args.spaces.split(",") if s]
    ops = [o for o in args.ops.split(",") if o]
    under = ("triton",) if smoke else ("triton", "cuda")
    layers = dw_layers(128, smoke)
    for width in ("max", "mid"):
        for s in spaces:
            for op in (o for o in VIT_OPS if o in ops):
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


def _announce(ctx: Ctx, report: Report, plan: list, sweep: list, do_step: bool) -> None:
    args = ctx.args
    per_call_s = (args.warmup_ms + args.rep_ms + 20) / 1e3 if ctx.suite == "gpu" else 0.05
    n_timed = len(plan) * len(ctx.passes) * 5 + len(sweep) * len(ctx.passes) * len(FRACTIONS)
    est = n_timed * per_call_s + (3 * 2 * max(4 * args.rep_ms, 400) / 1e3 if do_step else 0)
    compile_note = (
        "+ Triton compile/autotune, ~60-150 s on a machine with a cold Triton cache"
        if ctx.suite == "gpu"
        else ""
    )
    print(
        f"plan: {len(plan)} op cases x {len(ctx.passes)} passes, {len(sweep)} masked-sweep items x "
        f"{len(FRACTIONS)} fractions, step={'yes' if do_step else 'no'}; estimated ~{est:.0f}s of timing "
        f"{compile_note}; budget {args.budget_s:.0f}s from start ({ctx.budget.left():.0f}s left), hard stop "
        f"+{args.grace_s:.0f}s",
        flush=True,
    )
    report.set(
        "estimate", {"timed_calls": n_timed, "timing_s": round(est, 1), "budget_s": args.budget_s}
    )


def _run_ops(ctx: Ctx, report: Report, plan: list, reserve_s: float, skipped: list) -> None:
    import torch

    print("\n== ops (ms median; speed vs D=dense, R=ref_slice)", flush=True)
    for label, build in plan:
        if ctx.budget.left() < reserve_s + 3:
            skipped.append(f"ops: {label}")
            continue
        try_case(label, build, ctx, report)
        if ctx.device == "cuda":
            torch.cuda.empty_cache()


def _run_sweep(ctx: Ctx, report: Report, sweep: list, reserve_s: float, skipped: list) -> None:
    import torch

    if sweep:
        print("\n== masked-op sweep: cost(f) / cost(1)  ('!' = above f + 0.1)", flush=True)
    for op, space, spec in sweep:
        if ctx.budget.left() < reserve_s + 2:
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


def run_gpu_suite(ctx: Ctx, report: Report) -> None:
    args = ctx.args
    plan = gpu_plan(ctx) if "ops" in args.sections else []
    sweep = sweep_plan(ctx) if "sweep" in args.sections else []
    do_step = "step" in args.sections
    _announce(ctx, report, plan, sweep, do_step)
    step_reserve = args.step_reserve_s if do_step else 0.0
    sweep_reserve = 15.0 if sweep and ctx.suite == "gpu" else 0.0
    skipped: list[str] = []
    _run_ops(ctx, report, plan, step_reserve + sweep_reserve, skipped)
    _run_sweep(ctx, report, sweep, step_reserve, skipped)
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
        more = " ..." if len(skipped) > 12 else ""
        print(
            f"\nskipped to stay within the budget: {len(skipped)}: "
            + "; ".join(skipped[:12])
            + more
        )
