"""What bench/bench_train_step.py writes and prints: the method and field definitions that go into
its JSON, and the per-space and summary tables."""

from __future__ import annotations

UPDATE_EVERY = 100  # the paper's
UPDATE_EVERY_MIN = 50  # the paper's ablated minimum (amortised number only)

# How the paths are timed (written into the JSON).
METHOD = (
    "per repeat: a fresh arch (sampler RNG reseeded per repeat; every path starts from "
    "that state) and one untimed forward+backward of it first (Bench.warm: the first run of "
    "new shapes is ~8% slower); paths shift (split), uniform, trainer, update run once each, "
    "interleaved, the starting path rotating; time.perf_counter; median and p20/p80 over "
    "the repeats after warm-up. Generator backward split off via a leaf copy of the "
    "one-hots (see the module docstring); checked against the fused backward "
    "(split_check)."
)
# What each field of a result row means (written into the JSON).
DEFINITIONS = {
    "shift.gen_fwd": "sampler.next(step) + sample.hard() + sampler.extra_loss(sample)",
    "shift.gen_bwd": (
        "autograd.backward([L_RC, *onehots], [None, *dL/d(onehots) from the supernet]) "
        "through the LSTM + clip_grad_norm_ of the generator"
    ),
    "shift.supernet_fwd_bwd": (
        "autocast model(x, leaf ArchSample) + label-smoothed CE + backward (weights and "
        "masks, stopping at the one-hots)"
    ),
    "shift.optim": "clip_grad_norm_(supernet) + AdamW step + zero_grad + scheduler step",
    "shift.step": "per-repeat sum of the four",
    "uniform": "the same step on sample.hard() (ArchConfig): no generator, masks or L_RC",
    "trainer.step": (
        "Trainer.train_step(x, y) unmodified at a non-update step (includes its "
        "bookkeeping: loss stats, count_flops, bin counts)"
    ),
    "update": "ProbabilityShift.snapshot(net) + sampler.update_shift(...) under autocast",
    "explore": "sampler.next(step) on an explore step (bin draw + sample_in_bin): all that an "
    "explore step adds to a uniform step",
    "amortised_shift_ms": "median(update.total) / update_every",
    "derived.total_ms": "median(shift.step) + amortised shift update",
    "derived.overhead_pct": "(median gen_fwd + median gen_bwd + amortised) / total_ms",
    "derived.vs_uniform_pct": "(total_ms - median uniform.step) / median uniform.step",
    "mask_overhead_pct": "median shift.supernet_fwd_bwd / median uniform.fwd_bwd - 1",
    "default_mix": (
        "the default generator.explore e: per repeat (1 - e) * shift.step + "
        "e * (uniform.step + explore.next) + amortised (B's update runs every update_every steps, "
        "explore or not), over uniform.step; paired median"
    ),
    "same_arch_as_uniform": (
        "repeats whose regenerated arch equalled the one the uniform path trained "
        "(trainer: compared by MACs)"
    ),
}


def print_space(r: dict) -> None:
    t, d = r["times"], r["derived"]
    s, u, up = t["shift"], t["uniform"], t["update"]

    def line(label, x, extra=""):
        print(f"  {label:44s} {x['median_ms']:9.2f}  [{x['p20_ms']:.1f}-{x['p80_ms']:.1f}]{extra}")

    d100, d50 = d[f"every_{UPDATE_EVERY}"], d[f"every_{UPDATE_EVERY_MIN}"]
    am = r["amortised_shift_ms"]
    print(
        f"\n{r['space']}  batch {r['batch']}, input {r['input']}, amp {r['amp']}, "
        f"{len(r['archs_mflops'])} archs (median {r['archs_mflops_median']:.1f} MMACs), "
        f"foreign cpu load {r['foreign_cpu_load']}"
    )
    print(f"  {'part':44s} {'median ms':>9s}  [p20-p80]")
    line("generator fwd (draw + LSTM + hard + L_RC)", s["gen_fwd"])
    line("generator bwd (LSTM + L_RC, + its clip)", s["gen_bwd"])
    line("supernet fwd+bwd (masked ArchSample)", s["supernet_fwd_bwd"])
    line("optimizer (clip + AdamW + zero_grad + sched)", s["optim"])
    line("shift step (sum of the 4, per repeat)", s["step"])
    line("shift update: snapshot w_{t-1}", up["snapshot"])
    line("shift update: update_shift", up["update_shift"])
    print(
        f"  {'shift update amortised /100 | /50':44s} {am[f'every_{UPDATE_EVERY}']:9.2f}"
        f"  | {am[f'every_{UPDATE_EVERY_MIN}']:.2f}"
    )
    print(f"  {'TOTAL shift step (+ amortised /100)':44s} {d100['total_ms']:9.2f}")
    line("uniform fwd+bwd (ArchConfig, same arch)", u["fwd_bwd"])
    line("uniform optimizer", u["optim"])
    line("UNIFORM step", u["step"])
    line(
        "Trainer.train_step (check, no update)",
        t["trainer"]["step"],
        f"  (+amort/100: {d100['trainer_total_ms']:.1f})",
    )
    flag = "ok" if d100["target_met"] else "MISSED"
    print(
        f"  overhead (gen + amortised shift) / total: {d100['overhead_pct']:.2f}% "
        f"(gen {d100['generator_pct']:.2f}% + shift {d100['shift_update_pct']:.2f}%)  "
        f"target <= 10%: {flag};  at update_every 50: {d50['overhead_pct']:.2f}%"
    )
    print(
        f"  shift vs uniform step: {d100['vs_uniform_pct']:+.2f}% (paired median "
        f"{d100['vs_uniform_pct_paired_median']:+.2f}%, target <= +10%: "
        f"{'ok' if d100['vs_uniform_target_met'] else 'MISSED'}); masks alone (supernet f+b): "
        f"{r['mask_overhead_pct']:+.2f}%"
    )
    m = r["default_mix"]
    print(
        f"  default mix (explore {m['explore']}: explore draw {m['explore_next_ms']:.2f} ms + a uniform "
        f"step): {m['step_ms']:.2f} ms, vs uniform paired median {m['vs_uniform_pct_paired_median']:+.2f}% "
        f"(<= +10%: {'ok' if m['target_10_met'] else 'MISSED'}, <= +5%: {'ok' if m['target_5_met'] else 'MISSED'})"
    )
    line("shift step, full-width Eq. 9 (grad_path=full)", t["shift_full"]["step"],
         f"  (vs uniform, paired median {d100['full_vs_uniform_pct_paired_median']:+.2f}%)")
    c = r["split_check"]
    print(
        f"  split check, max |fused - split| grad: supernet {c['supernet_max_abs_diff']:.2e} "
        f"(max |g| {c['supernet_max_abs_grad']:.2e}), generator {c['generator_max_abs_diff']:.2e} "
        f"(max |g| {c['generator_max_abs_grad']:.2e});  same arch: {r['same_arch_as_uniform']}"
    )


def print_summary(rows: list[dict]) -> None:
    hdr = (
        f"{'space':13s} {'amp':8s} | {'gen f+b':>8s} {'supernet':>9s} {'optim':>7s} "
        f"{'amort100':>8s} {'total':>9s} | {'uniform':>9s} {'trainer':>9s} | "
        f"{'ovh% 100':>8s} {'ovh% 50':>7s} {'vs unif%':>8s} {'mix vs%':>8s}"
    )
    print("\n" + hdr)
    print("-" * len(hdr))
    for r in rows:
        t, d = r["times"], r["derived"][f"every_{UPDATE_EVERY}"]
        d50 = r["derived"][f"every_{UPDATE_EVERY_MIN}"]
        print(
            f"{r['space']:13s} {r['amp']:8s} | {d['generator_ms']:8.2f} "
            f"{t['shift']['supernet_fwd_bwd']['median_ms']:9.2f} {t['shift']['optim']['median_ms']:7.2f} "
            f"{r['amortised_shift_ms'][f'every_{UPDATE_EVERY}']:8.2f} {d['total_ms']:9.2f} | "
            f"{t['uniform']['step']['median_ms']:9.2f} {t['trainer']['step']['median_ms']:9.2f} | "
            f"{d['overhead_pct']:8.2f} {d50['overhead_pct']:7.2f} {d['vs_uniform_pct']:+8.2f} "
            f"{r['default_mix']['vs_uniform_pct_paired_median']:+8.2f}"
        )
    print(
        "(ms, medians; ovh% = (generator fwd+bwd + amortised shift update) / shift step total; "
        "target <= 10%; vs unif% = the generator step's, mix vs% = the default explore mix's, paired)"
    )
