"""Fault injection: SIGKILLs, a crashing or SIGKILLed torchrun rank, a flipped checkpoint byte, nan/inf gradients.

Every scenario trains the tiny Fashion-MNIST tree (tests/fmnist_tiny.py: 640 train images) with
a shift-sampler vit-fmnist run in fp32 on CPU (torch loader, no augmentation, batch 16, a
checkpoint every 4 steps, a metrics line every step), through `train.py` in subprocesses, and
checks what the faults leave against the same run without them. The machinery, and what each
kill waits for, is in tests/reliability/fault_harness.py; the hooks in
shiftnas/train/faults.py (opt-in SHIFTNAS_FAULT_* variables).

  crash          `train.py --resume auto` SIGKILLed --kills times (default 20; the pytest
                 version does 5), cycling through: after a random step, inside a checkpoint
                 write (SHIFTNAS_FAULT_CKPT_DELAY_S), during start-up; then run to the end.
  restart        `torchrun --nproc_per_node=2 --max-restarts=2 train.py` (gloo); rank 1 raises
                 once before step 14 (mid-epoch); the job must restart and resume by itself.
  rank_kill      the same, but rank 1 SIGKILLs its own process (no Python cleanup).
  byte_flip      a finished run's newest checkpoint gets one flipped byte in its tensor data;
                 `--resume auto` must refuse it (digest), move it aside, resume from the one
                 before and end bit-identical ("data lost" counts corrupt weights loaded).
  nan/inf grads  isolated nan / inf / -inf gradients in the supernet or the generator (4 runs).
  bad streak     inf gradients from step 5 on: exit 3 after 10 in a row; then `--resume auto`
                 without the fault.

Columns:
  faults injected  kills, crashed ranks, or steps given a non-finite gradient
  runs survived    processes hit by a fault whose run then continued to the expected result
                   (crash: each killed attempt was resumed from its newest complete checkpoint
                   and the job ended bit-identical to an uninterrupted run)
  steps lost       steps recomputed because of the fault (work after the newest checkpoint),
                   or, for isolated nan/inf, the updates dropped
  data lost        unreadable checkpoints + metrics.jsonl lines lost + final-checkpoint entries,
                   summary.json or sampling.json values differing from the uninterrupted run +
                   checkpoints holding nan/inf (must be 0)

    python bench/fault_injection.py                     # -> bench/results/fault_injection.json
    python bench/fault_injection.py --kills 5 --skip restart --out /tmp/fi.json
"""
from __future__ import annotations

import argparse
import itertools
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS_DIR, ROOT, new_doc, write_result

sys.path[1:1] = [str(ROOT / "tests"), str(ROOT / "tests" / "reliability")]

DEFAULT_OUT = RESULTS_DIR / "fault_injection.json"
SCENARIOS = ("crash", "restart", "rank_kill", "byte_flip", "numeric", "streak")
GRAD_SPECS = ("nan:3,9", "inf:5,6", "-inf:7:generator", "nan:4,11:generator")


def _diff_count(diff: dict) -> int:
    """Differences found by compare_runs (a lost or extra metrics line counts one)."""
    return sum(len(items) for items in diff.values())


def crash(root: Path, work: Path, kills: int, steps: int, seed: int) -> dict:
    from fault_harness import compare_runs, crash_campaign, reference_run, run_overrides, train_cmd

    ref = reference_run(train_cmd(run_overrides(root, work, "ref", steps)), work / "ref", work / "logs" / "ref.log")
    camp = crash_campaign(train_cmd(run_overrides(root, work, "crashed", steps)), work / "crashed", work / "logs",
                          n_kills=kills, seed=seed, ref=ref, total_steps=steps)
    diff = compare_runs(work / "ref", work / "crashed")
    att = camp["attempts"]
    survived = 0 if diff else sum(1 for a, b in itertools.pairwise(att) if a["killed"] and b["resume_ok"] and not a["unreadable"])
    return {
        "row": "crash (SIGKILL)", "faults": camp["kills"], "survived": survived, "runs": camp["kills"],
        "steps_lost": camp["steps_lost"],
        "data_lost": camp["unreadable_checkpoints"] + _diff_count(diff),
        "detail": {**camp, "diff": diff, "reference": vars(ref), "steps": steps, "seed": seed},
    }


def restart(root: Path, work: Path, how: str = "raise") -> dict:
    from fault_harness import restart_scenario

    r = restart_scenario(root, work, work / "logs", steps=16, ckpt_every=4, raise_at=14, rank=1, how=how)
    ok = (r["exit_code"] == 0 and r["fault_fired"] and r["crash_logged"] and r.get("diff") == {}
          and r["restarts"] == 1 and r.get("images_seen") == r.get("expected_images"))
    return {
        "row": "torchrun restart" if how == "raise" else "rank SIGKILL", "faults": int(r["fault_fired"]),
        "survived": int(ok), "runs": 1,
        "steps_lost": r["steps_lost"],
        "data_lost": len(r["unreadable_checkpoints"]) + _diff_count(r.get("diff", {"run": ["failed"]})),
        "detail": r,
    }


def rank_kill(root: Path, work: Path) -> dict:
    return restart(root, work, how="sigkill")


def byte_flip(root: Path, work: Path) -> dict:
    from fault_harness import byte_flip_scenario

    r = byte_flip_scenario(root, work, work / "logs", steps=16, ckpt_every=4)
    ok = r["exit_code"] == 0 and r["resumed_at"] == [12] and r["moved_aside"] == [r["flipped"] + ".corrupt"]
    return {
        "row": "byte flip", "faults": 1, "survived": int(ok and r.get("diff") == {}), "runs": 1,
        "steps_lost": r["steps_lost"], "data_lost": _diff_count(r.get("diff", {"run": ["failed"]})),
        "detail": r,
    }


def numeric(root: Path, work: Path) -> dict:
    from fault_harness import grad_fault_run

    runs = [grad_fault_run(root, work, work / "logs", spec, steps=16) for spec in GRAD_SPECS]
    return {
        "row": "nan/inf gradients", "faults": sum(r["injected"] for r in runs),
        "survived": sum(r["ok"] for r in runs), "runs": len(runs),
        "steps_lost": sum(r.get("skipped_counted", 0) for r in runs),
        "data_lost": sum(not r.get("finite", False) for r in runs),
        "detail": runs,
    }


def streak(root: Path, work: Path) -> dict:
    from fault_harness import divergence_scenario

    r = divergence_scenario(root, work, work / "logs", steps=16, ckpt_every=4, bad_from=5)
    ok = (r["exit_code"] == 3 and not r["traceback"] and len(r["error_lines"]) == 1 and r["finite"]
          and r["resume_exit_code"] == 0 and r["diff"] == {})
    return {
        "row": "bad streak (exit 3)", "faults": r["injected"], "survived": int(ok), "runs": 1,
        "steps_lost": r["steps_lost"],
        "data_lost": len(r["unreadable_checkpoints"]) + int(not r["finite"]) + _diff_count(r["diff"]),
        "detail": r,
    }


def print_table(rows: list[dict]) -> None:
    head = f"{'scenario':<20} {'faults injected':>15} {'runs survived':>14} {'steps lost':>11} {'data lost':>10}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['row']:<20} {r['faults']:>15} {str(r['survived']) + '/' + str(r['runs']):>14} "
              f"{r['steps_lost']!s:>11} {r['data_lost']:>10}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20, help="SIGKILLs of the crash scenario (default %(default)s)")
    ap.add_argument("--steps", type=int, default=96,
                    help="steps of the crash scenario's run: enough that 20 kills land before its end (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments (default %(default)s)")
    ap.add_argument("--skip", default="", help=f"comma-separated scenarios to leave out, of {','.join(SCENARIOS)}")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="JSON result (default %(default)s)")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (run dirs, one log per attempt)")
    args = ap.parse_args(argv)
    skip = {s for s in args.skip.split(",") if s}
    if skip - set(SCENARIOS):
        ap.error(f"--skip {args.skip!r}: unknown scenario(s) {sorted(skip - set(SCENARIOS))}; choose from {SCENARIOS}")

    import pytest
    from fmnist_tiny import make_tiny_root

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fault-injection-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    doc = new_doc("fault_injection", command=" ".join([Path(sys.executable).name, *sys.argv]))
    try:
        try:
            root = make_tiny_root(work / "fmnist-tiny") if not (work / "fmnist-tiny").is_dir() else work / "fmnist-tiny"
        except pytest.skip.Exception as e:
            print(f"fault_injection.py: {e}", file=sys.stderr)
            return 2
        rows = []
        for name in SCENARIOS:
            if name in skip:
                continue
            t = time.monotonic()
            if name == "crash":
                row = crash(root, work / name, args.kills, args.steps, args.seed)
            else:
                row = globals()[name](root, work / name)
            row["wall_s"] = round(time.monotonic() - t, 1)
            rows.append(row)
            print(f"{name}: {row['wall_s']} s", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    doc.update(
        wall_s=round(time.monotonic() - t0, 1),
        table=[{k: v for k, v in r.items() if k != "detail"} for r in rows],
        scenarios={r["row"]: r["detail"] for r in rows},
    )
    write_result(args.out, doc)
    print_table(rows)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
