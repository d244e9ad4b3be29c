"""`ArchGenerator`: the LSTM that maps a FLOPs bin to an architecture (docs/method.md section 2).

The cost is FLOPs unless `cost=` names another (`shiftnas.cost.get_cost`: parameters, or a
measured latency table in whole ns); bins, windows, masks and the resource loss are then all in
that cost, and "FLOPs" below reads as "the cost".

One `nn.LSTMCell` emits one decision per step, in `space.decisions` order. Step 0 reads a
linear embedding of the bin vector G(B) (so the target stays differentiable w.r.t. B);
step i > 0 reads a learned embedding of decision i-1's one-hot (Zoph & Le style). Every step
also reads the budget still left: (C - cmin) / F_max and (cmax - C) / F_max, with cmin / cmax
the cheapest / dearest completion of the decisions made so far and C the target. Each decision
*kind* has one linear head (4 for the ViT spaces, 6 for the CNN spaces here) and one input
embedding. Decisions of one kind may differ in choice count (CNN stage widths have 2 or 3
candidates): the kind's head and embedding are sized for its largest count and a decision with
n candidates uses the first n rows / columns.

Budget-exact decoding: before each decision, the candidates from which no completion can land
in the target window are masked (`shiftnas.budget.Feasibility`, exact), for training samples
(the drawn bin) and at deployment (`generate`: a bin, a user's budget as a ceiling, or an
interval) alike. So every architecture the generator emits lies in its window, whatever the
generator has learned; the resource loss and the task loss shape *where* in the window.

Each decision is drawn with hard Gumbel-softmax on the masked logits (straight-through,
docs/method.md Eq. 9); the supernet turns the one-hots into prefix masks, so the task loss and the
resource loss L_RC = lambda * ((cost(p) - C) / F_max)^2 (Eq. 10) both reach the generator.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from .budget import budget_window, feasibility
from .cost import Cost, as_cost, expected_cost, make_bins
from .spaces import ArchConfig, SearchSpace, get_space
from .spaces.arch_sample import ArchSample

__all__ = ["ArchGenerator"]


def _key(kind: str) -> str:
    # ModuleDict keys may not contain "." (they become state_dict path separators).
    return kind.replace(".", "_")


def _gumbel_hard(logits: torch.Tensor, tau: float, rng: torch.Generator | None) -> torch.Tensor:
    """Hard Gumbel-softmax, straight-through (as `F.gumbel_softmax(hard=True)`, with a seedable
    noise source). Masked candidates carry -inf logits and get probability 0."""
    u = torch.rand(logits.shape, generator=rng, device=logits.device, dtype=torch.float32)
    expo = -torch.log(u.clamp_min(1e-20))  # Exp(1)
    gumbel = -torch.log(expo.clamp_min(1e-20))
    soft = F.softmax((logits + gumbel.to(logits.dtype)) / tau, dim=-1)
    hard = torch.zeros_like(soft).scatter_(-1, soft.detach().argmax(-1, keepdim=True), 1.0)
    return hard - soft.detach() + soft


class ArchGenerator(nn.Module):
    """Bin vector [n_bins] -> `ArchSample` with straight-through one-hots.

    Temperature is an argument (`forward(bin_vec, tau)`), not module state: the trainer
    computes it with `tau_at(progress)`.
    """

    def __init__(
        self,
        space: SearchSpace | str,
        n_bins: int,
        hidden: int = 64,
        embed: int = 64,
        tau_start: float = 5.0,
        tau_end: float = 0.5,
        device=None,
        dtype=None,
        cost: str | Cost = "flops",
    ):
        super().__init__()
        self.space = get_space(space)
        self.cost = as_cost(self.space, cost)
        self.bins = make_bins(self.space, n_bins, self.cost)
        self.n_bins = len(self.bins)
        if not (tau_start > 0 and tau_end > 0):
            raise ValueError(
                f"ArchGenerator: tau_start={tau_start}, tau_end={tau_end} must both be > 0"
            )
        self.tau_start, self.tau_end = float(tau_start), float(tau_end)
        self.hidden, self.embed = hidden, embed
        dd = {"device": device, "dtype": dtype}

        n_max: dict[str, int] = {}
        for d in self.space.decisions:
            n_max[d.kind] = max(n_max.get(d.kind, 0), len(d.choices))
        self.bin_embed = nn.Linear(self.n_bins, embed, **dd)
        self.budget_embed = nn.Linear(2, embed, **dd)  # the budget left: (C - cmin, cmax - C) / F_max
        self.cell = nn.LSTMCell(embed, hidden, **dd)
        self.choice_embed = nn.ModuleDict(
            {_key(k): nn.Linear(n_max[k], embed, **dd) for k in self.space.kinds}
        )
        self.heads = nn.ModuleDict(
            {_key(k): nn.Linear(hidden, n_max[k], **dd) for k in self.space.kinds}
        )
        # Bin centres (in the cost's unit, float64); a buffer so it follows .to(device) and is saved.
        self.register_buffer("targets", self.bins.centers.clone(), persistent=False)
        self.feasibility = feasibility(self.space, self.cost)

    # -- temperature ---------------------------------------------------------------------------
    def tau_at(self, progress: float) -> float:
        """Exponential anneal tau_start -> tau_end: tau_start * (tau_end / tau_start) ** progress.

        Exponential rather than linear so the temperature spends as long in [5, 1.6] as in
        [1.6, 0.5]; `progress` (fraction of training done) is clamped to [0, 1].
        """
        p = min(max(float(progress), 0.0), 1.0)
        return self.tau_start * (self.tau_end / self.tau_start) ** p

    # -- decoding ------------------------------------------------------------------------------
    def _decode(
        self,
        bin_vec: torch.Tensor,
        target: torch.Tensor,
        window: tuple[float, float],
        tau: float | None,
        rng: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """One-hots of every decision, each drawn among the candidates that can still land in
        `window` (arg-max when `tau` is None, hard Gumbel-softmax otherwise)."""
        w = self.bin_embed.weight
        lo, hi = window
        feas = self.feasibility
        st = feas.start()
        scale = self.bins.hi
        target = target.to(device=w.device, dtype=torch.float64)
        x = self.bin_embed(bin_vec.to(device=w.device, dtype=w.dtype))[None]
        state = None
        onehots: dict[str, torch.Tensor] = {}
        for d in self.space.decisions:
            k, n = _key(d.kind), len(d.choices)
            left = torch.stack([target - st.cmin, st.cmax - target]) / scale
            x = x + self.budget_embed(left.to(w.dtype))[None]
            h, c = self.cell(x, state)
            state = (h, c)
            allowed = feas.mask(st, lo, hi)
            if not any(allowed):  # only when the search guard ran out: the interval test alone
                allowed = [b0 <= hi and b1 >= lo for b0, b1 in (feas.bounds(st, j) for j in range(n))]
            logits = self.heads[k](h)[0, :n]
            logits = logits.masked_fill(~torch.tensor(allowed, device=logits.device), float("-inf"))
            if tau is None:
                p = F.one_hot(logits.detach().argmax(), n).to(logits.dtype)
            else:
                p = _gumbel_hard(logits, tau, rng)
            feas.commit(st, int(p.detach().argmax()))
            onehots[d.name] = p
            emb = self.choice_embed[k]
            x = F.linear(p, emb.weight[:, :n], emb.bias)[None]
        return onehots

    def forward(
        self, bin_vec: torch.Tensor, tau: float | None = None, rng: torch.Generator | None = None
    ) -> ArchSample:
        """Sample one architecture inside the bin of `bin_vec` ([n_bins], hard one-hot from G(B)).

        `tau=None` uses `tau_end`. Gradients flow to the generator and to `bin_vec` (through the
        bin embedding and the target C = bin_vec . centres). `rng` (a `torch.Generator` on the
        generator's device) draws the Gumbel noise, so DDP ranks that share its seed emit the
        same architecture and a resumed run continues the sequence.
        """
        tau = self.tau_end if tau is None else float(tau)
        if not tau > 0:
            raise ValueError(f"ArchGenerator: tau={tau} must be > 0")
        if bin_vec.shape != (self.n_bins,):
            raise ValueError(
                f"ArchGenerator: bin_vec must have shape ({self.n_bins},) (one entry per FLOPs bin), "
                f"got {tuple(bin_vec.shape)}"
            )
        k = int(bin_vec.detach().argmax())
        target = bin_vec.double() @ self.targets.to(bin_vec.device)
        return ArchSample(self.space.name, self._decode(bin_vec, target, self.bins.window(k), tau, rng))

    def bin_vector(self, k: int) -> torch.Tensor:
        """The hard one-hot of bin `k` (on the generator's device)."""
        if not (isinstance(k, int) and 0 <= k < self.n_bins):
            raise ValueError(f"bin index {k!r} out of range [0, {self.n_bins - 1}]")
        return F.one_hot(torch.tensor(k, device=self.targets.device), self.n_bins).float()

    def window(
        self,
        budget: float | None = None,
        *,
        bin: int | None = None,
        interval: tuple[float, float] | None = None,
    ) -> tuple[int, int]:
        """The inclusive cost window [lo, hi] (in the cost's unit) that `generate` decodes into (same arguments)."""
        given = [v is not None for v in (budget, bin, interval)]
        if sum(given) != 1:
            raise ValueError("ArchGenerator.generate: give exactly one of budget, bin=k or interval=(lo, hi)")
        if bin is not None:
            return self.bins.window(bin)
        if budget is not None:
            return budget_window(self.feasibility, budget, self.bins.width())
        try:
            lo, hi = (float(v) for v in interval)
        except (TypeError, ValueError):
            raise ValueError(f"interval={interval!r} must be two numbers (lo, hi)") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise ValueError(f"interval=({lo:g}, {hi:g}) must be finite with lo <= hi")
        window = (math.ceil(lo), math.floor(hi))
        self.feasibility.check_window(*window)
        return window

    @torch.no_grad()
    def generate(
        self,
        budget: float | None = None,
        *,
        bin: int | None = None,
        interval: tuple[float, float] | None = None,
    ) -> ArchConfig:
        """Deployment (docs/method.md section 2): arg-max of every decision, inside the window.

        `budget` (MACs, or the cost's unit) is a ceiling: the subnet costs at most `budget` and at least one bin
        width less. `bin=k` decodes into bin k, `interval=(lo, hi)` into [lo, hi]. Deterministic
        (no Gumbel noise). An infeasible request raises ValueError naming the space's range.
        """
        lo, hi = self.window(budget, bin=bin, interval=interval)
        mid = (lo + hi) / 2
        k = self.bins.bin_of(min(max(mid, self.bins.lo), self.bins.hi))
        onehots = self._decode(self.bin_vector(k), torch.tensor(mid, dtype=torch.float64), (lo, hi), None)
        return ArchSample(self.space.name, onehots).hard()

    # -- pre-training --------------------------------------------------------------------------
    def pretrain(self, steps: int, lr: float = 1e-2, rng: torch.Generator | None = None) -> dict:
        """Train on the resource loss alone, every bin in every step (cost model only, no data).

        Temperature anneals tau_start -> tau_end over the `steps`. Returns the final mean loss
        and the seconds it took.
        """
        if not (isinstance(steps, int) and steps >= 0):
            raise ValueError(f"ArchGenerator.pretrain: steps={steps!r} must be an integer >= 0")
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        t0, loss = time.perf_counter(), torch.zeros(())
        for i in range(steps):
            tau = self.tau_at(i / max(1, steps))
            loss = sum(
                self.resource_loss(self(self.bin_vector(k), tau=tau, rng=rng), self.targets[k])
                for k in range(self.n_bins)
            ) / self.n_bins
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return {"steps": steps, "loss": float(loss.detach()), "seconds": round(time.perf_counter() - t0, 3)}

    # -- loss ----------------------------------------------------------------------------------
    def resource_loss(self, sample: ArchSample, target_flops, lam: float = 1.0) -> torch.Tensor:
        """L_RC = lam * ((cost(p) - C) / F_max)^2 (docs/method.md Eq. 10), a float64 scalar.

        `target_flops` may be a float or a tensor (e.g. C = G(B) @ centres, differentiable in B).
        """
        cost = expected_cost(self.space, sample, self.cost)
        target = torch.as_tensor(target_flops, dtype=torch.float64, device=cost.device)
        return lam * ((cost - target.to(torch.float64)) / self.bins.hi) ** 2

    def extra_repr(self) -> str:
        return (
            f"space={self.space.name!r}, cost={self.cost.name!r}, n_bins={self.n_bins}, "
            f"tau={self.tau_start}->{self.tau_end}"
        )
