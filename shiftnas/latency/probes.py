"""What a latency table times: one probe (a module and its input) per distinct table entry.

The latency table has the FLOPs cost model's terms (shiftnas/cost/): the same names, the same
shapes, the same row-major order, so everything that walks the cost tables (exact counts,
feasibility masks, bins) can read measured milliseconds instead of MACs. An entry's value is the
time of the part of the network that the FLOPs term counts, run alone as the exported model runs
it (the same `StaticViT` / `StaticMBConv` modules):

- vit: the ends (patch embedding, class token and position embedding, final norm, pooling and
  head) per embed dim; one transformer block per (embed dim, heads, mlp ratio), shared by every
  layer index, zero past the depth;
- cnn: the stem per (resolution, width); one MBConv block per (input size, in/out width, kernel,
  expand, stride, SE, residual), zero past the stage's depth; the final 1x1 conv with the
  pooling per (resolution, width); the feature-mix linear; the classifier.

A probe is a hashable tuple (`Probe`): entries with the same tuple are timed once.
"""
from __future__ import annotations

import itertools

import torch
from torch import nn

from ..cost import CostTerm, cost_terms
from ..spaces import ArchConfig, SearchSpace, get_space
from ..spaces.cnn import has_residual, stage_input_size

__all__ = ["Probe", "arch_probes", "build_probe", "reference_arch", "reference_block", "term_groups", "term_probes"]

Probe = tuple  # (kind, *shape parameters): hashable, JSON-able as a list


def _vit_probe(space: SearchSpace, t: int, v: dict) -> Probe | None:
    if t == 0:
        return ("vit_ends", v["embed_dim"])
    i = t - 1  # the layer index of term t
    if v["depth"] <= i:
        return None
    return ("vit_block", v["embed_dim"], v[f"layers.{i}.num_heads"], v[f"layers.{i}.mlp_ratio"])


def _cnn_layout(space: SearchSpace) -> list[tuple]:
    """Per FLOPs term of a cnn space, in order: what it counts ((stage, block) for a block)."""
    hp = space.hparams
    out = [("stem",)]
    for s in range(len(hp["stages"])):
        out += [("block", s, j) for j in range(max(space.decision(f"stage{s}.depth").choices))]
    return out + [("final",), ("mix",), ("classifier",)]


def _cnn_probe(space: SearchSpace, what: tuple, v: dict) -> Probe | None:

    hp = space.hparams
    n = len(hp["stages"])
    last = f"stage{n - 1}.width"
    if what[0] == "stem":
        return ("cnn_stem", v["resolution"], v["stem.width"])
    if what[0] == "final":
        return ("cnn_final", stage_input_size(hp, v["resolution"], n), v[last])
    if what[0] == "mix":
        return ("cnn_mix", hp["final_expand"] * v[last], v["head.width"])
    if what[0] == "classifier":
        return ("cnn_classifier", v["head.width"])
    _, s, j = what
    depth = f"stage{s}.depth"
    if depth in v and v[depth] <= j:
        return None
    st = hp["stages"][s]
    cin = v[f"stage{s - 1}.width" if s > 0 else "stem.width"] if j == 0 else v[f"stage{s}.width"]
    size = stage_input_size(hp, v["resolution"], s + (j > 0))
    return ("cnn_block", size, cin, v[f"stage{s}.width"], v[f"stage{s}.block{j}.kernel"],
            v[f"stage{s}.block{j}.expand"], st["stride"] if j == 0 else 1, bool(st["se"]),
            has_residual(hp.get("shortcut", "ofa"), j))


def term_probes(space: SearchSpace | str) -> list[tuple[tuple[str, ...], tuple[int, ...], list[Probe | None]]]:
    """Per FLOPs term of `space`: (names, shape, the probe of every entry in row-major order;
    None where the term is zero: a layer or block past the depth)."""
    space = get_space(space)
    terms = cost_terms(space, "flops")
    if space.family == "vit":
        spec = [lambda v, t=t: _vit_probe(space, t, v) for t in range(len(terms))]
    else:
        layout = _cnn_layout(space)
        if len(layout) != len(terms):  # pragma: no cover - the cost model and this file disagree
            raise RuntimeError(f"{space.name}: {len(terms)} cost terms but {len(layout)} latency probes")
        spec = [lambda v, w=w: _cnn_probe(space, w, v) for w in layout]
    out = []
    for term, fn in zip(terms, spec):
        choices = [space.decision(n).choices for n in term.names]
        probes = [fn(dict(zip(term.names, combo))) for combo in itertools.product(*choices)]
        out.append((term.names, term.shape, probes))
    return out


def term_groups(space: SearchSpace | str) -> list[str]:
    """Per FLOPs term, the group whose entries share one calibration scale (table.py): vit "ends"
    and "blocks"; cnn "stem", "stage<s>" (that stage's blocks), "head" (final conv, mix, classifier)."""
    space = get_space(space)
    if space.family == "vit":
        return ["ends"] + ["blocks"] * (len(cost_terms(space, "flops")) - 1)
    return [f"stage{w[1]}" if w[0] == "block" else ("stem" if w[0] == "stem" else "head") for w in _cnn_layout(space)]


def arch_probes(space: SearchSpace | str, arch: ArchConfig) -> list[Probe | None]:
    """The probe of every term at `arch` (None where the term is zero)."""
    space = get_space(space)
    idx = space.indices(arch)
    return [CostTerm(names, shape, tuple(probes)).at(idx) for names, shape, probes in term_probes(space)]


def reference_arch(space: SearchSpace | str) -> ArchConfig:
    """The reference subnet whole subnets are timed against: the middle choice of every decision."""
    space = get_space(space)
    return space.from_indices({d.name: len(d.choices) // 2 for d in space.decisions})


def reference_block(space: SearchSpace | str) -> Probe:
    """The reference workload entries are timed against: the reference subnet's first block."""
    return next(p for p in arch_probes(space, reference_arch(space)) if p is not None and p[0].endswith("_block"))


def _arch_with(space: SearchSpace, **values) -> ArchConfig:
    d = space.min().to_dict()
    d.update(values)
    return ArchConfig.from_dict(space.name, d)


def build_probe(space: SearchSpace | str, probe: Probe, batch: int, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32) -> tuple[nn.Module, torch.Tensor]:
    """The module a probe times, in eval mode on `device`, and a random input batch for it."""
    from ..models.export import build_static
    from ..models.static_mbconv import MBConvBlock
    from ..models.static_vit import Block
    from ..spaces.vit import mlp_hidden

    space = get_space(space)
    hp = space.hparams
    kind, *a = probe
    kw = {"device": device, "dtype": dtype}
    if kind == "vit_ends":
        m = build_static(_arch_with(space, embed_dim=a[0]))
        m.blocks = nn.Sequential()  # the ends only
        x = torch.randn(batch, hp["in_chans"], hp["img_size"], hp["img_size"], **kw)
    elif kind == "vit_block":
        E, h, r = a
        grid = hp["img_size"] // hp["patch_size"]
        m = Block(E, h, hp["head_dim"], mlp_hidden(E, r), hp["rel_pos"], grid, hp["ln_eps"])
        x = torch.randn(batch, grid * grid + 1, E, **kw)
    elif kind == "cnn_stem":
        R, W = a
        full = build_static(_arch_with(space, resolution=R, **{"stem.width": W}))
        m = nn.Sequential(full.stem_conv, full.stem_bn, full.stem_act)
        x = torch.randn(batch, hp["in_chans"], R, R, **kw)
    elif kind == "cnn_block":
        size, cin, cout, k, t, stride, se, residual = a
        m = MBConvBlock(cin, cout, k, t, stride, se, residual)
        x = torch.randn(batch, cin, size, size, **kw)
    elif kind == "cnn_final":
        size, W = a
        fe = hp["final_expand"] * W
        m = _Final(nn.Conv2d(W, fe, 1, bias=False), nn.BatchNorm2d(fe))
        x = torch.randn(batch, W, size, size, **kw)
    elif kind == "cnn_mix":
        cin, W = a
        m = nn.Sequential(nn.Linear(cin, W, bias=False), nn.SiLU())
        x = torch.randn(batch, cin, **kw)
    elif kind == "cnn_classifier":
        m = nn.Linear(a[0], hp["num_classes"])
        x = torch.randn(batch, a[0], **kw)
    else:
        raise ValueError(f"unknown latency probe {probe!r}")
    return m.to(**kw).eval(), x


class _Final(nn.Module):
    """StaticMBConv's final 1x1 conv + BN + SiLU and the global average pool of forward_head."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d):
        super().__init__()
        self.conv, self.bn, self.act = conv, bn, nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x))).mean((2, 3))
