"""The fault-injection hooks (shiftnas/train/faults.py) are off unless their variable is set, and
a malformed value is a clear ValueError (train.py exit 2), not a silent no-op."""
from __future__ import annotations

import pytest
import torch

from shiftnas.train.faults import InjectedFault, ckpt_delay_s, engine_faults

VARS = ("SHIFTNAS_FAULT_CKPT_DELAY_S", "SHIFTNAS_FAULT_RAISE_AT_STEP", "SHIFTNAS_FAULT_RANK",
        "SHIFTNAS_FAULT_ONCE", "SHIFTNAS_FAULT_GRAD")


@pytest.fixture(autouse=True)
def _no_faults(monkeypatch):
    for v in VARS:
        monkeypatch.delenv(v, raising=False)


def test_off_when_unset():
    assert engine_faults(0) is None and ckpt_delay_s() is None


@pytest.mark.parametrize(("var", "value", "match"), [
    ("SHIFTNAS_FAULT_GRAD", "nan", "KIND:STEPS"),
    ("SHIFTNAS_FAULT_GRAD", "zero:3", "KIND:STEPS"),
    ("SHIFTNAS_FAULT_GRAD", "inf:5-2", "3,5,9-12"),
    ("SHIFTNAS_FAULT_GRAD", "inf:3:optimizer", "supernet or generator"),
    ("SHIFTNAS_FAULT_RAISE_AT_STEP", "soon", "integers"),
])
def test_malformed_values_are_refused(monkeypatch, var, value, match):
    monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=match):
        engine_faults(0)


def test_ckpt_delay_must_be_a_nonnegative_number(monkeypatch):
    monkeypatch.setenv("SHIFTNAS_FAULT_CKPT_DELAY_S", "-1")
    with pytest.raises(ValueError, match=">= 0"):
        ckpt_delay_s()


def test_raise_fires_once_on_its_rank(monkeypatch, tmp_path):
    marker = tmp_path / "fired"
    monkeypatch.setenv("SHIFTNAS_FAULT_RAISE_AT_STEP", "3")
    monkeypatch.setenv("SHIFTNAS_FAULT_RANK", "1")
    monkeypatch.setenv("SHIFTNAS_FAULT_ONCE", str(marker))
    engine_faults(0).before_step(3)  # another rank: nothing
    f = engine_faults(1)
    f.before_step(2)
    with pytest.raises(InjectedFault, match="before step 3"):
        f.before_step(3)
    assert marker.exists()
    f.before_step(3)  # the restarted job goes on


def test_grad_fault_hits_only_the_listed_steps(monkeypatch):
    monkeypatch.setenv("SHIFTNAS_FAULT_GRAD", "-inf:1,4-5:generator")
    f = engine_faults(0)
    net, gen = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    for p in (*net.parameters(), *gen.parameters()):
        p.grad = torch.zeros_like(p)
    for step in range(7):
        f.corrupt_grads(step, net.parameters(), list(gen.parameters()))
        bad = not torch.isfinite(gen.weight.grad).all()
        assert bad == (step in (1, 4, 5)), step
        assert torch.isfinite(net.weight.grad).all()
        gen.weight.grad.zero_()
