"""Exact cost terms of the MBConv spaces: MACs and parameters of `StaticMBConv`.

MACs follow `torch.utils.flop_counter.FlopCounterMode` / 2 at batch 1: every conv (the 1x1
convs of SE on the pooled 1x1 map and the AttentiveNAS shortcut's 1x1 conv on the pooled grid
included) and linear; BN, activations, pooling, the SE scale, residual sums and biases are not
counted. Params are `sum(p.numel())` of the exported model (BN affine included, running
statistics excluded). One term per layer group, tabulated over the few decisions it depends on;
a block's term is zero when the block is past its stage's depth.
"""

from __future__ import annotations

from ..spaces import SearchSpace
from ..spaces.cnn import conv_out, has_residual, hidden_width, se_mid, stage_input_size
from .terms import CostTerm, tabulate

__all__ = ["block_cost", "mbconv_cost_terms"]


def block_cost(
    size: int,
    cin: int,
    cout: int,
    kernel: int,
    expand: float,
    stride: int,
    se: bool,
    residual: bool = False,
) -> tuple[int, int]:
    """(MACs, params) of one MBConv block whose input is size x size with `cin` channels; a
    `residual` block whose width changes has a 1x1 shortcut conv on the (pooled) output grid."""
    hidden = hidden_width(cin, expand)
    out = conv_out(size, stride)
    macs = params = 0
    if expand != 1:
        macs += size * size * cin * hidden
        params += cin * hidden + 2 * hidden
    macs += out * out * hidden * kernel * kernel
    params += hidden * kernel * kernel + 2 * hidden
    if se:
        mid = se_mid(hidden)
        macs += 2 * hidden * mid
        params += 2 * hidden * mid + mid + hidden
    macs += out * out * hidden * cout
    params += hidden * cout + 2 * cout
    if residual and cin != cout:
        macs += out * out * cin * cout
        params += cin * cout
    return macs, params


def mbconv_cost_terms(
    space: SearchSpace, num_classes: int
) -> tuple[list[CostTerm], list[CostTerm]]:
    """(flops_terms, params_terms) whose sums at an arch's indices are its MACs and params."""
    hp = space.hparams
    in_chans, fe = hp["in_chans"], hp["final_expand"]
    shortcut = hp.get("shortcut", "ofa")
    n_stages = len(hp["stages"])

    def size_at(resolution: int, s: int) -> int:
        return stage_input_size(hp, resolution, s)

    def term(names: list[str], fn) -> CostTerm:
        names = list(dict.fromkeys(names))  # j > 0: the in-width is the stage width itself
        return tabulate(space, names, lambda *vals: fn(dict(zip(names, vals))))

    def block_terms(s: int, j: int, in_name: str) -> tuple[CostTerm, CostTerm]:
        st = hp["stages"][s]
        width, depth = f"stage{s}.width", f"stage{s}.depth"
        k, t = f"stage{s}.block{j}.kernel", f"stage{s}.block{j}.expand"
        gated = j >= min(space.decision(depth).choices)  # the block may lie past the depth
        stride = st["stride"] if j == 0 else 1

        def cost(v: dict, what: int) -> int:
            if gated and v[depth] <= j:
                return 0
            size = size_at(v["resolution"], s + (j > 0)) if what == 0 else 1  # params: size-free
            residual = has_residual(shortcut, j)
            return block_cost(size, v[in_name], v[width], v[k], v[t], stride, st["se"], residual)[what]

        names = [in_name, width, k, t] + ([depth] if gated else [])
        return term(["resolution"] + names, lambda v: cost(v, 0)), term(names, lambda v: cost(v, 1))

    flops = [
        term(
            ["resolution", "stem.width"],
            lambda v: size_at(v["resolution"], 0) ** 2 * in_chans * v["stem.width"] * 9,
        )
    ]
    params = [term(["stem.width"], lambda v: in_chans * v["stem.width"] * 9 + 2 * v["stem.width"])]
    prev = "stem.width"
    for s in range(n_stages):
        for j in range(max(space.decision(f"stage{s}.depth").choices)):
            f, p = block_terms(s, j, prev if j == 0 else f"stage{s}.width")
            flops.append(f)
            params.append(p)
        prev = f"stage{s}.width"
    # final 1x1 expand conv (+ BN), feature-mix linear (no bias), classifier (bias)
    flops.append(
        term(
            ["resolution", prev],
            lambda v: size_at(v["resolution"], n_stages) ** 2 * fe * v[prev] ** 2,
        )
    )
    params.append(term([prev], lambda v: fe * v[prev] ** 2 + 2 * fe * v[prev]))
    flops.append(term([prev, "head.width"], lambda v: fe * v[prev] * v["head.width"]))
    params.append(term([prev, "head.width"], lambda v: fe * v[prev] * v["head.width"]))
    flops.append(term(["head.width"], lambda v: v["head.width"] * num_classes))
    params.append(term(["head.width"], lambda v: v["head.width"] * num_classes + num_classes))
    return flops, params
