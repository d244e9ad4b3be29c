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

The decode runs on the host in numpy (float32): one step is a few hundred multiply-adds and
a feasibility mask that needs the chosen index on the host anyway, so torch's per-op overhead
(and, on a GPU, one device sync per decision) would be most of its cost. The weights come
over in one copy per decode, the Gumbel noise in one draw from `rng` (on the generator's
device), and the one-hots go back in one tensor. A training decode is one autograd node
(`_Decode`): its forward is the decode above, its backward a hand-written back-propagation
through the steps (the LSTM, the heads, the Gumbel softmax, the embeddings), also on the host,
checked against autograd through the same decode written with torch ops
(tests/test_generator_backward.py). L_RC reads the cost tables at the sample for its value and
gradient (`resource_loss`). Both leave the samples as they were and cut the generator's share of
a training step (bench/bench_train_step.py).
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .budget import budget_window, feasibility
from .cost import Cost, as_cost, make_bins
from .spaces import ArchConfig, SearchSpace, get_space
from .spaces.arch_sample import ArchSample

__all__ = ["ArchGenerator"]


def _key(kind: str) -> str:
    # ModuleDict keys may not contain "." (they become state_dict path separators).
    return kind.replace(".", "_")


# numpy's BLAS (OpenBLAS here) runs larger products on threads of its own, which then spin for
# ~0.1 s and take a core from torch's threads in the step that follows (measured: the supernet's
# optimizer step after a generator backward 8 -> up to 130 ms). So no numpy product here calls
# BLAS: vectors go through einsum (its own loops), matrices through torch (its thread pool).
def _mv(w: np.ndarray, v: np.ndarray) -> np.ndarray:
    """w @ v for a matrix and a vector, without BLAS."""
    return np.einsum("ij,j->i", w, v)


def _vm(v: np.ndarray, w: np.ndarray) -> np.ndarray:
    """v @ w for a vector and a matrix, without BLAS."""
    return np.einsum("i,ij->j", v, w)


def _mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b for two matrices, by torch (its own threads, not numpy's BLAS); float32 (the
    backward that calls it turns a CPU autocast off)."""
    return (torch.from_numpy(a) @ torch.from_numpy(b)).numpy()


def _gumbel_noise(n: int, rng: torch.Generator | None, device) -> np.ndarray:
    """n Gumbel(0, 1) draws as float32 on the host, from one `torch.rand` of `rng` (on `device`):
    -log(-log u), u clamped away from 0 as `F.gumbel_softmax`'s exponential draw is."""
    u = torch.rand(n, generator=rng, device=device, dtype=torch.float32).cpu().numpy()
    return -np.log(np.maximum(-np.log(np.maximum(u, 1e-20)), 1e-20))


# The LSTM gates' pre-activation scale: sigmoid(z) = (1 + tanh(z / 2)) / 2 for the input, forget
# and output gates (no overflow for any z), tanh(z) for the cell gate.
def _gate_scale(hidden: int) -> np.ndarray:
    return np.concatenate([np.full(2 * hidden, 0.5), np.ones(hidden), np.full(hidden, 0.5)]).astype(np.float32)


def _lstm_gates(z: np.ndarray, half: np.ndarray):
    """(i, f, g, o) of an LSTM cell from its pre-activations z [..., 4 hidden]."""
    t = np.tanh(z * half)
    n = t.shape[-1] // 4
    s = (1 + t) / 2
    return s[..., :n], s[..., n:2 * n], t[..., 2 * n:3 * n], s[..., 3 * n:]


class _Trace(NamedTuple):
    """What the hand-written backward (`ArchGenerator._backward`) needs of a training decode,
    on the host: per step (rows) the LSTM input, the state it read, the budget input; the
    Gumbel-softmax probabilities of every decision, concatenated; the weights it ran with."""

    x: np.ndarray  # [T, embed]
    h0: np.ndarray  # [T, hidden] (zeros at the first step)
    c0: np.ndarray
    left: np.ndarray  # [T, 2]
    soft: np.ndarray  # [sum of choice counts]
    chosen: list[int]
    weights: list[np.ndarray]  # `_host_params()` at the decode
    params: list  # the parameters themselves (`_params()`), for the gradients' shapes and dtype


class _Decode(torch.autograd.Function):
    """A training decode as one autograd node: the forward is `ArchGenerator._decode` with no
    graph (the same values), the backward `ArchGenerator._backward` (back-propagation through
    the steps by hand, the weight gradients batched over the steps). Autograd through the
    decode builds ~40 nodes per decision, and running them was most of the generator's step
    (bench/bench_train_step.py). Outputs: the one-hots, in `space.decisions` order."""

    @staticmethod
    def forward(ctx, gen, window, tau, rng, indices, bin_vec, target, *params):
        trace: list[_Trace] = []
        sample = gen._decode(bin_vec, target, window, tau, rng, trace, list(params))
        indices.update(sample.indices())  # known on the host: the decode chose them
        ctx.gen, ctx.tau, ctx.trace = gen, tau, trace[0]
        ctx.save_for_backward(bin_vec)
        return tuple(sample.onehots.values())

    @staticmethod
    def backward(ctx, *d_onehots):
        (bin_vec,) = ctx.saved_tensors
        need_bin, need_target = ctx.needs_input_grad[5:7]
        with torch.autocast("cpu", enabled=False):  # its products (`_mm`) in float32
            d_bin, d_target, grads = ctx.gen._backward(ctx.trace, d_onehots, ctx.tau, bin_vec, need_bin, need_target)
        return (None, None, None, None, None, d_bin, d_target, *grads)


def _accumulate(grads: dict, slot: int, shape: tuple, g: np.ndarray, n: int | None, rows: bool) -> None:
    """grads[slot] += g, where g covers the first `n` rows (`rows`) or columns of a parameter of
    `shape` (all of it when `n` is None or g has the full shape)."""
    if n is None or g.shape == shape:
        grads[slot] = g if slot not in grads else grads[slot] + g
        return
    full = grads.get(slot)
    if full is None:
        full = grads[slot] = np.zeros(shape, np.float32)
    (full[:n] if rows else full[:, :n])[...] += g


def _to_params(grads: dict[int, np.ndarray], params: list[torch.Tensor]) -> list[torch.Tensor | None]:
    """Host gradients by parameter slot -> tensors like `params` (None where absent), in one
    transfer: views of one buffer, disjoint."""
    sizes = [p.numel() if j in grads else 0 for j, p in enumerate(params)]
    flat = np.empty(sum(sizes), np.float32)
    at = 0
    for j, n in enumerate(sizes):
        if n:
            flat[at:at + n] = grads[j].reshape(-1)
            at += n
    w = params[0]
    parts = torch.from_numpy(flat).to(device=w.device, dtype=w.dtype).split(sizes)
    return [part.view(p.shape) if n else None for part, p, n in zip(parts, params, sizes)]


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
        # The cost's terms for `_cost_and_grad`: (decision positions, strides, flat values) each,
        # and where each decision's one-hot starts in the concatenated one-hots.
        pos_of = {d.name: i for i, d in enumerate(self.space.decisions)}
        self._terms = [(tuple(pos_of[n] for n in t.names), t.strides, t.values) for t in self.cost.terms]
        self._sizes = [len(d.choices) for d in self.space.decisions]
        self._keys = [_key(d.kind) for d in self.space.decisions]
        self._flat_start = [sum(self._sizes[:i]) for i in range(len(self._sizes))]
        self._flat_size = sum(self._sizes)
        # Where each kind's (choice embedding weight, bias, head weight, bias) sit in `_params()`.
        self._slot = {_key(k): 8 + 4 * j for j, k in enumerate(self.space.kinds)}

    # -- temperature ---------------------------------------------------------------------------
    def tau_at(self, progress: float) -> float:
        """Exponential anneal tau_start -> tau_end: tau_start * (tau_end / tau_start) ** progress.

        Exponential rather than linear so the temperature spends as long in [5, 1.6] as in
        [1.6, 0.5]; `progress` (fraction of training done) is clamped to [0, 1].
        """
        p = min(max(float(progress), 0.0), 1.0)
        return self.tau_start * (self.tau_end / self.tau_start) ** p

    # -- decoding ------------------------------------------------------------------------------
    @staticmethod
    def _host_params(ps) -> list[np.ndarray]:
        """The parameters `ps` (`_params()`) as float32 numpy arrays on the host, in one copy
        (one sync on a GPU)."""
        flat = torch.cat([p.detach().reshape(-1).float() for p in ps]).cpu().numpy()
        out, i = [], 0
        for p in ps:
            out.append(flat[i:i + p.numel()].reshape(p.shape))
            i += p.numel()
        return out

    def _decode(
        self,
        bin_vec: torch.Tensor,
        target: torch.Tensor,
        window: tuple[float, float],
        tau: float | None,
        rng: torch.Generator | None = None,
        trace: list[_Trace] | None = None,
        params: list[nn.Parameter] | None = None,
    ) -> ArchSample:
        """One-hots of every decision, each drawn among the candidates that can still land in
        `window` (arg-max when `tau` is None, hard Gumbel-softmax otherwise), computed on the
        host (module docstring). `trace`, when given, receives the `_Trace` the `_Decode`
        node's backward reads; `params`: `_params()` when the caller has it."""
        w = self.bin_embed.weight
        params = self._params() if params is None else params
        P = self._host_params(params)
        bin_w, bin_b, bud_w, bud_b, w_ih, w_hh, b_ih, b_hh = P[:8]
        bias, half = b_ih + b_hh, _gate_scale(self.hidden)
        lo, hi = window
        feas = self.feasibility
        st = feas.start()
        scale, goal = self.bins.hi, float(target)
        noise = None if tau is None else _gumbel_noise(self._flat_size, rng, w.device)
        x = _mv(bin_w, bin_vec.detach().float().cpu().numpy()) + bin_b
        h = c = np.zeros(self.hidden, np.float32)
        rows, soft = [], np.zeros(self._flat_size, np.float32)
        for key, n, start in zip(self._keys, self._sizes, self._flat_start):
            left = np.array([(goal - st.cmin) / scale, (st.cmax - goal) / scale], np.float32)
            x = x + _mv(bud_w, left) + bud_b
            i, f, g, o = _lstm_gates(_mv(w_ih, x) + _mv(w_hh, h) + bias, half)
            rows.append((x, h, c, left))
            c = f * c + i * g
            h = o * np.tanh(c)
            bounds = feas.candidate_bounds(st)
            allowed = feas.mask(st, lo, hi, bounds)
            if not any(allowed):  # only when the search guard ran out: the interval test alone
                allowed = [b0 <= hi and b1 >= lo for b0, b1 in bounds]
            emb_w, emb_b, head_w, head_b = P[self._slot[key]:self._slot[key] + 4]
            z = _mv(head_w[:n], h) + head_b[:n]
            if noise is not None:
                z = (z + noise[start:start + n]) / tau
            if not all(allowed):
                z = np.where(allowed, z, -np.inf)
            index = int(z.argmax())
            if noise is not None:
                e = np.exp(z - z[index])
                soft[start:start + n] = e / e.sum()
            feas.commit(st, index, bounds[index])
            x = emb_w[:, index] + emb_b  # the choice embedding of the one-hot
        hot = np.zeros(self._flat_size, np.float32)
        hot[[s0 + j for s0, j in zip(self._flat_start, st.chosen)]] = 1.0
        names = [d.name for d in self.space.decisions]
        onehots = torch.from_numpy(hot).to(device=w.device, dtype=w.dtype).split(self._sizes)
        if trace is not None:
            x_, h_, c_, l_ = (np.stack(v) for v in zip(*rows))
            trace.append(_Trace(x_, h_, c_, l_, soft, list(st.chosen), P, params))
        return ArchSample.decoded(self.space.name, dict(zip(names, onehots)), dict(zip(names, st.chosen)))

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
        window = self.bins.window(k)
        if not torch.is_grad_enabled():
            return self._decode(bin_vec, target, window, tau, rng)
        indices: dict[str, int] = {}  # filled by the node's forward
        onehots = _Decode.apply(self, window, tau, rng, indices, bin_vec, target, *self._params())
        return ArchSample.decoded(self.space.name, dict(zip(indices, onehots)), indices)

    def _params(self) -> list[nn.Parameter]:
        """Every parameter, in the order `_backward` returns their gradients."""
        out = [self.bin_embed.weight, self.bin_embed.bias, self.budget_embed.weight, self.budget_embed.bias,
               self.cell.weight_ih, self.cell.weight_hh, self.cell.bias_ih, self.cell.bias_hh]
        for k in self.space.kinds:
            e, hd = self.choice_embed[_key(k)], self.heads[_key(k)]
            out += [e.weight, e.bias, hd.weight, hd.bias]
        return out

    def _backward(self, trace: _Trace, d_onehots, tau: float, bin_vec: torch.Tensor,
                  need_bin: bool, need_target: bool):
        """The gradients of a training decode (`_Decode`) given those of its one-hots: (of
        bin_vec or None, of the target or None, of `_params()` in order, None where the decode
        does not reach one: autograd's). On the host, with the weights the decode ran with:
        the recurrence step by step on vectors, the weights' gradients summed over the steps
        in a few matrix products at the end."""
        P, hid, T = trace.weights, self.hidden, len(trace.chosen)
        bin_w, _, bud_w, _, w_ih, w_hh, b_ih, b_hh = P[:8]
        X, H0, C0 = trace.x, trace.h0, trace.c0
        D = torch.cat([d.reshape(-1) for d in d_onehots]).float().cpu().numpy()
        i, f, g, o = _lstm_gates(_mm(X, w_ih.T) + _mm(H0, w_hh.T) + (b_ih + b_hh), _gate_scale(hid))
        tc = np.tanh(f * C0 + i * g)
        dh_dc = o * (1 - tc * tc)  # d c / d h through h = o * tanh(c)
        # d pre-activation / d(dc, dc, dc, dh), per gate (input, forget, cell, output)
        scale = np.concatenate([g * i * (1 - i), C0 * f * (1 - f), i * (1 - g * g), tc * o * (1 - o)], 1)
        w_cat = np.concatenate([w_ih, w_hh], 1)  # [4 hidden, embed + hidden]
        E = X.shape[1]
        dh, dc, dx = np.zeros(hid, np.float32), np.zeros(hid, np.float32), None
        d_pre = np.empty((T, 4 * hid), np.float32)
        d_x = np.empty((T, E), np.float32)
        d_y = [None] * T
        for s in reversed(range(T)):
            key, n, start = self._keys[s], self._sizes[s], self._flat_start[s]
            emb_w, _, head_w, _ = P[self._slot[key]:self._slot[key] + 4]
            soft, dp = trace.soft[start:start + n], D[start:start + n]
            if dx is not None:  # step s's one-hot fed step s+1 through its kind's choice embedding
                dp = dp + _vm(dx, emb_w[:, :n])
            dy = soft * (dp - (dp * soft).sum()) / tau  # through softmax((logits + gumbel) / tau)
            dh = dh + _vm(dy, head_w[:n])
            dc = dc + dh * dh_dc[s]
            d_pre[s] = np.concatenate([dc, dc, dc, dh]) * scale[s]
            back = _vm(d_pre[s], w_cat)
            dx, dh = back[:E], back[E:]
            dc = dc * f[s]
            d_x[s], d_y[s] = dx, dy
        grads = {4: _mm(d_pre.T, X), 5: _mm(d_pre.T, H0), 6: d_pre.sum(0), 7: d_pre.sum(0)}
        grads[2], grads[3] = _mm(d_x.T, trace.left), d_x.sum(0)
        b = bin_vec.detach().float().cpu().numpy()
        grads[0], grads[1] = np.outer(d_x[0], b), d_x[0]
        H1 = np.concatenate([H0[1:], (o[-1] * tc[-1])[None]])  # each step's output h
        params = trace.params
        self._backward_kinds(trace, d_y, d_x, H1, grads, [tuple(p.shape) for p in params])
        dev = bin_vec.device
        d_bin = torch.from_numpy(_vm(d_x[0], bin_w)).to(device=dev, dtype=bin_vec.dtype) if need_bin else None
        d_target = None
        if need_target:  # left = (target - cmin, cmax - target) / bins.hi
            d_left = _mm(d_x, bud_w).astype(np.float64)
            d_target = torch.tensor((d_left[:, 0] - d_left[:, 1]).sum() / self.bins.hi, dtype=torch.float64, device=dev)
        return d_bin, d_target, _to_params(grads, params)

    def _backward_kinds(self, trace: _Trace, d_y, d_x, H1, grads, shapes) -> None:
        """The heads' and choice embeddings' gradients (`_backward`), per (kind, choice count)."""
        groups: dict[tuple[str, int], list[int]] = {}
        for s, key in enumerate(self._keys):
            groups.setdefault((key, self._sizes[s]), []).append(s)
        eye = {}
        for (key, n), steps in groups.items():
            slot = self._slot[key]
            dy = np.stack([d_y[s] for s in steps])
            _accumulate(grads, slot + 2, shapes[slot + 2], _mm(dy.T, H1[steps]), n, rows=True)
            _accumulate(grads, slot + 3, shapes[slot + 3], dy.sum(0), n, rows=True)
            fed = [s for s in steps if s + 1 < len(trace.chosen)]  # the last one-hot feeds nothing
            if fed:
                dxn = d_x[[s + 1 for s in fed]]
                hot = eye.setdefault(n, np.eye(n, dtype=np.float32))[[trace.chosen[s] for s in fed]]
                _accumulate(grads, slot, shapes[slot], _mm(dxn.T, hot), n, rows=False)
                _accumulate(grads, slot + 1, shapes[slot + 1], dxn.sum(0), None, rows=False)

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
        return self._decode(self.bin_vector(k), torch.tensor(mid, dtype=torch.float64), (lo, hi), None).hard()

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

        `sample` is hard in value (the generator's straight-through one-hots): cost(p) is then
        `expected_cost(sample)`, whose terms are multilinear in the one-hots, so its value is the
        tables read at the sample's indices and its gradient w.r.t. decision i's one-hot is, per
        candidate j, the tables read with j at i and the others at their indices. Both come from
        `_cost_and_grad` (no per-term einsum graph to build and run backward through).
        `target_flops` may be a float or a tensor (e.g. C = G(B) @ centres, differentiable in B).
        """
        idx = sample.indices()
        names = [d.name for d in self.space.decisions]
        value, grad = self._cost_and_grad([idx[n] for n in names])
        p = torch.cat([sample.onehots[n] for n in names])
        g = torch.tensor(grad, dtype=torch.float64, device=p.device)
        cost = value + (p - p.detach()).double() @ g  # exactly `value`; d cost / d p = g
        target = torch.as_tensor(target_flops, dtype=torch.float64, device=cost.device)
        return lam * ((cost - target.to(torch.float64)) / self.bins.hi) ** 2

    def _cost_and_grad(self, idx: list[int]) -> tuple[float, list[float]]:
        """The cost at candidate indices `idx` (one per decision, in order, as decoded: inactive
        ones too, which the gated terms ignore) and d expected_cost / d(the concatenated one-hots)
        at those hard one-hots, from the cost's term tables (`self._terms`)."""
        grad = [0.0] * self._flat_size
        total = 0.0
        for pos, strides, values in self._terms:
            base = sum(idx[i] * s for i, s in zip(pos, strides))
            total += values[base]
            for i, s in zip(pos, strides):
                off, start = base - idx[i] * s, self._flat_start[i]
                for j in range(self._sizes[i]):
                    grad[start + j] += values[off + j * s]
        return total + self.cost.constant, grad

    def extra_repr(self) -> str:
        return (
            f"space={self.space.name!r}, cost={self.cost.name!r}, n_bins={self.n_bins}, "
            f"tau={self.tau_start}->{self.tau_end}"
        )
