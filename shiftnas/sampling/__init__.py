"""Subnet samplers behind one interface: `sampler.next(step) -> [(arch, role), ...]`.

`build_sampler(name, space, **cfg)` builds one by name: uniform (AutoFormer/SPOS), sandwich
(BigNAS), attentive (AttentiveNAS), bin_uniform (the paper's ablation).
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
from .uniform import UniformSampler

__all__ = [
    "ROLES",
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
