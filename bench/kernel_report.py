"""bench_kernels: printing, the targets summary and the plot of the result document."""

from __future__ import annotations

from pathlib import Path

from harness import short_error, write_figure
from kernel_cases import (
    BASELINES,
    GPU_DENSE_TARGET,
    IMPL_ORDER,
    MASK_SLACK,
    SPACE_SHORT,
    STEP_TARGET,
    UNDER_TEST,
)

DT_SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
COLORS = {
    "triton": "tab:blue",
    "cuda": "tab:green",
    "cpu": "tab:green",
    "ref_slice": "tab:orange",
    "full_mask": "tab:red",
}


def device_name(doc: dict) -> str | None:
    """The GPU's name where the run had one, else the CPU model."""
    m = doc.get("machine", {})
    return (m.get("gpu") or {}).get("name") or m.get("cpu_model")


def fmt_ms(ms: dict | None) -> str:
    if not ms:
        return "-"
    v = ms["median_ms"]
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def _x(v: float | None) -> str:
    return f"{v:.2f}x" if v else "-"


def print_case_line(row: dict) -> None:
    ms = row["ms"]
    names = [n for n in IMPL_ORDER if n in ms or n in row["errors"]]
    cells = " ".join(f"{n}={fmt_ms(ms.get(n)) if n in ms else 'ERR'}" for n in names)
    nan = float("nan")
    rat = " ".join(
        f"{n}:{r.get('speed_vs_dense', nan):.2f}xD/{r.get('speed_vs_ref_slice', nan):.2f}xR"
        for n, r in row["ratios"].items()
    )
    miss = [k for k, v in row["targets"].items() if v is False]
    print(
        f"  {row['op']:11s} {SPACE_SHORT.get(row['space'], row['space']):12s} {row['width']:3s} {row['pass']:8s} "
        f"{cells} | {rat}" + (f" | MISS {','.join(miss)}" if miss else ""),
        flush=True,
    )


def _table_line(r: dict, cols: list[str], under: list[str], cpu: bool) -> str:
    cells = [
        f"{fmt_ms(r['ms'][c]):>13s}"
        if c in r["ms"]
        else f"{'ERR' if c in r['errors'] else '-':>13s}"
        for c in cols
    ]
    rat = []
    for u in under:
        rr = r["ratios"].get(u, {})
        rat.append(f"{_x(rr.get('speed_vs_dense')):>12s} {_x(rr.get('speed_vs_ref_slice')):>10s}")
    miss = any(v is False for v in r["targets"].values())
    return (
        f"{r['op']:11s} {SPACE_SHORT.get(r['space'], r['space']):12s} {r['width']:3s} {r['shape_str']:38s} "
        f"{r['dtype']:8s} {r['pass']:8s} | "
        + " ".join(cells)
        + " | "
        + " ".join(rat)
        + (f" | {r.get('foreign_cpu_load')}" if cpu else "")
        + ("  <- target missed" if miss else "")
    )


def print_table(doc: dict) -> None:
    rows = doc.get("cases", [])
    if not rows:
        return
    cpu = doc.get("suite") == "cpu"
    under = [n for n in UNDER_TEST if any(n in r["ms"] or n in r["errors"] for r in rows)]
    cols = under + [n for n in BASELINES if any(n in r["ms"] for r in rows)]
    hdr = (
        f"{'op':11s} {'space':12s} {'w':3s} {'shape':38s} {'dtype':8s} {'pass':8s} | "
        + " ".join(f"{c + ' ms':>13s}" for c in cols)
        + " | "
        + " ".join(f"{u + '/dense':>12s} {u + '/ref':>10s}" for u in under)
        + (" | load" if cpu else "")
    )
    print("\n" + hdr)
    print("-" * len(hdr))
    for r in rows:
        print(_table_line(r, cols, under, cpu))
    errs = {}
    for r in rows:
        for n, e in r["errors"].items():
            errs.setdefault(f"{r['op']}/{n}", e)
    if errs:
        print("\nunavailable / failed implementations (first reason per op and impl):")
        for k, e in errs.items():
            print(f"  {k}: {e}")


def summarize(doc: dict) -> dict:
    """Per target: how many cases met it, missed it, or could not tell."""
    out = {}

    def count(key: str, v) -> None:
        s = out.setdefault(key, {"met": 0, "missed": 0, "unknown": 0})
        s["met" if v else "missed" if v is False else "unknown"] += 1

    for r in doc.get("cases", []):
        for k, v in r["targets"].items():
            count(k, v)
    mask_key = f"masked cost(f)/cost(1) <= f + {MASK_SLACK}"
    for r in doc.get("sweep", []):
        if "points" not in r:
            count(mask_key, None)
        for pt in r.get("points", []):
            count(mask_key, pt.get("met"))
    st = doc.get("step")
    if st:
        count(f"supernet step <= {STEP_TARGET}x exported", st.get("met"))
    return out


def _plot_pass(ax, rs: list[dict], impls: list[str], p: str, target: float | None) -> None:
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
        ax.barh(ys, vals, height=h, label=n, color=COLORS.get(n))
    ax.axvline(1.0, color="k", lw=0.8)
    if target is not None:
        ax.axvline(target, color="tab:red", lw=0.8, ls="--", label=f"target {target}x")
    ax.set_yticks(range(len(rs)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("speed vs dense static op (dense ms / ms; > 1 = faster)")
    ax.set_title(p)
    ax.legend(fontsize=7, loc="lower right")


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
    size = (7 * len(passes), 1.5 + 0.1 * n_cases * max(1, len(impls)))
    fig, axes = plt.subplots(1, len(passes), figsize=size, squeeze=False)
    target = None if doc.get("suite") == "cpu" else GPU_DENSE_TARGET
    for ax, p in zip(axes[0], passes):
        _plot_pass(ax, [r for r in rows if r["pass"] == p], impls, p, target)
    fig.suptitle(
        f"bench_kernels ({doc.get('suite')}): {device_name(doc)}, torch {doc['machine'].get('torch')}, "
        f"commit {str((doc.get('git') or {}).get('commit'))[:10]}",
        fontsize=9,
    )
    fig.tight_layout()
    write_figure(fig, path, dpi=110)
    plt.close(fig)
    return None


def print_end(doc: dict) -> None:
    """The table, the targets summary and what was unavailable."""
    print_table(doc)
    print("\ntargets (met / missed / unknown):")
    for k, v in doc["summary"].items():
        print(f"  {k}: {v['met']} / {v['missed']} / {v['unknown']}")
    if doc["unavailable"]:
        print("unavailable:")
        for k, v in doc["unavailable"].items():
            print(f"  {k}: {v}")
