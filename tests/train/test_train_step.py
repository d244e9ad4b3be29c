"""optimizer_step: the one optimizer step of training and fine-tuning, and what counts as a bad step.

GradScaler here is torch's real one on CPU (fp32 parameters, the scaling and unscaling as on a
GPU); the overflow of fp16 gradients is what `inf` in the scaled gradients stands for.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from shiftnas.train.step import (
    MAX_BAD_STEPS,
    SETTLING_SCALE,
    StepOutcome,
    backward,
    next_bad_streak,
    optimizer_step,
)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def _loss(model: nn.Module, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 4, generator=g), torch.randint(0, 2, (16,), generator=g)
    return nn.functional.cross_entropy(model(x), y)


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _same(model: nn.Module, weights: list[torch.Tensor]) -> bool:
    return all(torch.equal(p, w) for p, w in zip(model.parameters(), weights))


def test_a_good_step_is_the_plain_clipped_adamw_step_with_its_schedule():
    a, b = _model(), _model()
    opt_a, opt_b = torch.optim.AdamW(a.parameters(), lr=1e-2), torch.optim.AdamW(b.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt_a, lambda s: 0.5 ** s)
    for step in range(3):
        backward(_loss(a, step))
        out = optimizer_step(opt_a, [a.parameters()], clip=0.05, scheduler=sched)
        for g in opt_b.param_groups:
            g["lr"] = 1e-2 * 0.5 ** step
        _loss(b, step).backward()
        ref = torch.nn.utils.clip_grad_norm_(b.parameters(), 0.05)
        opt_b.step()
        opt_b.zero_grad(set_to_none=True)
        assert out.stepped and not out.bad and not out.overflow
        assert out.grad_norm == pytest.approx(float(ref)) and out.grad_norm > 0.05  # clipping acted
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert all(p.grad is None for p in a.parameters())
    assert opt_a.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5 ** 3)


def test_nonfinite_loss_or_gradient_without_a_scaler_is_a_bad_step():
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = _weights(model)
    backward(_loss(model, 0) * float("nan"))
    out = optimizer_step(opt, [model.parameters()], clip=None, loss_finite=False)
    assert out.bad and not out.stepped and not out.overflow
    backward(_loss(model, 1))
    next(model.parameters()).grad[0, 0] = float("inf")
    out = optimizer_step(opt, [model.parameters()], clip=1.0)
    assert out.bad and math.isinf(out.grad_norm)
    assert _same(model, before) and all(p.grad is None for p in model.parameters())


def test_a_nonfinite_second_parameter_set_also_skips_the_step():
    model, extra = _model(0), _model(1)
    opt = torch.optim.AdamW([*model.parameters(), *extra.parameters()], lr=1e-2)
    before = _weights(model)
    backward(_loss(model, 0) + _loss(extra, 0))
    next(extra.parameters()).grad[0, 0] = float("nan")
    out = optimizer_step(opt, [model.parameters(), extra.parameters()], clip=5.0)
    assert out.bad and math.isfinite(out.grad_norm) and _same(model, before)


def _overflowing_step(model: nn.Module, opt, scaler, seed: int) -> StepOutcome:
    backward(_loss(model, seed), scaler)
    next(model.parameters()).grad[0, 0] = float("inf")  # an fp16 gradient that overflowed at this scale
    return optimizer_step(opt, [model.parameters()], clip=5.0, scaler=scaler)


def test_gradscaler_overflows_while_the_scale_settles_are_not_bad_steps():
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu")  # starts at 65536, halves on every overflow
    before = _weights(model)
    in_row, scales = 0, []
    n = MAX_BAD_STEPS + 2
    for step in range(n):
        out = _overflowing_step(model, opt, scaler, step)
        assert out.overflow and not out.stepped and not out.bad
        in_row = next_bad_streak(out, in_row)
        scales.append(scaler.get_scale())
    # counted as bad steps (the rule before), these would have stopped the run at MAX_BAD_STEPS
    assert in_row == 0
    assert scales == [65536.0 / 2 ** (k + 1) for k in range(n)]
    assert _same(model, before)
    backward(_loss(model, 99), scaler)  # the scale settled: a finite step is taken
    out = optimizer_step(opt, [model.parameters()], clip=5.0, scaler=scaler)
    assert out.stepped and not _same(model, before)


def test_gradients_nonfinite_whatever_the_scale_become_bad_steps():
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    outs = [_overflowing_step(model, opt, scaler, step) for step in range(2 + MAX_BAD_STEPS)]
    # scale 4 and 2: overflow; from 1 (SETTLING_SCALE) down a smaller scale cannot help: bad
    assert SETTLING_SCALE == 1.0
    assert [o.overflow for o in outs] == [True, True] + [False] * MAX_BAD_STEPS
    in_row = 0
    for o in outs:
        in_row = next_bad_streak(o, in_row)
    assert in_row == MAX_BAD_STEPS


def test_a_nonfinite_loss_with_a_scaler_is_a_bad_step():
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu")
    backward(_loss(model, 0) * float("inf"), scaler)
    out = optimizer_step(opt, [model.parameters()], clip=5.0, scaler=scaler, loss_finite=False)
    assert out.bad and not out.overflow


def test_overflow_steps_neither_extend_nor_break_a_bad_streak():
    bad, over, good = StepOutcome(math.nan, False, False), StepOutcome(math.inf, False, True), StepOutcome(1.0, True, False)
    in_row = 0
    for o in (bad, over, bad, over, over, bad):
        in_row = next_bad_streak(o, in_row)
    assert in_row == 3
    assert next_bad_streak(good, in_row) == 0
