"""`train.py --resume auto|DIR|FILE`: a resumed run keeps its own config (config.yaml), takes only
harmless overrides (refused ones are named on one line), and a checkpoint may continue in a new
run directory."""
from __future__ import annotations

import shutil

import pytest
import yaml
from fmnist_tiny import tiny_overrides

from shiftnas.train.checkpoint import list_checkpoints, load_checkpoint
from shiftnas.train.cli import main
from shiftnas.train.config import load_config
from shiftnas.train.resume import HARMLESS, harmless, resume_plan

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def trained(tiny_root, tmp_path, capsys):
    """A 2-step uniform-sampler run (another sampler than the default config's shift)."""
    ov = [*tiny_overrides(tiny_root, tmp_path / "runs", "r"), "sampler.name=uniform", "optim.steps=2",
          "optim.warmup_steps=0", "run.ckpt_every=0", "eval.max_images=4"]
    assert main(ov, prog="train.py") == 0, capsys.readouterr().err
    capsys.readouterr()
    return tmp_path / "runs" / "r", ov


def _config(run):
    return yaml.safe_load((run / "config.yaml").read_text())


def test_resume_dir_continues_with_the_runs_own_config(trained, capsys):
    run, _ = trained
    assert main(["--resume", str(run), "optim.steps=3", "run.log_every=1"], prog="train.py") == 0
    assert f"resumed from {run / 'checkpoint-00000002.pt'} at step 2" in capsys.readouterr().err
    cfg = _config(run)
    assert cfg["sampler"]["name"] == "uniform"  # the run's, not the default config's shift
    assert cfg["optim"]["steps"] == 3 and cfg["run"]["log_every"] == 1  # harmless overrides kept
    assert [s for s, _ in list_checkpoints(run)] == [2, 3]


def test_resume_auto_finds_the_run_named_now_and_ignores_the_default_config(trained, capsys):
    run, ov = trained
    assert main(["--resume", "auto", *ov, "optim.steps=3"], prog="train.py") == 0, capsys.readouterr().err
    assert load_checkpoint(run / "checkpoint-00000003.pt")["config"]["sampler"]["name"] == "uniform"


def test_overrides_that_change_the_run_are_refused_naming_them(trained, capsys):
    run, _ = trained
    before = sorted(p.name for p in run.iterdir())
    assert main(["--resume", str(run), "optim.lr=5e-4", "sampler.name=shift", "optim.steps=4"], prog="train.py") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"train.py: error: --resume {str(run)!r}")
    assert "optim.lr: 0.001 -> 0.0005" in err and "sampler.name: 'uniform' -> 'shift'" in err
    assert "optim.steps" not in err.split("refused")[1].split(";")[0]  # harmless: not among the refused
    assert sorted(p.name for p in run.iterdir()) == before  # nothing written


def test_config_with_a_resumed_directory_is_refused(trained, capsys):
    run, _ = trained
    assert main(["--resume", str(run), "--config", "fmnist-vit-shift"], prog="train.py") == 2
    assert "drop --config" in capsys.readouterr().err


def test_a_checkpoint_file_continues_in_place_or_as_a_copy(trained, tmp_path, capsys):
    run, _ = trained
    ckpt = run / "checkpoint-00000002.pt"
    assert main(["--resume", str(ckpt), "run.name=copy", "optim.steps=3"], prog="train.py") == 0
    copy = run.parent / "copy"
    assert [s for s, _ in list_checkpoints(copy)] == [3] and _config(copy)["sampler"]["name"] == "uniform"
    assert [s for s, _ in list_checkpoints(run)] == [2]  # the original run is untouched
    # into a directory holding checkpoints of its own: refused
    assert main(["--resume", str(ckpt), "run.name=copy"], prog="train.py") == 2
    assert "has checkpoints of its own" in capsys.readouterr().err


def test_a_moved_run_directory_resumes_where_it_is_now(trained, tmp_path):
    run, _ = trained
    moved = tmp_path / "elsewhere" / "moved"
    shutil.copytree(run, moved)
    plan = resume_plan(str(moved), load_config(None), [])
    assert (plan.cfg.run.out_dir, plan.cfg.run.name, plan.resume) == (str(moved.parent), "moved", "auto")
    assert plan.cfg.sampler.name == "uniform" and plan.source == str(moved / "config.yaml")
    # without config.yaml, the config saved in the checkpoint
    (moved / "config.yaml").unlink()
    plan = resume_plan(str(moved / "checkpoint-00000002.pt"), load_config(None), ["eval.max_images=8"])
    assert plan.cfg.sampler.name == "uniform" and plan.cfg.eval.max_images == 8


def test_auto_without_checkpoints_is_a_fresh_run_of_the_config_given_now(tmp_path):
    given = load_config(None, [f"run.out_dir={tmp_path}", "run.name=new", "optim.lr=5e-4"])
    plan = resume_plan("auto", given, [])
    assert plan.cfg == given and plan.resume == "auto"


def test_harmless_keys():
    assert all(harmless(k) for k in ("optim.steps", "run.log_every", "eval.max_images", "eval.batch_size"))
    assert not any(harmless(k) for k in ("optim.lr", "model.space", "sampler.name", "data.batch_size",
                                         "run.seed", "optim.amp", "shift.lr", "generator.lam"))
    assert "eval.*" in HARMLESS
