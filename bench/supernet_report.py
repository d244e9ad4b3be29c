"""bench_supernet: the definitions written into the JSON, the targets summary and the printed tables."""

from __future__ import annotations

from supernet_models import MODELS

DEFINITIONS = {
    "middle": "space.from_indices({d: len(d.choices) // 2}) for every decision",
    "bin<k>": (
        "one arch of FLOPs bin k (FlopsBins(space, n_bins=--bins)) by shiftnas.sampling.sample_in_bin: a "
        "uniform draw walked greedily into the bin, no generator; in_bin False where it was not reached"
    ),
    "mflops": "shiftnas.count_flops / 1e6: multiply-accumulates per image (the AutoFormer/ShiftNAS convention)",
    "params_m": "shiftnas.count_params / 1e6",
    "bfloat16": "the step under torch.autocast('cpu', dtype=torch.bfloat16), as optim.amp=bf16 trains",
    "timm": (
        "timm VisionTransformer(qkv_bias=True, class_token=True, global_pool='token'), fused SDPA; only "
        "where every layer has heads*head_dim == embed_dim and one mlp ratio"
    ),
    "ratios": (
        "'of_medians' = median(a)/median(b); 'paired_*' = quantiles of the per-repeat ratio a_i/b_i "
        "(harness.paired_ratio)"
    ),
    "gemm_peak": "harness.matmul_peak: 2 n^3 / the best time of an n x n x n matmul in the dtype, this process",
    "achieved_gflop_s": "(3 x 2 x mflops x 1e6 x batch) / median step seconds / 1e9: forward 2 FLOP per MAC, "
    "backward twice the forward",
    "gemm_fraction": "achieved FLOP/s / gemm_peak[dtype].flop_per_s",
    "fits": (
        "least squares median step ms = slope_ms_per_mmac * mflops + intercept_ms over the bin<k> rows of "
        "one space and dtype (harness.linear_fit); r2 = 1 - SS_res / SS_tot"
    ),
    "rss_model_mb": (
        "RSS after building the model (plus the input batch) minus RSS after imports, in a fresh process "
        "per (model, arch, dtype); the exported model's supernet is freed (gc + malloc_trim) first"
    ),
    "peak_rss_mb_step": (
        "peak RSS during {steps} training steps (VmHWM, reset via /proc/self/clear_refs just before the "
        "steps; ru_maxrss if that fails) minus RSS right before the steps (model built, input created)"
    ),
}


def _bf16_target_row(doc: dict) -> dict | None:
    for r in doc["results"]:
        if (r["space"], r["arch"], r["dtype"], r["batch"]) == (
            "autoformer-t",
            "max",
            "bfloat16",
            32,
        ):
            return r
    return None


def target_summary(doc: dict, targets: dict) -> dict:
    """Each target: met / missed counts, or why it could not be judged in this run."""
    se = [r["targets"]["supernet/exported"] for r in doc["results"]]
    r2 = [f["target_met"] for f in doc["fits"] if "target_met" in f]
    out = {
        "supernet/exported": {"met": sum(se), "missed": len(se) - sum(se)},
        "fit_r2": {"met": sum(r2), "missed": len(r2) - sum(r2)}
        if r2
        else {"not_judged": "no fit (--bins 0)"},
    }
    row = _bf16_target_row(doc)
    if row is None:
        why = (
            doc["skipped"].get("bfloat16")
            or "no bfloat16 autoformer-t max row at batch 32 in this run"
        )
        out["bf16_gemm_fraction"] = {"not_judged": why}
    else:
        frac = row["gemm_fraction"]["supernet"]
        out["bf16_gemm_fraction"] = {"supernet": frac, "met": frac >= targets["bf16_gemm_fraction"]}
    return out


def _cell(t: dict | None) -> str:
    return f"{t['median_ms']:7.1f} [{t['p20_ms']:.0f}-{t['p80_ms']:.0f}]" if t else "-"


def _peaks(r: dict) -> str:
    mem = r.get("memory") or {}
    return "/".join(
        f"{mem[m]['peak_rss_mb_step']:.0f}" if mem.get(m) and "peak_rss_mb_step" in mem[m] else "-"
        for m in MODELS
    )


def print_rows(doc: dict, targets: dict) -> None:
    lim = targets["supernet/exported"]
    hdr = (
        f"{'space':13s} {'dtype':8s} {'arch':6s} {'MMACs':>8s} | {'supernet ms':>17s} {'exported ms':>17s} "
        f"{'timm ms':>17s} | {'sup/exp':>7s} {'exp/timm':>8s} | {'GEMM% s/e':>9s} | {'peak MB s/e/t':>13s}"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in doc["results"]:
        t, g = r["times"], r["gemm_fraction"]
        se = r["ratios"]["supernet/exported"]["of_medians"]
        et = r["ratios"].get("exported/timm", {}).get("of_medians")
        print(
            f"{r['space']:13s} {r['dtype']:8s} {r['arch']:6s} {r['mflops']:8.1f} | {_cell(t.get('supernet')):>17s} "
            f"{_cell(t.get('exported')):>17s} {_cell(t.get('timm')):>17s} | {se:7.3f} "
            f"{(f'{et:8.3f}' if et else '       -')} | {100 * g['supernet']:4.0f}/{100 * g['exported']:<4.0f} | "
            f"{_peaks(r):>13s}{'' if se <= lim else f'  > {lim} target'}"
        )
    for dtype, reason in doc["skipped"].items():
        print(f"{dtype}: skipped: {reason}")
    s = doc["target_summary"]
    print(
        f"\ntargets: supernet/exported <= {lim}: {s['supernet/exported']['met']} met, "
        f"{s['supernet/exported']['missed']} missed; bf16 autoformer-t max b32 >= "
        f"{100 * targets['bf16_gemm_fraction']:.0f}% of the bf16 GEMM peak: {s['bf16_gemm_fraction']}"
    )
    for dtype, p in doc["gemm_peak"].items():
        print(
            f"GEMM peak {dtype}: {p['flop_per_s'] / 1e9:.1f} GFLOP/s ({p['n']}^3, best of {p['repeats']})"
        )


def print_fits(fits: list[dict], targets: dict) -> None:
    if not fits:
        return
    print(f"\nstep time vs MACs over the bin archs (target R^2 >= {targets['fit_r2']}):")
    for f in fits:
        head = f"  {f['space']:13s} {f['dtype']:8s} {f['model']:8s} n={f['n']}"
        if "error" in f:
            print(f"{head}: {f['error']}")
            continue
        r2 = "-" if f["r2"] is None else f"{f['r2']:.4f}"
        mark = "" if f["target_met"] else f"  < {targets['fit_r2']} target"
        print(
            f"{head}: {f['slope_ms_per_mmac']:.4f} ms/MMAC + {f['intercept_ms']:.2f} ms, R^2 {r2}{mark}"
        )
