"""A cost term: a table over the candidates of a few decisions (see `shiftnas.cost`)."""
from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..spaces import SearchSpace

if TYPE_CHECKING:
    import torch

__all__ = ["CostTerm", "tabulate"]


@dataclass(frozen=True)
class CostTerm:
    """cost = table[idx(names[0]), idx(names[1]), ...]: `values` is the table flattened in
    row-major order, one axis per name of length `shape[axis]`."""

    names: tuple[str, ...]
    shape: tuple[int, ...]
    values: tuple[float, ...]

    @property
    def strides(self) -> tuple[int, ...]:
        """Row-major strides of `values`, one per name."""
        out, s = [], 1
        for n in reversed(self.shape):
            out.append(s)
            s *= n
        return tuple(reversed(out))

    @functools.cached_property
    def table(self) -> torch.Tensor:
        """The table as a float64 tensor (imports torch)."""
        import torch

        return torch.tensor(self.values, dtype=torch.float64).reshape(self.shape)

    def at(self, idx: dict[str, int]) -> float:
        off = 0
        for n, size in zip(self.names, self.shape):
            off = off * size + idx[n]
        return self.values[off]

    def max_step(self, axis: int) -> float:
        """The largest |change| of the term when index `axis` moves by one (0 for one candidate)."""
        size, stride = self.shape[axis], self.strides[axis]
        v = self.values
        return max((abs(v[i + stride] - v[i]) for i in range(len(v)) if (i // stride) % size < size - 1), default=0.0)


def tabulate(space: SearchSpace, names: Sequence[str], fn: Callable[..., float]) -> CostTerm:
    """Tabulate fn(*values) over every combination of the candidates of `names`."""
    choices = [space.decision(n).choices for n in names]
    vals = tuple(float(fn(*combo)) for combo in itertools.product(*choices))
    return CostTerm(tuple(names), tuple(len(c) for c in choices), vals)
