"""`shiftnas latency build|check`."""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["add_latency_parser"]


def _build(args) -> int:
    from .table import build_table, progress_printer

    out = Path(args.out)
    if out.exists() and not args.force:
        raise ValueError(f"--out {out} exists; give --force to replace it")
    partial = out.with_name(out.name + ".partial")
    say = progress_printer()
    table = build_table(args.space, device=args.device, batch=args.batch, threads=args.threads, dtype=args.dtype,
                        repeats=args.repeats, warmup=args.warmup, calibrate=args.calibrate, resume=partial,
                        progress=say)
    table.save(out)
    partial.unlink(missing_ok=True)
    n = len(table.entries)
    print(f"\n{out}: {table.space} on {table.machine['device_name']} ({table.machine['threads']} threads), "
          f"batch {table.batch}, {n} entries, overhead {table.overhead_ms:.3f} ms, "
          f"scales {', '.join(f'{g} {v:.3f}' for g, v in table.notes['scale'].items())}, "
          f"largest drop where FLOPs rise {table.notes['monotone_violation_max_ms']:.4f} ms")
    return 0


def _check(args) -> int:
    import sys

    from .check import check_table, plot_check
    from .table import LatencyTable, progress_printer

    table = LatencyTable.load(args.table)
    differ = table.differences(args.device or table.machine["device"], table.machine["threads"])
    if differ:
        print("warning: this machine differs from the table's: " + "; ".join(differ), file=sys.stderr)
    res = check_table(table, n=args.n, seed=args.seed, device=args.device, repeats=args.repeats,
                      warmup=args.warmup, progress=progress_printer(), rounds=args.rounds)
    res["table"] = str(args.table)
    res["machine_differences"] = differ
    print(f"\n{table.space} batch {table.batch}: MAPE {res['mape_pct']:.2f}%, max error {res['max_abs_pct']:.1f}%, "
          f"Kendall tau {res['kendall_tau']:.3f} over {res['n']} random subnets")
    if res["pace_vs_table"] is not None:
        print(f"this machine ran {res['pace_vs_table']:.3f}x the reference subnet's time at the build; "
              f"at the build's pace: MAPE {res['mape_pct_at_table_pace']:.2f}%")
    if args.json:
        from ..atomic import atomic_write

        atomic_write(Path(args.json), lambda f: f.write((json.dumps(res, indent=1) + "\n").encode()))
    if args.plot:
        print(f"scatter: {plot_check(res, args.plot)}")
    return 0


def _positive(text: str) -> int:
    import argparse

    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v}: must be >= 1")
    return v


def add_latency_parser(sub) -> None:
    from .table import DTYPES

    p = sub.add_parser("latency", help="measured latency tables: build one for this device, check its predictions",
                       description="e.g. shiftnas latency build --space vit-fmnist --out vit.json; "
                                   "shiftnas latency check --table vit.json -n 50 --plot vit.png")
    cmds = p.add_subparsers(dest="latency_cmd", required=True, metavar="{build,check}")
    b = cmds.add_parser("build", help="time every cost-table entry of a space on this device (resumable)")
    b.add_argument("--space", required=True, help="a space name (see `shiftnas spaces`)")
    b.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    b.add_argument("--batch", type=_positive, default=1, help="images per forward pass (default: 1)")
    b.add_argument("--threads", type=_positive, default=None, help="torch threads (default: torch's)")
    b.add_argument("--dtype", default="float32", choices=list(DTYPES))
    b.add_argument("--repeats", type=_positive, default=15, help="timed samples per entry (default: 15, >= 3)")
    b.add_argument("--warmup", type=int, default=3, help="untimed calls first (default: 3)")
    b.add_argument("--calibrate", type=int, default=32,
                   help="random subnets timed end to end that fit the overhead and scales (default: 32)")
    b.add_argument("--out", required=True, help="the table (JSON); OUT.partial holds progress until it is done")
    b.add_argument("--force", action="store_true", help="replace an existing --out")
    b.set_defaults(fn=_build)
    c = cmds.add_parser("check", help="predicted vs measured latency of random exported subnets")
    c.add_argument("--table", required=True, help="a table from `shiftnas latency build`")
    c.add_argument("-n", type=_positive, default=50, help="random subnets (default: 50)")
    c.add_argument("--seed", type=int, default=1, help="(default: 1; the build's calibration uses 0)")
    c.add_argument("--device", default=None, help="default: the table's")
    c.add_argument("--repeats", type=_positive, default=15)
    c.add_argument("--warmup", type=int, default=3)
    c.add_argument("--rounds", type=_positive, default=3,
                   help="time every subnet once per round, order reversed every other round; its time is the median (default: 3)")
    c.add_argument("--json", default=None, help="write the result (rows, MAPE, tau) here")
    c.add_argument("--plot", default=None, help="write the predicted-vs-measured scatter (PNG) here")
    c.set_defaults(fn=_check)
