"""`ArchSample`: a subnet as differentiable one-hots, the generator's output (docs/method.md Eq. 9).

Every decision of the space (inactive ones included) carries a one-hot vector over its
candidates: hard in the forward pass, with a straight-through gradient from the generator.
The matrix mapping turns a one-hot p into a prefix mask p' = sum_j p_j m_j over channels,
heads or layers. Two gradient paths, both with the hard subnet's forward value:

- prefix (`full_width=False`, the default): the supernet computes only the hard (arg-max)
  subnet and multiplies each op's output by the first `active` entries of its mask, whose value
  is 1: the multiply is a tap (`shiftnas.ops.ref.mask_tap`: no forward work, the backward gives
  the mask sum(y * dy)). Cheap (the subnet's own cost), but d(loss)/d(one-hot) is the same for every candidate above the chosen
  one and zero when the smallest is chosen: the task loss can only ask for smaller subnets.
- full width (`full_width=True`, Eq. 9 as written): every op runs at its widest candidate and
  its whole output is multiplied by the mask, so channels, heads and layers beyond the chosen
  width contribute to the gradient and the task loss can ask for a larger candidate. A step
  costs what the largest subnet costs.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch

from .base import ArchConfig, get_space

__all__ = ["ArchSample"]


@dataclass(frozen=True)
class ArchSample:
    space: str
    onehots: Mapping[str, torch.Tensor]  # decision name -> [n_choices], one-hot in value
    full_width: bool = False  # Eq. 9 at full width (see the module docstring)
    # indices(), read once: the trainer's hard() and the supernet's forward share one host sync
    _indices: dict | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sp = get_space(self.space)
        names = {d.name for d in sp.decisions}
        if set(self.onehots) != names:
            missing, extra = sorted(names - set(self.onehots)), sorted(set(self.onehots) - names)
            raise ValueError(f"ArchSample for {self.space!r}: missing decisions {missing}, unknown {extra}")
        for d in sp.decisions:
            t = self.onehots[d.name]
            if t.dim() != 1 or t.shape[0] != len(d.choices):
                raise ValueError(
                    f"ArchSample {d.name}: expected a vector of {len(d.choices)} (one per choice "
                    f"{list(d.choices)}), got shape {tuple(t.shape)}"
                )

    @classmethod
    def from_arch(cls, arch: ArchConfig, requires_grad: bool = False, device=None) -> "ArchSample":
        """Hard one-hots of `arch` (inactive decisions pick candidate 0)."""
        sp = get_space(arch.space)
        idx = sp.indices(arch)
        onehots = {}
        for d in sp.decisions:
            t = torch.zeros(len(d.choices), device=device)
            t[idx[d.name]] = 1.0
            onehots[d.name] = t.requires_grad_(requires_grad)
        return cls(arch.space, onehots)

    @classmethod
    def decoded(cls, space: str, onehots: Mapping[str, torch.Tensor], indices: Mapping[str, int]) -> "ArchSample":
        """A sample whose arg-max `indices` the host already knows (the generator's decode made
        them): `indices()` and `hard()` then need no host sync."""
        s = cls(space, onehots)
        object.__setattr__(s, "_indices", dict(indices))
        return s

    def indices(self) -> dict[str, int]:
        """Arg-max candidate of every decision (one host sync for all of them, at the first call:
        the one-hots are not to be changed in place after it)."""
        if self._indices is None:
            names = list(self.onehots)
            flat = torch.stack([self.onehots[n].detach().argmax() for n in names]).tolist()
            object.__setattr__(self, "_indices", dict(zip(names, flat)))
        return dict(self._indices)

    def hard(self) -> ArchConfig:
        """The subnet this sample selects (arg-max of every active decision)."""
        return get_space(self.space).from_indices(self.indices())

    def prefix_mask(self, name: str, widths: Sequence[int], length: int | None = None) -> torch.Tensor:
        """Matrix mapping: sum_j p_j * [c < widths[j]] for c in range(length)."""
        p = self.onehots[name]
        length = length if length is not None else max(widths)
        return p @ _prefix_matrix(tuple(widths), length, p.device, p.dtype)

    def gate(self, name: str, index: int) -> torch.Tensor:
        """Straight-through scalar for a non-prefix decision (kernel size, resolution): p[index]."""
        return self.onehots[name][index]

    def to(self, device) -> "ArchSample":
        return ArchSample(self.space, {k: v.to(device) for k, v in self.onehots.items()}, self.full_width)


@functools.lru_cache(maxsize=4096)
def _prefix_matrix(widths: tuple[int, ...], length: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[len(widths), length]: row j is [c < widths[j]]; built once per shape (never written to),
    outside inference mode (the mask's matmul saves it for the backward)."""
    with torch.inference_mode(False):
        w = torch.as_tensor(widths, device=device)
        return (torch.arange(length, device=device)[None, :] < w[:, None]).to(dtype)
