"""bench_kernels: the masked-op sweep. The *_masked kernels at full allocation with the active
width a device tensor, timed at active fractions f in `FRACTIONS`: cost(f) / cost(1)."""

from __future__ import annotations

from dataclasses import dataclass

from harness import dtype_name, short_error
from kernel_cases import (
    MASK_SLACK,
    SPACE_SHORT,
    Impls,
    dw_layers,
    leaf,
    ones_leaf,
    qkv_views,
    tensor_kw,
    vit_dims,
)
from kernel_run import Ctx, Report, clear, fwd, fwd_bwd, sync

FRACTIONS = (1.0, 0.75, 0.5, 0.25)  # timed from full width down; reported ascending


@dataclass
class Masked:
    """A masked kernel's call at full allocation; `width` is the device tensor of the active width."""

    fn: object  # zero-argument callable, or None when the kernel is missing
    leaves: list
    width: object
    width_max: int
    shape_str: str
    where: tuple[str, str]  # (module, name) of the kernel, for the reason it is missing


def _width(n: int, device):
    import torch

    return torch.tensor([n], device=device, dtype=torch.int32)


def _dwconv_masked(L: dict, kw: dict, impls: Impls) -> Masked:
    B, Hs, s, Cm, k = L["B"], L["H"], L["stride"], L["Cm"], L["k_max"]
    f = impls.kernel("dwconv", "elastic_dwconv_masked")
    x, w, mask = (
        leaf(B, Cm, Hs, Hs, **kw),
        leaf(Cm, 1, k, k, scale=1.0 / k, **kw),
        ones_leaf(Cm, **kw),
    )
    active = _width(Cm, kw["device"])
    fn = f and (lambda: f(x, w, None, s, active, mask))
    shape = f"[{B}, C/{Cm}, {Hs}x{Hs}] k{k} s{s}"
    return Masked(fn, [x, w, mask], active, Cm, shape, ("dwconv", "elastic_dwconv_masked"))


def _linear_masked(D: dict, kw: dict, impls: Impls) -> Masked:
    """fc1-shaped: embed -> hidden, the active out width a device tensor."""
    B, N, Em, Dhm = D["B"], D["N"], D["Em"], D["Dhm"]
    f = impls.kernel("linear", "linear_masked")
    x, W, b = leaf(B, N, Em, **kw), leaf(Dhm, Em, scale=Em**-0.5, **kw), leaf(Dhm, scale=0.02, **kw)
    mask, width = ones_leaf(Dhm, **kw), _width(Dhm, kw["device"])
    fn = f and (lambda: f(x, W, b, Dhm, out_width=width, mask=mask))
    shape = f"[{B}x{N}, {Em}] -> w/{Dhm}"
    return Masked(fn, [x, W, b, mask], width, Dhm, shape, ("linear", "linear_masked"))


def _mlp_masked(D: dict, kw: dict, impls: Impls) -> Masked:
    B, N, Em, Dhm = D["B"], D["N"], D["Em"], D["Dhm"]
    f = impls.kernel("mlp", "mlp_masked")
    x = leaf(B, N, Em, **kw)
    W1, b1 = leaf(Dhm, Em, scale=Em**-0.5, **kw), leaf(Dhm, scale=0.02, **kw)
    W2, b2 = leaf(Em, Dhm, scale=Dhm**-0.5, **kw), leaf(Em, scale=0.02, **kw)
    mask, width = ones_leaf(Dhm, **kw), _width(Dhm, kw["device"])
    fn = f and (lambda: f(x, W1, b1, W2, b2, Dhm, hidden_width=width, hidden_mask=mask))
    shape = f"[{B}x{N}, {Em}] hidden w/{Dhm}"
    return Masked(fn, [x, W1, b1, W2, b2, mask], width, Dhm, shape, ("mlp", "mlp_masked"))


def _attention_masked(D: dict, kw: dict, impls: Impls) -> Masked:
    B, N, d, Hm = D["B"], D["N"], D["d"], D["Hm"]
    f = impls.kernel("attention", "elastic_attention_masked")
    qkv, mask, heads = leaf(B, N, Hm, 3, d, **kw), ones_leaf(Hm, **kw), _width(Hm, kw["device"])
    fn = f and (lambda: f(*qkv_views(qkv), mask, heads))
    shape = f"[{B}, h/{Hm} heads, {N}, {d}]"
    return Masked(fn, [qkv, mask], heads, Hm, shape, ("attention", "elastic_attention_masked"))


BUILDERS = {
    "dwconv_masked": _dwconv_masked,
    "linear_masked": _linear_masked,
    "mlp_masked": _mlp_masked,
    "attention_masked": _attention_masked,
}


def sweep_plan(ctx: Ctx) -> list[tuple[str, str, dict]]:
    """(masked op, space or layer name, dims or layer) per sweep item."""
    if ctx.suite == "smoke":
        spaces, layers = ["smoke"], dw_layers(2, True)[:1]
    else:
        spaces = [s for s in ctx.args.spaces.split(",") if s]
        layers = [L for L in dw_layers(128, False) if (L["Cm"], L["H"]) in ((768, 14), (144, 112))]
    ops = [o for o in ctx.args.ops.split(",") if o]
    items = []
    for s in spaces:
        dims = vit_dims(s, "max")
        for op, base in (
            ("linear_masked", "linear_qkv"),
            ("mlp_masked", "mlp"),
            ("attention_masked", "attention"),
        ):
            if base in ops or op in ops:
                items.append((op, s, dims))
    if "dwconv" in ops:
        items += [("dwconv_masked", L["name"], L) for L in layers]
    return items


def _active(op: str, f: float, wmax: int) -> int:
    if op == "dwconv_masked":
        return max(1, min(wmax, 8 * round(f * wmax / 8)))
    return max(1, round(f * wmax))


def _time_points(op: str, m: Masked, p: str, gy, ctx: Ctx, points: list) -> None:
    """Append the cost at each fraction to `points` (kept up to a failure); each width's first
    call (compile / autotune) is untimed."""
    for f in FRACTIONS:
        w = _active(op, f, m.width_max)
        m.width.fill_(w)
        run = fwd(m.fn) if p == "fwd" else fwd_bwd(m.fn, gy)
        clear(m.leaves)
        run()
        sync(ctx.device)
        ms = ctx.timer(run, grad_to_none=m.leaves)
        points.append({"f": f, "width": w, "f_actual": round(w / m.width_max, 4), "ms": ms})


def _cost_ratios(points: list[dict]) -> list[dict]:
    """cost(f) / cost(1) and the target per point, ascending in f."""
    full = next((pt["ms"]["median_ms"] for pt in points if pt["f"] == 1.0), None)
    for pt in points:
        if full:
            pt["cost_ratio"] = round(pt["ms"]["median_ms"] / full, 4)
            pt["target"] = f"<= f_actual + {MASK_SLACK}"
            pt["met"] = pt["cost_ratio"] <= pt["f_actual"] + MASK_SLACK
    return sorted(points, key=lambda pt: pt["f"])


def _print_sweep(op: str, space: str, p: str, points: list[dict], error: str | None) -> None:
    cells = " ".join(
        f"f={pt['f_actual']:.2f}:{pt.get('cost_ratio', float('nan')):.2f}{'' if pt.get('met', True) else '!'}"
        for pt in points
    )
    tail = f"  ERROR {error}" if error else ""
    print(f"  sweep {op:17s} {SPACE_SHORT.get(space, space):12s} {p:8s} {cells}{tail}")


def run_sweep_item(op: str, space: str, spec: dict, ctx: Ctx, report: Report) -> None:
    import torch

    m = BUILDERS[op](spec, tensor_kw(ctx.dtype, ctx.device), ctx.impls)
    base = {
        "section": "sweep",
        "op": op,
        "space": space,
        "shape_str": m.shape_str,
        "width_max": m.width_max,
        "dtype": dtype_name(ctx.dtype),
    }
    if m.fn is None:
        why = ctx.impls.reason(*m.where)
        for p in ctx.passes:
            report.add("sweep", {**base, "pass": p, "error": why})
        print(f"  sweep {op:17s} {SPACE_SHORT.get(space, space):12s} unavailable: {why}")
        return
    y = fwd(m.fn)()
    gy = torch.randn(y.shape, device=y.device, dtype=torch.float32).to(y.dtype)
    del y
    for p in ctx.passes:
        points, error = [], None
        try:
            _time_points(op, m, p, gy, ctx, points)
        except Exception as e:
            error = short_error(e)
        points = _cost_ratios(points)
        row = {**base, "pass": p, "points": points, **({"error": error} if error else {})}
        report.add("sweep", row)
        _print_sweep(op, space, p, points, error)
    m.width.fill_(m.width_max)
