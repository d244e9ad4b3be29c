"""Subnet samplers behind one interface: `sampler.next(step) -> [(arch, role), ...]`.

`build_sampler(name, space, **cfg)` builds one by name: uniform (AutoFormer/SPOS), sandwich
(BigNAS), attentive (AttentiveNAS), bin_uniform (the paper's ablation) and shift (ShiftNAS: `ArchGenerator` + `ProbabilityShift`,
the learnable bin distribution B of docs/method.md section 3).
"""

from .attentive import AttentiveSampler
from .base import (
    ROLES,
    BinDraw,
    Sampled,
    Sampler,
    ScoreFn,
    StepContext,
    build_sampler,
    list_samplers,
    register_sampler,
    sample_in_bin,
)
from .bin_uniform import BinUniformSampler
from .sandwich import SandwichSampler
from .shift import ProbabilityShift
from .shift_sampler import ShiftSampler
from .uniform import UniformSampler

__all__ = [
    "ROLES",
    "AttentiveSampler",
    "BinDraw",
    "BinUniformSampler",
    "ProbabilityShift",
    "Sampled",
    "Sampler",
    "SandwichSampler",
    "ScoreFn",
    "ShiftSampler",
    "StepContext",
    "UniformSampler",
    "build_sampler",
    "list_samplers",
    "register_sampler",
    "sample_in_bin",
]
