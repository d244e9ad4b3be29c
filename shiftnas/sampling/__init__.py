"""Subnet samplers behind one interface: `sampler.next(step) -> [(arch, role), ...]`.

`build_sampler(name, space, **cfg)` builds one by name: uniform (AutoFormer/SPOS), sandwich
(BigNAS), attentive (AttentiveNAS), bin_uniform (the paper's ablation). `ProbabilityShift` is the learnable bin distribution B of
ShiftNAS (PAPER.md section 3); the `shift` sampler that joins it with the generator comes with
the training engine.
"""

from .attentive import AttentiveSampler
from .base import (
    ROLES,
    BinDraw,
    Sampled,
    Sampler,
    ScoreFn,
    build_sampler,
    list_samplers,
    register_sampler,
    sample_in_bin,
)
from .bin_uniform import BinUniformSampler
from .sandwich import SandwichSampler
from .shift import ProbabilityShift
from .uniform import UniformSampler

__all__ = [
    "ROLES",
    "ProbabilityShift",
    "AttentiveSampler",
    "BinDraw",
    "BinUniformSampler",
    "Sampled",
    "Sampler",
    "SandwichSampler",
    "ScoreFn",
    "UniformSampler",
    "build_sampler",
    "list_samplers",
    "register_sampler",
    "sample_in_bin",
]
