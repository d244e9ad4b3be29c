"""load_run and budgets: a trained run comes back as it was saved."""
from __future__ import annotations

import shutil

import pytest
import torch

from shiftnas.search import format_budget, load_run, parse_budget
from shiftnas.train import load_checkpoint


@pytest.mark.parametrize("text,value", [("25M", 25e6), ("1.3G", 1.3e9), ("900k", 9e5), ("25000000", 25e6),
                                        ("25m", 25e6), ("2.5e7", 25e6), (" 12.5 MFLOPs", 12.5e6), (3e7, 3e7)])
def test_parse_budget(text, value):
    assert parse_budget(text) == pytest.approx(value)


@pytest.mark.parametrize("bad", ["", "abc", "25X", "1T", "-5M", "0", "nan", "inf", "M", "25 M M"])
def test_parse_budget_rejects(bad):
    with pytest.raises(ValueError, match="budget"):
        parse_budget(bad)


def test_parse_budget_range_error_gives_the_range():
    with pytest.raises(ValueError, match=r"outside this space's range 7\.9M \.\. 62\.9M"):
        parse_budget("5M", 7.9e6, 62.9e6)
    assert format_budget(1.3e9) == "1.30G"


def test_load_run_restores_the_checkpoint(shift_run):
    run = load_run(shift_run)
    state = load_checkpoint(run.checkpoint)
    assert run.checkpoint.name == "checkpoint-00000012.pt"
    for k, v in state["model"].items():
        assert torch.equal(run.trainer.net.state_dict()[k], v), k
    assert run.generator is not None and run.sampler_name == "shift"
    assert run.flops_range() == (run.bins.lo, run.bins.hi)
    arch = run.generator.generate(run.bins.centers[1].item())
    a, b = run.evaluate(arch, "val", max_images=50), run.evaluate(arch, "val", max_images=50)
    assert a == b and a["images"] == 50  # the same fixed images every time
    assert not run.net.training


def test_load_run_errors(uniform_run, tmp_path):
    run = load_run(uniform_run)
    with pytest.raises(ValueError, match="'uniform' sampler, which has no architecture generator"):
        run.require_generator("generate")
    with pytest.raises(ValueError, match="no such run directory"):
        load_run(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no config.yaml"):
        load_run(empty)
    shutil.copy(uniform_run / "config.yaml", empty / "config.yaml")
    with pytest.raises(ValueError, match="no checkpoint"):
        load_run(empty)
    with pytest.raises(ValueError, match="split 'nosuch' not found"):
        run.loader("nosuch")


def test_load_run_cnn_recalibrates_bn(cnn_run):
    run = load_run(cnn_run)
    assert run.calib_batches() is not None and len(run.calib_batches()) >= 1
    arch = run.generator.generate(run.bins.centers[0].item())
    m = run.evaluate(arch, "minival", max_images=40)
    assert m["images"] == 40 and 0.0 <= m["top1"] <= 100.0
